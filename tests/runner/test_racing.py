"""Racing: the rule on arrays (checked against scipy and by simulation), and the rounds run
through the real sweeper code with a simulated job that logs to a real MLflow store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import open_dict
from scipy import stats

from dat_exp.analysis.racing import (
    README_EFFECTS,
    RacingSettings,
    holm,
    simulate,
    simulate_full_grid,
    tost_p,
)
from dat_exp.analysis.stats import ALPHA, welch
from dat_exp.config import CONF_DIR, config_hash, register_configs, variant_hash
from dat_exp.tracking.schema import Tag

register_configs()


# -- the rule -------------------------------------------------------------------------------------
def test_bad_settings_are_each_named_with_what_is_valid():
    problems = RacingSettings(1, 0, 0, 1.5, -0.1).problems()
    assert problems == [
        "seeds_min=1: must be at least 2 (a test needs 2 seeds)",
        "seeds_max=0: must be at least seeds_min=1",
        "seeds_step=0: must be at least 1",
        "alpha=1.5: must be in (0, 1)",
        "target_delta=-0.1: must be > 0",
    ]
    assert "target_delta is required" in RacingSettings(3, 8, 1, 0.05, None).problems()[0]
    assert RacingSettings(3, 8, 1, 0.05, 0.005).problems() == []


def test_the_schedule_and_the_error_spent_per_round():
    default = RacingSettings(3, 8, 1, 0.05, 0.01)
    assert default.rounds == 6
    assert [default.seeds(r) for r in range(1, 7)] == [3, 4, 5, 6, 7, 8]
    assert default.round_alpha(1) == pytest.approx(0.05 / 10)  # α / (2 (K − 1))
    assert default.round_alpha(6) == pytest.approx(0.025)  # α / 2 at the last round
    # spent over all rounds: never more than α
    assert sum(default.round_alpha(r) for r in range(1, 7)) == pytest.approx(0.05)
    stepped = RacingSettings(2, 8, 3, 0.05, 0.01)
    assert stepped.rounds == 3 and [stepped.seeds(r) for r in (1, 2, 3)] == [2, 5, 8]
    assert RacingSettings(4, 5, 2, 0.05, 0.01).rounds == 1
    assert RacingSettings(4, 5, 2, 0.05, 0.01).round_alpha(1) == 0.05  # one round: all of α


def test_holm_steps_down_in_a_family_larger_than_the_tests():
    p = np.array([0.04, 0.01, np.nan, 0.012])
    rejected, threshold = holm(p, 0.05, m=4)
    # ranked: 0.01 <= 0.05/4 yes; 0.012 <= 0.05/3 yes; 0.04 <= 0.05/2 no (stop)
    assert rejected.tolist() == [False, True, False, True]
    assert threshold[[1, 3, 0]] == pytest.approx([0.0125, 0.05 / 3, 0.025])
    # decided variants stay in the family: with m = 6 the smallest, 0.01 > 0.05/6, stops it
    assert not holm(p, 0.05, m=6)[0].any()


def test_tost_is_the_larger_of_two_one_sided_welch_tests():
    rng = np.random.default_rng(3)
    a, b, margin = rng.normal(0.3, 1, 6), rng.normal(0, 1.5, 5), 1.2
    below = stats.ttest_ind(a + margin, b, equal_var=False, alternative="greater").pvalue
    above = stats.ttest_ind(a - margin, b, equal_var=False, alternative="less").pvalue
    delta, se, df, _ = welch(a, b)
    assert tost_p(delta, se, df, margin) == pytest.approx(max(below, above), rel=1e-9)


def test_racing_by_simulation_spends_less_and_errs_no_more_than_the_full_grid():
    effects = np.array(README_EFFECTS)  # 4 variants 2σ better, 8 with no effect
    for target, max_jobs in ((3.0, 0.90), (5.0, 0.65)):
        settings = RacingSettings(2, 8, 1, ALPHA, target)
        race = simulate(effects, settings, 500, np.random.default_rng(11))
        grid = simulate_full_grid(effects, settings, 500, np.random.default_rng(11))
        assert (race.false_rejections > 0).mean() <= 0.05  # family-wise, across all rounds
        assert race.wrong.mean() <= grid.wrong.mean()
        assert race.jobs.mean() / race.full_grid_jobs <= max_jobs
    assert (race.wrong == 0).mean() >= 0.99  # target_delta = 5σ


def test_testing_every_round_at_the_plain_level_would_err_more():
    # what the rule guards against: the same rounds with α at each round (no spending)
    effects = np.array(README_EFFECTS)
    spent = RacingSettings(2, 8, 1, ALPHA, 3.0)

    class Unspent(RacingSettings):
        def round_alpha(self, round_: int) -> float:
            return self.alpha

    plain = Unspent(2, 8, 1, ALPHA, 3.0)
    risky = simulate(effects, plain, 500, np.random.default_rng(5)).false_rejections
    safe = simulate(effects, spent, 500, np.random.default_rng(5)).false_rejections
    assert (risky > 0).mean() > 2 * (safe > 0).mean()


# -- the rounds, with a simulated job ------------------------------------------------------------
NOISE = {"sppf": 0.001, "neck": 0.001, "head": 0.02, "none": 0.001}
EFFECT = {"sppf": 0.02, "neck": 0.0, "head": 0.005, "none": 0.0}  # clear, null, ambiguous
SMALL = ["train=smoke", "data.images=16", "data.val_images=8", "tracking.experiment=race"]


@dataclass
class SimulatedLauncher:
    """Runs a job by logging a FINISHED run as the runner would (config hash, variant hash, code
    version, seed), its metric the placement's true effect plus Gaussian noise; or FAILED."""

    config: object
    client: MlflowClient
    experiment_id: str
    fail: dict[tuple[str, int], int] = field(default_factory=dict)  # (placement, seed): times
    launched: list[tuple[int, int]] = field(default_factory=list)  # (initial_job_idx, jobs)

    def launch(self, batch, initial_job_idx):
        from dat_exp.provenance import code_version
        from dat_exp.sweep import compose_job

        self.launched.append((initial_job_idx, len(batch)))
        for overrides in batch:
            cfg = compose_job(self.config, overrides)
            placement, seed = cfg["placement"]["name"], int(cfg["seed"])
            rng = np.random.default_rng([seed, list(NOISE).index(placement)])
            tags = {
                Tag.CONFIG_HASH: config_hash(cfg),
                Tag.VARIANT_HASH: variant_hash(cfg),
                Tag.CODE_VERSION: code_version(),
            }
            run = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            self.client.log_param(run, "seed", seed)
            if self.fail.get((placement, seed), 0) > 0:
                self.fail[(placement, seed)] -= 1
                self.client.set_terminated(run, "FAILED")
                continue
            value = 0.5 + EFFECT[placement] + rng.normal(0, NOISE[placement])
            self.client.log_metric(run, "mAP50-95", value)
            self.client.set_terminated(run, "FINISHED")
        return []


@pytest.fixture
def race_setup(tmp_path, monkeypatch):
    """A racing sweep's composed config over sppf, neck, head (seeds 3…6), its store and
    parent run, as the sweep callback leaves them before the sweeper runs."""
    from dat_exp.racing import RaceStart, open_parent_tags, settings_of
    from dat_exp.sweep import STATE
    from dat_exp.tracking.store import client_for, experiment_id

    monkeypatch.setenv("DAT_EXP_RUNS", str(tmp_path / "runs"))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="race"):
        racing = ["hydra/sweeper=racing", "hydra.sweeper.target_delta=0.01"]
        seeds = ["hydra.sweeper.seeds_min=3", "hydra.sweeper.seeds_max=6"]
        config = compose("config", [*racing, *seeds, *SMALL], return_hydra_config=True)
        with open_dict(config):  # the command line, as Hydra records a multirun's
            config.hydra.overrides.task = ["placement=sppf,neck,head", "seed=7", *SMALL]
            config.hydra.job.config_name = "config"
        tracking = {"name": "local", "uri": None, "experiment": "race"}
        client = client_for(tracking)
        exp = experiment_id(client, "race", local=True)
        parent = client.create_run(exp).info.run_id
        STATE.clear()
        STATE.race = RaceStart(settings_of(config), "mAP50-95")
        open_parent_tags(STATE.race, client, parent, tracking)
        launcher = SimulatedLauncher(config, client, exp)
        yield config, launcher, client, parent
        STATE.clear()


@dataclass
class Sweeper:
    config: object
    launcher: SimulatedLauncher


def decisions(client: MlflowClient, parent: str) -> dict[str, dict]:
    tags = client.get_run(parent).data.tags
    records = [json.loads(v) for k, v in tags.items() if k.startswith(Tag.RACING_DECISION)]
    return {r["variant"].split("[")[0]: r for r in records}


def test_a_clear_and_an_equivalent_variant_stop_early_an_ambiguous_one_runs_to_the_end(
    race_setup, capsys, tmp_path
):
    from dat_exp.racing import ROUNDS_ARTIFACT, run_race

    config, launcher, client, parent = race_setup
    run_race(Sweeper(config, launcher), [])
    assert "racing owns the seeds (0, 1, 2, … in order): dropped seed=7" in capsys.readouterr().out
    made = decisions(client, parent)
    assert made["sppf"]["decision"] == "better" and made["sppf"]["round"] == 1
    assert made["neck"]["decision"] == "equivalent" and made["neck"]["round"] == 1
    assert made["sppf"]["stopped_early"] and made["neck"]["stopped_early"]
    assert made["head"] == {**made["head"], "decision": "undecided at budget", "n": 6}
    # round 1: 3 seeds of 3 variants and the baseline; then seeds 3, 4, 5 of head and baseline
    assert launcher.launched == [(0, 12), (12, 2), (14, 2), (16, 2)]
    runs = client.search_runs([launcher.experiment_id])
    seeds = [int(r.data.params["seed"]) for r in runs if r.info.run_id != parent]
    assert sorted(seeds) == [0] * 4 + [1] * 4 + [2] * 4 + [3, 3, 4, 4, 5, 5], "seeds 0…n−1 only"
    rounds = pd.read_csv(client.download_artifacts(parent, ROUNDS_ARTIFACT, str(tmp_path)))
    assert rounds["round"].tolist() == [1, 1, 1, 2, 3, 4]
    assert rounds.loc[rounds["variant"].str.startswith("head"), "n"].tolist() == [3, 4, 5, 6]
    tags = client.get_run(parent).data.tags
    assert tags[Tag.RACING_METRIC] == "mAP50-95"
    assert json.loads(tags[Tag.RACING_SETTINGS])["rounds"] == 4
    assert "undecided at budget" in tags[Tag.NOTE] and "18 jobs run of 24" in tags[Tag.NOTE]


def test_a_failed_seed_is_retried_once_then_its_variant_fails(race_setup):
    from dat_exp.racing import run_race
    from dat_exp.sweep import STATE

    config, launcher, client, parent = race_setup
    launcher.fail = {("head", 1): 1, ("neck", 0): 2}  # head recovers on its retry; neck not
    run_race(Sweeper(config, launcher), [])
    made = decisions(client, parent)
    assert made["neck"]["decision"] == "failed (seed 0 failed twice)"
    assert made["head"]["decision"] == "undecided at budget" and made["head"]["n"] == 6
    assert made["sppf"]["decision"] == "better"
    assert STATE.failed, "a failed variant fails the sweep (exit 1)"


def test_a_baseline_that_fails_twice_fails_its_variants_and_the_grid_is_deduplicated(
    race_setup,
):
    from dat_exp.racing import distinct_variants, grid_overrides, run_race

    config, launcher, client, parent = race_setup
    with open_dict(config):  # dat.pe changes nothing for placement=none: one baseline
        config.hydra.overrides.task = ["placement=none,sppf", "dat.pe=table,dwc", *SMALL]
    names = [v.name for v in distinct_variants(config, grid_overrides(config))]
    assert names == ["none", "sppf[P5]/table/s-1/off", "sppf[P5]/dwc/s-1/off"]
    launcher.fail = {("none", 2): 2}
    run_race(Sweeper(config, launcher), [])
    made = decisions(client, parent)
    assert {r["decision"] for r in made.values()} == {"failed (seed 2 failed twice)"}


def test_the_grid_may_come_from_the_sweepers_params_as_an_experiment_file_sets_it(race_setup):
    from dat_exp.racing import distinct_variants, grid_overrides

    config = race_setup[0]
    with open_dict(config):
        config.hydra.overrides.task = [*SMALL]
        config.hydra.sweeper.params = {"placement": "sppf,neck", "seed": "0,1"}
    points = grid_overrides(config)
    names = [v.name for v in distinct_variants(config, points)]
    assert names == ["sppf[P5]/table/s-1/off", "neck[P3,P4,P5]/table/s-1/off", "none"]
    assert not any(o.startswith("seed=") for point in points for o in point), "racing's seeds"

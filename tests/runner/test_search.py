"""hparams_search: an Optuna search where each trial is a logged run, a failed trial scores the
penalty instead of stopping the search, and a GFLOPs budget keeps big models from training."""

from __future__ import annotations

import pytest

from dat_exp.config import resolve
from dat_exp.runner import JobResult
from dat_exp.search import budget_excess, objective_value
from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag
from tests.runner.entry import TINY, local_runs, run_entry


@pytest.mark.slow
def test_a_failing_trial_scores_the_penalty_and_the_search_reports_the_best(workdir):
    # A grid of 3 values in 3 trials: exactly one trains, two fail (raise, then a NaN loss).
    out = run_entry(
        workdir,
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=3",
        "placement=sppf",
        "fault=choice(off,raise,'nan')",  # quoted: a bare nan is a float
        *TINY,
        "train.epochs=1",
    )
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]  # a job failed
    runs = local_runs(workdir)
    (parent,) = [r for r in runs if r.data.tags.get(Tag.SWEEP) == "true"]
    kids = [r for r in runs if r.data.tags.get(Tag.PARENT) == parent.info.run_id]
    assert sorted(r.info.status for r in kids) == ["FAILED", "FAILED", "FINISHED"]
    errors = " | ".join(r.data.tags.get(Tag.ERROR, "") for r in kids)
    assert "fault=raise" in errors and "nan" in errors.lower(), errors
    (trained,) = [r for r in kids if r.info.status == "FINISHED"]
    best = trained.data.metrics[schema.MAP50_95]
    assert parent.data.tags[Tag.BEST_PARAMS] == "fault=off"
    assert float(parent.data.tags[Tag.BEST_VALUE]) == pytest.approx(best)
    assert f"best trial: {best:.4f} with fault=off" in out.stdout
    assert parent.info.status == "FAILED"  # some trial failed; the search still finished


def test_the_preset_searches_the_dat_settings_under_a_budget(workdir):
    out = run_entry(workdir, "hparams_search=dat_budget", "--cfg", "all")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OptunaSweeper" in out.stdout and "direction: maximize" in out.stdout
    for key in ("placement", "dat.pe", "dat.offset_range_factor", "dat.stride", "dat.groups"):
        assert f"      {key}: choice(" in out.stdout
    assert "max_gflops_ratio: 1.1" in out.stdout


@pytest.mark.slow
def test_a_bad_search_value_is_reported_before_any_trial(workdir):
    out = run_entry(
        workdir,
        "-m",
        "hparams_search=dat_budget",
        "hydra.sweeper.params.placement='choice(sppf,neckk)'",
        *TINY,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "placement=neckk" in out.stderr and "none was started" in out.stderr
    assert "Available options in 'placement': backbone c2f head neck none sppf" in out.stderr
    assert not (workdir / "runs" / "mlflow.db").exists() or not local_runs(workdir)


def job(placement: str, ratio: float | None, tmp_runs) -> dict:
    from hydra import compose, initialize_config_dir

    from dat_exp.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"placement={placement}", *TINY, "device=cpu"])
    resolved = resolve(cfg)
    resolved["objective"]["max_gflops_ratio"] = ratio
    return resolved


def test_the_budget_keeps_a_bigger_model_from_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DAT_EXP_RUNS", str(tmp_path / "runs"))
    assert budget_excess(job("neck", None, tmp_path)) is None  # no budget
    assert budget_excess(job("neck", 2.0, tmp_path)) is None
    excess = budget_excess(job("neck", 1.001, tmp_path))
    assert excess is not None and "over the budget, 1.001 x the stock model's" in excess
    assert budget_excess(job("none", 0.5, tmp_path)) is None  # the stock model is the yardstick


def test_objective_value_is_the_metric_or_the_penalty():
    cfg = {"objective": {"metric": schema.MAP50_95, "penalty": -1.0}}
    done = JobResult("FINISHED", "sppf", "h", "r", {schema.MAP50_95: 0.3, schema.MAP50: 0.5})
    assert objective_value(cfg, done) == 0.3
    assert objective_value({"objective": {"metric": schema.MAP50, "penalty": -1}}, done) == 0.5
    for status in ("FAILED", "INVALID", "OVER_BUDGET"):
        assert objective_value(cfg, JobResult(status, "sppf", "h")) == -1.0

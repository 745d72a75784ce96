"""A racing sweep (``hydra/sweeper=racing``): rounds of seeds, each launched through the configured
launcher, results read back from the store, decisions by :mod:`dat_exp.analysis.racing`.

The Hydra plugin (``hydra_plugins/dat_exp_racing``) only holds the parameters and calls
:func:`run_race`; the sweep callback calls :func:`start_race` before the parent run opens, so
that bad settings stop the sweep before anything starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dat_exp.analysis.racing import (
    STOPPED_EARLY,
    Outcome,
    RacingSettings,
    decision_text,
    outcome,
    race_round,
)
from dat_exp.config import baseline_hash, config_hash, resolve, variant_hash, variant_name
from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag

log = logging.getLogger("dat_exp")
SWEEPER = "RacingSweeper"  # the plugin's class name, as hydra.sweeper._target_ ends
SEED = "seed"
ROUNDS_ARTIFACT = "racing/rounds.csv"
STOP_AFTER_ROUND_ENV = "DAT_EXP_RACING_STOP_AFTER_ROUND"  # test-only: interrupt after round N
ROUND_COLUMNS = ("round", "variant", "n", "delta", "p", "threshold", "decision")


class RacingError(ValueError):
    """A racing setting or grid that cannot race: one line, exit 2, nothing started."""


def is_racing(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith(SWEEPER)


def settings_of(config: DictConfig) -> RacingSettings:
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    return RacingSettings(
        seeds_min=sweeper.seeds_min,
        seeds_max=sweeper.seeds_max,
        seeds_step=sweeper.seeds_step,
        alpha=sweeper.alpha,
        target_delta=sweeper.target_delta,
    )


# -- the grid -----------------------------------------------------------------------------------
def grid_overrides(config: DictConfig, say: bool = False) -> list[list[str]]:
    """One override list per grid point (the basic sweeper's syntax, from the command line and
    ``hydra.sweeper.params``), seeds dropped (racing owns them), each DAT point's
    ``placement=none`` twin added where the grid lacks it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    given = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(given)
    seeds = [o.input_line for o in parsed if o.get_key_element() == SEED]
    if seeds and say:
        print(f"racing owns the seeds (0, 1, 2, … in order): dropped {' '.join(seeds)}")
    kept = [o for o in parsed if o.get_key_element() != SEED]
    points = BasicSweeper.split_arguments(kept, None)[0] if kept else [[]]
    twins = [twin_overrides(point) for point in points]
    return points + [t for t in twins if t not in points]


def twin_overrides(point: list[str]) -> list[str]:
    """The ``placement=none`` twin of a grid point: its other overrides, no placement or DAT key
    (a stock model has neither)."""
    own = [o for o in point if _key(o).split(".")[0] not in ("placement", "dat")]
    return [*own, "placement=none"]


def _key(override: str) -> str:
    """``dat.pe`` of ``+dat.pe=table``; ``data`` of ``data=coco``."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass
class Variant:
    """One distinct variant of the grid, and its baseline's variant hash."""

    name: str
    overrides: list[str]
    hash: str
    baseline: str  # variant hash of its placement=none twin ('' for a baseline)
    seeds: dict[int, float] = field(default_factory=dict)  # seed -> metric, this code version
    retried: set[int] = field(default_factory=set)
    outcome: Outcome = Outcome.OPEN
    text: str = ""  # the decision as shown, e.g. "better (below target_delta)"
    round: int = 0  # the round it was decided in
    delta: float = math.nan
    tested: int = 0  # the last round it was tested in (a round tests a variant once)

    @property
    def is_baseline(self) -> bool:
        return not self.baseline


def distinct_variants(config: DictConfig, points: Sequence[list[str]]) -> list[Variant]:
    """The grid's points composed (seed 0), deduplicated by variant hash, in order."""
    from dat_exp.sweep import compose_job

    variants: dict[str, Variant] = {}
    for point in points:
        cfg = compose_job(config, [*point, f"{SEED}=0"])
        h = variant_hash(cfg)
        if h not in variants:
            is_stock = cfg["placement"]["name"] == "none"
            base = "" if is_stock else baseline_hash(cfg)
            variants[h] = Variant(variant_name(cfg), list(point), h, base)
    return list(variants.values())


# -- before the parent opens --------------------------------------------------------------------
@dataclass
class RaceStart:
    """What the sweep callback fixed before the parent run opened."""

    settings: RacingSettings
    metric: str
    parent: str | None = None
    tracking: dict[str, Any] | None = None  # the sweep's store
    rows: list[dict[str, Any]] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    failed: bool = False


def start_race(config: DictConfig, jobs: Sequence[dict[str, Any]]) -> RaceStart:
    """Check the settings and fix the metric; raise ``RacingError`` (exit 2) on bad input."""
    settings = settings_of(config)
    if problems := settings.problems():
        raise RacingError("racing: " + "; ".join(problems))
    wanted = OmegaConf.select(config, "hydra.sweeper.metric")
    return RaceStart(settings, race_metric(jobs, wanted))


def race_metric(jobs: Sequence[dict[str, Any]], wanted: str | None) -> str:
    """``test/mAP50-95`` when every job's data has a labelled, disjoint test split, else
    ``mAP50-95``; a metric asked for must be one each run logs."""
    tested = all(test_split_used(job) for job in jobs)
    headline = schema.held_out(schema.HEADLINE) if tested else schema.HEADLINE
    if wanted is None:
        return headline
    loggable = [*schema.METRICS, *(schema.held_out(m) for m in schema.HELD_OUT if tested)]
    quality = [
        m for m in loggable if schema.spec(m).over_seeds and not schema.spec(m).host_dependent
    ]
    if wanted not in quality:
        raise RacingError(
            f"racing: metric={wanted!r} is not one every run of this grid logs and seeds "
            f"change; valid: {', '.join(quality)}"
        )
    return wanted


def test_split_used(job: dict[str, Any]) -> bool:
    from dat_exp.data import check_dataset, resolve_dataset
    from dat_exp.env import runs_dir

    return check_dataset(resolve_dataset(job["data"], runs_dir())).test_skipped is None


def open_parent_tags(race: RaceStart, client: Any, parent: str, tracking: dict[str, Any]) -> None:
    """The metric and the settings on the parent, as the sweep opens it."""
    settings = race.settings
    record = {
        "seeds_min": settings.seeds_min,
        "seeds_max": settings.seeds_max,
        "seeds_step": settings.seeds_step,
        "alpha": settings.alpha,
        "target_delta": settings.target_delta,
        "rounds": settings.rounds,
    }
    race.tracking = tracking
    client.set_tag(parent, Tag.RACING_METRIC, race.metric)
    client.set_tag(parent, Tag.RACING_SETTINGS, json.dumps(record))
    race.parent = parent


# -- the rounds ---------------------------------------------------------------------------------
def run_race(sweeper: Any, arguments: list[str]) -> list:
    """Launch the rounds through ``sweeper.launcher``; returns the launchers' returns."""
    from dat_exp.sweep import STATE

    config = sweeper.config
    race: RaceStart = STATE.race
    variants = distinct_variants(config, grid_overrides(config, say=True))
    race.variants = variants
    if resolve(config)["dry_run"]:  # each job describes itself; the bill is the callback's
        return [sweeper.launcher.launch([[*v.overrides, f"{SEED}=0"] for v in variants], 0)]
    returns = []
    job_index = 0
    settings = race.settings
    r = 1
    while r <= settings.rounds:
        n = settings.seeds(r)
        batch = round_batch(variants, n)
        if batch:
            returns.append(sweeper.launcher.launch(batch, initial_job_idx=job_index))
            job_index += len(batch)
        read_results(config, race, n)
        retry = settle_failures(race, n)
        decide(race, r)
        write_rounds(race)
        if os.environ.get(STOP_AFTER_ROUND_ENV) == str(r):
            raise KeyboardInterrupt(f"{STOP_AFTER_ROUND_ENV}={r}")
        if not any(v.outcome == Outcome.OPEN for v in variants if not v.is_baseline):
            break
        if not (r == settings.rounds and retry):  # a failure in the last round: retried once
            r += 1
    finish(race, job_index)
    return returns


def round_batch(variants: Sequence[Variant], n: int) -> list[list[str]]:
    """The jobs of a round: seeds 0…n−1 not yet finished of every open variant and of the
    baselines they are compared with (a failed seed comes back once, in the next round)."""
    needed = {v.baseline for v in variants if v.outcome == Outcome.OPEN and not v.is_baseline}
    batch = []
    for v in variants:
        wanted = v.outcome == Outcome.OPEN if not v.is_baseline else v.hash in needed
        if wanted:
            batch += [[*v.overrides, f"{SEED}={s}"] for s in range(n) if s not in v.seeds]
    return batch


def read_results(config: DictConfig, race: RaceStart, n: int) -> None:
    """Each variant's values for seeds 0…n−1 from the store (never from the jobs' return
    values): the FINISHED run of that exact config hash a job would be skipped for, so one of
    this code version unless ``reuse=any`` (one rule: :func:`dat_exp.sweep.reusable`)."""
    from dat_exp.sweep import compose_job, reusable
    from dat_exp.tracking.store import client_for, experiment_id, runs_of_config

    cfg = resolve(config)
    tracking = cfg["tracking"]
    client = client_for(tracking)
    exp_id = experiment_id(client, tracking["experiment"], local=not tracking.get("uri"))
    for v in race.variants:
        for seed in (s for s in range(n) if s not in v.seeds):
            h = config_hash(compose_job(config, [*v.overrides, f"{SEED}={seed}"]))
            run, _ = reusable(runs_of_config(client, exp_id, h, "FINISHED"), cfg["reuse"])
            if run is not None and race.metric in run.data.metrics:
                v.seeds[seed] = float(run.data.metrics[race.metric])


def settle_failures(race: RaceStart, n: int) -> bool:
    """Seeds a round should have made but did not: retried once (True: a retry is due), then
    the variant ``failed`` (a baseline's failure fails every open variant compared with it)."""
    retry = False
    needed = {v.baseline for v in race.variants if v.outcome == Outcome.OPEN and v.baseline}
    for v in race.variants:
        if v.outcome != Outcome.OPEN or (v.is_baseline and v.hash not in needed):
            continue
        missing = {s for s in range(n) if s not in v.seeds}
        if missing & v.retried:
            fail(race, v, f"seed {min(missing & v.retried)} failed twice")
        elif missing:
            v.retried |= missing
            retry = True
    return retry


def fail(race: RaceStart, variant: Variant, why: str) -> None:
    print(f"racing: {variant.name} failed: {why}", file=sys.stderr)
    race.failed = True
    doomed = [variant] + [v for v in race.variants if v.baseline == variant.hash]
    for v in doomed:
        if v.outcome == Outcome.OPEN:
            v.outcome, v.text = Outcome.FAILED, f"{Outcome.FAILED} ({why})"


def decide(race: RaceStart, r: int) -> None:
    """Test every open variant whose seeds 0…n_r−1 are all in (and its baseline's) at α_r."""
    import numpy as np

    settings, n = race.settings, race.settings.seeds(r)
    family = [v for v in race.variants if not v.is_baseline]
    by_hash = {v.hash: v for v in race.variants}
    values = np.full((len(family), n), np.nan)
    base = np.full((len(family), n), np.nan)
    testable = np.zeros(len(family), bool)
    for i, v in enumerate(family):
        b = by_hash[v.baseline]
        complete = all(s in v.seeds and s in b.seeds for s in range(n))
        if v.outcome == Outcome.OPEN and v.tested < r and complete:
            values[i] = [v.seeds[s] for s in range(n)]
            base[i] = [b.seeds[s] for s in range(n)]
            testable[i] = True
            v.tested = r
    target = float(settings.target_delta)
    tested = race_round(values, base, testable, settings.round_alpha(r), target)
    higher = bool(schema.spec(race.metric).higher_is_better)
    for i in np.flatnonzero(testable):
        v, rejected, equivalent = family[i], bool(tested.rejected[i]), bool(tested.equivalent[i])
        word = outcome(float(tested.delta[i]), rejected, equivalent, higher)
        if word == Outcome.OPEN and r == settings.rounds:
            word = Outcome.UNDECIDED
        if word != Outcome.OPEN:
            v.outcome, v.text, v.round = word, decision_text(word, rejected, equivalent), r
        v.delta = float(tested.delta[i])
        race.rows.append(
            {
                "round": r,
                "variant": v.name,
                "n": n,
                "delta": v.delta,
                "p": float(tested.p[i]),
                "threshold": float(tested.threshold[i]),
                "decision": v.text or Outcome.OPEN.value,
            }
        )


def write_rounds(race: RaceStart) -> None:
    """The round-by-round table, rewritten on the parent after every round (a killed sweep
    keeps the rounds it finished)."""
    import pandas as pd

    from dat_exp.tracking.store import client_for

    if race.parent is None:
        return
    frame = pd.DataFrame(race.rows, columns=list(ROUND_COLUMNS))
    client = client_for(race.tracking)
    client.log_text(race.parent, frame.to_csv(index=False), ROUNDS_ARTIFACT)


def finish(race: RaceStart, jobs: int) -> None:
    """Open variants become ``undecided at budget``; decisions go on the parent (a tag each and
    the description's racing section) and into the end-of-sweep table."""
    from dat_exp.sweep import STATE
    from dat_exp.tracking.notes import set_sweep_note
    from dat_exp.tracking.store import client_for

    family = [v for v in race.variants if not v.is_baseline]
    for v in family:
        if v.outcome == Outcome.OPEN:
            v.outcome, v.text = Outcome.UNDECIDED, Outcome.UNDECIDED.value
    STATE.decisions = {v.name: v.text for v in family}
    full = len(race.variants) * race.settings.seeds_max
    STATE.race_lines = race_lines(race, jobs, full)
    if race.parent is None:
        return
    client = client_for(race.tracking)
    for v in family:
        record = json.dumps(decision_record(race, v))
        client.set_tag(race.parent, Tag.RACING_DECISION + v.hash, record)
    set_sweep_note(client, race.parent, "racing", race_note(race, jobs, full))


def stopped_early(race: RaceStart, v: Variant) -> bool:
    decided = v.outcome in (Outcome.BETTER, Outcome.WORSE, Outcome.EQUIVALENT)
    return decided and v.round < race.settings.rounds


def decision_record(race: RaceStart, v: Variant) -> dict[str, Any]:
    return {
        "variant": v.name,
        "decision": v.text,
        "round": v.round,
        "n": max(v.seeds, default=-1) + 1,
        "delta": v.delta,
        "stopped_early": stopped_early(race, v),
    }


def race_lines(race: RaceStart, jobs: int, full: int) -> list[str]:
    s = race.settings
    return [
        f"racing on {race.metric} (target_delta {s.target_delta:g}, α {s.alpha:g}, seeds "
        f"{s.seeds_min}…{s.seeds_max} step {s.seeds_step}): {jobs} jobs run of {full} for the "
        f"full grid at seeds_max={s.seeds_max}",
        *(f"  {v.name}: {v.text}" + _early(race, v) for v in race.variants if not v.is_baseline),
    ]


def _early(race: RaceStart, v: Variant) -> str:
    if not stopped_early(race, v):
        return ""
    return f" at round {v.round}, Δ {v.delta:+.4f}{_early_mark(race, v)}"


def _early_mark(race: RaceStart, v: Variant) -> str:
    return f" ({STOPPED_EARLY[v.outcome != Outcome.EQUIVALENT]})" if stopped_early(race, v) else ""


def race_note(race: RaceStart, jobs: int, full: int) -> str:
    """The description's racing section: the rule's outcome per variant, in Markdown."""
    import pandas as pd

    from dat_exp.tracking.notes import markdown_table

    frame = pd.DataFrame(
        [
            {
                "variant": v.name,
                "decision": v.text,
                "round": v.round or "-",
                "seeds": max(v.seeds, default=-1) + 1,
                "Δ": f"{v.delta:+.4f}" + _early_mark(race, v),
            }
            for v in race.variants
            if not v.is_baseline
        ]
    )
    head = race_lines(race, jobs, full)[0]
    return f"{head}. Round by round: artifact {ROUNDS_ARTIFACT}.\n\n{markdown_table(frame)}"

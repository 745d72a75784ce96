"""Each variant against its baseline: the ``placement=none`` twin with exactly the same settings
(its variant hash, from the run's ``dat_exp.baseline_hash`` tag or else its logged
``config.yaml``), looked up in the whole experiment (a sweep of DAT placements has none of its
own), of the same code version. All comparisons of one metric form one Bonferroni family."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dat_exp.analysis.stats import (
    ALPHA,
    NAN,
    Verdict,
    WelchTest,
    decide_family,
    deterministic,
    paired_by_seed,
    paired_p_value,
    seed_values,
    stochastic,
    welch_test,
)
from dat_exp.config import baseline_hash
from dat_exp.tracking import schema

COLUMNS = [
    "baseline_variant",
    "baseline_hash",
    "baseline_n",
    "baseline_match",
    "baseline_code_version",
    "delta",
    "delta_low",
    "delta_high",
    "ratio",
    "p",
    "p_adjusted",
    "family_size",
    "p_paired",
    "paired_n",
    "one_device",
    "verdict",
]
ConfigOf = Callable[[str], dict[str, Any] | None]  # run id -> its logged config.yaml, or None
NOT_RECORDED = "not recorded"  # the code version of runs that logged none


class Match:
    """How a baseline was found (the table shows it)."""

    ITSELF = "itself"
    TAG = "tag"
    CONFIG = "config.yaml"


@dataclass(frozen=True)
class Baseline:
    """The runs a variant is compared with; ``runs`` empty and ``reason`` set when there are
    none."""

    hash: str | None
    match: str | None  # Match.*, None without a baseline
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    code_version: str | None = None
    reason: str = ""

    @property
    def found(self) -> bool:
        return not self.runs.empty


def _versions(runs: pd.DataFrame) -> pd.Series:
    column = runs["code_version"] if "code_version" in runs else pd.Series(None, runs.index)
    return column.fillna(NOT_RECORDED).astype(str)


def _wanted(mine: pd.DataFrame, config_of: ConfigOf) -> tuple[str | None, str]:
    """``(the twin's variant hash, how it was known)``, or ``(None, why not)``: the newest run's
    tag, else its logged config."""
    if "baseline_hash" in mine:
        tagged = mine["baseline_hash"].dropna()
        if not tagged.empty:
            return str(tagged.iloc[-1]), Match.TAG
    run_id = mine["run_id"].iloc[-1]
    try:
        cfg = config_of(run_id)
        if cfg is None:
            return None, f"no {Match.CONFIG} and no baseline tag on run {run_id}"
        return baseline_hash(cfg), Match.CONFIG
    except Exception as err:  # any failure to read or hash a logged config: named, not raised
        return None, f"unreadable {Match.CONFIG} of run {run_id}: {type(err).__name__}: {err}"


def find_baseline(
    mine: pd.DataFrame, pool: pd.DataFrame, config_of: ConfigOf, pooled: bool = False
) -> Baseline:
    """The baseline of one variant (``mine``: its runs, in start order) among ``pool`` (the
    experiment's FINISHED runs, every code version): its twin's runs of the variant's code
    version, or of every version when ``pooled``."""
    own = str(mine["variant_hash"].iloc[0])
    if (mine["placement"] == "none").all():
        return Baseline(own, Match.ITSELF, mine, ",".join(sorted(set(_versions(mine)))))
    wanted, how = _wanted(mine, config_of)
    if wanted is None:
        return Baseline(None, None, reason=how)
    twin = pool[pool["variant_hash"] == wanted]
    if twin.empty:
        return Baseline(wanted, how, reason=f"no twin: no finished run of variant hash {wanted}")
    if pooled:
        return Baseline(wanted, how, twin, ",".join(sorted(set(_versions(twin)))))
    version = _versions(mine).iloc[-1]
    same = twin[_versions(twin) == version]
    if same.empty:
        has = ", ".join(sorted(set(_versions(twin))))
        reason = f"no shared code version: variant {version}, twin has {has}"
        return Baseline(wanted, how, reason=reason)
    return Baseline(wanted, how, same, version)


def find_baselines(
    runs: pd.DataFrame,
    pool: pd.DataFrame,
    variants: pd.DataFrame,
    config_of: ConfigOf,
    pooled: bool = False,
) -> list[Baseline]:
    """``find_baseline`` for each row of ``variants`` (from ``aggregate``), in order."""
    return [
        find_baseline(runs[runs["variant_hash"] == vh], pool, config_of, pooled)
        for vh in variants["variant_hash"]
    ]


# -- one comparison ------------------------------------------------------------------------------
def one_device(*frames: pd.DataFrame) -> bool:
    """Every run of the comparison ran on the same (known) device."""
    names = [f["device_name"] if "device_name" in f else pd.Series(None, f.index) for f in frames]
    both = pd.concat([n for n in names if not n.empty])
    return bool(both.notna().all() and both.nunique() == 1)


def _no_spread(a: pd.Series, b: pd.Series, metric: str, test: WelchTest) -> bool:
    """Zero spread: of the whole difference, or, for a metric the seed should change, of
    either side (then the seed did not reach training, whatever the other side did)."""
    if test.se == 0:
        return True
    return stochastic(metric) and min(a.std(ddof=1), b.std(ddof=1)) == 0


def _row(
    mine: pd.DataFrame, baseline: Baseline, metric: str
) -> tuple[dict[str, Any], WelchTest | None]:
    """The comparison's columns, and its test when it joins the family."""
    found: dict[str, Any] = {
        "baseline_variant": None,
        "baseline_hash": baseline.hash,
        "baseline_n": 0,
        "baseline_match": baseline.match,
        "baseline_code_version": baseline.code_version,
        "one_device": one_device(mine, baseline.runs),
    }
    if not baseline.found:
        return {**found, "verdict": f"{Verdict.NO_BASELINE} ({baseline.reason})"}, None
    a, b = seed_values(mine, metric), seed_values(baseline.runs, metric)
    found.update(baseline_variant=baseline.runs["variant"].iloc[0], baseline_n=len(b))
    if baseline.match == Match.ITSELF:
        return {**found, "verdict": Verdict.BASELINE}, None
    test = welch_test(a, b)
    found["delta"] = test.delta
    if deterministic(metric):  # no test: exact
        return {**found, "ratio": a.mean() / b.mean() if b.mean() else NAN, "verdict": ""}, None
    pa, pb = paired_by_seed(mine, baseline.runs, metric)
    found.update(paired_n=len(pa), p_paired=paired_p_value(pa, pb))
    if schema.spec(metric).host_dependent and not found["one_device"]:
        return {**found, "verdict": ""}, None  # Δ of different machines: no verdict
    if min(len(a), len(b)) < 2:
        return {**found, "verdict": Verdict.SINGLE_SEED}, None
    if _no_spread(a, b, metric, test):
        return {**found, "verdict": Verdict.NO_SPREAD}, None
    return found, test


def compare(
    runs: pd.DataFrame,
    pool: pd.DataFrame,
    variants: pd.DataFrame,
    config_of: ConfigOf,
    metric: str = schema.HEADLINE,
    alpha: float = ALPHA,
    target_delta: float | None = None,
    pooled: bool = False,
    baselines: Sequence[Baseline] | None = None,
) -> pd.DataFrame:
    """``variants`` (from ``aggregate``) with, per variant: its baseline (``baselines``, found
    here when not given), Δ ``metric`` to it with its simultaneous 1 - alpha/m interval, raw and
    Bonferroni-adjusted p, the family's size m, the paired t-test over shared seeds, a verdict.
    Deterministic metrics get Δ and ratio and no verdict word."""
    if baselines is None:
        baselines = find_baselines(runs, pool, variants, config_of, pooled)
    rows, tests = [], {}
    for i, (vh, baseline) in enumerate(zip(variants["variant_hash"], baselines, strict=True)):
        row, test = _row(runs[runs["variant_hash"] == vh], baseline, metric)
        rows.append(row)
        if test is not None:
            tests[i] = test
    better_up = schema.spec(metric).higher_is_better is not False
    m, decisions = decide_family(list(tests.values()), alpha, target_delta, better_up)
    for i, decision in zip(tests, decisions, strict=True):
        rows[i].update(
            delta_low=decision.low,
            delta_high=decision.high,
            p=decision.p,
            p_adjusted=decision.p_adjusted,
            verdict=decision.verdict,
        )
    found = pd.DataFrame(rows, columns=COLUMNS).assign(family_size=m)
    found["verdict"] = found["verdict"].map(str)
    return pd.concat([variants.reset_index(drop=True), found], axis=1)

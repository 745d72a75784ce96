"""Statistics over seeds: a variant's replicates are its distinct seeds (runs of one seed are
averaged first). Mean, std and the Student-t interval of a mean; Welch's test of a difference of
means; one Bonferroni family of such tests with simultaneous intervals and verdicts; the paired
t-test; and per-variant aggregation of a runs table.

The core (``welch``, ``decide``) works on numpy arrays along the last axis, so a simulation of
thousands of families runs through the same code as a report's one family."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
from scipy import stats

from dat_exp.tracking import schema

LEVEL = 0.95
ALPHA = 0.05  # family-wise error rate of a report's verdicts
# every final metric the statistics handle: the registry's, and the held-out split's
METRICS = (*schema.METRICS, *(schema.held_out(m) for m in schema.HELD_OUT))
QUALITY = schema.QUALITY  # what a seed should change
# Columns that describe a variant (equal across its seeds); dat.* columns are added to these.
VARIANT_COLUMNS = ("variant", "placement", "levels", "model", "data", "train", "device_type")
NAN = float("nan")


class Verdict(StrEnum):
    """Every verdict word a comparison can get (the one home of these words)."""

    BETTER = "better"
    WORSE = "worse"
    EQUIVALENT = "equivalent"
    NOT_DISTINGUISHABLE = "not distinguishable"
    SINGLE_SEED = "single seed"
    NO_SPREAD = "no spread"
    NO_BASELINE = "no baseline"
    BASELINE = "baseline"


MEANINGS = {
    Verdict.BETTER: "the simultaneous interval of Δ excludes 0 on the good side (p < α/m)",
    Verdict.WORSE: "the simultaneous interval of Δ excludes 0 on the bad side (p < α/m)",
    Verdict.EQUIVALENT: "not better or worse, and the 1 − 2α/m interval of Δ lies inside "
    "±target delta (TOST; only with --target-delta)",
    Verdict.NOT_DISTINGUISHABLE: "the simultaneous interval of Δ contains 0",
    Verdict.SINGLE_SEED: "a side has fewer than 2 distinct seeds with a value: no test",
    Verdict.NO_SPREAD: "a side's seeds gave identical values (for mAP, precision, recall: the "
    "seed is not reaching training, or training is deterministic): zero spread is no evidence",
    Verdict.NO_BASELINE: "no placement=none twin with the same settings and code version (the "
    "reason follows)",
    Verdict.BASELINE: "the variant is a baseline (placement=none) itself",
}


def stochastic(metric: str) -> bool:
    """A metric the seed should change on one machine (mAP, precision, recall, their test/
    versions): zero spread of it is never evidence."""
    return metric.removeprefix(schema.TEST) in QUALITY


def deterministic(metric: str) -> bool:
    """A metric the seed does not change (GFLOPs, params): compared exactly, without a test."""
    return not schema.spec(metric).over_seeds


@dataclass(frozen=True)
class Summary:
    """n values: mean, sample std (ddof 1) and the t interval of the mean (NaN when n < 2)."""

    n: int
    mean: float
    std: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """``a - b`` of two means with Welch's interval (NaN when a side has fewer than 2 values)."""

    delta: float
    low: float
    high: float
    df: float

    def contains_zero(self) -> bool:
        return bool(self.low <= 0 <= self.high)


def _values(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    return x[np.isfinite(x)]


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(stats.t.ppf(0.5 + level / 2, df))


def summarise(values: Iterable[float], level: float = LEVEL) -> Summary:
    x = _values(values)
    n = len(x)
    if n == 0:
        return Summary(0, NAN, NAN, NAN, NAN)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, NAN, NAN, NAN)
    std = float(x.std(ddof=1))
    half = t_quantile(n - 1, level) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


# -- Welch's test: the vectorised core and its one-comparison face ------------------------------
def welch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(delta, se, df, p)`` of ``mean(a) - mean(b)`` along the last axis (the other axes
    broadcast): Welch-Satterthwaite df, two-sided p. se, df and p are NaN where a side has fewer
    than 2 values; p (and df) NaN where se is 0."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = a.shape[-1], b.shape[-1]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # means and variances of empty sides
        delta = a.mean(axis=-1) - b.mean(axis=-1)
        va = a.var(axis=-1, ddof=1) / na if na >= 2 else np.full(np.shape(delta), NAN)
        vb = b.var(axis=-1, ddof=1) / nb if nb >= 2 else np.full(np.shape(delta), NAN)
        va, vb = np.broadcast_arrays(va, vb)
        se2 = va + vb
        se = np.sqrt(se2)
        spread = se2 > 0
        df = np.where(spread, se2**2 / (va**2 / (na - 1) + vb**2 / (nb - 1)), NAN)
        p = np.where(spread, 2 * stats.t.sf(np.abs(delta) / se, df), NAN)
    return delta, se, df, p


@dataclass(frozen=True)
class WelchTest:
    """Welch's test of ``mean(a) - mean(b)`` over per-seed values. ``delta`` is set whenever both
    sides have a value; ``se``, ``df``, ``p`` are NaN when a side has fewer than 2; ``p`` is NaN
    when ``se`` is 0 (no spread at all)."""

    delta: float
    se: float
    df: float
    p: float


def welch_test(a: Iterable[float], b: Iterable[float]) -> WelchTest:
    """Welch's test of two sets of per-seed values (non-finite values left out)."""
    delta, se, df, p = welch(_values(a), _values(b))
    return WelchTest(float(delta), float(se), float(df), float(p))


def bounds(
    delta: np.ndarray, se: np.ndarray, df: np.ndarray, level: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided ``level`` interval ``delta ± t(df) se``, elementwise."""
    with np.errstate(all="ignore"):
        half = stats.t.ppf(0.5 + np.asarray(level) / 2, df) * se
    return delta - half, delta + half


def interval(test: WelchTest, level: float = LEVEL) -> tuple[float, float]:
    """The two-sided ``level`` interval of ``test.delta`` (Welch df); NaN without a test."""
    low, high = bounds(np.float64(test.delta), test.se, test.df, level)
    return float(low), float(high)


def welch_interval(a: Iterable[float], b: Iterable[float], level: float = LEVEL) -> Difference:
    """Interval of ``mean(a) - mean(b)`` without assuming equal variances; two sides without any
    spread give the point itself."""
    test = welch_test(a, b)
    if test.se == 0:
        return Difference(test.delta, test.delta, test.delta, math.inf)
    return Difference(test.delta, *interval(test, level), test.df)


# -- one family of tests: Bonferroni, simultaneous intervals, verdicts --------------------------
@dataclass(frozen=True)
class FamilyArrays:
    """``decide``'s answer, elementwise over the tests (the last axis is the family)."""

    m: np.ndarray  # the family's size (tests with a p-value), one per family
    low: np.ndarray  # the simultaneous 1 - alpha/m interval of delta
    high: np.ndarray
    p_adjusted: np.ndarray  # min(1, m p)
    significant: np.ndarray  # p < alpha/m: the interval excludes 0
    equivalent: np.ndarray  # not significant, the 1 - 2 alpha/m interval inside ±target


def decide(
    delta: np.ndarray,
    se: np.ndarray,
    df: np.ndarray,
    p: np.ndarray,
    alpha: float = ALPHA,
    target_delta: float | None = None,
) -> FamilyArrays:
    """Bonferroni over the last axis: the tests with a finite p form the family (size m); each
    is significant when p < alpha/m, which is when its 1 - alpha/m interval excludes 0."""
    in_family = np.isfinite(p)
    m = in_family.sum(axis=-1)
    share = alpha / np.maximum(m, 1)[..., None]
    low, high = bounds(delta, se, df, 1 - share)
    with np.errstate(invalid="ignore"):
        significant = in_family & (p < share)
    equivalent = np.zeros_like(significant)
    if target_delta is not None:
        tost_low, tost_high = bounds(delta, se, df, 1 - 2 * share)
        inside = (tost_low > -target_delta) & (tost_high < target_delta)
        equivalent = in_family & ~significant & inside
    nan = np.where(in_family, 0.0, NAN)  # NaN outside the family
    return FamilyArrays(
        m=m,
        low=low + nan,
        high=high + nan,
        p_adjusted=np.minimum(1.0, m[..., None] * p),
        significant=significant,
        equivalent=equivalent,
    )


@dataclass(frozen=True)
class Decision:
    """One comparison of a family: Δ, its simultaneous interval, raw and adjusted p, verdict."""

    delta: float
    low: float
    high: float
    p: float
    p_adjusted: float
    verdict: Verdict


def decide_family(
    tests: Sequence[WelchTest],
    alpha: float = ALPHA,
    target_delta: float | None = None,
    higher_is_better: bool = True,
) -> tuple[int, list[Decision]]:
    """``(m, one decision per test)`` for one report's comparisons of one metric. Tests with a
    NaN p are outside the family: ``single seed`` (a side has < 2 values) or ``no spread`` (se
    0) here; a caller with more to say (zero spread on one side) decides those itself."""
    if not tests:
        return 0, []
    columns = (np.array([getattr(t, f) for t in tests]) for f in ("delta", "se", "df", "p"))
    delta, se, df, p = columns
    fam = decide(delta, se, df, p, alpha, target_delta)
    decisions = [
        Decision(
            float(delta[i]),
            float(fam.low[i]),
            float(fam.high[i]),
            float(p[i]),
            float(fam.p_adjusted[i]),
            _word(tests[i], bool(fam.significant[i]), bool(fam.equivalent[i]), higher_is_better),
        )
        for i in range(len(tests))
    ]
    return int(np.isfinite(p).sum()), decisions


def _word(test: WelchTest, significant: bool, equivalent: bool, higher_is_better: bool) -> Verdict:
    if not math.isfinite(test.p):
        return Verdict.SINGLE_SEED if not math.isfinite(test.se) else Verdict.NO_SPREAD
    if significant:
        good = (test.delta > 0) == higher_is_better
        return Verdict.BETTER if good else Verdict.WORSE
    return Verdict.EQUIVALENT if equivalent else Verdict.NOT_DISTINGUISHABLE


# -- paired test -------------------------------------------------------------------------------
def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of the paired t-test of ``a`` against ``b`` (pairs in order); NaN with fewer
    than 2 pairs or when every difference is zero."""
    if len(a) < 2 or len(a) != len(b):
        return NAN
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(a, b).pvalue)


def seed_values(runs: pd.DataFrame, metric: str) -> pd.Series:
    """One value of ``metric`` per distinct seed (its runs' finite values averaged), by seed."""
    if metric not in runs or runs.empty:
        return pd.Series(dtype=float)
    values = pd.to_numeric(runs[metric], errors="coerce").astype(float)
    finite = np.isfinite(values) & runs["seed"].notna()
    return values[finite].groupby(runs.loc[finite, "seed"]).mean()


def paired_by_seed(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> tuple[list, list]:
    """Values of ``metric`` for the seeds both run sets have (runs of one seed averaged)."""
    ma, mb = seed_values(a, metric), seed_values(b, metric)
    seeds = sorted(set(ma.index) & set(mb.index))
    return [float(ma[s]) for s in seeds], [float(mb[s]) for s in seeds]


# -- per variant ---------------------------------------------------------------------------------
def variant_columns(runs: pd.DataFrame) -> list[str]:
    dat = [c for c in runs.columns if c.startswith("dat.")]
    return [c for c in VARIANT_COLUMNS if c in runs] + dat


def _seeds(runs: pd.DataFrame) -> list:
    return sorted(set(runs["seed"].dropna()))


def _reused(runs: pd.DataFrame) -> str:
    """The seeds whose runs were reused from an earlier sweep: ``seed 0`` / ``seeds 0, 2``."""
    if "reused" not in runs:
        return ""
    seeds = _seeds(runs[runs["reused"].fillna(False).astype(bool)])
    if not seeds:
        return ""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _device_names(runs: pd.DataFrame) -> str:
    names = runs["device_name"].dropna().unique() if "device_name" in runs else []
    return ",".join(sorted(map(str, names)))


def aggregate(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per variant (``variant_hash``, in order of first run): its config; ``n`` (distinct
    seeds), ``repeats`` (runs beyond one per seed), ``seeds``, ``device_names``, ``reused``; and
    for each metric ``<m>_n`` (distinct seeds with a finite value), ``<m>_mean``, ``<m>_std``,
    ``<m>_low``, ``<m>_high`` (over the seeds' means; the Student-t 95% interval of the mean)."""
    columns = variant_columns(runs)
    rows = []
    for vh, group in runs.groupby("variant_hash", sort=False):
        seeds = _seeds(group)
        row = {"variant_hash": vh, **{c: group[c].iloc[0] for c in columns}}
        row.update(
            n=len(seeds),
            repeats=len(group) - len(seeds),
            seeds=",".join(map(str, seeds)),
            device_names=_device_names(group),
            reused=_reused(group),
        )
        for metric in (m for m in metrics if m in runs):
            s = summarise(seed_values(group, metric))
            row.update(
                {
                    f"{metric}_n": s.n,
                    f"{metric}_mean": s.mean,
                    f"{metric}_std": s.std,
                    f"{metric}_low": s.low,
                    f"{metric}_high": s.high,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def identical_seed_warnings(runs: pd.DataFrame, metrics: Sequence[str] = QUALITY) -> list[str]:
    """One line per variant whose runs with different seeds have identical metrics: then the
    seed changed nothing, and every spread and interval computed from those runs is void."""
    metrics = [m for m in metrics if m in runs]
    if not metrics:
        return []
    lines = []
    for _, group in runs.groupby("variant_hash", sort=False):
        for values, same in group.groupby(metrics, dropna=False):
            seeds = _seeds(same)
            if len(seeds) > 1:
                shown = ", ".join(f"{m} = {v:.4f}" for m, v in zip(metrics, values, strict=True))
                lines.append(
                    f"WARNING: variant {same['variant'].iloc[0]}: runs with seeds "
                    f"{', '.join(map(str, seeds))} have identical metrics ({shown}); the seed "
                    "changed nothing, so their spread and intervals mean nothing"
                )
    return lines


def repeated_seed_notes(runs: pd.DataFrame) -> list[str]:
    """One line per variant with several runs of one seed: they are repeats, averaged into one
    value, never counted as more replicates (n counts distinct seeds)."""
    lines = []
    for _, group in runs.groupby("variant_hash", sort=False):
        counts = group["seed"].value_counts()
        repeated = counts[counts > 1].sort_index()
        if not repeated.empty:
            shown = ", ".join(f"seed {s}: {c} runs" for s, c in repeated.items())
            lines.append(
                f"NOTE: variant {group['variant'].iloc[0]}: several runs of one seed ({shown}) "
                "are repeats: averaged per seed, counted once in n"
            )
    return lines

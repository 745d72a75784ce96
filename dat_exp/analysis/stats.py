"""Statistics over seeds: mean, std, the Student-t interval of a mean, Welch's interval of a
difference of means, the paired t-test; and per-variant aggregation of a runs table."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from dat_exp.tracking import schema

LEVEL = 0.95
METRICS = tuple(schema.METRICS)  # every final metric the statistics handle
QUALITY = schema.QUALITY  # what a seed should change
# Columns that describe a variant (equal across its seeds); dat.* columns are added to these.
VARIANT_COLUMNS = ("variant", "placement", "levels", "model", "data", "train", "device_type")
NAN = float("nan")


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
    return x[~np.isnan(x)]


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


def welch_interval(a: Iterable[float], b: Iterable[float], level: float = LEVEL) -> Difference:
    """Interval of ``mean(a) - mean(b)`` without assuming equal variances (Welch-Satterthwaite
    degrees of freedom). Two sides without any spread give the point itself."""
    a, b = _values(a), _values(b)
    if len(a) == 0 or len(b) == 0:
        return Difference(NAN, NAN, NAN, NAN)
    delta = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(delta, NAN, NAN, NAN)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se2 = float(va + vb)
    if se2 == 0:
        return Difference(delta, delta, delta, math.inf)
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(df, level) * math.sqrt(se2)
    return Difference(delta, delta - half, delta + half, float(df))


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of the paired t-test of ``a`` against ``b`` (pairs in order); NaN with fewer
    than 2 pairs or when every difference is zero."""
    if len(a) < 2 or len(a) != len(b):
        return NAN
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(a, b).pvalue)


def paired_by_seed(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> tuple[list, list]:
    """Values of ``metric`` for the seeds both run sets have (runs of one seed averaged)."""
    ma = a.groupby("seed")[metric].mean().dropna()
    mb = b.groupby("seed")[metric].mean().dropna()
    seeds = sorted(set(ma.index) & set(mb.index))
    return [float(ma[s]) for s in seeds], [float(mb[s]) for s in seeds]


# -- per variant ---------------------------------------------------------------------------------
def variant_columns(runs: pd.DataFrame) -> list[str]:
    dat = [c for c in runs.columns if c.startswith("dat.")]
    return [c for c in VARIANT_COLUMNS if c in runs] + dat


def aggregate(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per variant (``variant_hash``, in order of first run): its config, ``n``,
    ``seeds``, and for each metric ``<m>_n``, ``<m>_mean``, ``<m>_std``, ``<m>_low``,
    ``<m>_high`` (the Student-t 95% interval of the mean)."""
    columns = variant_columns(runs)
    rows = []
    for vh, group in runs.groupby("variant_hash", sort=False):
        row = {"variant_hash": vh, **{c: group[c].iloc[0] for c in columns}}
        row.update(n=len(group), seeds=",".join(str(s) for s in sorted(group["seed"].dropna())))
        for metric in (m for m in metrics if m in runs):
            s = summarise(group[metric])
            row.update(
                {
                    f"{metric}_n": s.n,  # runs that logged it
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
    lines = []
    for _, group in runs.groupby("variant_hash", sort=False):
        for values, same in group.groupby(metrics, dropna=False):
            seeds = sorted(set(same["seed"].dropna()))
            if len(seeds) > 1:
                shown = ", ".join(f"{m} = {v:.4f}" for m, v in zip(metrics, values, strict=True))
                lines.append(
                    f"WARNING: variant {same['variant'].iloc[0]}: runs with seeds "
                    f"{', '.join(map(str, seeds))} have identical metrics ({shown}); the seed "
                    "changed nothing, so their spread and intervals mean nothing"
                )
    return lines

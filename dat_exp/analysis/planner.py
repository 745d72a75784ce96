"""Seed planner: what can the current seed counts detect, and how many seeds would a given
difference need?

A verdict compares a variant's metric over seeds with its baseline's by a two-sided Welch
t-test at α/m (Bonferroni over the family's m comparisons). Its power at a few seeds is not the
textbook formula's: with n seeds a side, Welch's degrees of freedom are random and below
2n - 2, so the Student-t power with df = 2n - 2 overstates it. Here the power is that of the
test itself, simulated: standard-normal seeds on both sides (the within-variant SD σ as unit),
one side shifted by the true difference. σ is the df-weighted pooled within-variant SD.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import stats

ALPHA = 0.05  # family-wise level, divided by m per comparison (Bonferroni)
POWER = 0.8
DRAWS = 20_000  # Monte-Carlo SE of a power near 0.8: sqrt(0.8 * 0.2 / DRAWS) = 0.003
SEED = 0  # fixed: the same seed counts give the same answer in every report
MAX_EFFECT = 20.0  # in σ: beyond this a comparison is called undetectable
TOLERANCE = 0.01  # in σ: bisection stops when the bracket is this narrow
CAP = 30  # the most seeds per side seeds_needed looks at
NO_SPREAD = "no spread known yet"


# -- spread --------------------------------------------------------------------------------------
def pooled_sd(groups: Iterable[Sequence[float]]) -> tuple[float, int]:
    """The df-weighted pooled within-group SD, sqrt(Σ (n_i - 1) s_i² / Σ (n_i - 1)), and its
    df = Σ (n_i - 1). NaN values are dropped; a group with fewer than 2 values has no spread to
    give. ``(nan, 0)`` when no group has 2 values."""
    squares, df = 0.0, 0
    for group in groups:
        x = _finite(group)
        if len(x) >= 2:
            squares += float(((x - x.mean()) ** 2).sum())  # (n_i - 1) s_i²
            df += len(x) - 1
    return (math.sqrt(squares / df), df) if df else (math.nan, 0)


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    return x[~np.isnan(x)]


# -- the test's power ----------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _null_statistics(
    n_a: int, n_b: int, draws: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch's pieces for ``draws`` samples of ``n_a`` and ``n_b`` standard normals: the
    difference of means, its standard error and the Welch-Satterthwaite df. Shifting side a by
    an effect moves only the difference (common random numbers), so these are drawn once."""
    rng = np.random.default_rng([seed, n_a, n_b])
    a = rng.standard_normal((draws, n_a))
    b = rng.standard_normal((draws, n_b))
    va, vb = a.var(axis=1, ddof=1) / n_a, b.var(axis=1, ddof=1) / n_b
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return _frozen(a.mean(axis=1) - b.mean(axis=1)), _frozen(se), _frozen(df)


@lru_cache(maxsize=256)
def _thresholds(n_a: int, n_b: int, alpha: float, draws: int, seed: int) -> np.ndarray:
    """Per draw, the |difference| above which Welch's two-sided p < ``alpha``: p < alpha is
    |t| > t.isf(alpha / 2, df), so the t quantile is computed once per alpha, not per effect."""
    _, se, df = _null_statistics(n_a, n_b, draws, seed)
    return _frozen(stats.t.isf(alpha / 2, df) * se)


def _frozen(x: np.ndarray) -> np.ndarray:
    x.setflags(write=False)  # cached: shared by every later call
    return x


def welch_power(
    effect: float, n_a: int, n_b: int, alpha: float, draws: int = DRAWS, seed: int = SEED
) -> float:
    """The probability that the two-sided Welch test at level ``alpha`` (already divided by m)
    rejects when the true difference is ``effect`` σ (both sides normal with SD σ), simulated.
    The same draws serve every effect (common random numbers), so the estimate is reproducible
    and rises with the effect, but for dips under 0.001 at small effects, where the true curve
    is flat (power is even in the effect) and the draws' noise shows; bisection at 80% never
    meets them."""
    if min(n_a, n_b) < 2:
        raise ValueError(f"Welch's test needs 2 values a side, not {n_a} and {n_b}")
    difference, _, _ = _null_statistics(n_a, n_b, draws, seed)
    threshold = _thresholds(n_a, n_b, float(alpha), draws, seed)
    return float(np.mean(np.abs(difference + effect) > threshold))


def detectable_effect(
    n_a: int, n_b: int, alpha: float, power: float = POWER, max_effect: float = MAX_EFFECT
) -> float | None:
    """The smallest effect (in σ, to ``TOLERANCE``) that the test detects with ``power``; None
    when even ``max_effect`` does not reach it, or a side has fewer than 2 seeds."""
    if min(n_a, n_b) < 2 or welch_power(max_effect, n_a, n_b, alpha) < power:
        return None
    low, high = 0.0, max_effect  # invariant: power(low) < power <= power(high)
    while high - low > TOLERANCE:
        middle = (low + high) / 2
        if welch_power(middle, n_a, n_b, alpha) >= power:
            high = middle
        else:
            low = middle
    return high  # an effect known to reach the power


def seeds_needed(effect: float, alpha: float, power: float = POWER, cap: int = CAP) -> int | None:
    """The fewest seeds per side (at least 2, equal on both) at which the test detects ``effect``
    σ with ``power``; None when more than ``cap`` would be needed."""
    for n in range(2, cap + 1):
        if welch_power(effect, n, n, alpha) >= power:
            return n
    return None


# -- plan ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One comparison: its seeds a side and the smallest effect (σ) it detects (None: none)."""

    label: str
    n_variant: int
    n_baseline: int
    effect: float | None


@dataclass(frozen=True)
class Plan:
    """What a family of m comparisons can detect at its seed counts, and, for ``target_delta``
    (metric units), the seeds per side it would need (None: more than ``CAP``, or σ unknown)."""

    sigma: float  # NaN: no spread known yet
    df: int
    variants: int  # groups that gave σ a degree of freedom
    alpha: float  # family-wise; each comparison is tested at alpha / m
    m: int
    rows: tuple[Row, ...]
    target_delta: float | None = None
    seeds: int | None = None
    power: float = POWER
    metric: str = field(default="")

    @property
    def known(self) -> bool:
        return self.df > 0 and self.sigma > 0  # σ = 0: the seeds changed nothing

    def delta(self, row: Row) -> float | None:
        """The row's detectable difference in metric units (None: none, or σ unknown)."""
        return row.effect * self.sigma if row.effect is not None and self.known else None


def make_plan(
    comparisons: Iterable[tuple[str, int, int]],
    groups: Iterable[Sequence[float]] = (),
    alpha: float = ALPHA,
    target_delta: float | None = None,
    m: int | None = None,
    metric: str = "",
) -> Plan:
    """A plan for ``comparisons`` (label, seeds of the variant, seeds of its baseline), with σ
    pooled over ``groups`` (each variant's metric values over its seeds). ``m`` defaults to the
    number of comparisons."""
    comparisons = list(comparisons)
    groups = [_finite(g) for g in groups]
    sigma, df = pooled_sd(groups)
    m = m if m is not None else max(len(comparisons), 1)
    per_test = alpha / m
    rows = tuple(Row(label, a, b, detectable_effect(a, b, per_test)) for label, a, b in comparisons)
    seeds = None
    if target_delta is not None and df > 0 and sigma > 0:
        seeds = seeds_needed(abs(target_delta) / sigma, per_test)
    variants = sum(len(g) >= 2 for g in groups)
    return Plan(sigma, df, variants, alpha, m, rows, target_delta, seeds, metric=metric)


def plan_lines(plan: Plan) -> list[str]:
    """The plan as text, for a report and a dry run alike."""
    of = f" of {plan.metric}" if plan.metric else ""
    lines = [
        f"seed planner{of}: two-sided Welch at α/m = {plan.alpha:g}/{plan.m}, "
        f"{plan.power:.0%} power",
        _sigma_line(plan),
    ]
    lines += [_row_line(plan, row) for row in plan.rows]
    if plan.target_delta is not None:
        lines.append(_target_line(plan))
    return lines


def _sigma_line(plan: Plan) -> str:
    if plan.df > 0 and plan.sigma == 0:
        return f"σ = 0 over {plan.df} df: the seeds changed nothing, so {NO_SPREAD}"
    if not plan.known:
        return f"σ: {NO_SPREAD} (differences below are in units of σ)"
    variants = "variant" if plan.variants == 1 else "variants"
    return f"σ = {_number(plan.sigma)} (pooled over {plan.variants} {variants}, df = {plan.df})"


def _row_line(plan: Plan, row: Row) -> str:
    counts = f"{row.label}: {row.n_variant} vs {row.n_baseline} seeds"
    if row.effect is None:
        return f"{counts}: none: {_seeds(row)} cannot give a verdict in a family of {plan.m}"
    found = f"smallest Δ detected with {plan.power:.0%} power"
    delta = plan.delta(row)
    if delta is None:
        return f"{counts}: {found}: {row.effect:.1f}σ"
    return f"{counts}: {found}: {_number(delta)} ({row.effect:.1f}σ)"


def _seeds(row: Row) -> str:
    if row.n_variant == row.n_baseline:
        return f"{row.n_variant} seeds per side"
    return f"{row.n_variant} vs {row.n_baseline} seeds"


def _target_line(plan: Plan) -> str:
    head = f"for Δ = {plan.target_delta:g}"
    if not plan.known:
        return f"{head}: {NO_SPREAD}"
    if plan.seeds is None:
        return f"{head}: more than {CAP} seeds per side"
    return f"{head}: {plan.seeds} seeds per side"


def _number(x: float) -> str:
    """Two significant digits, without an exponent: 0.0051, 0.031, 12, 340."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"

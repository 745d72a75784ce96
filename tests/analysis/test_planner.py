"""The seed planner against hand computations, the noncentral t and the issue's claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dat_exp.analysis import planner
from dat_exp.analysis.planner import (
    CAP,
    NO_SPREAD,
    detectable_effect,
    make_plan,
    plan_lines,
    pooled_sd,
    seeds_needed,
    welch_power,
)

ALPHA = 0.05


def pooled_t_power(effect: float, n: int, alpha: float) -> float:
    """The textbook power: Student's t with df = 2n - 2, noncentrality effect / sqrt(2 / n)."""
    df, shift = 2 * n - 2, effect / math.sqrt(2 / n)
    critical = stats.t.isf(alpha / 2, df)
    return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))


# -- pooled_sd -----------------------------------------------------------------------------------
def test_pooled_sd_weights_by_df_and_drops_nan_and_single_values():
    # [1, 2, 3]: squares about the mean 2 sum to 2, df 2; [2, 4]: 2, df 1; [nan, 1, 3] is
    # [1, 3]: 2, df 1; [5] has no spread. sqrt((2 + 2 + 2) / (2 + 1 + 1)) = sqrt(1.5).
    sigma, df = pooled_sd([[1, 2, 3], [2, 4], [5], [math.nan, 1, 3]])
    assert df == 4
    assert sigma == pytest.approx(1.224744871391589, rel=1e-12)


def test_pooled_sd_is_not_the_mean_of_the_sds():
    # [0, 2]: s = sqrt(2), df 1; [0, 0, 0, 0, 0]: s = 0, df 4 -> sqrt(2 / 5), not sqrt(2) / 2
    sigma, df = pooled_sd([[0, 2], [0, 0, 0, 0, 0]])
    assert (sigma, df) == (pytest.approx(math.sqrt(0.4)), 5)


def test_pooled_sd_without_any_spread_is_nan():
    sigma, df = pooled_sd([[1.0], [math.nan, 2.0], []])
    assert math.isnan(sigma) and df == 0


# -- welch_power ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [10, 30])
def test_power_at_no_effect_is_the_level(n):
    # SE at 20,000 draws is 0.0015; the size at 10 seeds is 0.0484 (2,000,000 draws)
    assert welch_power(0.0, n, n, ALPHA) == pytest.approx(ALPHA, abs=0.006)


def test_welch_is_conservative_at_few_seeds():
    # equal true variances, few seeds: Welch's df is low, so it rejects a true null less often
    # than α (0.035 at 3 seeds, 0.044 at 5, at 2,000,000 draws)
    assert 0.03 < welch_power(0.0, 3, 3, ALPHA) < 0.04
    assert 0.04 < welch_power(0.0, 5, 5, ALPHA) < ALPHA


@pytest.mark.parametrize(("n_a", "n_b", "m"), [(3, 3, 1), (2, 3, 3), (5, 5, 20)])
def test_power_rises_with_the_effect(n_a, n_b, m):
    effects = np.arange(0.0, 15.0, 0.01)
    power = np.array([welch_power(e, n_a, n_b, ALPHA / m) for e in effects])
    rises = np.diff(power)
    # near 0 the true curve is flat (power is even in the effect): the draws' noise may dip
    assert rises.min() > -0.001
    assert np.all(rises[power[1:] >= 0.1] >= 0)
    assert power[-1] > 0.7 > power[0]


@pytest.mark.parametrize("effect", [0.3, 0.6, 0.9])
def test_power_at_30_seeds_is_the_pooled_t_power(effect):
    # with many seeds Welch's df is near 2n - 2 and the two tests agree
    assert welch_power(effect, 30, 30, ALPHA) == pytest.approx(
        pooled_t_power(effect, 30, ALPHA), abs=0.02
    )


@pytest.mark.parametrize("effect", [2.0, 3.0, 4.0])
def test_the_t_formula_overstates_welch_power_at_3_seeds(effect):
    welch, formula = welch_power(effect, 3, 3, ALPHA), pooled_t_power(effect, 3, ALPHA)
    print(f"3 vs 3, effect {effect}σ: t formula {formula:.3f}, Welch simulated {welch:.3f}")
    assert formula > welch + 0.03


def test_power_is_reproducible_and_needs_two_seeds():
    first = welch_power(2.0, 4, 3, ALPHA)
    planner._null_statistics.cache_clear()  # drawn afresh, from the same fixed seed
    planner._thresholds.cache_clear()
    assert welch_power(2.0, 4, 3, ALPHA) == first
    assert welch_power(2.0, 4, 3, ALPHA, seed=1) != first
    with pytest.raises(ValueError, match="2 values a side"):
        welch_power(2.0, 1, 3, ALPHA)


# -- detectable_effect ---------------------------------------------------------------------------
@pytest.mark.parametrize("m", [3, 5, 20])
def test_two_seeds_detect_nothing_in_a_family(m):
    assert detectable_effect(2, 2, ALPHA / m) is None


def test_two_seeds_in_a_family_of_two_detect_only_about_19_sigma():
    # the exception to "never at 2 seeds when m > 1": power at 20σ is 0.82 (0.819 at 10^6 draws)
    effect = detectable_effect(2, 2, ALPHA / 2)
    assert effect is not None and 18.5 < effect < 19.5


def test_three_seeds_alone_detect_a_finite_effect():
    effect = detectable_effect(3, 3, ALPHA)
    assert effect is not None and 3.0 < effect < 4.0  # 3.5σ
    assert welch_power(effect, 3, 3, ALPHA) >= 0.8 > welch_power(effect - 0.02, 3, 3, ALPHA)


def test_five_seeds_in_a_family_of_20_detect_about_4_sigma():
    # the verdict simulation finds 4σ with about 0.86 probability and 3σ with about 0.56
    alpha = ALPHA / 20
    assert welch_power(4.0, 5, 5, alpha) == pytest.approx(0.86, abs=0.02)
    assert welch_power(3.0, 5, 5, alpha) == pytest.approx(0.56, abs=0.02)
    assert detectable_effect(5, 5, alpha) == pytest.approx(3.8, abs=0.3)  # 3.74σ


def test_one_seed_detects_nothing():
    assert detectable_effect(1, 5, ALPHA) is None


# -- seeds_needed --------------------------------------------------------------------------------
def test_smaller_effects_need_more_seeds():
    alpha = ALPHA / 3
    needed = [seeds_needed(e, alpha) for e in (4.0, 2.0, 1.5, 1.0)]
    assert needed == sorted(needed) and len(set(needed)) == 4
    assert seeds_needed(0.5, alpha) is None  # about 60 a side
    n = needed[-1]  # at 1σ
    assert seeds_needed(1.0, alpha, cap=n) == n and seeds_needed(1.0, alpha, cap=n - 1) is None


@pytest.mark.parametrize("effect", [1.5, 2.5, 4.0])
def test_seeds_needed_agrees_with_detectable_effect(effect):
    alpha = ALPHA / 5
    n = seeds_needed(effect, alpha)
    assert n is not None
    assert detectable_effect(n, n, alpha) <= effect
    fewer = detectable_effect(n - 1, n - 1, alpha)
    assert fewer is None or fewer > effect


# -- plan ----------------------------------------------------------------------------------------
SPREAD = [[0.40, 0.41, 0.42], [0.50, 0.52, 0.51], [0.30, 0.32], [0.60, 0.61], [0.1]]


def test_plan_lines_say_what_each_comparison_can_detect():
    comparisons = [("sppf[P5]", 2, 2), ("neck", 3, 3), ("c2f", 2, 3)]
    plan = make_plan(comparisons, SPREAD, target_delta=0.01)
    lines = plan_lines(plan)
    # squares 0.0002 + 0.0002 + 0.0002 + 0.00005 over df 2 + 2 + 1 + 1: sqrt(0.00065 / 6)
    assert plan.m == 3 and plan.df == 6 and plan.sigma == pytest.approx(0.010408329997330663)
    assert "σ = 0.010 (pooled over 4 variants, df = 6)" in lines
    assert (
        "sppf[P5]: 2 vs 2 seeds: none: 2 seeds per side cannot give a verdict in a family of 3"
        in lines
    )
    for label, n in [("neck", 3), ("c2f", 2)]:
        effect = detectable_effect(n, 3, ALPHA / 3)
        head = f"{label}: {n} vs 3 seeds: smallest Δ detected with 80% power:"
        assert f"{head} {effect * plan.sigma:.2g} ({effect:.1f}σ)" in lines
    needed = seeds_needed(0.01 / plan.sigma, ALPHA / 3)
    assert needed is not None and f"for Δ = 0.01: {needed} seeds per side" in lines


def test_plan_names_unequal_seed_counts_that_detect_nothing():
    plan = make_plan([("c2f", 2, 3)], SPREAD, m=20)
    assert plan_lines(plan)[-1] == (
        "c2f: 2 vs 3 seeds: none: 2 vs 3 seeds cannot give a verdict in a family of 20"
    )


def test_plan_says_when_the_target_needs_more_than_the_cap():
    plan = make_plan([("neck", 3, 3)], SPREAD, target_delta=0.001)
    assert plan.seeds is None
    assert plan_lines(plan)[-1] == f"for Δ = 0.001: more than {CAP} seeds per side"


def test_plan_without_spread_gives_effects_in_sigma_only():
    plan = make_plan([("neck", 3, 3)], [[0.4], [0.5]], target_delta=0.01)
    lines = plan_lines(plan)
    effect = detectable_effect(3, 3, ALPHA)
    assert any(NO_SPREAD in line and line.startswith("σ") for line in lines)
    assert f"neck: 3 vs 3 seeds: smallest Δ detected with 80% power: {effect:.1f}σ" in lines
    assert "for Δ = 0.01: no spread known yet" in lines

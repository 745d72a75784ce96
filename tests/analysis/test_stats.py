"""Statistics against answers computed independently: closed forms, table constants, scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dat_exp.analysis.compare import compare
from dat_exp.analysis.stats import (
    Verdict,
    aggregate,
    identical_seed_warnings,
    interval,
    paired_p_value,
    repeated_seed_notes,
    seed_values,
    summarise,
    t_quantile,
    welch,
    welch_interval,
    welch_test,
)
from dat_exp.config import baseline_hash
from dat_exp.tracking import schema
from tests.analysis.fakes import frame, run

T_975_DF3 = 3.182446305284263  # Student-t tables
T_975_DF4 = 2.7764451051977987


def test_t_quantile_matches_closed_forms_and_tables():
    # df = 1 is Cauchy: tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p))
    assert t_quantile(1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    assert t_quantile(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-9)
    assert t_quantile(3) == pytest.approx(T_975_DF3, rel=1e-9)
    assert t_quantile(4) == pytest.approx(T_975_DF4, rel=1e-9)


def test_summary_of_four_values():
    s = summarise([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3)  # = sqrt(5/3)
    half = T_975_DF3 * std / 2  # / sqrt(n)
    assert (s.n, s.mean) == (4, 2.5)
    assert s.std == pytest.approx(std)
    assert (s.low, s.high) == pytest.approx((2.5 - half, 2.5 + half))


def test_summary_of_one_value_has_no_interval_and_nan_is_ignored():
    s = summarise([0.3, float("nan")])
    assert (s.n, s.mean) == (1, 0.3)
    assert all(math.isnan(x) for x in (s.std, s.low, s.high))


def test_welch_interval_equal_variances_has_pooled_degrees_of_freedom():
    d = welch_interval([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    # variances 1 and 1, n 3 and 3: se^2 = 1/3 + 1/3, df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    half = T_975_DF4 * math.sqrt(2 / 3)
    assert d.delta == -2.0
    assert d.df == pytest.approx(4.0)
    assert (d.low, d.high) == pytest.approx((-2 - half, -2 + half))
    assert d.contains_zero()  # 2.78 * 0.82 > 2


def test_welch_degrees_of_freedom_unequal_variances():
    d = welch_interval([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    va, vb = 1 / 3, 4 / 3  # s^2 / n
    assert d.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2))  # = 50/17
    assert d.df == pytest.approx(50 / 17)
    assert d.high - d.delta == pytest.approx(t_quantile(50 / 17) * math.sqrt(va + vb))


def test_welch_with_a_single_run_has_no_interval():
    d = welch_interval([0.5], [0.1, 0.2])
    assert d.delta == pytest.approx(0.35) and math.isnan(d.low) and math.isnan(d.high)


def test_welch_test_is_scipys_welch_test():
    a, b = [0.51, 0.48, 0.55, 0.50], [0.40, 0.47, 0.41]
    test = welch_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert test.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert test.delta / test.se == pytest.approx(ref.statistic, rel=1e-12)
    assert test.df == pytest.approx(ref.df, rel=1e-12)
    d = welch_interval(a, b, 0.9)
    assert interval(test, 0.9) == pytest.approx((d.low, d.high))
    # the interval at level 1 - p just touches zero
    low, high = interval(test, 1 - test.p)
    assert min(abs(low), abs(high)) == pytest.approx(0, abs=1e-12)


def test_welch_core_is_vectorised_along_the_last_axis():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 6, 3)), rng.normal(size=(4, 1, 5))  # b broadcasts
    delta, se, df, p = welch(a, b)
    assert p.shape == (4, 6)
    one = welch_test(a[2, 3], b[2, 0])
    assert (delta[2, 3], se[2, 3], df[2, 3], p[2, 3]) == pytest.approx(
        (one.delta, one.se, one.df, one.p)
    )


def test_welch_test_without_two_values_or_without_spread():
    single = welch_test([0.5], [0.1, 0.2])
    assert single.delta == pytest.approx(0.35)
    assert all(math.isnan(x) for x in (single.se, single.df, single.p))
    flat = welch_test([0.5, 0.5], [0.1, 0.1, float("nan")])
    assert flat.se == 0 and math.isnan(flat.p) and flat.delta == pytest.approx(0.4)


def test_paired_t_test_closed_form_df2():
    a, b = [1.0, 2.0, 4.0], [0.0, 1.5, 2.0]
    # differences 1, 0.5, 2: mean 7/6, sd sqrt(7/12), t = sqrt(7); df = 2: p = 1 - t/sqrt(t^2+2)
    assert paired_p_value(a, b) == pytest.approx(1 - math.sqrt(7) / 3, rel=1e-9)
    assert math.isnan(paired_p_value([1.0], [0.0]))


# -- per variant ---------------------------------------------------------------------------------
def two_variants():
    rows = [
        run("none", s, "none", **{schema.MAP50_95: v}) for s, v in enumerate([0.40, 0.42, 0.41])
    ]
    rows += [run("sppf", s, **{schema.MAP50_95: v}) for s, v in enumerate([0.50, 0.53, 0.52])]
    return frame(rows)


def test_aggregate_per_variant():
    agg = aggregate(two_variants()).set_index("variant")
    assert agg.loc["none", "n"] == 3 and agg.loc["none", "seeds"] == "0,1,2"
    assert agg.loc["none", "repeats"] == 0
    assert agg.loc["sppf", f"{schema.MAP50_95}_mean"] == pytest.approx(0.5166666, rel=1e-6)
    s = summarise([0.50, 0.53, 0.52])
    assert agg.loc["sppf", f"{schema.MAP50_95}_low"] == pytest.approx(s.low)


def test_seeds_are_the_replicates_and_repeats_are_averaged_first():
    rows = [run("v", 0, **{schema.MAP50_95: v}) for v in (0.40, 0.50)]  # seed 0 twice
    rows += [run("v", 1, **{schema.MAP50_95: 0.60}), run("v", 2, **{schema.MAP50_95: math.nan})]
    runs = frame(rows)
    assert seed_values(runs, schema.MAP50_95).to_dict() == pytest.approx({0: 0.45, 1: 0.60})
    agg = aggregate(runs).iloc[0]
    assert (agg["n"], agg["repeats"], agg["seeds"]) == (3, 1, "0,1,2")
    assert agg[f"{schema.MAP50_95}_n"] == 2  # seed 2 has no value
    assert agg[f"{schema.MAP50_95}_mean"] == pytest.approx(0.525)  # of seed means, not of runs
    assert agg[f"{schema.MAP50_95}_std"] == pytest.approx(np.std([0.45, 0.60], ddof=1))
    (note,) = repeated_seed_notes(runs)
    assert "seed 0: 2 runs" in note and "counted once in n" in note


def compared(runs, pool=None, config_of=lambda run_id: None):
    pool = runs if pool is None else pool
    return compare(runs, pool, aggregate(runs), config_of).set_index("variant")


def test_compare_verdicts_and_paired_test():
    out = compared(two_variants())
    assert out.loc["none", "verdict"] == Verdict.BASELINE
    sppf = out.loc["sppf"]
    assert sppf["baseline_variant"] == "none"
    assert (sppf["baseline_match"], sppf["baseline_n"]) == ("tag", 3)
    assert sppf["delta"] == pytest.approx(0.5166666 - 0.41, rel=1e-5)
    d = welch_interval([0.50, 0.53, 0.52], [0.40, 0.42, 0.41])  # m = 1: the 95% interval
    assert (sppf["delta_low"], sppf["delta_high"]) == pytest.approx((d.low, d.high))
    ref = stats.ttest_ind([0.50, 0.53, 0.52], [0.40, 0.42, 0.41], equal_var=False)
    assert sppf["p"] == pytest.approx(ref.pvalue) and sppf["p_adjusted"] == sppf["p"]
    assert sppf["family_size"] == 1
    assert sppf["verdict"] == Verdict.BETTER
    assert sppf["paired_n"] == 3
    assert sppf["p_paired"] == pytest.approx(paired_p_value([0.50, 0.53, 0.52], [0.40, 0.42, 0.41]))


def test_overlapping_single_and_orphan_variants():
    rows = [run("none", s, "none", **{schema.MAP50_95: v}) for s, v in enumerate([0.40, 0.45])]
    rows += [run("noisy", s, **{schema.MAP50_95: v}) for s, v in enumerate([0.38, 0.48])]
    rows += [run("once", 0, **{schema.MAP50_95: 0.9})]
    rows += [
        run("other-model", 0, model="yolov8s", **{schema.MAP50_95: 0.5}),
        run("other-model", 1, model="yolov8s", **{schema.MAP50_95: 0.6}),
    ]
    out = compared(frame(rows))
    assert out.loc["noisy", "verdict"] == Verdict.NOT_DISTINGUISHABLE
    assert out.loc["once", "verdict"] == Verdict.SINGLE_SEED
    assert out.loc["other-model", "verdict"].startswith(f"{Verdict.NO_BASELINE} (no twin")
    assert (out["family_size"] == 1).all()  # only noisy has a p-value


def test_baseline_is_found_in_the_experiment_not_only_the_sweep():
    pool = two_variants()
    sweep = pool[pool["placement"] != "none"]
    out = compared(sweep, pool)
    assert list(out.index) == ["sppf"] and out.loc["sppf", "baseline_variant"] == "none"
    assert out.loc["sppf", "baseline_n"] == 3


def test_exact_config_picks_the_baseline_with_the_same_settings():
    cfg = {
        "model": {"name": "yolov8n", "weights": None},
        "placement": {"name": "sppf", "levels": []},
        "dat": {"preset": "official", "pe": "table"},
        "seed": 0,
        "device": "cpu",
        "data": {"name": "synthetic", "images": 16},
        "train": {"name": "smoke", "epochs": 2},
    }
    right = baseline_hash(cfg)
    rows = [
        run("none-2ep", s, "none", variant_hash=right, **{schema.MAP50_95: 0.1}) for s in (0, 1)
    ]
    rows += [run("none-12ep", s, "none", **{schema.MAP50_95: 0.4}) for s in (0, 1, 2)]
    rows += [run("sppf", s, baseline_hash=None, **{schema.MAP50_95: 0.12}) for s in (0, 1)]
    out = compared(frame(rows), config_of=lambda run_id: cfg)
    assert out.loc["sppf", "baseline_variant"] == "none-2ep"
    assert out.loc["sppf", "baseline_match"] == "config.yaml"
    other = {**cfg, "train": {"name": "smoke", "epochs": 5}}  # no none run was trained so
    out = compared(frame(rows), config_of=lambda run_id: other)
    assert out.loc["sppf", "verdict"].startswith(f"{Verdict.NO_BASELINE} (no twin")


def test_identical_metrics_across_seeds_are_reported():
    rows = [run("det", s, **{schema.MAP50_95: 0.3, schema.MAP50: 0.5}) for s in (0, 1)]
    rows += [run("fine", s, **{schema.MAP50_95: 0.3 + s / 100, schema.MAP50: 0.5}) for s in (0, 1)]
    lines = identical_seed_warnings(frame(rows))
    assert len(lines) == 1
    assert lines[0].startswith("WARNING") and "det" in lines[0] and "seeds 0, 1" in lines[0]

"""The verdict rules on constructed run tables: replicates are seeds, one Bonferroni family with
intervals that agree with the verdicts, exact baselines only, the headline's split; and
simulations of whole families through the same code the report uses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dat_exp.analysis.compare import compare
from dat_exp.analysis.stats import (
    Verdict,
    WelchTest,
    aggregate,
    decide,
    decide_family,
    interval,
    welch,
    welch_test,
)
from dat_exp.analysis.summary import OPTIMISTIC, analyse, table
from dat_exp.report import HOW_TO_READ, Report, render_markdown
from dat_exp.tracking import schema
from tests.analysis.fakes import frame, run, runset, variant_hash

MAP = schema.MAP50_95
TEST_MAP = schema.held_out(schema.MAP50_95)
BASE = [0.40, 0.41, 0.42]
NO_CONFIG = lambda run_id: None  # noqa: E731


def runs_of(variant: str, values, placement: str = "sppf", metric: str = MAP, **extra) -> list:
    return [run(variant, seed, placement, **{metric: v}, **extra) for seed, v in enumerate(values)]


def compared(rows, pool=None, config_of=NO_CONFIG, **kwargs) -> pd.DataFrame:
    runs = frame(rows)
    pool = runs if pool is None else pool
    return compare(runs, pool, aggregate(runs), config_of, **kwargs).set_index("variant")


# -- replicates are seeds --------------------------------------------------------------------
def test_zero_spread_is_no_spread_never_better():
    rows = runs_of("none", BASE, "none") + runs_of("flat", [0.6, 0.6, 0.6])
    out = compared(rows)
    assert out.loc["flat", "verdict"] == Verdict.NO_SPREAD  # Welch alone would say better
    assert math.isnan(out.loc["flat", "p"]) and out.loc["flat", "family_size"] == 0
    both_flat = runs_of("none", [0.4, 0.4], "none") + runs_of("flat", [0.6, 0.6])
    assert compared(both_flat).loc["flat", "verdict"] == Verdict.NO_SPREAD


def test_zero_spread_note_says_why():
    rows = runs_of("none", BASE, "none") + runs_of("flat", [0.6, 0.6, 0.6])
    analysis = analyse(runset(frame(rows)), MAP, NO_CONFIG)
    (note,) = [n for n in analysis.notes if n.startswith(f"'{Verdict.NO_SPREAD}'")]
    assert "flat" in note and "the seed is not reaching training" in note


def test_same_seed_repeats_are_one_seed():
    rows = [run("none", 0, "none", **{MAP: v}) for v in (0.40, 0.42)]
    rows += [run("sppf", 0, **{MAP: v}) for v in (0.50, 0.53)]
    out = compared(rows)
    assert out.loc["sppf", "n"] == 1 and out.loc["sppf", "repeats"] == 1
    assert out.loc["sppf", "baseline_n"] == 1
    assert out.loc["sppf", "verdict"] == Verdict.SINGLE_SEED
    shown = table(analyse(runset(frame(rows)), MAP, NO_CONFIG)).set_index("variant")
    assert (shown.loc["sppf", "n"], shown.loc["sppf", "repeats"]) == (1, 1)


def test_a_missing_value_leaves_a_single_seed_and_all_missing_is_not_worse():
    rows = runs_of("none", BASE, "none")
    rows += runs_of("half", [0.30, math.nan])
    rows += runs_of("empty", [math.nan, math.nan, math.nan])
    out = compared(rows)
    assert out.loc["half", "verdict"] == Verdict.SINGLE_SEED
    assert out.loc["empty", "verdict"] == Verdict.SINGLE_SEED
    assert out.loc["empty", f"{MAP}_n"] == 0


# -- exact baselines only ----------------------------------------------------------------------
def test_tag_matched_baseline():
    rows = runs_of("none", BASE, "none") + runs_of("sppf", [0.50, 0.52, 0.51])
    row = compared(rows).loc["sppf"]
    assert (row["baseline_variant"], row["baseline_match"], row["baseline_n"]) == ("none", "tag", 3)
    assert row["baseline_hash"] == variant_hash("none") and row["baseline_code_version"] == "v1"


def test_no_tag_and_no_config_is_no_baseline():
    rows = runs_of("none", BASE, "none") + runs_of("old", [0.5, 0.6], baseline_hash=None)
    verdict = compared(rows).loc["old", "verdict"]
    assert verdict.startswith(f"{Verdict.NO_BASELINE} (no config.yaml and no baseline tag")


def test_an_unreadable_config_is_no_baseline():
    def broken(run_id):
        raise ValueError("mapping values are not allowed here")

    rows = runs_of("none", BASE, "none") + runs_of("old", [0.5, 0.6], baseline_hash=None)
    verdict = compared(rows, config_of=broken).loc["old", "verdict"]
    assert verdict.startswith(f"{Verdict.NO_BASELINE} (unreadable config.yaml")
    assert "mapping values" in verdict


def test_a_twin_with_other_epochs_is_not_the_baseline():
    """A none variant of the same model, data, train preset and device, but another variant hash
    (other epochs): no name-only fallback."""
    rows = runs_of("none-12ep", BASE, "none")  # hash h-none-12ep-cpu-, not the tagged h-none-cpu-
    rows += runs_of("sppf", [0.5, 0.6])
    out = compared(rows)
    assert out.loc["sppf", "verdict"].startswith(f"{Verdict.NO_BASELINE} (no twin")
    assert pd.isna(out.loc["sppf", "baseline_variant"])


def test_a_twin_of_another_code_version_only_unless_pooled():
    base = runs_of("none", BASE, "none", code_version="v1")
    rows = base + runs_of("sppf", [0.5, 0.6], code_version="v2")
    out = compared(rows)
    expected = f"{Verdict.NO_BASELINE} (no shared code version: variant v2, twin has v1)"
    assert out.loc["sppf", "verdict"] == expected
    pooled = compared(rows, pooled=True).loc["sppf"]
    assert pooled["baseline_n"] == 3 and pooled["baseline_code_version"] == "v1"


def test_pooled_code_versions_are_stated():
    rows = runs_of("none", BASE, "none", code_version="v1")
    rows += runs_of("sppf", [0.5, 0.6], code_version="v2")
    analysis = analyse(runset(frame(rows), pooled_code_versions=True), MAP, NO_CONFIG)
    assert analysis.variants.set_index("variant").loc["sppf", "baseline_n"] == 3
    assert "--pool-code-versions: runs of code versions v1, v2 pooled." in analysis.notes


def test_the_baseline_is_the_twins_runs_of_the_variants_code_version():
    pool = frame(
        runs_of("none", [0.1, 0.1, 0.2], "none", code_version="v1")
        + runs_of("none", BASE, "none", code_version="v2")
    )
    runs = frame(runs_of("sppf", [0.5, 0.52, 0.51], code_version="v2"))
    row = compare(runs, pool, aggregate(runs), NO_CONFIG, MAP).iloc[0]
    assert row["baseline_code_version"] == "v2" and row["delta"] == pytest.approx(0.51 - 0.41)


# -- directions, deterministic and host-dependent metrics ------------------------------------
def test_lower_is_better_on_one_device():
    metric = schema.LATENCY_MS
    rows = runs_of("none", [20.0, 20.5, 19.5], "none", metric)
    rows += runs_of("fast", [10.0, 10.5, 9.5], metric=metric)
    rows += runs_of("slow", [30.0, 30.5, 29.5], metric=metric)
    out = compared(rows, metric=metric)
    assert out.loc["fast", "delta"] < 0 and out.loc["fast", "verdict"] == Verdict.BETTER
    assert out.loc["slow", "verdict"] == Verdict.WORSE


def test_host_dependent_on_mixed_devices_gets_no_verdict():
    metric = schema.LATENCY_MS
    rows = runs_of("none", [20.0, 20.5, 19.5], "none", metric)
    rows += runs_of("elsewhere", [10.0, 10.5, 9.5], metric=metric, device_name="Other CPU")
    out = compared(rows, metric=metric)
    assert out.loc["elsewhere", "delta"] == pytest.approx(-10.0)
    assert out.loc["elsewhere", "verdict"] == "" and math.isnan(out.loc["elsewhere", "p"])
    assert out.loc["elsewhere", "family_size"] == 0
    analysis = analyse(runset(frame(rows)), metric, NO_CONFIG)
    shown = table(analysis).set_index("variant").loc["elsewhere"]
    assert shown.filter(like="Δ").iloc[0].endswith("(host-dependent)")
    assert shown["latency (ms)"].endswith("(host-dependent)") and shown["verdict"] == "-"


@pytest.mark.parametrize("metric", [schema.GFLOPS, schema.GFLOPS_ULTRALYTICS, schema.PARAMS])
def test_deterministic_metrics_are_compared_exactly(metric):
    rows = runs_of("none", [8.0, 8.0], "none", metric) + runs_of("dat", [10.0, 10.0], metric=metric)
    row = compared(rows, metric=metric).loc["dat"]
    assert (row["delta"], row["ratio"]) == (2.0, 1.25)
    assert row["verdict"] == "" and math.isnan(row["p"]) and row["family_size"] == 0
    assert "exact" in table(analyse(runset(frame(rows)), metric, NO_CONFIG)).columns[9]


# -- one family, Bonferroni, intervals that agree ----------------------------------------------
def test_rows_without_a_p_value_are_outside_the_family():
    rows = runs_of("none", BASE, "none")
    rows += runs_of("a", [0.43, 0.47, 0.45]) + runs_of("b", [0.41, 0.44, 0.40])
    rows += runs_of("once", [0.9]) + runs_of("flat", [0.5, 0.5])
    out = compared(rows)
    assert (out["family_size"] == 2).all()
    p = welch_test([0.43, 0.47, 0.45], BASE).p
    assert out.loc["a", "p"] == pytest.approx(p) and out.loc["a", "p_adjusted"] == pytest.approx(
        2 * p
    )
    low, high = interval(welch_test([0.43, 0.47, 0.45], BASE), 1 - 0.05 / 2)
    assert (out.loc["a", "delta_low"], out.loc["a", "delta_high"]) == pytest.approx((low, high))


def random_family(rng: np.random.Generator) -> list[WelchTest]:
    size = int(rng.integers(1, 12))
    base = rng.normal(0, 1, int(rng.integers(1, 6)))
    return [
        welch_test(rng.normal(rng.normal(0, 2), rng.uniform(0.1, 2), rng.integers(1, 6)), base)
        for _ in range(size)
    ]


def test_verdict_and_interval_agree_on_random_families():
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(200):
        tests = random_family(rng)
        alpha = float(rng.choice([0.01, 0.05, 0.2]))
        m, decisions = decide_family(tests, alpha, higher_is_better=bool(rng.integers(2)))
        assert m == sum(math.isfinite(t.p) for t in tests)
        for test, d in zip(tests, decisions, strict=True):
            seen.add(d.verdict)
            if not math.isfinite(test.p):
                assert d.verdict in {Verdict.SINGLE_SEED, Verdict.NO_SPREAD}
                continue
            excludes_zero = d.low > 0 or d.high < 0
            assert (d.verdict in {Verdict.BETTER, Verdict.WORSE}) == excludes_zero
            assert (d.verdict in {Verdict.BETTER, Verdict.WORSE}) == (d.p < alpha / m)
            assert d.p_adjusted == pytest.approx(min(1.0, m * d.p))
            assert (d.low, d.high) == pytest.approx(interval(test, 1 - alpha / m))
    assert {Verdict.BETTER, Verdict.WORSE, Verdict.NOT_DISTINGUISHABLE} <= seen


def test_the_table_shows_the_interval_the_verdict_uses():
    rows = runs_of("none", BASE, "none")
    for k, effect in enumerate([0.0, 0.02, 0.05, 0.1]):
        rows += runs_of(f"v{k}", [0.41 + effect + e for e in (-0.01, 0.0, 0.012)])
    analysis = analyse(runset(frame(rows)), MAP, NO_CONFIG)
    assert analysis.family_size == 4
    shown = table(analysis).set_index("variant")
    header = f"Δ {MAP} [98.75% simultaneous CI]"
    assert header in shown.columns
    for variant, row in analysis.variants.set_index("variant").drop("none").iterrows():
        low, high = (float(x) for x in shown.loc[variant, header].split("[")[1][:-1].split(","))
        significant = row["verdict"] in {Verdict.BETTER, Verdict.WORSE}
        assert significant == (low > 0 or high < 0), (variant, shown.loc[variant, header])
    assert "m = 4" in " ".join(analysis.notes)


def test_equivalent_only_with_a_target_delta():
    tests = [welch_test([0.500, 0.501, 0.499, 0.5005], [0.5002, 0.4998, 0.5001, 0.4999])]
    assert decide_family(tests)[1][0].verdict == Verdict.NOT_DISTINGUISHABLE
    assert decide_family(tests, target_delta=0.01)[1][0].verdict == Verdict.EQUIVALENT
    # TOST at the same level: the 1 - 2 alpha interval must lie inside ±target
    low, high = interval(tests[0], 0.90)
    inside = max(abs(low), abs(high))
    assert decide_family(tests, target_delta=inside * 0.99)[1][0].verdict != Verdict.EQUIVALENT
    assert decide_family(tests, target_delta=inside * 1.01)[1][0].verdict == Verdict.EQUIVALENT


# -- the headline's split ----------------------------------------------------------------------
def with_test_split(rows: list[dict]) -> list[dict]:
    return [{**r, TEST_MAP: r[MAP] - 0.01} for r in rows]


def test_headline_is_the_held_out_split_when_every_compared_run_has_it():
    rows = with_test_split(runs_of("none", BASE, "none") + runs_of("sppf", [0.5, 0.52, 0.51]))
    analysis = analyse(runset(frame(rows)), config_of=NO_CONFIG)
    assert analysis.metric == TEST_MAP
    assert not any(OPTIMISTIC in n for n in analysis.notes)
    assert TEST_MAP in table(analysis).columns


def test_headline_falls_back_to_val_when_a_baseline_run_lacks_the_test_split():
    rows = with_test_split(runs_of("none", BASE, "none") + runs_of("sppf", [0.5, 0.52, 0.51]))
    runs = frame(rows)
    pool = runs.copy()
    pool.loc[0, TEST_MAP] = math.nan  # a baseline run from before the test split
    sweep = runs[runs["placement"] != "none"]
    analysis = analyse(runset(sweep, pool), config_of=NO_CONFIG)
    assert analysis.metric == MAP
    assert any(OPTIMISTIC in n for n in analysis.notes)
    explicit = analyse(runset(sweep, pool), TEST_MAP, NO_CONFIG)
    assert explicit.metric == TEST_MAP  # as given


def test_reused_seeds_are_shown():
    rows = runs_of("none", BASE, "none") + runs_of("sppf", [0.5, 0.52])
    runs = frame(rows).assign(reused=[True, False, False, True, False])
    shown = table(analyse(runset(runs), MAP, NO_CONFIG)).set_index("variant")
    assert shown.loc["none", "reused"] == "seed 0" and shown.loc["sppf", "reused"] == "seed 0"
    assert table(analyse(runset(frame(rows)), MAP, NO_CONFIG))["reused"].eq("").all()


# -- simulations: whole families through the report's code -------------------------------------
TRIALS = 1000


def simulate(seeds: int, effect: float, rng: np.random.Generator) -> np.ndarray:
    """TRIALS families: 20 variants (the first ``effect`` σ better, the rest null) against one
    shared baseline, ``seeds`` seeds each. Returns the verdicts' significance and direction."""
    base = rng.normal(0, 1, (TRIALS, 1, seeds))
    variants = rng.normal(0, 1, (TRIALS, 20, seeds))
    variants[:, 0] += effect
    delta, se, df, p = welch(variants, base)
    family = decide(delta, se, df, p, alpha=0.05)
    assert (family.m == 20).all()
    return family.significant, delta


def test_simulated_family_wise_error_rate_under_the_null():
    significant, _ = simulate(3, 0.0, np.random.default_rng(2024))
    rate = significant.any(axis=-1).mean()
    print(f"family-wise false better/worse rate: {rate:.3f}")
    assert rate <= 0.05  # expected about 0.02 (Bonferroni is conservative here)


@pytest.mark.parametrize(("effect", "at_least"), [(4.0, 0.80), (3.0, 0.50)])
def test_simulated_power_with_five_seeds(effect, at_least):
    significant, delta = simulate(5, effect, np.random.default_rng(2025))
    found = (significant[:, 0] & (delta[:, 0] > 0)).mean()  # called better
    print(f"Δ = {effect:g}σ found in {found:.3f} of families")
    assert found >= at_least  # expected 0.86 (4σ) and 0.56 (3σ)


def test_the_simulation_core_is_the_decision_of_one_family():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 3)
    values = rng.normal(0.5, 1, (20, 3))
    delta, se, df, p = welch(values, base)
    family = decide(delta, se, df, p)
    m, decisions = decide_family([welch_test(v, base) for v in values])
    assert m == int(family.m)
    assert [d.verdict in {Verdict.BETTER, Verdict.WORSE} for d in decisions] == list(
        family.significant
    )
    assert [d.low for d in decisions] == pytest.approx(list(family.low))


# -- what the report says ----------------------------------------------------------------------
def test_the_report_states_the_family_alpha_and_every_verdict_word(tmp_path):
    rows = runs_of("none", BASE, "none")
    rows += runs_of("a", [0.43, 0.47, 0.45]) + runs_of("b", [0.41, 0.44, 0.40])
    analysis = analyse(runset(frame(rows)), MAP, NO_CONFIG, alpha=0.1)
    text = render_markdown(analysis, Report(tmp_path))
    header = text.split("## Variants")[0]
    assert "m = 2" in header and "α = 0.1" in header and "simultaneous at 95%" in header
    assert "m = 2" in " ".join(analysis.notes)
    for word in Verdict:
        assert f"'{word}'" in HOW_TO_READ, word
    for phrase in ("distinct seeds", "Bonferroni", "1 − α/m", TEST_MAP, "experiment-wide"):
        assert phrase in HOW_TO_READ, phrase

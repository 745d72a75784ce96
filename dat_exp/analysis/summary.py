"""From a run set to what a reader looks at: per-variant statistics against the baseline, the
warnings, the notes, and the table (shared by the report and the notebook)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from functools import cache, partial

import numpy as np
import pandas as pd

from dat_exp.analysis.compare import NOT_RECORDED, Baseline, ConfigOf, compare, find_baselines
from dat_exp.analysis.load import (
    AnalysisError,
    RacingRecord,
    RunSet,
    run_config,
    set_aside_warning,
)
from dat_exp.analysis.planner import make_plan, plan_lines
from dat_exp.analysis.racing import STOPPED_EARLY, Outcome
from dat_exp.analysis.stats import (
    ALPHA,
    METRICS,
    Verdict,
    aggregate,
    deterministic,
    identical_seed_warnings,
    repeated_seed_notes,
    seed_values,
    stochastic,
)
from dat_exp.tracking import schema

PRIMARY = schema.HEADLINE
HELD_OUT_HEADLINE = schema.held_out(schema.HEADLINE)
OPTIMISTIC = "selected and evaluated on val: optimistic"
RACING_BIAS = (
    "A race stops testing a variant as soon as its estimate crosses a threshold, so a Δ decided "
    f"before the last round is biased away from 0 when '{Outcome.BETTER}' or '{Outcome.WORSE}' "
    "(in simulation, a true 2σ effect stopped early averaged 2.5σ) and toward 0 when "
    f"'{Outcome.EQUIVALENT}'."
)
RACING_UNFINISHED = "No decision recorded: the race did not finish (interrupted before its end)."
OUTSIDE = (Verdict.SINGLE_SEED, Verdict.NO_SPREAD, Verdict.NO_BASELINE)  # rows with no p-value


@dataclass
class Analysis:
    runset: RunSet
    variants: pd.DataFrame  # one row per variant: config, n, <m>_mean/_std/_low/_high, Δ, verdict
    warnings: list[str] = field(default_factory=list)
    metric: str = PRIMARY
    alpha: float = ALPHA
    family_size: int = 0  # m: the comparisons with a p-value
    target_delta: float | None = None
    notes: list[str] = field(default_factory=list)  # sentences the report prints under the table
    plan: list[str] = field(default_factory=list)  # the seed planner's lines


# -- input checks --------------------------------------------------------------------------------
def check_options(alpha: float, target_delta: float | None) -> None:
    """AnalysisError naming the value and what is allowed."""
    if not 0 < alpha < 1:
        raise AnalysisError(
            f"alpha {alpha:g} is outside (0, 1): --alpha is a family-wise error rate, e.g. 0.05"
        )
    if target_delta is not None and not target_delta > 0:
        raise AnalysisError(
            f"target delta {target_delta:g} is not > 0: --target-delta is the largest |Δ| that "
            "counts as equivalent, in the metric's units, e.g. 0.005"
        )


def logged_metrics(runs: pd.DataFrame) -> list[str]:
    """The registered metrics some run of ``runs`` has a finite value of."""
    return [m for m in METRICS if m in runs and np.isfinite(runs[m].to_numpy(float)).any()]


def check_metric(runs: pd.DataFrame, metric: str) -> None:
    """AnalysisError unless ``metric`` is registered and some run logged it."""
    logged = logged_metrics(runs)
    if metric not in logged:
        raise AnalysisError(
            f"metric {metric!r} was logged by no run of the selection (logged: "
            f"{', '.join(logged) or 'none'}; registry: {', '.join(METRICS)})"
        )


# -- the metric ----------------------------------------------------------------------------------
def _all_finite(frames: list[pd.DataFrame], metric: str) -> bool:
    return all(metric in f and np.isfinite(f[metric].to_numpy(float)).all() for f in frames)


def headline(runs: pd.DataFrame, baselines: list[Baseline]) -> tuple[str, str]:
    """``(metric, sentence)``: the held-out split when every run of every comparison (baselines
    included) has it, else val's, which chose the weights too."""
    involved = [runs] + [b.runs for b in baselines if b.found]
    if _all_finite(involved, HELD_OUT_HEADLINE):
        return HELD_OUT_HEADLINE, (
            f"Headline {HELD_OUT_HEADLINE}: the held-out split, evaluated once on the weights "
            "val selected."
        )
    return PRIMARY, (
        f"Headline {PRIMARY}: {OPTIMISTIC} (not every run of every comparison has "
        f"{HELD_OUT_HEADLINE})."
    )


def _given_metric_sentence(metric: str) -> str:
    val_quality = metric in schema.HELD_OUT  # a val metric that has a held-out twin
    return f"Metric {metric} as given (--metric)" + (f": {OPTIMISTIC}." if val_quality else ".")


# -- analysis ------------------------------------------------------------------------------------
def analyse(
    runset: RunSet,
    metric: str | None = None,
    config_of: ConfigOf | None = None,
    alpha: float = ALPHA,
    target_delta: float | None = None,
) -> Analysis:
    """Aggregate over seeds, compare each variant with its baseline in one family of ``metric``
    (default: the headline rule), collect the warnings and notes."""
    check_options(alpha, target_delta)
    if metric is not None:
        check_metric(runset.runs, metric)
    pooled = bool(getattr(runset, "pooled_code_versions", False))
    config_of = cache(config_of or partial(run_config, runset.tracking_uri))  # read once each
    variants = aggregate(runset.runs)
    baselines = find_baselines(runset.runs, runset.pool, variants, config_of, pooled)
    if metric is None:
        metric, split = headline(runset.runs, baselines)
    else:
        split = _given_metric_sentence(metric)
    compared = compare(
        runset.runs,
        runset.pool,
        variants,
        config_of,
        metric,
        alpha,
        target_delta,
        pooled,
        baselines,
    )
    m = int(compared["family_size"].iloc[0]) if len(compared) else 0
    warnings = identical_seed_warnings(runset.runs) + repeated_seed_notes(runset.runs)
    if not pooled:  # pooling is stated in the notes, with the baselines' versions
        warnings += set_aside_warning(runset)
    analysis = Analysis(runset, compared, warnings, metric, alpha, m, target_delta)
    analysis.notes = [split, *family_notes(analysis)]
    if pooled:
        analysis.notes.append(pooling_note(runset.runs, baselines))
    analysis.plan = seed_plan(analysis)
    return analysis


def seed_plan(analysis: Analysis) -> list[str]:
    """What the report's comparisons can detect at their seed counts, with σ pooled over its
    variants; m is the report's family (or, before any comparison has a p-value, the number of
    comparisons it will have). None for a deterministic metric: there is nothing to plan."""
    v, metric = analysis.variants, analysis.metric
    if deterministic(metric):
        return []
    compared = v[v["baseline_hash"].notna() & (v["verdict"] != Verdict.BASELINE)]
    comparisons = [
        (str(row["variant"]), int(row[f"{metric}_n"]), int(row["baseline_n"]))
        for _, row in compared.iterrows()
    ]
    if not comparisons:
        return []
    runs = analysis.runset.runs
    groups = [seed_values(g, metric) for _, g in runs.groupby("variant_hash", sort=False)]
    m = analysis.family_size or len(comparisons)
    return plan_lines(
        make_plan(comparisons, groups, analysis.alpha, analysis.target_delta, m, metric)
    )


def family_notes(analysis: Analysis) -> list[str]:
    """The family statement and why rows have no verdict (no spread, host-dependent)."""
    v, metric, alpha, m = analysis.variants, analysis.metric, analysis.alpha, analysis.family_size
    if deterministic(metric):
        return [f"{metric} is deterministic: compared exactly (Δ and ratio), no test, no verdict."]
    rule = (
        f"p < α/m = {alpha / m:.3g}, exactly when the {level(alpha, m)} simultaneous interval "
        "of Δ excludes 0"
        if m
        else "p < α/m; none has a p-value"
    )
    outside = ", ".join(f"'{w}'" for w in OUTSIDE)
    notes = [
        f"Family: m = {m} comparison(s) of {metric} with a p-value ({outside} rows are outside "
        f"it); Bonferroni at α = {alpha:g}: '{Verdict.BETTER}'/'{Verdict.WORSE}' when {rule}."
    ]
    notes.append(_equivalence_note(analysis))
    still = v.loc[v["verdict"] == Verdict.NO_SPREAD, "variant"].tolist()
    if still:
        why = (
            "the seed is not reaching training, or training is deterministic"
            if stochastic(metric)
            else "the runs measured identical values"
        )
        notes.append(
            f"'{Verdict.NO_SPREAD}' ({', '.join(map(str, still))}): a side's seeds gave identical "
            f"{metric}: {why}. Zero spread is no evidence, so these rows have no test."
        )
    if schema.spec(metric).host_dependent:
        mixed = v.loc[v["verdict"] == "", "variant"].tolist()
        notes.append(
            f"{metric} is host-dependent: a verdict only where every run of the comparison ran "
            "on the same device"
            + (f"; {', '.join(map(str, mixed))}: Δ only (different devices)." if mixed else ".")
        )
    return notes


def _equivalence_note(analysis: Analysis) -> str:
    if analysis.target_delta is None:
        return f"No --target-delta: no comparison is called '{Verdict.EQUIVALENT}'."
    return (
        f"'{Verdict.EQUIVALENT}': the 1 − 2α/m interval of Δ lies inside "
        f"±{analysis.target_delta:g} (TOST at α/m)."
    )


def pooling_note(runs: pd.DataFrame, baselines: list[Baseline]) -> str:
    versions = set(runs["code_version"].fillna(NOT_RECORDED)) if "code_version" in runs else set()
    for b in baselines:
        versions |= set((b.code_version or "").split(",")) - {""}
    return f"--pool-code-versions: runs of code versions {', '.join(sorted(versions))} pooled."


def level(alpha: float, m: int) -> str:
    """The simultaneous level 1 - alpha/m as a percentage: ``99.75%``."""
    return f"{100 * (1 - alpha / max(m, 1)):.4g}%"


# -- the table -----------------------------------------------------------------------------------
def table(analysis: Analysis) -> pd.DataFrame:
    """The report's table, one row per variant, as display strings."""
    v, m = analysis.variants, analysis.metric
    split_map50 = schema.held_out(schema.MAP50) if m.startswith(schema.TEST) else schema.MAP50
    rows = list(v.index)
    return pd.DataFrame(
        {
            "variant": v["variant"],
            "device": v["device_type"],
            "n": v["n"],
            "repeats": v["repeats"],
            m: [_mean_ci(v, i, m) for i in rows],
            split_map50: [_mean_ci(v, i, split_map50) for i in rows],
            "GFLOPs": [_number(v, i, schema.GFLOPS, _digits(schema.GFLOPS)) for i in rows],
            "params (M)": [_number(v, i, schema.PARAMS, 3, 1e-6) for i in rows],
            "latency (ms)": [_latency(v, i) for i in rows],
            _delta_header(analysis): [_delta(v.loc[i], m) for i in rows],
            "p": [_p(v.at[i, "p"]) for i in rows],
            "p adj.": [_p(v.at[i, "p_adjusted"]) for i in rows],
            "baseline": [_baseline(v.loc[i]) for i in rows],
            "verdict": [v.at[i, "verdict"] or "-" for i in rows],
            "reused": v.get("reused", ""),
        }
    )


def failures_table(analysis: Analysis) -> pd.DataFrame:
    f = analysis.runset.failures
    return f.assign(superseded=f["superseded"].map({True: "superseded", False: ""}))


def _delta_header(analysis: Analysis) -> str:
    if deterministic(analysis.metric):
        return f"Δ {analysis.metric} (exact; ratio)"
    return f"Δ {analysis.metric} [{level(analysis.alpha, analysis.family_size)} simultaneous CI]"


def _digits(metric: str) -> int:
    return schema.spec(metric).digits


def _finite(x: object) -> bool:
    return isinstance(x, numbers.Real) and math.isfinite(x)


def _number(v: pd.DataFrame, i: int, metric: str, digits: int, scale: float = 1.0) -> str:
    value = v.at[i, f"{metric}_mean"] if f"{metric}_mean" in v else None
    return f"{value * scale:.{digits}f}" if _finite(value) else "-"


def _mean_ci(v: pd.DataFrame, i: int, metric: str) -> str:
    """``mean ± half-width of the 95% interval``; the mean alone for a single seed."""
    digits = _digits(metric)
    text = _number(v, i, metric, digits)
    low, high = (v.at[i, c] if c in v else None for c in (f"{metric}_low", f"{metric}_high"))
    if _finite(low) and _finite(high) and not deterministic(metric):  # ± 0: no information
        text += f" ± {(high - low) / 2:.{digits}f}"
    return text


def _latency(v: pd.DataFrame, i: int) -> str:
    text = _mean_ci(v, i, schema.LATENCY_MS)
    mixed = text != "-" and not v.at[i, "one_device"]
    return text + " (host-dependent)" if mixed else text


def _delta(row: pd.Series, metric: str) -> str:
    if not _finite(row["delta"]):
        return "-"
    digits = max(_digits(metric), 2)
    text = f"{row['delta']:+.{digits}f}"
    if _finite(row["ratio"]):
        return text + f" (×{row['ratio']:.3f})"
    if _finite(row["delta_low"]):
        return text + f" [{row['delta_low']:+.{digits}f}, {row['delta_high']:+.{digits}f}]"
    if schema.spec(metric).host_dependent and not row["one_device"]:
        return text + " (host-dependent)"
    return text


def _p(p: object) -> str:
    return f"{p:.3g}" if _finite(p) else "-"


def _baseline(row: pd.Series) -> str:
    if row["verdict"] == Verdict.BASELINE:
        return "itself"
    name = row["baseline_variant"] if isinstance(row["baseline_variant"], str) else None
    if not row["baseline_n"] and name is None:
        return "-"
    name = name or str(row["baseline_hash"])  # a run that logged no variant name
    return f"{name} (n={row['baseline_n']}, {row['baseline_match']})"


# -- racing --------------------------------------------------------------------------------------
def racing_line(record: RacingRecord) -> str:
    """What the sweep raced on, with which settings, and whose verdicts count."""
    s = record.settings
    return (
        f"This sweep raced on {record.metric} (target_delta {s.get('target_delta')}, "
        f"α {s.get('alpha')}, seeds {s.get('seeds_min')}…{s.get('seeds_max')} step "
        f"{s.get('seeds_step')}, K = {s.get('rounds')} rounds at most): racing's decisions below "
        "are the sweep's verdicts. The Variants table's verdict column applies this report's "
        "one-shot rule to the same runs, which ignores the error the rounds spent."
    )


def racing_table(record: RacingRecord) -> pd.DataFrame:
    """One row per raced variant, as display strings; the Δ of a variant decided early marked."""
    d = record.decisions
    early = d["stopped_early"].eq(True)  # a missing value is not early
    digits = _racing_digits(record.metric)
    return pd.DataFrame(
        {
            "variant": d["variant"],
            "racing decision": d["decision"],
            "round": [str(int(r)) if _finite(r) and r > 0 else "-" for r in d["round"]],
            "seeds": d["n"],
            f"Δ {record.metric}": [
                _racing_delta(delta, decision, e, digits)
                for delta, decision, e in zip(d["delta"], d["decision"], early, strict=True)
            ],
        }
    )


def racing_notes(record: RacingRecord) -> list[str]:
    """Why the early Δs are marked (only when one is), or that there is no decision yet."""
    if record.decisions.empty:
        return [RACING_UNFINISHED]
    return [RACING_BIAS] if record.decisions["stopped_early"].eq(True).any() else []


def _racing_delta(delta: object, decision: object, early: bool, digits: int) -> str:
    if not _finite(delta):
        return "-"
    # "better (below target_delta)" is a rejection too: biased away from 0, like better/worse
    mark = f" ({STOPPED_EARLY[decision != Outcome.EQUIVALENT]})" if early else ""
    return f"{delta:+.{digits}f}{mark}"


def _racing_digits(metric: str) -> int:
    try:
        return max(_digits(metric), 2)
    except KeyError:  # a metric this code does not register (a newer store): mAP's digits
        return max(_digits(PRIMARY), 2)

"""From a run set to what a reader looks at: per-variant statistics against the baseline, the
warnings, and the table (shared by the report and the notebook)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from functools import partial

import pandas as pd

from dat_exp.analysis.compare import ConfigOf, compare
from dat_exp.analysis.load import RunSet, run_config, set_aside_warning
from dat_exp.analysis.stats import aggregate, identical_seed_warnings
from dat_exp.tracking import schema

PRIMARY = schema.HEADLINE


@dataclass
class Analysis:
    runset: RunSet
    variants: pd.DataFrame  # one row per variant: config, n, <m>_mean/_std/_low/_high, Δ, verdict
    warnings: list[str] = field(default_factory=list)
    metric: str = PRIMARY


def analyse(runset: RunSet, metric: str = PRIMARY, config_of: ConfigOf | None = None) -> Analysis:
    """Aggregate over seeds, compare each variant with its baseline, collect the warnings."""
    config_of = config_of or partial(run_config, runset.tracking_uri)
    variants = compare(runset.runs, runset.pool, aggregate(runset.runs), config_of, metric)
    warnings = identical_seed_warnings(runset.runs) + set_aside_warning(runset)
    return Analysis(runset, variants, warnings, metric)


def table(analysis: Analysis) -> pd.DataFrame:
    """The report's table, one row per variant, as display strings."""
    v = analysis.variants
    m = analysis.metric
    out = pd.DataFrame(
        {
            "variant": v["variant"],
            "device": v["device_type"],
            "n": v["n"],
            m: [_mean_ci(v, i, m, _digits(m)) for i in v.index],
            schema.MAP50: [_mean_ci(v, i, schema.MAP50, _digits(schema.MAP50)) for i in v.index],
            "GFLOPs": [_number(v, i, schema.GFLOPS, _digits(schema.GFLOPS)) for i in v.index],
            "params (M)": [_number(v, i, schema.PARAMS, 3, 1e-6) for i in v.index],
            "latency (ms)": [
                _mean_ci(v, i, schema.LATENCY_MS, _digits(schema.LATENCY_MS)) for i in v.index
            ],
            f"Δ {m} [95% CI]": [_delta(row) for _, row in v.iterrows()],
            "p (paired)": [_p(row) for _, row in v.iterrows()],
            "baseline": v["baseline_variant"].fillna("-"),
            "verdict": v["verdict"],
        }
    )
    return out


def failures_table(analysis: Analysis) -> pd.DataFrame:
    f = analysis.runset.failures
    return f.assign(superseded=f["superseded"].map({True: "superseded", False: ""}))


def _digits(metric: str) -> int:
    return schema.spec(metric).digits


def _finite(x: object) -> bool:
    return isinstance(x, numbers.Real) and math.isfinite(x)


def _number(v: pd.DataFrame, i: int, metric: str, digits: int, scale: float = 1.0) -> str:
    value = v.at[i, f"{metric}_mean"] if f"{metric}_mean" in v else None
    return f"{value * scale:.{digits}f}" if _finite(value) else "-"


def _mean_ci(v: pd.DataFrame, i: int, metric: str, digits: int) -> str:
    """``mean ± half-width of the 95% interval``; the mean alone for a single run."""
    text = _number(v, i, metric, digits)
    low, high = (v.at[i, c] if c in v else None for c in (f"{metric}_low", f"{metric}_high"))
    if _finite(low) and _finite(high):
        text += f" ± {(high - low) / 2:.{digits}f}"
    return text


def _delta(row: pd.Series) -> str:
    if not _finite(row["delta"]):
        return "-"
    text = f"{row['delta']:+.4f}"
    if _finite(row["delta_low"]):
        text += f" [{row['delta_low']:+.4f}, {row['delta_high']:+.4f}]"
    return text


def _p(row: pd.Series) -> str:
    return f"{row['p_paired']:.3g} (n={row['paired_n']})" if _finite(row["p_paired"]) else "-"

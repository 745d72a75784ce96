"""Analysis of logged runs: load a sweep or an experiment from MLflow, aggregate over seeds,
compare each variant with its baseline, plot, and picture DAT's sampling points.

The report (``python -m dat_exp.report``) and ``notebooks/ablation_analysis.ipynb`` both use
these functions.
"""

from dat_exp.analysis.compare import Baseline, compare, find_baseline, find_baselines
from dat_exp.analysis.load import (
    AnalysisError,
    RunSet,
    default_tracking_uri,
    epoch_history,
    latest_sweep,
    load_runs,
)
from dat_exp.analysis.plots import (
    curves_figure,
    delta_heatmap,
    pareto_mask,
    save_png,
    tradeoff_figure,
)
from dat_exp.analysis.sampling import record_positions, sampling_figure, sampling_picture
from dat_exp.analysis.stats import (
    Decision,
    Verdict,
    WelchTest,
    aggregate,
    decide_family,
    identical_seed_warnings,
    interval,
    paired_p_value,
    repeated_seed_notes,
    seed_values,
    summarise,
    t_quantile,
    welch_interval,
    welch_test,
)
from dat_exp.analysis.summary import Analysis, analyse, failures_table, table

__all__ = [
    "Analysis",
    "AnalysisError",
    "Baseline",
    "Decision",
    "RunSet",
    "Verdict",
    "WelchTest",
    "aggregate",
    "analyse",
    "compare",
    "decide_family",
    "curves_figure",
    "default_tracking_uri",
    "delta_heatmap",
    "epoch_history",
    "failures_table",
    "find_baseline",
    "find_baselines",
    "identical_seed_warnings",
    "interval",
    "latest_sweep",
    "load_runs",
    "paired_p_value",
    "pareto_mask",
    "record_positions",
    "repeated_seed_notes",
    "sampling_figure",
    "sampling_picture",
    "save_png",
    "seed_values",
    "summarise",
    "t_quantile",
    "table",
    "tradeoff_figure",
    "welch_interval",
    "welch_test",
]

"""Analysis of logged runs: load a sweep or an experiment from MLflow, aggregate over seeds,
compare each variant with its baseline, plot, and picture DAT's sampling points.

The report (``python -m dat_exp.report``) and ``notebooks/ablation_analysis.ipynb`` both use
these functions.
"""

from dat_exp.analysis.compare import compare, find_baseline
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
    aggregate,
    identical_seed_warnings,
    paired_p_value,
    summarise,
    t_quantile,
    welch_interval,
)
from dat_exp.analysis.summary import Analysis, analyse, failures_table, table

__all__ = [
    "Analysis",
    "AnalysisError",
    "RunSet",
    "aggregate",
    "analyse",
    "compare",
    "curves_figure",
    "default_tracking_uri",
    "delta_heatmap",
    "epoch_history",
    "failures_table",
    "find_baseline",
    "identical_seed_warnings",
    "latest_sweep",
    "load_runs",
    "paired_p_value",
    "pareto_mask",
    "record_positions",
    "sampling_figure",
    "sampling_picture",
    "save_png",
    "summarise",
    "t_quantile",
    "table",
    "tradeoff_figure",
    "welch_interval",
]

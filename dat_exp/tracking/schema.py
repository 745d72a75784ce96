"""Every name the harness writes to MLflow and reads back: one home each.

Writers (runner, epoch logger, sweep, notes) and readers (analysis, report, notebook, tests)
import the names from here, so a metric or a tag is spelled once. Naming scheme:

- final metrics unprefixed (``mAP50-95``); per-epoch series ``val/…`` and ``train/…``; the
  held-out split ``test/…``; sub-metrics by suffix (``mAP50-95_small``), never by a new path
  level; DAT diagnostics ``dat/L{layer}/…``; MLflow's own system metrics ``system/…``.
- tags of the harness ``dat_exp.…``; MLflow's reserved tags ``mlflow.…``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dat_exp.env import runs_dir


# -- metrics -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    """One final metric: its key, how to show it, and how statistics treat it."""

    name: str
    label: str
    digits: int
    higher_is_better: bool | None  # None: no better direction
    over_seeds: bool  # changes with the seed: aggregated over seeds with an interval
    host_dependent: bool = False  # a property of the machine it ran on as much as of the model


MAP50_95 = "mAP50-95"
MAP50 = "mAP50"
PRECISION = "precision"
RECALL = "recall"
GFLOPS = "gflops"
GFLOPS_ULTRALYTICS = "gflops_ultralytics"
PARAMS = "params"
LATENCY_MS = "latency_ms"
LATENCY_P90_MS = "latency_p90_ms"
TRAIN_TIME_S = "train_time_s"
PEAK_MEM_MB = "peak_mem_mb"

METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(MAP50_95, MAP50_95, 4, True, True),
        MetricSpec(MAP50, MAP50, 4, True, True),
        MetricSpec(PRECISION, "precision", 4, True, True),
        MetricSpec(RECALL, "recall", 4, True, True),
        MetricSpec(GFLOPS, "GFLOPs (exact, at the training size)", 2, False, False),
        MetricSpec(GFLOPS_ULTRALYTICS, "GFLOPs (Ultralytics' count)", 2, False, False),
        MetricSpec(PARAMS, "parameters", 0, False, False),
        MetricSpec(LATENCY_MS, "latency (ms, median, batch 1)", 2, False, True, True),
        MetricSpec(LATENCY_P90_MS, "latency p90 (ms, batch 1)", 2, False, True, True),
        MetricSpec(TRAIN_TIME_S, "training time (s)", 1, False, True, True),
        MetricSpec(PEAK_MEM_MB, "peak GPU memory (MB)", 0, False, True, True),
    )
}
HEADLINE = MAP50_95  # the metric a verdict is about unless told otherwise
# What a seed should change: compared with a test; zero spread is never evidence.
QUALITY = tuple(name for name, m in METRICS.items() if m.over_seeds and not m.host_dependent)

# Per-epoch series and other families: a prefix (or suffix) joined to a final metric's name.
VAL = "val/"
TRAIN = "train/"
TEST = "test/"
DAT = "dat/"
SYSTEM = "system/"


def val(metric: str) -> str:
    """The per-epoch validation series of a final metric: ``val/mAP50-95``; also of its
    ``test/`` twin, since the held-out split is evaluated once, never per epoch."""
    return VAL + metric.removeprefix(TEST)


def held_out(metric: str) -> str:
    """The held-out (test) split's value of a final metric: ``test/mAP50-95``."""
    return TEST + metric


# The metrics the held-out split gets: the best (val-selected) weights evaluated once on test.
HELD_OUT = (MAP50, MAP50_95, PRECISION, RECALL)


def sub(metric: str, part: str) -> str:
    """A sub-metric by suffix: ``sub("mAP50-95", "small")`` -> ``mAP50-95_small``."""
    return f"{metric}_{part}"


# What each DAT module did, per epoch: ``dat_diagnostic(layer, name)`` for each name here.
OFFSET_CELLS = "offset_cells"  # mean |sampled - reference| position, in key-grid cells
OFFSET_CELLS_P95 = "offset_cells_p95"
AT_BOUND = "at_bound"  # fraction of sampled positions at their bound
ATTN_ENTROPY = "attn_entropy"  # mean attention entropy / log(keys): 1 = uniform
GAMMA = "gamma"  # mean |γ| of the module's LayerScale, when it has one
DAT_DIAGNOSTICS = (OFFSET_CELLS, OFFSET_CELLS_P95, AT_BOUND, ATTN_ENTROPY, GAMMA)


def dat_diagnostic(layer: int, name: str) -> str:
    """A DAT module's diagnostic: ``dat/L15/offset_cells``."""
    return f"{DAT}L{layer}/{name}"


def spec(name: str) -> MetricSpec:
    """The registry entry of a final metric, also for its ``test/`` twin."""
    base = name.removeprefix(TEST)
    if base not in METRICS:
        raise KeyError(f"metric {name!r} is not one of {', '.join(METRICS)}")
    return METRICS[base]


def is_final(name: str) -> bool:
    """A run-level metric (not a per-epoch, diagnostic or system series)."""
    return "/" not in name.removeprefix(TEST)


# -- tags ----------------------------------------------------------------------------------------
class Tag:
    """Tag keys. ``dat_exp.*`` are the harness's own; the rest are MLflow's or shared names."""

    # what a run is
    CONFIG_HASH = "dat_exp.config_hash"
    VARIANT_HASH = "dat_exp.variant_hash"
    VARIANT = "dat_exp.variant"
    CODE_VERSION = "dat_exp.code_version"
    # provenance
    GIT_COMMIT = "dat_exp.git_commit"
    GIT_DIRTY = "dat_exp.git_dirty"
    TORCH_VERSION = "torch_version"
    ULTRALYTICS_VERSION = "ultralytics_version"
    MACHINE = "host"
    DEVICE_NAME = "device_name"
    DEVICE_TYPE = "device_type"
    BASELINE_HASH = "dat_exp.baseline_hash"  # variant hash of the placement=none twin
    # how it went
    TEST_SKIPPED = "dat_exp.test_skipped"  # why a run has no test/* metrics
    ERROR = "dat_exp.error"
    LAST_EPOCH = "dat_exp.last_epoch"
    BATCH_CHANGED = "dat_exp.batch_changed"
    # who owns a RUNNING run (stale-run detection)
    OWNER_HOST = "dat_exp.host"
    OWNER_PID = "dat_exp.pid"
    HEARTBEAT = "dat_exp.heartbeat"
    # a sweep (parent run)
    SWEEP = "dat_exp.sweep"
    OVERRIDES = "dat_exp.overrides"
    BEST_VALUE = "dat_exp.best_value"
    BEST_PARAMS = "dat_exp.best_params"
    NOTE_SECTION = "dat_exp.note."  # + section name: that section's Markdown, whole
    REUSED = "dat_exp.reused."  # + config hash: the FINISHED run a job of the sweep skipped for
    # a racing sweep (parent run)
    RACING_METRIC = "dat_exp.racing.metric"  # the metric racing decides on, fixed at start
    RACING_SETTINGS = "dat_exp.racing.settings"  # seeds_min/max/step, alpha, target_delta (JSON)
    RACING_DECISION = "dat_exp.racing.decision."  # + variant hash: its decision (JSON)
    # MLflow's own
    PARENT = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    NOTE = "mlflow.note.content"  # the run page's description (Markdown)
    EXPERIMENT_KIND = "mlflow.experimentKind"
    DATA_CONTEXT = "mlflow.data.context"


def search_tag(key: str) -> str:
    """A tag key quoted for an MLflow search filter: ``tags.`dat_exp.config_hash```."""
    return f"tags.`{key}`"


# -- the store -----------------------------------------------------------------------------------
DEFAULT_EXPERIMENT = "dat-exp"
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag's value (the run description is a tag)


def default_tracking_uri() -> str:
    """The embedded store: ``sqlite:///<runs>/mlflow.db``."""
    return f"sqlite:///{runs_dir() / 'mlflow.db'}"

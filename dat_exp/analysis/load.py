"""Runs of an experiment, or of one sweep, from any MLflow store into tidy DataFrames.

One row per run; parent (sweep) runs are left out. Runs that did not finish go to a separate
failures table, never into a mean; a failure whose config later finished is marked superseded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from dat_exp.tracking.schema import (
    DEFAULT_EXPERIMENT,
    HEADLINE,
    Tag,
    default_tracking_uri,
    is_final,
    search_tag,
    val,
)

# tag -> column; params keep their names (placement, dat.*, seed, ...)
TAGS = {
    Tag.VARIANT_HASH: "variant_hash",
    Tag.CONFIG_HASH: "config_hash",
    Tag.CODE_VERSION: "code_version",
    Tag.BASELINE_HASH: "baseline_hash",
    Tag.DEVICE_TYPE: "device_type",
    Tag.DEVICE_NAME: "device_name",
    Tag.ERROR: "error",
    Tag.PARENT: "parent_run_id",
    Tag.RUN_NAME: "run_name",
}
IDS = ["run_id", "run_name", "parent_run_id", "experiment_id", "status", "start_time", "end_time"]
CONFIG = [
    "variant",
    "variant_hash",
    "config_hash",
    "code_version",
    "baseline_hash",
    "placement",
    "levels",
    "model",
    "data",
    "train",
    "seed",
    "device",
    "device_type",
    "device_name",
]
FAILURE_COLUMNS = [
    "run_id",
    "run_name",
    "variant",
    "seed",
    "status",
    "error",
    "config_hash",
    "superseded",
    "superseded_by",
    "start_time",
]
RACING_COLUMNS = ["variant_hash", "variant", "decision", "round", "n", "delta", "stopped_early"]


class AnalysisError(Exception):
    """A problem the user can fix (no store, no such experiment or sweep, nothing finished)."""


@dataclass(frozen=True)
class RacingRecord:
    """What a racing sweep recorded on its parent run: the metric, the settings, one decision
    per DAT variant (none yet when the race did not finish)."""

    metric: str
    settings: dict[str, Any]  # seeds_min, seeds_max, seeds_step, alpha, target_delta, rounds
    decisions: pd.DataFrame  # RACING_COLUMNS, one row per variant, by variant name


@dataclass
class RunSet:
    """The runs chosen for analysis, and the experiment they come from."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    sweep_id: str | None
    sweep_name: str | None
    runs: pd.DataFrame  # FINISHED runs of the selection, one row per run; ``reused`` column
    failures: pd.DataFrame  # the selection's runs that did not finish
    # FINISHED runs of the whole experiment, every code version: where baselines are found
    pool: pd.DataFrame
    # FINISHED runs left out because their variant has runs of a newer code version
    set_aside: pd.DataFrame = field(default_factory=pd.DataFrame)
    pooled_code_versions: bool = False  # runs of every code version pooled, on request
    racing: RacingRecord | None = None  # the sweep's racing record; None: not a racing sweep

    @property
    def name(self) -> str:
        """A file-system-safe name for reports."""
        raw = f"sweep-{self.sweep_id[:12]}" if self.sweep_id else f"experiment-{self.experiment}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)


# -- the store ---------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """The given URI or the local store; a local SQLite file must already exist (MLflow would
    otherwise create an empty store, and every later message would be about the wrong file)."""
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(unquote(uri[len("sqlite:///") :].split("?")[0]))  # "/abs" or "relative"
        if not path.exists():
            raise AnalysisError(
                f"no MLflow store at {path}: run a sweep first (python -m dat_exp -m ...) "
                "or pass --tracking-uri"
            )
    return uri


@contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """``mlflow.search_runs`` reads the global tracking URI: point it at ``uri`` meanwhile."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def latest_sweep(tracking_uri: str | None = None, experiment: str | None = None) -> str:
    """The id of the most recently started sweep (parent run), in one experiment or in all."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    ids = (
        [_experiment(client, experiment, uri).experiment_id]
        if experiment
        else [e.experiment_id for e in client.search_experiments()]
    )
    found = (
        client.search_runs(
            ids,
            f"{search_tag(Tag.SWEEP)} = 'true'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if ids
        else []
    )
    if not found:
        where = f"experiment {experiment!r}" if experiment else uri
        raise AnalysisError(f"no sweep in {where}: run one with python -m dat_exp -m ...")
    return found[0].info.run_id


def _experiment(client: MlflowClient, name: str, uri: str) -> Any:
    found = client.get_experiment_by_name(name)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise AnalysisError(f"experiment {name!r} not found in {uri} (experiments: {known})")
    return found


def _sweep_run(client: MlflowClient, run_id: str, uri: str) -> Any:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise AnalysisError(f"sweep {run_id!r} not found in {uri}") from None
    if run.data.tags.get(Tag.SWEEP) != "true":
        raise AnalysisError(f"run {run_id!r} in {uri} is not a sweep (parent) run")
    return run


# -- loading -----------------------------------------------------------------------------------
def load_runs(
    experiment: str | None = None,
    sweep: str | None = None,
    tracking_uri: str | None = None,
    pool_code_versions: bool = False,
) -> RunSet:
    """The runs of ``sweep`` (a parent run id: its children and the finished runs its jobs
    were skipped for, column ``reused``) or of ``experiment`` (default ``dat-exp``).

    Per variant only the runs of its newest code version, unless ``pool_code_versions``.
    Raises AnalysisError, naming what was asked for, when it does not exist or has no FINISHED
    run.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    parent = _sweep_run(client, sweep, uri) if sweep else None
    if parent is not None:
        exp = client.get_experiment(parent.info.experiment_id)
    else:
        exp = _experiment(client, experiment or DEFAULT_EXPERIMENT, uri)
    with _tracking(uri):
        raw = mlflow.search_runs([exp.experiment_id], output_format="pandas")
    everything = tidy(raw)
    reused = reused_runs(parent)
    everything["reused"] = everything["run_id"].isin(reused)
    chosen = (everything["parent_run_id"] == sweep) | everything["reused"]
    selected = everything[chosen] if sweep else everything.assign(reused=False)
    finished = selected[selected["status"] == "FINISHED"].reset_index(drop=True)
    set_aside = finished.iloc[:0]
    if not pool_code_versions:
        finished, set_aside = newest_code_only(finished)
    what = f"sweep {sweep!r}" if sweep else f"experiment {exp.name!r}"
    if finished.empty:
        raise AnalysisError(_nothing_finished(what, selected))
    return RunSet(
        tracking_uri=uri,
        experiment=exp.name,
        experiment_id=exp.experiment_id,
        sweep_id=sweep,
        sweep_name=parent.info.run_name if parent is not None else None,
        runs=finished,
        failures=failures(selected, everything),
        pool=everything[everything["status"] == "FINISHED"].reset_index(drop=True),
        set_aside=set_aside,
        pooled_code_versions=pool_code_versions,
        racing=racing_record(parent),
    )


def reused_runs(parent: Any | None) -> set[str]:
    """Ids of the FINISHED runs a sweep's jobs were skipped for (its ``dat_exp.reused.*``
    tags): a sweep run again after an interruption reports every job, not only the new ones."""
    if parent is None:
        return set()
    return {v for k, v in parent.data.tags.items() if k.startswith(Tag.REUSED)}


def racing_record(parent: Any | None) -> RacingRecord | None:
    """The racing record of a sweep's parent run (its ``dat_exp.racing.*`` tags); None for an
    experiment or a sweep that did not race. Read from tags, so analysis needs no racing code."""
    tags = parent.data.tags if parent is not None else {}
    if Tag.RACING_METRIC not in tags:
        return None
    rows = [
        {"variant_hash": key[len(Tag.RACING_DECISION) :], **_json_tag(tags, key)}
        for key in tags
        if key.startswith(Tag.RACING_DECISION)
    ]
    decisions = pd.DataFrame(rows).reindex(columns=RACING_COLUMNS)
    decisions = decisions.sort_values("variant", kind="stable").reset_index(drop=True)
    return RacingRecord(tags[Tag.RACING_METRIC], _json_tag(tags, Tag.RACING_SETTINGS), decisions)


def _json_tag(tags: dict[str, str], key: str) -> dict[str, Any]:
    """A JSON object tag; AnalysisError naming the tag when it is missing or not one (a store
    edited by hand), rather than a stack trace or a report without it."""
    try:
        value = json.loads(tags[key])
    except (KeyError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise AnalysisError(
            f"racing tag {key!r} is missing or not a JSON object: {tags.get(key)!r}"
        )
    return value


def newest_code_only(finished: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(kept, set aside)``: per variant, the runs of the code version of its newest run; runs
    of other code are never pooled with them silently (a fix would be averaged with the bug)."""
    versions = finished["code_version"].fillna("not recorded")
    newest = versions.groupby(finished["variant_hash"]).last()  # finished is in start order
    keep = versions == finished["variant_hash"].map(newest)
    return finished[keep].reset_index(drop=True), finished[~keep].reset_index(drop=True)


def set_aside_warning(runset: RunSet) -> list[str]:
    """One line per variant with runs of older code left out of its statistics, or the one
    line saying that code versions were pooled on request."""
    if runset.pooled_code_versions:
        versions = ", ".join(sorted(runset.runs["code_version"].fillna("not recorded").unique()))
        return [f"NOTE: --pool-code-versions: runs of code versions {versions} pooled"]
    lines = []
    for variant, runs in runset.set_aside.groupby("variant", sort=False):
        versions = ", ".join(sorted(runs["code_version"].fillna("not recorded").unique()))
        lines.append(
            f"NOTE: variant {variant}: {len(runs)} run(s) of older code (code version "
            f"{versions}) set aside; only its newest code version's runs are in its statistics"
        )
    return lines


def _nothing_finished(what: str, selected: pd.DataFrame) -> str:
    if selected.empty:
        return f"{what} has no runs"
    first = selected.iloc[0]
    reason = f"; first error: {first['error']}" if isinstance(first["error"], str) else ""
    return f"{what} has no FINISHED runs ({len(selected)} not finished{reason})"


def tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """``mlflow.search_runs``' frame -> one row per (non-parent) run with plain column names:
    ids, config (params and tags), final metrics (per-epoch series left out), error."""
    if raw.empty:
        return pd.DataFrame(columns=IDS + CONFIG + ["error"])
    is_parent = _column(raw, f"tags.{Tag.SWEEP}") == "true"
    raw = raw[~is_parent & _column(raw, f"tags.{Tag.VARIANT_HASH}").notna()]
    out = raw[["run_id", "experiment_id", "status", "start_time", "end_time"]].copy()
    for tag, column in TAGS.items():
        out[column] = _column(raw, f"tags.{tag}")
    params = {c[len("params.") :]: raw[c] for c in raw.columns if c.startswith("params.")}
    for name, values in params.items():
        if name != "placement.levels":
            out[name] = coerce(values)
    out["levels"] = _column(raw, "params.placement.levels").map(_levels)
    metrics = sorted(
        c for c in raw.columns if c.startswith("metrics.") and is_final(c[len("metrics.") :])
    )
    for column in metrics:
        out[column[len("metrics.") :]] = raw[column].astype(float)
    for column in IDS + CONFIG:
        if column not in out:
            out[column] = None
    first = IDS + CONFIG
    out = out.sort_values("start_time", kind="stable")  # job order: a sweep's baseline first
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)


def _levels(value: Any) -> str:
    """The JSON list of levels as ``P3,P4`` (hashable, readable); ``""`` for none."""
    if not isinstance(value, str):
        return ""
    try:
        return ",".join(json.loads(value))
    except (ValueError, TypeError):
        return value


def coerce(values: pd.Series) -> pd.Series:
    """MLflow params are strings: numbers and booleans back to their types, where all agree."""
    present = values.dropna()
    if not present.empty and present.isin(["True", "False"]).all():
        return values.map({"True": True, "False": False})
    numbers = pd.to_numeric(present, errors="coerce")
    if present.empty or numbers.isna().any():
        return values
    whole = present.astype(str).str.fullmatch(r"-?\d+").all()  # "-1.0" stays a float
    return pd.to_numeric(values).astype("Int64" if whole else float)


def failures(selected: pd.DataFrame, everything: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish; ``superseded`` where their config later FINISHED."""
    failed = selected[selected["status"] != "FINISHED"].copy()
    done = everything[everything["status"] == "FINISHED"]
    failed["superseded_by"] = [_later_finished(row, done) for _, row in failed.iterrows()]
    failed["superseded"] = failed["superseded_by"].notna()
    return failed.reindex(columns=FAILURE_COLUMNS).reset_index(drop=True)


def _later_finished(row: pd.Series, done: pd.DataFrame) -> str | None:
    same = done["config_hash"] == row["config_hash"]
    later = done[same & (done["start_time"] > row["start_time"])]
    return later["run_id"].iloc[0] if not later.empty else None


# -- per-run extras ----------------------------------------------------------------------------
def epoch_history(
    runs: pd.DataFrame, key: str = val(HEADLINE), tracking_uri: str | None = None
) -> pd.DataFrame:
    """Per-epoch series of ``key`` for every run: run_id, variant_hash, variant, seed, step,
    value."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    rows = [
        {
            "run_id": run.run_id,
            "variant_hash": run.variant_hash,
            "variant": run.variant,
            "seed": run.seed,
            "step": m.step,
            "value": m.value,
        }
        for run in runs.itertuples()
        for m in client.get_metric_history(run.run_id, key)
    ]
    columns = ["run_id", "variant_hash", "variant", "seed", "step", "value"]
    return pd.DataFrame(rows, columns=columns)


def download_artifact(tracking_uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    """One artifact of a run into ``dst``; None when the run has no such artifact."""
    dst.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars on stderr
    try:
        return Path(MlflowClient(tracking_uri).download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError):
        return None


def run_config(tracking_uri: str, run_id: str) -> dict[str, Any] | None:
    """The resolved config a run logged (``config.yaml``), or None without one."""
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifact(tracking_uri, run_id, "config.yaml", Path(tmp))
        return yaml.safe_load(path.read_text()) if path else None

"""The MLflow store: URI, experiment, runs. Explicit run ids throughout (no active-run state),
so that parents, children and callbacks work across processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from dat_exp.env import runs_dir

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # runs table, not GenAI
PARENT_ENV = "DAT_EXP_PARENT_RUN_ID"  # children started in other processes nest under it


def tracking_uri(tracking: dict[str, Any]) -> str:
    if tracking.get("uri"):
        return str(tracking["uri"])
    return f"sqlite:///{runs_dir() / 'mlflow.db'}"


def client_for(tracking: dict[str, Any]) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri(tracking))


def experiment_id(client: MlflowClient, name: str, local: bool) -> str:
    """Get or create the experiment; artifacts of a local store go under runs/, not ./mlruns."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    location = (runs_dir() / "mlartifacts" / name).as_uri() if local else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:  # another process created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(
    client: MlflowClient,
    exp_id: str,
    name: str,
    tags: dict[str, str],
    parent_id: str | None = None,
) -> str:
    tags = dict(tags)
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    return client.create_run(exp_id, run_name=name, tags=tags).info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def log_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0
) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i : i + 500])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_file(client: MlflowClient, run_id: str, path: Path, folder: str | None = None) -> None:
    if Path(path).exists():
        client.log_artifact(run_id, str(path), folder)


def log_dataset(client: MlflowClient, run_id: str, name: str, digest: str, source: Path) -> None:
    """Record the dataset as an MLflow dataset input (name, digest, source)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    dataset = MetaDataset(LocalArtifactDatasetSource(str(source)), name=name, digest=digest)
    entry = DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "train")])
    client.log_inputs(run_id, datasets=[entry])


def parent_run_from_env() -> str | None:
    return os.environ.get(PARENT_ENV) or None

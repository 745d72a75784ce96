"""The MLflow store: URI, experiment, runs. Explicit run ids throughout (no active-run state),
so that parents, children and callbacks work across processes."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from dat_exp.env import runs_dir
from dat_exp.tracking.schema import Tag, default_tracking_uri, search_tag

EXPERIMENT_KIND = {Tag.EXPERIMENT_KIND: "custom_model_development"}  # runs table, not GenAI
PARENT_ENV = "DAT_EXP_PARENT_RUN_ID"  # children started in other processes nest under it


STALE_AFTER_S = 600  # a RUNNING run whose heartbeat is older than this has lost its process
HEARTBEAT_S = 60


def tracking_uri(tracking: dict[str, Any]) -> str:
    if tracking.get("uri"):
        return str(tracking["uri"])
    return default_tracking_uri()


def client_for(tracking: dict[str, Any]) -> RetryingClient:
    uri = tracking_uri(tracking)
    if not uri.startswith("sqlite:///"):
        return RetryingClient(uri)
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # MLflow creates and migrates the schema on first open; two processes doing it at once
    # corrupt it, so the first open of each process is serialised by a file lock.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            prepare_sqlite(path)
            client = RetryingClient(uri)
            client.search_experiments(max_results=1)  # creates the store now, under the lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


def prepare_sqlite(path: Path) -> None:
    """WAL mode lets readers and one writer work at once; it is a property of the file, so
    setting it once serves every process that opens the store later."""
    with sqlite3.connect(path, timeout=60) as db:
        db.execute("PRAGMA journal_mode=WAL")


def _retrying(method):
    """Retry a store call while SQLite reports the database as locked (other writers)."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        for attempt in range(8):
            try:
                return method(*args, **kwargs)
            except (MlflowException, sqlite3.OperationalError) as err:
                if "locked" not in str(err) or attempt == 7:
                    raise
                time.sleep(0.1 * 2**attempt * (1 + random.random()))
        return None

    return call


class RetryingClient:
    """``MlflowClient`` whose calls retry with backoff on a locked SQLite store."""

    def __init__(self, uri: str) -> None:
        self.tracking_uri = uri
        self._client = MlflowClient(tracking_uri=uri)

    def __reduce__(self):
        # Pickled by URI: Ultralytics' multi-GPU workers unpickle the trainer's callbacks in
        # fresh processes, where a live database connection would not survive.
        return RetryingClient, (self.tracking_uri,)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        return _retrying(attr) if callable(attr) else attr


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
        tags[Tag.PARENT] = parent_id
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
    entry = DatasetInput(dataset._to_mlflow_entity(), [InputTag(Tag.DATA_CONTEXT, "train")])
    client.log_inputs(run_id, datasets=[entry])


def parent_run_from_env() -> str | None:
    return os.environ.get(PARENT_ENV) or None


def owner_tags() -> dict[str, str]:
    """Who runs a run: recognised later if the process is gone."""
    return {
        Tag.OWNER_HOST: socket.gethostname(),
        Tag.OWNER_PID: str(os.getpid()),
        Tag.HEARTBEAT: str(int(time.time())),
    }


def start_heartbeat(client: Any, run_id: str) -> threading.Event:
    """Refresh the run's heartbeat tag until the returned event is set."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is not worth a job
                client.set_tag(run_id, Tag.HEARTBEAT, str(int(time.time())))

    threading.Thread(target=beat, daemon=True, name=f"heartbeat-{run_id[:8]}").start()
    return stop


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(tags: dict[str, str], now: float | None = None) -> bool:
    """A RUNNING run whose owner is gone: its process is not alive on this host, or its
    heartbeat is older than ``STALE_AFTER_S``."""
    now = time.time() if now is None else now
    pid = tags.get(Tag.OWNER_PID, "")
    same_host = tags.get(Tag.OWNER_HOST) == socket.gethostname()
    if same_host and pid.isdigit() and not _process_alive(int(pid)):
        return True
    heartbeat = tags.get(Tag.HEARTBEAT, "")
    return heartbeat.isdigit() and now - int(heartbeat) > STALE_AFTER_S


def runs_of_config(client: Any, exp_id: str, config_hash: str, status: str) -> list:
    """Runs of one config hash with one status, newest first."""
    return client.search_runs(
        [exp_id],
        f"{search_tag(Tag.CONFIG_HASH)} = '{config_hash}' and attributes.status = '{status}'",
        order_by=["attributes.start_time DESC"],
    )


def mark_stale_runs_killed(client: Any, exp_id: str, config_hash: str) -> list[str]:
    """Mark RUNNING runs of this config whose process is gone as KILLED; return their ids."""
    killed = []
    for run in runs_of_config(client, exp_id, config_hash, "RUNNING"):
        if is_stale(run.data.tags):
            client.set_tag(run.info.run_id, Tag.ERROR, "process gone (found RUNNING later)")
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    return killed

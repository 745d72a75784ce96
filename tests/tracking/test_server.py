"""tracking=server: a job logs to a running MLflow tracking server (started as `make server`
starts it: a database backend, its own artifact root, bound to loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.runner.entry import TINY, run_entry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    root = tmp_path / "server"
    root.mkdir()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.5)
    yield uri, root
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_job_logs_to_the_tracking_server(server, workdir):
    uri, root = server
    out = run_entry(
        workdir,
        *TINY,
        "train.epochs=1",
        "placement=sppf",
        "tracking=server",
        f"tracking.uri={uri}",
        "tracking.experiment=team",
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["gflops"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model.yaml", "results.csv"} <= artifacts
    assert any((root / "artifacts").rglob("config.yaml")), "artifacts live under the server's root"
    assert not (workdir / "runs" / "mlflow.db").exists(), "no local store on the server path"

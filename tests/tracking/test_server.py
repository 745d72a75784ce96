"""tracking=server: a job logs to a running MLflow tracking server (started as `make server`
starts it: a database backend, its own artifact root, bound to loopback), over SQLite and, where
PostgreSQL is installed, over a throwaway PostgreSQL cluster (skipped, with the reason, if not)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dat_exp.tracking import schema
from tests.runner.entry import TINY, run_entry
from tests.tracking.mlflow_server import free_port, mlflow_server


def as_pg_owner(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as `nobody` then."""
    return ["runuser", "-u", "nobody", "--", *cmd] if os.geteuid() == 0 else cmd


def pg_run(cmd: list[str], home: Path, check: bool = True) -> None:
    out = subprocess.run(as_pg_owner(cmd), cwd=home, capture_output=True, text=True)
    if check and out.returncode != 0:
        log = home / "log"
        raise RuntimeError(
            f"{cmd[0]} failed: {out.stdout}{out.stderr}{log.read_text() if log.exists() else ''}"
        )


def postgres_uri() -> Iterator[str]:
    """Start a trust-auth cluster on loopback in a temporary directory, yield a database URI
    for it, and stop it afterwards."""
    missing = [tool for tool in ("initdb", "pg_ctl") if shutil.which(tool) is None]
    missing += [] if importlib.util.find_spec("psycopg2") else ["psycopg2"]
    if missing:
        pytest.skip(f"PostgreSQL backend: {', '.join(missing)} not found")
    import psycopg2

    # Not under tmp_path: pytest keeps that private to root, out of reach of `nobody`.
    home = Path(tempfile.mkdtemp(prefix="dat-exp-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "nobody")
    data, port = str(home / "data"), free_port()
    try:
        pg_run(["initdb", "-D", data, "-U", "mlflow", "--auth=trust", "--no-sync"], home)
        opts = f"-h 127.0.0.1 -p {port} -k {home} -c fsync=off"
        try:
            pg_run(["pg_ctl", "start", "-w", "-D", data, "-l", str(home / "log"), "-o", opts], home)
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            conn.cursor().execute("CREATE DATABASE mlflow")
            conn.close()
            # Driver named: SQLAlchemy >= 2.1 maps a bare postgresql:// to psycopg 3.
            yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
        finally:  # whatever happened: no cluster outlives the test
            pg_run(["pg_ctl", "stop", "-m", "fast", "-D", data], home, check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        yield from postgres_uri()


@pytest.fixture
def server(tmp_path: Path, backend_uri: str) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "server"
    with mlflow_server(backend_uri, root) as uri:
        yield uri, root


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
    assert run.info.status == "FINISHED" and run.data.metrics[schema.GFLOPS] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model.yaml", "results.csv"} <= artifacts
    assert any((root / "artifacts").rglob("config.yaml")), "artifacts live under the server's root"
    assert not (workdir / "runs" / "mlflow.db").exists(), "no local store on the server path"

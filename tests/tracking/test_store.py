"""The MLflow store under concurrent writers, and stale-run recognition."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

from mlflow import MlflowClient

from dat_exp.tracking.schema import Tag
from dat_exp.tracking.store import STALE_AFTER_S, is_stale

WRITER = textwrap.dedent(
    """
    import sys, time
    from dat_exp.tracking.store import (client_for, experiment_id, log_metrics, log_params,
                                        start_run)
    start_at, name = float(sys.argv[1]), sys.argv[2]
    while time.time() < start_at:  # every writer starts at the same moment
        time.sleep(0.005)
    tracking = {"uri": None, "experiment": "concurrent"}
    client = client_for(tracking)
    exp = experiment_id(client, "concurrent", local=True)
    run = start_run(client, exp, name, {"writer": name})
    log_params(client, run, {f"p{i}": i for i in range(30)})
    for step in range(1, 21):
        log_metrics(client, run, {f"m{i}": step * i for i in range(10)}, step=step)
    client.set_terminated(run, "FINISHED")
    """
)


def test_four_processes_log_into_one_sqlite_store(tmp_path):
    env = {**os.environ, "DAT_EXP_RUNS": str(tmp_path / "runs")}
    start_at = time.time() + 8  # after every interpreter has imported MLflow
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(start_at), f"w{i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-1500:] for o in outputs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiments = [e for e in client.search_experiments() if e.name == "concurrent"]
    assert len(experiments) == 1, "the experiment is created once"
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.data.tags["writer"] for r in runs) == ["w0", "w1", "w2", "w3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert len(run.data.params) == 30 and len(run.data.metrics) == 10
        history = client.get_metric_history(run.info.run_id, "m3")
        assert [m.step for m in history] == list(range(1, 21))
        assert [m.value for m in history] == [3.0 * s for s in range(1, 21)]


def test_a_run_whose_process_is_gone_is_stale():
    host = socket.gethostname()
    now = time.time()
    fresh = str(int(now))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert is_stale({Tag.OWNER_HOST: host, Tag.OWNER_PID: str(dead.pid), Tag.HEARTBEAT: fresh})
    alive = {Tag.OWNER_HOST: host, Tag.OWNER_PID: str(os.getpid()), Tag.HEARTBEAT: fresh}
    assert not is_stale(alive)
    elsewhere = {Tag.OWNER_HOST: "another-node", Tag.OWNER_PID: "1", Tag.HEARTBEAT: fresh}
    assert not is_stale(elsewhere), "another host's process cannot be checked: trust its heartbeat"
    old = str(int(now - STALE_AFTER_S - 5))
    assert is_stale({**elsewhere, Tag.HEARTBEAT: old}), "a lost node stops beating"

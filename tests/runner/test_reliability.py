"""A long sweep survives failures, interruptions and bad input, and loses nothing."""

from __future__ import annotations

import signal
import time

import pytest

from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag
from tests.runner.entry import TINY, local_runs, local_store, run_entry, start_entry


def children(workdir) -> list:
    runs = local_runs(workdir, order_by=["attributes.start_time ASC"])
    return [r for r in runs if Tag.SWEEP not in r.data.tags]


def wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001  (the store may not exist yet)
            pass
        time.sleep(0.5)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
def test_the_middle_job_fails_and_the_sweep_goes_on(workdir):
    out = run_entry(workdir, "-m", "fault=null,raise,off", *TINY, "train.epochs=1")
    assert out.returncode == 1, out.stdout[-2000:]
    runs = children(workdir)
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED", "FINISHED"]
    failed = runs[1]
    assert failed.data.tags[Tag.ERROR].startswith("FaultInjected: fault=raise")
    artifacts = {a.path for a in local_store(workdir).list_artifacts(failed.info.run_id)}
    assert "traceback.txt" in artifacts
    table = out.stdout[out.stdout.index(" job ") :]
    assert table.count("FINISHED") == 2 and "FAILED FaultInjected" in table
    parent = [r for r in local_runs(workdir) if Tag.SWEEP in r.data.tags]
    assert parent[0].info.status == "FAILED"


@pytest.mark.slow
def test_divergence_stops_the_job_with_its_epoch(workdir):
    out = run_entry(workdir, "fault=nan", *TINY)
    assert out.returncode == 1
    (run,) = children(workdir)
    assert run.info.status == "FAILED"
    assert run.data.tags[Tag.ERROR].startswith("Diverged: non-finite training loss")
    assert "in epoch 1" in run.data.tags[Tag.ERROR]


@pytest.mark.slow
def test_sigterm_then_rerun_skips_what_finished(workdir):
    overrides = ["-m", "seed=0,1", *TINY, "train.epochs=6"]
    proc = start_entry(workdir, *overrides)
    wait_for(lambda: [r.info.status for r in children(workdir)] == ["FINISHED", "RUNNING"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    first = children(workdir)
    assert [r.info.status for r in first] == ["FINISHED", "KILLED"]
    assert Tag.LAST_EPOCH in first[1].data.tags

    again = run_entry(workdir, *overrides)
    assert again.returncode == 0, again.stdout[-2000:]
    assert f"skipped: done in run {first[0].info.run_id}" in again.stdout
    runs = children(workdir)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    hashes = [r.data.tags[Tag.CONFIG_HASH] for r in finished]
    assert len(finished) == 2 and len(set(hashes)) == 2, "exactly one FINISHED run per config"


@pytest.mark.slow
def test_kill_9_leaves_a_run_that_the_next_invocation_marks_killed(workdir):
    proc = start_entry(workdir, *TINY, "train.epochs=6")
    wait_for(lambda: children(workdir)[0].info.status == "RUNNING")
    proc.kill()
    proc.wait(timeout=60)
    assert children(workdir)[0].info.status == "RUNNING"
    again = run_entry(workdir, *TINY, "train.epochs=6")
    assert again.returncode == 0, again.stdout[-2000:]
    runs = children(workdir)
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert "KILLED: its process is gone" in again.stdout


@pytest.mark.slow
def test_resume_continues_the_killed_run_from_its_last_epoch(workdir):
    overrides = [*TINY, "train.epochs=5"]
    proc = start_entry(workdir, *overrides)
    client = local_store(workdir)

    def two_epochs_logged() -> bool:
        run = children(workdir)[0]
        return len(client.get_metric_history(run.info.run_id, schema.val(schema.MAP50))) >= 2

    wait_for(two_epochs_logged)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    (killed,) = children(workdir)
    assert killed.info.status == "KILLED"
    done = int(killed.data.tags[Tag.LAST_EPOCH])
    assert done >= 2

    again = run_entry(workdir, *overrides, "resume=true")
    assert again.returncode == 0, again.stdout[-3000:]
    (run,) = children(workdir)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, schema.val(schema.MAP50))]
    assert sorted(steps) == [1, 2, 3, 4, 5], steps
    assert schema.MAP50 in run.data.metrics

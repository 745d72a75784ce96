"""Sweeps under Hydra's launcher plugins: parent run, nesting and duplicates work unchanged."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.runner.entry import TINY, run_entry


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(workdir):
    out = run_entry(
        workdir,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "placement=none,sppf,none",
        *TINY,
        "train.epochs=1",
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dat-exp").experiment_id])
    parents = [r for r in runs if r.data.tags.get("dat_exp.sweep") == "true"]
    assert len(parents) == 1, "the parent run is created once"
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["placement"] for r in kids) == ["none", "sppf"], (
        "the repeated placement=none job runs once, even in another process"
    )
    assert {r.info.status for r in kids} == {"FINISHED"}
    pids = {r.data.tags["dat_exp.pid"] for r in kids}
    assert len(pids) == 2, "each job ran in a worker process of its own"
    assert out.stdout.count("FINISHED") == 2


def test_slurm_launcher_config_composes(workdir):
    out = run_entry(
        workdir, "hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "--cfg", "hydra"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gpus_per_node: 1" in out.stdout and "partition: gpu" in out.stdout
    assert "SlurmLauncher" in out.stdout

"""Sweeps under Hydra's launcher plugins: parent run, nesting and duplicates work unchanged."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dat_exp import validate
from dat_exp.tracking.schema import Tag
from dat_exp.validate import InvalidJob, check_plugins
from tests.runner.entry import TINY, entry_env, local_runs, run_entry, start_entry
from tests.tracking.mlflow_server import free_port, mlflow_server

ROOT = Path(__file__).resolve().parents[2]


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
    runs = local_runs(workdir)
    parents = [r for r in runs if r.data.tags.get(Tag.SWEEP) == "true"]
    assert len(parents) == 1, "the parent run is created once"
    kids = [r for r in runs if r.data.tags.get(Tag.PARENT) == parents[0].info.run_id]
    assert sorted(r.data.params["placement"] for r in kids) == ["none", "sppf"], (
        "the repeated placement=none job runs once, even in another process"
    )
    assert {r.info.status for r in kids} == {"FINISHED"}
    pids = {r.data.tags[Tag.OWNER_PID] for r in kids}
    assert len(pids) == 2, "each job ran in a worker process of its own"
    assert out.stdout.count("FINISHED") == 2


def test_slurm_launcher_config_composes(workdir):
    out = run_entry(
        workdir, "hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "--cfg", "hydra"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gpus_per_node: 1" in out.stdout and "partition: gpu" in out.stdout
    assert "SlurmLauncher" in out.stdout


def ray_python() -> Path:
    """The Ray environment's interpreter (``make test`` creates it and names it)."""
    found = Path(os.environ.get("DAT_EXP_RAY_PYTHON", ROOT / ".venv-ray" / "bin" / "python"))
    if not found.exists():
        pytest.skip(f"no Ray environment at {found}: make venv-ray (make test creates it)")
    return found


@contextlib.contextmanager
def ray_cluster(python: Path, env: dict[str, str]) -> Iterator[str]:
    """A one-node Ray cluster on this machine, as a user would start one with ``ray start``
    (Ray binds to the machine's interface address: it refuses loopback)."""
    ray, port = str(python.with_name("ray")), free_port()
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
    start = [ray, "start", "--head", f"--port={port}"]
    start += ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]
    try:
        subprocess.run([*start, f"--temp-dir={temp}"], env=env, check=True, capture_output=True)
        yield f"127.0.0.1:{port}"  # the head's GCS answers on every address
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_joblib_and_ray_sweeps_at_once_log_to_one_tracking_server(workdir, tmp_path):
    """4 jobs on 2 joblib workers and 2 jobs on a Ray cluster, at the same time, logging to
    one real ``mlflow server``: 6 finished child runs under their two parents."""
    python = ray_python()
    common = [*TINY, "train.epochs=1", "tracking=server", "tracking.experiment=scale"]
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server") as uri:
        ray_dir = tmp_path / "ray-work"
        ray_dir.mkdir()
        env = entry_env(ray_dir) | {"RAY_USAGE_STATS_ENABLED": "0"}
        with ray_cluster(python, env) as address:
            joblib = start_entry(
                workdir,
                "-m",
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2",
                "placement=none,sppf",
                "seed=0,1",
                *common,
                f"tracking.uri={uri}",
            )
            ray = start_entry(
                ray_dir,
                "-m",
                "hydra/launcher=ray",
                f"hydra.launcher.ray.init.address={address}",
                "placement=neck,head",
                *common,
                f"tracking.uri={uri}",
                python=python,
            )
            outputs = [p.communicate(timeout=900)[0] for p in (joblib, ray)]
        for proc, out in zip((joblib, ray), outputs, strict=True):
            assert proc.returncode == 0, out[-3000:]
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("scale").experiment_id])
    parents = {r.info.run_id: r for r in runs if r.data.tags.get(Tag.SWEEP) == "true"}
    assert len(parents) == 2 and {p.info.status for p in parents.values()} == {"FINISHED"}
    kids = [r for r in runs if r.data.tags.get(Tag.PARENT) in parents]
    assert len(kids) == 6 == len(runs) - 2, "every job nested under its sweep's parent"
    assert {r.info.status for r in kids} == {"FINISHED"}
    by_parent = sorted(
        sorted(r.data.params["placement"] for r in kids if r.data.tags[Tag.PARENT] == p)
        for p in parents
    )
    assert by_parent == [["head", "neck"], ["none", "none", "sppf", "sppf"]]


def test_a_launcher_missing_from_this_environment_is_named_with_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if "ray" in name else real(name)
    )
    with pytest.raises(
        InvalidJob,
        match=r"hydra/launcher=ray_gpu needs hydra-ray-launcher.*"
        r"make venv-ray, then run .venv-ray/bin/python -m dat_exp",
    ):
        check_plugins(["-m", "placement=neck", "hydra/launcher=ray_gpu"])
    check_plugins(["-m", "hydra/launcher=joblib", "hparams_search=dat_budget"])  # installed


def test_multi_gpu_jobs_are_refused_where_cloudpickle_is_too_old(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.2.1")
    with pytest.raises(InvalidJob, match=r"device='0,1'.*cloudpickle>=3.1.1.*has 2.2.1"):
        validate._check_device("0,1")


def test_ray_workers_get_the_sweep_environment(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    from dat_exp.sweep import prepare_ray_launcher

    monkeypatch.setenv("DAT_EXP_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DAT_EXP_PARENT_RUN_ID", "abc")
    config = OmegaConf.create({"hydra": {"launcher": {"ray": {"init": {"address": None}}}}})
    OmegaConf.set_struct(config, True)
    prepare_ray_launcher(config, ("DAT_EXP_PARENT_RUN_ID", "DAT_EXP_DUPLICATE_JOBS"))
    init = config.hydra.launcher.ray.init
    assert OmegaConf.to_container(init.runtime_env) == {
        "env_vars": {"DAT_EXP_PARENT_RUN_ID": "abc", "DAT_EXP_RUNS": str(tmp_path / "runs")}
    }
    assert "object_store_memory" not in init  # a local instance: the launcher's default holds
    init.address = "10.0.0.1:6379"
    prepare_ray_launcher(config, ())
    assert init.object_store_memory is None  # Ray refuses it when joining a cluster
    joblib = OmegaConf.create({"hydra": {"launcher": {"n_jobs": 2}}})
    prepare_ray_launcher(joblib, ("DAT_EXP_PARENT_RUN_ID",))
    assert "runtime_env" not in str(joblib)  # other launchers' workers inherit the environment

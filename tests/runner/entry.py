"""Run the real entry point in a subprocess, offline, in a temporary working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

from dat_exp.tracking.schema import DEFAULT_EXPERIMENT

NETGUARD = Path(__file__).resolve().parent.parent / "netguard"

# A tiny synthetic dataset and a short smoke training: seconds per job on a CPU.
TINY = [
    "train=smoke",
    "train.epochs=2",
    "train.imgsz=128",
    "train.batch=8",
    "data.images=16",
    "data.val_images=8",
    "data.test_images=8",
    "data.imgsz=128",
]

# Calibrated, not vacuous: YOLOv8n reaches mAP50 0.85-0.95 here (~35 s a job on this CPU),
# so that statistics over these runs do not run on zeros (a test asserts mAP50 >= 0.1).
CALIBRATED = [
    "train=smoke",
    "train.epochs=15",
    "train.imgsz=96",
    "data.images=160",
    "data.val_images=16",
    "data.test_images=16",
    "data.imgsz=96",
    "data.classes=2",
    "data.clutter=0",
    "data.palette=1",
    "data.min_size=0.2",
    "data.max_size=0.5",
    "data.max_objects=4",
]


def entry_env(cwd: Path) -> dict[str, str]:
    """Integrations enabled (no PYTEST_CURRENT_TEST), a fresh HOME beside ``cwd``, and every
    network attempt recorded beside it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.pop("DAT_EXP_RUNS", None)
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "YOLO_OFFLINE"):
        env.pop(key, None)  # the child must set up its own environment
    home = cwd.parent / f"{cwd.name}-home"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        PYTHONPATH=str(NETGUARD),
        DAT_EXP_NETGUARD_LOG=str(cwd.parent / f"{cwd.name}-netguard.log"),
        PYTHONUNBUFFERED="1",
    )
    return env


def run_module(
    cwd: Path, module: str, *args: str, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python -m <module> ...`` in ``cwd``, offline, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env or entry_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_entry(cwd: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_module(cwd, "dat_exp", *overrides, timeout=timeout)


def start_entry(
    cwd: Path, *overrides: str, python: str | Path = sys.executable
) -> subprocess.Popen:
    """``python -m dat_exp ...`` started in the background, output merged into stdout."""
    return subprocess.Popen(
        [str(python), "-m", "dat_exp", *overrides],
        cwd=cwd,
        env=entry_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def network_attempts(cwd: Path) -> list[str]:
    log = cwd.parent / f"{cwd.name}-netguard.log"
    return log.read_text().splitlines() if log.exists() else []


def local_store(cwd: Path) -> MlflowClient:
    """The entry point's default store, ``runs/mlflow.db`` under ``cwd``."""
    return MlflowClient(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")


def local_runs(cwd: Path, order_by: list[str] | None = None) -> list[Run]:
    """Every run of the default experiment in ``cwd``'s store (none if it does not exist).

    Opening the store creates it. A poll must not wait for the entry point's file instead: it
    would then build the schema while the entry point does (the entry point's lock is its own).
    """
    client = local_store(cwd)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id], order_by=order_by)

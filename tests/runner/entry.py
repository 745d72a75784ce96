"""Run the real entry point in a subprocess, offline, in a temporary working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NETGUARD = Path(__file__).resolve().parent.parent / "netguard"

# A tiny synthetic dataset and a short smoke training: seconds per job on a CPU.
TINY = [
    "train=smoke",
    "train.epochs=2",
    "train.imgsz=128",
    "train.batch=8",
    "data.images=16",
    "data.val_images=8",
    "data.imgsz=128",
]


def run_entry(cwd: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m dat_exp ...`` with integrations enabled (no PYTEST_CURRENT_TEST), a fresh
    HOME, and every network attempt recorded in ``cwd/netguard.log``."""
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
    return subprocess.run(
        [sys.executable, "-m", "dat_exp", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def network_attempts(cwd: Path) -> list[str]:
    log = cwd.parent / f"{cwd.name}-netguard.log"
    return log.read_text().splitlines() if log.exists() else []

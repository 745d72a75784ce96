"""Run ``python -m dat_exp.report`` as a user would: a subprocess, offline, fresh HOME."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.runner.entry import entry_env, run_module


def netguard_log(cwd: Path) -> Path:
    """The report's own record of network attempts (the sweep that made the store has another)."""
    return cwd.parent / f"{cwd.name}-report-netguard.log"


def network_attempts(cwd: Path) -> list[str]:
    log = netguard_log(cwd)
    return log.read_text().splitlines() if log.exists() else []


def run_report(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**entry_env(cwd), "DAT_EXP_NETGUARD_LOG": str(netguard_log(cwd))}
    return run_module(cwd, "dat_exp.report", *args, env=env, timeout=timeout)


def assert_clean_error(out: subprocess.CompletedProcess, *phrases: str) -> None:
    """Non-zero exit, the phrases on stderr, no stack trace."""
    assert out.returncode != 0, out.stdout[-2000:]
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    for phrase in phrases:
        assert phrase in out.stderr, (phrase, out.stderr[-2000:])

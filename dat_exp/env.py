"""Offline and quiet: what Ultralytics and MLflow would otherwise fetch or send.

Set for this process only, before Ultralytics is imported; the user's home is never touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def runs_dir() -> Path:
    """Where every output goes: ``$DAT_EXP_RUNS`` or ``./runs``."""
    return Path(os.environ.get("DAT_EXP_RUNS", "runs")).resolve()


def configure_offline() -> None:
    settings_dir = runs_dir() / "ultralytics"
    defaults = {
        "YOLO_OFFLINE": "1",  # no DNS check on import
        "YOLO_AUTOINSTALL": "false",  # no pip install of missing packages
        "YOLO_CONFIG_DIR": str(settings_dir),  # settings and fonts inside runs/
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    _install_font(Path(os.environ["YOLO_CONFIG_DIR"]))


def _install_font(config_dir: Path) -> None:
    """Ultralytics' ``check_font`` downloads Arial.ttf unless its config dir already has it;
    matplotlib ships DejaVuSans, which serves (also for non-ASCII names)."""
    try:
        import matplotlib
    except ImportError:
        return
    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not source.exists():
        return
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if not target.exists():
            config_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)

"""Offline and quiet: what Ultralytics and MLflow would otherwise fetch or send.

Set for this process only, before Ultralytics is imported; the user's home is never touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

RUNS_ENV = "DAT_EXP_RUNS"


def runs_dir() -> Path:
    """Where every output goes: ``$DAT_EXP_RUNS`` or ``./runs``."""
    return Path(os.environ.get(RUNS_ENV, "runs")).resolve()


def configure_offline() -> None:
    if runs_dir().exists() and not runs_dir().is_dir():
        return  # nothing can be written; the job's validation says so before any work
    settings_dir = runs_dir() / "ultralytics"
    defaults = {
        "YOLO_OFFLINE": "1",  # no DNS check on import
        "YOLO_AUTOINSTALL": "false",  # no pip install of missing packages
        "YOLO_CONFIG_DIR": str(settings_dir),  # settings and fonts inside runs/
        "MPLCONFIGDIR": str(runs_dir() / "matplotlib"),  # font cache, not in the user's home
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    _install_font(Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics")  # Ultralytics' own subdir


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


def quiet_ultralytics() -> None:
    """Ultralytics' settings (kept in runs/): no integrations, no analytics, folders in runs/.

    Its MLflow callback would turn on ``mlflow.autolog()``, adopt an active run and stop
    silently on a param clash; the harness logs to MLflow itself.
    """
    from ultralytics.engine import trainer
    from ultralytics.utils import SETTINGS

    trainer.check_amp = _offline_amp_check
    runs = runs_dir()
    if runs.exists() and not runs.is_dir():
        return
    wanted = {
        "sync": False,
        **{
            k: False
            for k in (
                "clearml",
                "comet",
                "dvc",
                "mlflow",
                "raytune",
                "tensorboard",
                "wandb",
                "hub",
                "neptune",
            )
            if k in SETTINGS
        },
        "datasets_dir": str(runs / "datasets"),
        "weights_dir": str(runs / "weights"),
        "runs_dir": str(runs / "ultralytics-runs"),
    }
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)


def _offline_amp_check(model, *args, **kwargs) -> bool:
    """Ultralytics' AMP check downloads yolo26n.pt; offline, AMP stays as configured."""
    import logging

    logging.getLogger("dat_exp").info("AMP check skipped: it needs a download (offline)")
    return True

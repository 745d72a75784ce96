"""Every job checked before any job starts: one place for the cross-field rules.

Hydra's schema already rejects unknown keys and wrong types at composition; this module checks
what needs more than one field or the outside world (heads dividing channels, a level the
placement has, the dataset on disk, the tracking store reachable, CUDA present).
"""

from __future__ import annotations

import json
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dat_exp.config import cuda_available, device_type
from dat_exp.env import runs_dir

OPTIMIZERS = ("SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop", "MuSGD", "auto")
FAULTS = (None, "off", "raise", "nan")  # test-only: raise or nan make a job fail on purpose
OBJECTIVE_METRICS = ("mAP50-95", "mAP50")
DDP_CLOUDPICKLE = (3, 1, 1)  # Ultralytics pickles the trainer for its DDP workers with it


class InvalidJob(ValueError):
    """A job that cannot run; the message names the value and the choices."""


def validate_job(cfg: dict[str, Any]) -> None:
    """Raise ``InvalidJob`` with the first problem found, cheapest checks first."""
    from dat_exp.models.placements import check_placement

    check_runs_dir()
    _check_device(cfg["device"])
    try:
        check_placement(cfg["placement"]["name"], cfg["placement"]["levels"])
    except ValueError as err:
        raise InvalidJob(str(err)) from None
    _check_train(cfg["train"])
    if cfg.get("fault") not in FAULTS:
        raise InvalidJob(f"fault={cfg['fault']!r} is not one of {FAULTS}")
    _check_objective(cfg.get("objective") or {})
    _check_tracking(cfg["tracking"])
    nc = _dataset_classes(json.dumps(cfg["data"], sort_keys=True))
    _check_model(
        json.dumps([cfg["model"], cfg["placement"], cfg["dat"]], sort_keys=True),
        nc,
        int(cfg["train"]["imgsz"]),
    )


LAUNCHERS_EXTRA = "pip install -e '.[launchers]' (make installs it)"
RAY_ENV = "make venv-ray, then run .venv-ray/bin/python -m dat_exp (see README, Scaling out)"
PLUGINS = {  # command-line choice prefix -> (plugin module, how to get it)
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", LAUNCHERS_EXTRA),
    "hydra/launcher=submitit": ("hydra_plugins.hydra_submitit_launcher", LAUNCHERS_EXTRA),
    "hydra/launcher=slurm_gpu": ("hydra_plugins.hydra_submitit_launcher", LAUNCHERS_EXTRA),
    "hydra/launcher=ray": ("hydra_plugins.hydra_ray_launcher", RAY_ENV),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", LAUNCHERS_EXTRA),
    "hparams_search=": ("hydra_plugins.hydra_optuna_sweeper", LAUNCHERS_EXTRA),
}


def check_plugins(args: list[str]) -> None:
    """A launcher or sweeper chosen on the command line whose Hydra plugin is not in this
    environment (the Ray launcher lives in its own) gets one clear line, not a stack."""
    from importlib.util import find_spec

    for arg in args:
        for prefix, (module, remedy) in PLUGINS.items():
            if arg.startswith(prefix) and find_spec(module) is None:
                raise InvalidJob(
                    f"{arg} needs {module.split('.')[-1].replace('_', '-')}, which is not "
                    f"installed in {sys.prefix}: {remedy}"
                )


def check_runs_dir() -> None:
    runs = runs_dir()
    if runs.exists() and not runs.is_dir():
        raise InvalidJob(f"{runs} is a file, but every output goes into that folder: move it")


def _check_device(device: str) -> None:
    if device_type(device) == "cuda":
        if not all(part.strip().isdigit() for part in device.split(",")):
            raise InvalidJob(f"device={device!r} is not one of auto, cpu, 0, 1, ... or '0,1'")
        if "," in device:
            _check_ddp_pickling(device)
        if not cuda_available():
            raise InvalidJob(f"device={device!r} but no CUDA device is visible; use device=cpu")


def _check_ddp_pickling(device: str) -> None:
    from importlib.metadata import version

    found = version("cloudpickle")
    if tuple(int(p) for p in found.split(".")[:3] if p.isdigit()) < DDP_CLOUDPICKLE:
        raise InvalidJob(
            f"device={device!r} trains one job on several GPUs (DDP), which needs cloudpickle>="
            f"{'.'.join(map(str, DDP_CLOUDPICKLE))}; this environment has {found} (the Ray "
            "launcher pins it below 3). Use one GPU per job here (device=auto), or the main "
            "environment (.venv) for multi-GPU jobs"
        )


def _check_objective(objective: dict[str, Any]) -> None:
    metric = objective.get("metric", OBJECTIVE_METRICS[0])
    if metric not in OBJECTIVE_METRICS:
        raise InvalidJob(f"objective.metric={metric!r} is not one of {OBJECTIVE_METRICS}")
    ratio = objective.get("max_gflops_ratio")
    if ratio is not None and not float(ratio) > 0:
        raise InvalidJob(f"objective.max_gflops_ratio={ratio} must be positive (or null)")


def _check_train(train: dict[str, Any]) -> None:
    positive = {"epochs": 1, "batch": 1, "imgsz": 32}
    for key, least in positive.items():
        if int(train[key]) < least:
            raise InvalidJob(f"train.{key}={train[key]} must be at least {least}")
    if int(train["imgsz"]) % 32:
        raise InvalidJob(f"train.imgsz={train['imgsz']} must be a multiple of 32 (the max stride)")
    if not float(train["lr0"]) > 0:
        raise InvalidJob(f"train.lr0={train['lr0']} must be positive")
    if train["optimizer"] not in OPTIMIZERS:
        raise InvalidJob(f"train.optimizer={train['optimizer']!r} is not one of {OPTIMIZERS}")


def _check_tracking(tracking: dict[str, Any]) -> None:
    from dat_exp.tracking.store import tracking_uri

    uri = tracking_uri(tracking)
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        probe(uri)
    elif scheme not in ("sqlite", "postgresql", "mysql", "mssql"):
        raise InvalidJob(
            f"tracking.uri={uri!r}: use an http(s):// tracking server or a database URI "
            "(sqlite:///path/mlflow.db, postgresql://...); MLflow 3 refuses its old file store"
        )


def probe(uri: str, timeout: float = 2.0) -> None:
    """A 2-second TCP connection, before MLflow's client (which retries for minutes)."""
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        raise InvalidJob(
            f"tracking.uri={uri!r} cannot be reached ({err}); start it (make server) or use "
            "tracking=local"
        ) from None


@lru_cache(maxsize=64)
def _dataset_classes(data_json: str) -> int:
    from dat_exp.data import DatasetError, check_dataset, resolve_dataset

    try:
        return check_dataset(resolve_dataset(json.loads(data_json), runs_dir())).nc
    except (DatasetError, ValueError) as err:
        raise InvalidJob(str(err)) from None


@lru_cache(maxsize=256)
def _check_model(model_json: str, nc: int, imgsz: int) -> None:
    """Build the model once (no training): every module's own checks run."""
    from dat_exp.models.builder import build

    model, placement, dat = json.loads(model_json)
    weights = model.get("weights")
    if weights and not Path(weights).is_file():
        raise InvalidJob(f"model.weights={weights!r}: no such checkpoint file")
    try:
        _check_dat_values(dat)
        build(
            model["name"],
            nc,
            runs_dir() / "models",
            placement["name"],
            placement["levels"],
            None if placement["name"] == "none" else dat,
            imgsz,
        )
    except ValueError as err:
        raise InvalidJob(str(err)) from None


def _check_dat_values(dat: dict[str, Any]) -> None:
    for key, least in (("stride", 1), ("ksize", 1), ("heads", 1), ("groups", 1)):
        value = dat[key]
        if value == "auto":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"dat.{key}={value!r} must be auto or an integer >= {least}")

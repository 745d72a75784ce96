"""Every job checked before any job starts: one place for the cross-field rules.

Hydra's schema already rejects unknown keys and wrong types at composition; this module checks
what needs more than one field or the outside world (heads dividing channels, a level the
placement has, the dataset on disk, the tracking store reachable, CUDA present).
"""

from __future__ import annotations

import json
import math
import socket
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dat_exp.config import cuda_available, device_type
from dat_exp.env import runs_dir
from dat_exp.tracking import schema

OPTIMIZERS = ("SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop", "MuSGD", "auto")
FAULTS = (None, "off", "raise", "nan")  # test-only: raise or nan make a job fail on purpose
OBJECTIVE_METRICS = (schema.MAP50_95, schema.MAP50)
DDP_CLOUDPICKLE = (3, 1, 1)  # Ultralytics pickles the trainer for its DDP workers with it


class InvalidJob(ValueError):
    """A job that cannot run; the message names the value and the choices, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # e.g. a library's multi-line reason


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
    placement = cfg["placement"]
    imgsz = int(cfg["train"]["imgsz"])
    check_dat(cfg["dat"], cfg["model"]["name"], placement["name"], placement["levels"], imgsz)
    if cfg.get("fault") not in FAULTS:
        raise InvalidJob(f"fault={cfg['fault']!r} is not one of {FAULTS}")
    _check_objective(cfg.get("objective") or {})
    _check_budget(cfg.get("budget") or {})
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


def _check_budget(budget: dict[str, Any]) -> None:
    hours = budget.get("gpu_hours")
    if hours is not None and not float(hours) > 0:  # nan too
        raise InvalidJob(
            f"budget.gpu_hours={hours} must be positive (the most device-hours the sweep's worst "
            "case may take), or null for no budget"
        )


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


# -- dat: every job, whatever its placement ---------------------------------------------------
SIZING_RULES = {  # key -> (rule for an integer, what a valid value is)
    "stride": (lambda v: v >= 1, "an integer >= 1 (1, 2, 3, ...)"),
    "ksize": (lambda v: v >= 1 and v % 2 == 1, "an odd positive integer (1, 3, 5, ...)"),
    "heads": (lambda v: v >= 1, "a positive integer (1, 2, 3, ...)"),
    "groups": (lambda v: v >= 1, "a positive integer (1, 2, 3, ...)"),
}


def check_dat(
    dat: Mapping[str, Any],
    model: str,
    placement: str = "none",
    levels: list[str] | tuple[str, ...] | None = None,
    imgsz: int = 640,
) -> None:
    """Raise ``InvalidJob`` when a ``dat`` value is out of range or no module could use it.

    Runs for every job, ``placement=none`` too, so that a typo fails instead of training a stock
    model. Each value in its range; then ``heads`` must divide the channels (and ``groups`` the
    heads) of every level the placement uses; for ``none``, of at least one level of ``model``
    (P3/P4/P5, the maps Detect reads). ``auto`` is the per-level default and always valid.
    """
    from dat_exp.nn.presets import preset_settings
    from dat_exp.nn.settings import (
        AUTO,
        CHOICES,
        DAT_KEYS,
        SIZING_KEYS,
        DATSettings,
        as_dict,
        valid_layer_scale,
    )

    unknown = sorted(set(dat) - set(DAT_KEYS))
    if unknown:
        raise InvalidJob(f"dat.{unknown[0]} is not a DAT setting; valid: {', '.join(DAT_KEYS)}")
    values = {**as_dict(DATSettings()), **dat}
    for key, enum in CHOICES.items():
        if str(values[key]) not in enum.__members__:
            choices = ", ".join(member.value for member in enum)
            raise InvalidJob(f"dat.{key}={_show(values[key])} is not one of {choices}")
    factor = values["offset_range_factor"]
    if not _is_number(factor) or not math.isfinite(factor):
        raise InvalidJob(f"dat.offset_range_factor={_show(factor)} must be a finite number")
    if not valid_layer_scale(values["layer_scale"]):
        raise InvalidJob(
            f"dat.layer_scale={_show(values['layer_scale'])} must be null (no LayerScale: "
            "x + DAT(LN(x))) or a positive finite number (LayerScale's initial gamma, e.g. 1e-4)"
        )
    if not isinstance(values["no_off"], bool):
        raise InvalidJob(f"dat.no_off={_show(values['no_off'])} must be true or false")
    for key in SIZING_KEYS:
        rule, valid = SIZING_RULES[key]
        value = values[key]
        if value != AUTO and not (_is_int(value) and rule(value)):
            raise InvalidJob(f"dat.{key}={_show(value)} must be auto or {valid}")
    preset = preset_settings(values["preset"])
    try:
        widths = _dat_channels(model, placement, tuple(levels or ()))
    except ValueError as err:  # a model name no base has
        raise InvalidJob(str(err)) from None
    # what a module gets: the job's value, or where that is auto the preset's (maybe auto too)
    sizes = {k: values[k] if values[k] != AUTO else getattr(preset, k) for k in ("heads", "groups")}
    named = {
        k: f"dat.{k}={v}" + ("" if values[k] == v else f" (the {preset.preset} preset's)")
        for k, v in sizes.items()
    }
    if placement == "none":
        _check_any_level(sizes, named, widths, model)
    else:
        _check_every_level(values, sizes, named, widths, model, placement)
        _check_key_grids(values, tuple(widths), f"placement={placement} of {model}", imgsz)


def _check_any_level(
    sizes: dict[str, Any], named: dict[str, str], widths: dict[str, int], model: str
) -> None:
    """``placement=none``: a value that no level of the model could take is a typo."""
    from dat_exp.nn.presets import default_heads
    from dat_exp.nn.settings import AUTO

    heads, groups = sizes["heads"], sizes["groups"]
    shown = ", ".join(f"{level} {c}" for level, c in widths.items())
    if heads != AUTO and all(c % heads for c in widths.values()):
        valid = sorted(set().union(*(_divisors(c) for c in widths.values())))
        raise InvalidJob(
            f"{named['heads']} divides the channels of no level of {model} ({shown}); "
            f"valid: {_listed(valid)}"
        )
    if groups == AUTO:
        return
    level_heads = {  # the heads each level would have, where they divide its channels
        level: default_heads(c) if heads == AUTO else heads
        for level, c in widths.items()
        if heads == AUTO or c % heads == 0
    }
    if all(h % groups for h in level_heads.values()):
        valid = sorted(set().union(*(_divisors(h) for h in level_heads.values())))
        shown = ", ".join(f"{level} {h}" for level, h in level_heads.items())
        raise InvalidJob(
            f"{named['groups']} divides the heads of no level of {model} ({shown} heads); "
            f"valid: {_listed(valid)}"
        )


def _check_every_level(
    values: dict[str, Any],
    sizes: dict[str, Any],
    named: dict[str, str],
    widths: dict[str, int],
    model: str,
    placement: str,
) -> None:
    """A DAT placement: every module it builds, with the heads and groups it would get."""
    from dat_exp.nn.presets import default_groups, default_heads, level_settings
    from dat_exp.nn.settings import AUTO

    where = f"placement={placement} of {model}"
    inside = " (the width inside its block)" if placement == "c2f" else ""
    built = {}
    for level, width in widths.items():
        settings = level_settings(level, None if placement == "c2f" else width, 640, values)
        heads = settings["heads"] or default_heads(width)
        built[level] = (width, heads, settings["groups"] or default_groups(heads))
    for level, (width, heads, groups) in built.items():
        if width % heads:
            valid = set.intersection(*(_divisors(w) for w, _, _ in built.values()))
            raise InvalidJob(
                f"{named['heads']} must divide channels={width}{inside} at {level} ({where}); "
                f"valid at every level it uses: {_listed(sorted(valid))}"
            )
        if heads % groups:
            valid = sorted(set.intersection(*(_divisors(h) for _, h, _ in built.values())))
            if sizes["groups"] != AUTO:
                raise InvalidJob(
                    f"{named['groups']} must divide heads={heads} at {level} ({where}); "
                    f"valid at every level it uses: {_listed(valid)}"
                )
            raise InvalidJob(  # the level's default groups, with heads set by hand
                f"dat.groups=auto is {groups} at {level} ({where}: the level default, for its "
                f"{default_heads(width)} default heads), which does not divide "
                f"{named['heads']}; set dat.groups to one of {_listed(valid)}"
            )


BUILD_PROBE_PX = 256  # Ultralytics' DetectionModel finds its strides with a 256-px forward


def _check_key_grids(values: dict[str, Any], levels: tuple[str, ...], where: str, imgsz: int):
    """At ``ksize == stride`` DAT++ pads the offset conv 0, so a map smaller than ``ksize`` has
    no key grid; every model is built with a small forward first, then trained at ``imgsz``."""
    from dat_exp.models.placements import LEVEL_STRIDES
    from dat_exp.nn.dattention import key_grid_size, offset_padding
    from dat_exp.nn.presets import level_settings

    px = min(BUILD_PROBE_PX, imgsz)
    for level in levels:
        s = level_settings(level, None, imgsz, values)
        k, stride, side = s["ksize"], s["stride"], px // LEVEL_STRIDES[level]
        if key_grid_size(side, k, stride, offset_padding(k, stride, s["ref_points"])) < 1:
            raise InvalidJob(
                f"dat.ksize={k} with dat.stride={stride} at {level} ({where}): DAT++ pads the "
                f"offset net 0 when ksize == stride, so a map needs {k} px a side, but {level} is "
                f"{side}x{side} at {px} px (the smaller of train.imgsz and the "
                f"{BUILD_PROBE_PX}-px forward every model is built with); choose ksize != stride "
                f"or ksize <= {side}"
            )


@lru_cache(maxsize=64)
def _dat_channels(model: str, placement: str, levels: tuple[str, ...]) -> dict[str, int]:
    from dat_exp.models.builder import dat_channels

    return dat_channels(model, placement, levels)


def _divisors(n: int) -> set[int]:
    return {d for d in range(1, n + 1) if n % d == 0}


def _listed(values: list[int]) -> str:
    return ", ".join(map(str, values))


def _show(value: Any) -> str:
    return repr(str(value)) if isinstance(value, str) else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

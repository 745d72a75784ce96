"""Config schemas (Hydra structured configs), presets resolution, hashing and variant names.

The schemas make a wrong type or an unknown key fail at composition with Hydra's own message;
``resolve`` turns a composed config into what a job runs (``train=auto`` and ``device=auto``
resolved), and ``config_hash`` keys runs so that equal experiments hash equal.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dat_exp.nn.settings import DATSettings
from dat_exp.tracking.schema import DEFAULT_EXPERIMENT, HEADLINE

CONF_DIR = (Path(__file__).parent / "conf").resolve()  # a link to ../conf in a checkout


@dataclass
class ModelConfig:
    name: str = "yolov8n"
    weights: str | None = None  # a local baseline checkpoint to start from


@dataclass
class PlacementConfig:
    name: str = "none"
    levels: list[str] = field(default_factory=list)  # empty: all the placement has


@dataclass
class DataConfig:
    name: str = "synthetic"
    path: str | None = None  # an Ultralytics data YAML, for data=custom
    images: int = 200
    val_images: int = 200
    test_images: int = 200  # held out: the best weights are evaluated on it once
    imgsz: int = 160
    classes: int = 4
    seed: int = 0
    clutter: float = 1.0  # unlabelled distractors, scaled
    max_objects: int = 8  # labelled objects per image: 1..max_objects
    min_size: float = 0.1  # object size range, a fraction of the image side
    max_size: float = 0.45
    palette: float = 0.9  # probability that an object takes its class's hue family


@dataclass
class TrainConfig:
    """``null`` fields of ``train=auto`` take the resolved preset's values."""

    name: str = "auto"
    epochs: int | None = None
    imgsz: int | None = None
    batch: int | None = None
    optimizer: str | None = None
    lr0: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    mosaic: float | None = None
    close_mosaic: int | None = None
    patience: int | None = None
    workers: int | None = None
    amp: bool | None = None
    deterministic: bool | None = None


@dataclass
class TrackingConfig:
    name: str = "local"
    uri: str | None = None  # local: sqlite:///runs/mlflow.db
    experiment: str = DEFAULT_EXPERIMENT


@dataclass
class ObjectiveConfig:
    """What a trial returns to a search sweeper (``hparams_search``); plain sweeps ignore it."""

    metric: str = HEADLINE
    max_gflops_ratio: float | None = None  # budget: GFLOPs at most this times the stock model's
    penalty: float = -1.0  # the value of a failed or over-budget trial (below any mAP)


@dataclass
class BudgetConfig:
    """What a sweep may cost; checked against the dry run's bill before anything runs."""

    gpu_hours: float | None = None  # refuse a sweep whose worst case predicts more device-hours


class Reuse(StrEnum):
    """Which FINISHED run of the same config a sweep skips its job for."""

    same_code = "same_code"  # only one made by the current code version
    any = "any"  # any, also one made by older code (the summary says so)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    dat: DATSettings = field(default_factory=DATSettings)  # dat_exp/nn/settings.py
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    seed: int = 0
    device: str = "auto"  # auto, cpu, 0, '0,1'
    log_weights: bool = True
    dry_run: bool = False
    resume: bool = False
    rerun: bool = False
    reuse: Reuse = Reuse.same_code  # which finished runs count as done (see Reuse)
    fault: str | None = None  # test-only: raise or nan makes the job fail on purpose


def register_configs() -> None:
    """The root schema, which ``conf/config.yaml`` lists first: every group merges into it."""
    from dat_exp.nn.presets import PRESETS

    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for name, settings in PRESETS.items():  # the ``dat`` options: dat=official, dat=blog
        store.store(group="dat", name=str(name), node=settings)


# -- resolution -------------------------------------------------------------------------------
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: Any) -> str:
    """``auto`` -> a GPU on CUDA, else ``cpu``; anything else as given (checked elsewhere).

    With several GPUs visible, job n of a sweep gets GPU n mod count: a parallel launcher's
    workers are reused, so setting CUDA_VISIBLE_DEVICES inside a job would come too late.
    """
    device = str(device).strip()
    if device != "auto":
        return device
    if not cuda_available():
        return "cpu"
    import torch

    return str(job_number() % torch.cuda.device_count())


def job_number(default: int = 0) -> int:
    """This job's number in the sweep (Hydra's), also in a launcher's worker process."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import OmegaConfBaseException

    try:
        return int(HydraConfig.get().job.num)
    # a single run (no -m) leaves hydra.job.num unset; outside Hydra there is no config
    except (OmegaConfBaseException, ValueError, TypeError, AttributeError):
        return default


def device_type(device: str) -> str:
    return "cpu" if device in ("cpu", "mps") else "cuda"


def train_preset(name: str, on_cuda: bool) -> dict[str, Any]:
    """The values of a train preset YAML (``auto`` -> ``gpu`` on CUDA, ``smoke`` on CPU)."""
    preset = ("gpu" if on_cuda else "smoke") if name == "auto" else name
    path = CONF_DIR / "train" / f"{preset}.yaml"
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    values.pop("defaults", None)
    return values


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as a plain dict, with ``train`` and ``device`` resolved."""
    keys = [k for k in cfg if k != "hydra"]  # callbacks see Hydra's own node too: leave it out
    # enum_to_str: plain strings, since the result is hashed, logged and dumped as YAML
    out = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, enum_to_str=True)
    device = resolve_device(out["device"])
    out["device"] = device
    train = out["train"]
    if train["name"] == "auto":
        preset = train_preset("auto", device_type(device) == "cuda")
        preset.update({k: v for k, v in train.items() if v is not None and k != "name"})
        out["train"] = preset
    return out


# -- hashing and names ------------------------------------------------------------------------
# Keys that never change a result: outside the config hash, so adding one to the schema does
# not make every earlier run look not done.
VOLATILE_KEYS = (
    "tracking",
    "objective",
    "budget",
    "log_weights",
    "dry_run",
    "resume",
    "rerun",
    "reuse",
)


def hashable_config(resolved: dict[str, Any], with_seed: bool = True) -> dict[str, Any]:
    """What changes a result: volatile keys dropped, keys without effect normalised away."""
    from dat_exp.models.placements import check_placement

    cfg = json.loads(json.dumps(resolved))  # deep copy of plain data
    for key in VOLATILE_KEYS:
        cfg.pop(key, None)
    cfg["device"] = device_type(cfg["device"])  # the type matters, not the index
    placement = cfg["placement"]
    placement["levels"] = list(check_placement(placement["name"], placement["levels"]))
    if cfg["data"]["name"] != "synthetic":  # the generator's keys mean nothing for a real dataset
        cfg["data"] = {"name": cfg["data"]["name"], "path": cfg["data"]["path"]}
    dat = cfg["dat"]
    if placement["name"] == "none":
        cfg.pop("dat")
    else:
        if dat["no_off"]:
            for key in ("pe", "offset_range_factor", "ref_points"):
                dat.pop(key)
        if placement["name"] == "c2f":  # inside a bottleneck: its own residual, no wrap
            dat.pop("wrap")
        # LayerScale is part of the residual wrap only (an old config may lack the key)
        if placement["name"] == "c2f" or dat.get("wrap") == "bare":
            dat.pop("layer_scale", None)
    if not with_seed:
        cfg.pop("seed")
    return cfg


def digest(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def config_hash(resolved: dict[str, Any]) -> str:
    return digest(hashable_config(resolved))


def variant_hash(resolved: dict[str, Any]) -> str:
    return digest(hashable_config(resolved, with_seed=False))


def baseline_hash(resolved: dict[str, Any]) -> str:
    """The variant hash of the config's ``placement=none`` twin: the one baseline it is compared
    with. Exact: the twin shares every other setting (data size, epochs, image size...), which
    the model / data / train preset names alone do not pin down."""
    twin = json.loads(json.dumps(resolved))
    twin["placement"] = {"name": "none", "levels": []}
    return variant_hash(twin)


DAT_DEFAULTS = DATSettings()
SHORT = {"stride": "st", "ksize": "k", "heads": "h", "groups": "g", "layer_scale": "ls"}


def variant_name(resolved: dict[str, Any]) -> str:
    """A short readable name of everything but the seed, e.g. ``neck[P3,P4]/table/s-1/off``.

    Keys at their default are left out; ``off`` means offsets on, ``no_off`` without them.
    """
    cfg = hashable_config(resolved, with_seed=False)
    placement = cfg["placement"]
    parts = [f"{placement['name']}[{','.join(placement['levels'])}]"]
    if placement["name"] == "none":
        parts = ["none"]
    else:
        dat = cfg["dat"]
        if dat["preset"] != DAT_DEFAULTS.preset:
            parts.append(dat["preset"])
        if dat["no_off"]:
            parts.append("no_off")
        else:
            parts += [dat["pe"], f"s{dat['offset_range_factor']:g}", "off"]
            if dat["ref_points"] != DAT_DEFAULTS.ref_points:
                parts.append(dat["ref_points"])
        named = ("preset", "pe", "offset_range_factor", "no_off", "ref_points")  # done above
        for key in (f.name for f in fields(DATSettings) if f.name not in named):
            if key in dat and dat[key] != getattr(DAT_DEFAULTS, key):
                parts.append(f"{SHORT.get(key, '')}{dat[key]}")
    prefix = [] if cfg["model"]["name"] == ModelConfig.name else [cfg["model"]["name"]]
    return "/".join(prefix + parts)

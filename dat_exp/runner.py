"""One job, start to end: config -> model -> train -> measure -> log.

A failing job ends its MLflow run FAILED with the reason and the traceback, and reports back
instead of raising, so that a sweep goes on.
"""

from __future__ import annotations

import logging
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dat_exp.config import baseline_hash, config_hash, device_type, variant_hash, variant_name
from dat_exp.env import runs_dir
from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag

log = logging.getLogger("dat_exp")


@dataclass
class JobResult:
    status: str  # FINISHED, FAILED, SKIPPED, DRY_RUN
    variant: str
    config_hash: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass
class Prepared:
    """Everything a job needs before it trains, built and checked."""

    cfg: dict[str, Any]
    data_yaml: Path
    nc: int
    built: Any  # dat_exp.models.builder.BuiltModel
    imgsz: int
    logger: Any = None  # dat_exp.tracking.epoch_logger.EpochLogger, once a run is open
    dataset: Any = None  # dat_exp.data.DatasetInfo from prepare(): is the test split used


def prepare(cfg: dict[str, Any]) -> Prepared:
    from dat_exp.data import check_dataset, resolve_dataset
    from dat_exp.models.builder import build

    data_yaml = resolve_dataset(cfg["data"], runs_dir())
    info = check_dataset(data_yaml)
    imgsz = int(cfg["train"]["imgsz"])
    placement = cfg["placement"]
    built = build(
        cfg["model"]["name"],
        info.nc,
        runs_dir() / "models",
        placement["name"],
        placement["levels"],
        None if placement["name"] == "none" else cfg["dat"],
        imgsz=imgsz,
    )
    return Prepared(cfg, data_yaml, info.nc, built, imgsz, dataset=info)


def model_facts(built: Any, imgsz: int) -> dict[str, float]:
    from dat_exp.metrics.flops import count_params, exact_gflops, ultralytics_gflops

    return {
        schema.GFLOPS: exact_gflops(built.model, imgsz),
        schema.GFLOPS_ULTRALYTICS: ultralytics_gflops(built.model, imgsz),
        schema.PARAMS: float(count_params(built.model)),
    }


def params_of(cfg: dict[str, Any], built: Any) -> dict[str, Any]:
    """Flat MLflow params: the swept keys, the variant, and each inserted module's settings."""
    params: dict[str, Any] = {
        "model": cfg["model"]["name"],
        "placement": cfg["placement"]["name"],
        "placement.levels": [m.level for m in built.modules] or cfg["placement"]["levels"],
        "data": cfg["data"]["name"],
        "seed": cfg["seed"],
        "train": cfg["train"]["name"],
        "device": cfg["device"],
        "variant": variant_name(cfg),
    }
    params.update({f"dat.{k}": v for k, v in cfg["dat"].items()})
    for i, module in enumerate(built.modules):
        params[f"module.{i}.layer"] = module.index
        params[f"module.{i}.level"] = module.level
        for key in ("stride", "ksize", "heads", "groups", "pe"):
            params[f"module.{i}.{key}"] = module.settings[key]
    return params


def device_name(device: str) -> str:
    import torch

    if device_type(device) == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(int(device.split(",")[0]))
    return platform.processor() or platform.machine()


def train_args(cfg: dict[str, Any], prepared: Prepared, out_dir: Path) -> dict[str, Any]:
    from dat_exp.trainer import DATDetectionTrainer

    train = {k: v for k, v in cfg["train"].items() if k != "name"}
    return {
        **train,
        "data": str(prepared.data_yaml),
        "device": cfg["device"],
        "seed": int(cfg["seed"]),
        "project": str(out_dir.parent),
        "name": out_dir.name,
        "exist_ok": True,
        "plots": False,
        "val": True,
        "trainer": DATDetectionTrainer,
        "verbose": False,
    }


def train_and_measure(
    prepared: Prepared, client: Any, run_id: str, resume_from: Path | None = None
) -> dict[str, float]:
    """Train with Ultralytics (our callbacks log each epoch and guard the loss), then measure
    the best model. ``resume_from``: continue a killed job from its ``last.pt``."""
    import torch
    from ultralytics import YOLO

    from dat_exp.guards import TrainingGuard
    from dat_exp.metrics.dat_diagnostics import DATDiagnostics
    from dat_exp.metrics.latency import measure_latency
    from dat_exp.models.transfer import transfer_pretrained
    from dat_exp.tracking.store import log_metrics, log_params

    cfg = prepared.cfg
    yolo = YOLO(str(resume_from or prepared.built.yaml_path))
    if cfg["model"]["weights"] and not resume_from:
        report = transfer_pretrained(yolo, prepared.built, cfg["model"]["weights"])
        log_params(
            client,
            run_id,
            {"transfer.transferred": report.transferred, "transfer.skipped": report.skipped},
        )
    guard = TrainingGuard(int(cfg["train"]["batch"]), cfg.get("fault"))
    guard.attach(yolo)
    # Each DAT module's diagnostics per epoch, keyed by its model layer (``module.{i}.layer``).
    diagnostics = DATDiagnostics([m.index for m in prepared.built.modules])
    prepared.logger.attach(yolo, diagnostics)
    on_cuda = device_type(cfg["device"]) == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    args = train_args(cfg, prepared, runs_dir() / "train" / run_id)
    yolo.train(**(args | {"resume": str(resume_from)} if resume_from else args))
    metrics = {schema.TRAIN_TIME_S: time.perf_counter() - start, **prepared.logger.final}
    if guard.batch_changed:  # Ultralytics halved it after an out-of-memory
        client.set_tag(run_id, Tag.BATCH_CHANGED, f"{guard.configured_batch}->{guard.batch_used}")
    if on_cuda:
        metrics[schema.PEAK_MEM_MB] = torch.cuda.max_memory_allocated() / 2**20
    trainer = yolo.trainer
    best = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
    one_device = f"cuda:{cfg['device'].split(',')[0]}" if on_cuda else "cpu"  # no DDP from here
    lat = measure_latency(YOLO(str(best)).model, prepared.imgsz, one_device)
    metrics.update({schema.LATENCY_MS: lat.p50_ms, schema.LATENCY_P90_MS: lat.p90_ms})
    metrics.update(model_facts(prepared.built, prepared.imgsz))
    dataset = prepared.dataset  # checked once, in prepare()
    if dataset.test_skipped is None:
        save_dir = Path(trainer.save_dir)
        metrics.update(held_out_metrics(prepared, best, save_dir, guard.batch_used, one_device))
    else:
        client.set_tag(run_id, Tag.TEST_SKIPPED, dataset.test_skipped[: schema.MAX_TAG_CHARS])
    log_metrics(client, run_id, metrics)
    _log_outputs(client, run_id, trainer, best, cfg["log_weights"])
    return metrics


def held_out_metrics(
    prepared: Prepared, best: Path, out_dir: Path, batch: int, device: str
) -> dict[str, float]:
    """``best`` (the epoch chosen on val) evaluated once on the test split: figures that no
    choice was made on. Ultralytics writes under ``out_dir/test``."""
    from ultralytics import YOLO

    from dat_exp.tracking.epoch_logger import VAL_KEYS

    results = YOLO(str(best)).val(
        data=str(prepared.data_yaml),
        split="test",
        imgsz=prepared.imgsz,
        batch=batch,
        device=device,
        workers=prepared.cfg["train"]["workers"],
        plots=False,
        verbose=False,
        project=str(out_dir),
        name="test",
        exist_ok=True,
    )
    found = {VAL_KEYS[k]: float(v) for k, v in results.results_dict.items() if k in VAL_KEYS}
    return {schema.held_out(m): found[m] for m in schema.HELD_OUT}


def _log_outputs(client: Any, run_id: str, trainer: Any, best: Path, log_weights: bool) -> None:
    from dat_exp.tracking.store import log_file

    save_dir = Path(trainer.save_dir)
    log_file(client, run_id, save_dir / "results.csv")
    table = per_class_ap(trainer)
    if table is not None:
        path = save_dir / "per_class_ap.csv"
        table.to_csv(path, index=False)
        log_file(client, run_id, path)
    if log_weights:
        log_file(client, run_id, best, "weights")
    log_sampling_picture(client, run_id, trainer, best)


def log_sampling_picture(client: Any, run_id: str, trainer: Any, best: Path) -> Path | None:
    """A DAT run's picture of where its modules look (``dat/sampling_points.png``), from the
    local best weights over the first validation image; nothing for a model without DAT. A
    picture that cannot be drawn is a warning, never a failed run."""
    try:
        from dat_exp.analysis.sampling import FILENAME, RUN_ARTIFACT_DIR, run_picture

        imgsz = trainer.args.imgsz
        imgsz = max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz)
        out = Path(trainer.save_dir) / RUN_ARTIFACT_DIR / FILENAME
        path = run_picture(best, Path(trainer.args.data), imgsz, out)
        if path is not None:
            client.log_artifact(run_id, str(path), RUN_ARTIFACT_DIR)
        return path
    except Exception as err:  # noqa: BLE001  (a picture is never worth a failed run)
        log.warning("no DAT sampling picture for run %s: %s: %s", run_id, type(err).__name__, err)
        return None


def per_class_ap(trainer: Any):
    """The final validation's per-class table (precision, recall, mAP50, mAP50-95)."""
    import pandas as pd

    metrics = getattr(trainer.validator, "metrics", None)
    if metrics is None or not hasattr(metrics, "summary"):
        return None
    return pd.DataFrame(metrics.summary())


def open_run(cfg: dict[str, Any], parent_id: str | None) -> tuple[Any, str]:
    """Create the job's run with its tags (what it is, which code, which machine, its owner)."""
    from dat_exp.provenance import provenance_tags
    from dat_exp.tracking.store import client_for, experiment_id, owner_tags, start_run

    tracking = cfg["tracking"]
    client = client_for(tracking)
    exp_id = experiment_id(client, tracking["experiment"], local=not tracking.get("uri"))
    tags = {
        Tag.CONFIG_HASH: config_hash(cfg),
        Tag.VARIANT_HASH: variant_hash(cfg),
        Tag.VARIANT: variant_name(cfg),
        Tag.BASELINE_HASH: baseline_hash(cfg),
        Tag.DEVICE_NAME: device_name(cfg["device"]),
        Tag.DEVICE_TYPE: device_type(cfg["device"]),
        **provenance_tags(),
        **owner_tags(),
    }
    run_id = start_run(client, exp_id, f"{variant_name(cfg)}/seed{cfg['seed']}", tags, parent_id)
    return client, run_id


def log_inputs(client: Any, run_id: str, prepared: Prepared) -> None:
    """Params, the resolved config, the model YAML and the dataset of a new run."""
    from dat_exp.tracking.store import log_dataset, log_params

    cfg = prepared.cfg
    log_params(client, run_id, params_of(cfg, prepared.built))
    client.log_dict(run_id, cfg, "config.yaml")
    client.log_text(run_id, prepared.built.yaml_path.read_text(), "model.yaml")
    digest = prepared.data_yaml.parent.name
    log_dataset(client, run_id, cfg["data"]["name"], digest, prepared.data_yaml)


def reopen_run(cfg: dict[str, Any], run_id: str) -> Any:
    """Continue a KILLED run under the same id (its metric history is kept)."""
    from dat_exp.tracking.store import client_for, owner_tags, set_tags

    client = client_for(cfg["tracking"])
    client.update_run(run_id, status="RUNNING")
    set_tags(client, run_id, owner_tags())
    return client


def checkpoint_epoch(checkpoint: Path) -> int:
    """The last completed epoch (0-based) recorded in an Ultralytics checkpoint."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"])


def failure_reason(err: BaseException, prepared: Prepared) -> str:
    """One line; an out-of-memory names the job's predicted attention memory."""
    reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
    if "out of memory" in str(err).lower():
        from dat_exp.metrics.flops import attention_memory_mb

        per_image = attention_memory_mb(prepared.built.model, prepared.imgsz)
        batch = prepared.cfg["train"]["batch"]
        reason = (
            f"out of memory: predicted attention memory {per_image:.0f} MB/image x batch "
            f"{batch}; lower train.batch or raise dat.stride ({reason})"
        )
    return reason


def backfill(logger: Any, last: Path) -> None:
    saved = checkpoint_epoch(last) + 1  # Ultralytics stores the 0-based epoch
    for epoch in logger.backfill(last.parent.parent / "results.csv", saved):
        log.warning("epoch %d was trained but not logged before the interruption: logged", epoch)


def run_job(
    cfg: dict[str, Any], parent_id: str | None = None, resume: tuple[str, Path] | None = None
) -> JobResult:
    """Prepare, open the run, train and measure; a failure ends the run FAILED and returns,
    an interruption (SIGINT, or SIGTERM, which the entry point turns into KeyboardInterrupt)
    ends it KILLED and propagates to stop the sweep."""
    from dat_exp.tracking.epoch_logger import EpochLogger
    from dat_exp.tracking.store import start_heartbeat

    result = JobResult("FAILED", variant_name(cfg), config_hash(cfg))
    prepared = prepare(cfg)
    if device_type(cfg["device"]) == "cpu":
        log.warning("training on the CPU (no CUDA device): expect minutes per epoch at real sizes")
    if resume:
        run_id, last = resume
        client = reopen_run(cfg, run_id)
    else:
        (client, run_id), last = open_run(cfg, parent_id), None
    result.run_id = run_id
    prepared.logger = EpochLogger(client, run_id)
    heartbeat = start_heartbeat(client, run_id)
    # Everything after the run exists is inside the try: an interruption at any point (a
    # SIGTERM while the inputs are logged) ends the run KILLED, never leaves it RUNNING.
    try:
        if last is None:
            log_inputs(client, run_id, prepared)
        else:
            backfill(prepared.logger, last)
        result.metrics = train_and_measure(prepared, client, run_id, last)
        result.status = "FINISHED"
    except KeyboardInterrupt:
        epoch = prepared.logger.epochs_done
        client.set_tag(run_id, Tag.ERROR, f"interrupted after epoch {epoch}")
        client.set_tag(run_id, Tag.LAST_EPOCH, epoch)
        client.set_terminated(run_id, "KILLED")
        raise
    except Exception as err:  # noqa: BLE001  (the job reports its own failure)
        result.reason = failure_reason(err, prepared)
        client.set_tag(run_id, Tag.ERROR, result.reason)
        client.log_text(run_id, traceback.format_exc(), "traceback.txt")
        log.error("job failed: %s", result.reason)
    finally:
        heartbeat.set()
    client.set_terminated(run_id, result.status)
    return result

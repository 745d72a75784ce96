"""Hand-made run tables in the loader's tidy format, for tests that need no MLflow store."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from dat_exp.analysis.load import FAILURE_COLUMNS, RunSet
from dat_exp.tracking import schema

BASE = {"model": "yolov8n", "data": "synthetic", "train": "smoke", "device_type": "cpu"}
CODE = "v1"
DEVICE_NAME = "Test CPU"


def variant_hash(variant: str, device_type: str = "cpu", model: str = "") -> str:
    """A fake run's variant hash: its variant's name, device type and model override."""
    return f"h-{variant}-{device_type}-{model}"


def run(variant: str, seed: int, placement: str = "sppf", **values) -> dict:
    """One FINISHED run of code version ``v1`` on one device; the variant hash is the variant's
    name (unique per test); tagged with the ``none`` variant of the same device type and model
    as its baseline (pass ``baseline_hash=None`` for a run from before the tag)."""
    device, model = values.get("device_type", "cpu"), values.get("model", "")
    row = {
        **BASE,
        "run_id": f"{variant}-{seed}-{device}",
        "variant": variant,
        "variant_hash": variant_hash(variant, device, model),
        "baseline_hash": variant_hash("none", device, model),
        "config_hash": f"c-{variant}-{seed}",
        "code_version": CODE,
        "placement": placement,
        "levels": "" if placement == "none" else "P5",
        "seed": seed,
        "status": "FINISHED",
        "device_name": DEVICE_NAME,
        "dat.pe": "table",
    }
    row.update(values)
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    out["start_time"] = pd.date_range("2025-01-01", periods=len(out), freq="min")
    out["run_id"] = [f"{r}-{i}" for i, r in enumerate(out["run_id"])]  # repeats are other runs
    return out


def runset(runs: pd.DataFrame, pool: pd.DataFrame | None = None, **fields) -> RunSet:
    """A RunSet of ``runs`` (and ``pool``, default the runs themselves) without a store."""
    return RunSet(
        tracking_uri="sqlite:///nowhere.db",
        experiment="fake",
        experiment_id="0",
        sweep_id=None,
        sweep_name=None,
        runs=runs,
        failures=pd.DataFrame(columns=FAILURE_COLUMNS),
        pool=runs if pool is None else pool,
        set_aside=runs.iloc[:0],
        **fields,
    )


def grid_sweep(seeds: int = 3) -> pd.DataFrame:
    """none + {sppf, neck} x {table, dwc}, ``seeds`` seeds each, with plausible metrics."""
    rng = np.random.default_rng(0)
    rows = []
    gflops = {"none": 8.7, "sppf": 9.1, "neck": 10.4}
    effect = {
        ("sppf", "table"): 0.01,
        ("sppf", "dwc"): 0.03,
        ("neck", "table"): -0.02,
        ("neck", "dwc"): 0.05,
    }
    for seed in range(seeds):
        rows.append(run("none", seed, "none", **_metrics(rng, 0.40, gflops["none"], 0)))
    for (placement, pe), seed in itertools.product(effect, range(seeds)):
        name = f"{placement}/{pe}"
        metrics = _metrics(rng, 0.40 + effect[placement, pe], gflops[placement], 2)
        rows.append(run(name, seed, placement, **{"dat.pe": pe}, **metrics))
    return frame(rows)


def _metrics(rng: np.random.Generator, map_: float, gflops: float, extra_ms: float) -> dict:
    value = map_ + rng.normal(0, 0.005)
    return {
        schema.MAP50_95: value,
        schema.MAP50: value + 0.2,
        schema.PRECISION: value + 0.1,
        schema.RECALL: value + 0.05,
        schema.GFLOPS: gflops,
        schema.PARAMS: 3.2e6,
        schema.LATENCY_MS: 20 + extra_ms + rng.normal(0, 0.3),
    }


def history(runs: pd.DataFrame, epochs: int = 5) -> pd.DataFrame:
    """A rising val curve per run, ending at the run's final mAP50-95."""
    keys = ["run_id", "variant_hash", "variant", "seed"]
    rows = [
        {**r[keys].to_dict(), "step": e, "value": r[schema.MAP50_95] * e / epochs}
        for _, r in runs.iterrows()
        for e in range(1, epochs + 1)
    ]
    return pd.DataFrame(rows)

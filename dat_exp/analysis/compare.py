"""Each variant against its baseline: the ``placement=none`` variant with the same model, data,
train preset and device type, looked up in the whole experiment (a sweep of DAT placements has
none of its own)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pandas as pd

from dat_exp.analysis.stats import paired_by_seed, paired_p_value, welch_interval
from dat_exp.tracking.schema import HEADLINE

KEY = ("model", "data", "train", "device_type")
COLUMNS = [
    "baseline_variant",
    "baseline_hash",
    "baseline_n",
    "baseline_match",
    "delta",
    "delta_low",
    "delta_high",
    "paired_n",
    "p_paired",
    "verdict",
]
ConfigOf = Callable[[str], dict[str, Any] | None]  # run id -> its logged config.yaml, or None


def baseline_hash_of(cfg: dict[str, Any]) -> str:
    """The variant hash the ``placement=none`` twin of a resolved config has.

    Exact: the twin shares every other setting (data size, epochs, image size...), which the
    model / data / train preset names alone do not pin down."""
    from dat_exp.config import variant_hash

    twin = copy.deepcopy(cfg)
    twin["placement"] = {"name": "none", "levels": []}
    return variant_hash(twin)


def find_baseline(
    variant: pd.Series, pool: pd.DataFrame, cfg: dict | None
) -> tuple[str | None, str]:
    """``(baseline variant hash or None, how it was matched)`` for one row of ``aggregate``."""
    if variant["placement"] == "none":
        return variant["variant_hash"], "itself"
    nones = pool[pool["placement"] == "none"]
    same_key = nones[(nones[list(KEY)] == variant[list(KEY)]).all(axis=1)]
    if cfg is not None:
        wanted = baseline_hash_of(cfg)
        if (nones["variant_hash"] == wanted).any():
            return wanted, "same config"
        if not same_key.empty:
            return None, "none of the same model/data/train/device differs in other keys"
        return None, "no baseline"
    if same_key.empty:
        return None, "no baseline"
    # no logged config: the most-run none variant of the same model, data, train and device type
    return same_key["variant_hash"].value_counts().index[0], "same model, data, train, device"


def verdict(n: int, n_base: int, low: float, high: float, delta: float) -> str:
    """For a metric where higher is better (mAP)."""
    if min(n, n_base) < 2:
        return "single run"
    if low <= 0 <= high:
        return "not distinguishable"
    return "better" if delta > 0 else "worse"


def compare(
    runs: pd.DataFrame,
    pool: pd.DataFrame,
    variants: pd.DataFrame,
    config_of: ConfigOf,
    metric: str = HEADLINE,
) -> pd.DataFrame:
    """``variants`` (from ``aggregate``) with, per variant: its baseline, Δ ``metric`` to it with
    Welch's 95% interval, the paired t-test's p over shared seeds, and a verdict."""
    rows = []
    for _, variant in variants.iterrows():
        mine = runs[runs["variant_hash"] == variant["variant_hash"]]
        cfg = None if variant["placement"] == "none" else config_of(mine["run_id"].iloc[0])
        base_hash, match = find_baseline(variant, pool, cfg)
        rows.append(_against(mine, pool, base_hash, match, metric))
    found = pd.DataFrame(rows, columns=COLUMNS)
    return pd.concat([variants.reset_index(drop=True), found], axis=1)


def _against(
    mine: pd.DataFrame, pool: pd.DataFrame, base_hash: str | None, match: str, metric: str
) -> dict[str, Any]:
    if base_hash is None:
        return {
            "baseline_variant": None,
            "baseline_hash": None,
            "baseline_n": 0,
            "baseline_match": match,
            "verdict": "no baseline",
        }
    base = pool[pool["variant_hash"] == base_hash]
    found = {
        "baseline_variant": base["variant"].iloc[0],
        "baseline_hash": base_hash,
        "baseline_n": len(base),
        "baseline_match": match,
    }
    if match == "itself":
        return {**found, "verdict": "baseline"}
    diff = welch_interval(mine[metric], base[metric])
    a, b = paired_by_seed(mine, base, metric)
    return {
        **found,
        "delta": diff.delta,
        "delta_low": diff.low,
        "delta_high": diff.high,
        "paired_n": len(a),
        "p_paired": paired_p_value(a, b),
        "verdict": verdict(len(mine), len(base), diff.low, diff.high, diff.delta),
    }

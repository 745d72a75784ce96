"""The seed plan of a sweep before it runs (``dry_run=true``): the comparisons it will make, the
seeds each side will have, and the smallest Δ those seeds can detect in that family.

σ comes from finished runs like the planned ones (same model, data, train preset, device type
and code version); without any, the plan says "no spread known yet".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from dat_exp.analysis.planner import make_plan, plan_lines
from dat_exp.analysis.stats import seed_values
from dat_exp.analysis.summary import headline
from dat_exp.config import baseline_hash, variant_hash, variant_name

# What makes finished runs comparable for σ: the runs table's columns, and the job's values.
ALIKE = ("model", "data", "train", "device_type", "code_version")


def sweep_plan(jobs: Sequence[dict[str, Any]]) -> list[str]:
    """The planner's lines for the planned ``jobs`` (resolved configs)."""
    finished = finished_alike(jobs[0]) if jobs else pd.DataFrame()
    metric, _ = headline(finished, [])  # the report's rule: test/ when every run has it
    planned = seeds_by_variant(jobs)
    comparisons = []
    for job in _first_of_each_variant(jobs):
        if job["placement"]["name"] == "none":
            continue
        twin = baseline_hash(job)
        twin_seeds = planned.get(twin, set()) | _finished_seeds(finished, twin)
        comparisons.append((variant_name(job), len(planned[variant_hash(job)]), len(twin_seeds)))
    if not comparisons:
        return ["seed planner: the sweep makes no comparison (no DAT variant)"]
    by_variant = finished.groupby("variant_hash") if not finished.empty else []
    groups = [seed_values(runs, metric) for _, runs in by_variant]
    plan = make_plan(comparisons, groups, metric=metric)
    return plan_lines(plan)


def seeds_by_variant(jobs: Sequence[dict[str, Any]]) -> dict[str, set[int]]:
    seeds: dict[str, set[int]] = {}
    for job in jobs:
        seeds.setdefault(variant_hash(job), set()).add(int(job["seed"]))
    return seeds


def _first_of_each_variant(jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for job in jobs:
        first.setdefault(variant_hash(job), job)
    return list(first.values())


def _finished_seeds(finished: pd.DataFrame, variant: str) -> set[int]:
    if finished.empty:
        return set()
    return set(finished.loc[finished["variant_hash"] == variant, "seed"].dropna().astype(int))


def finished_alike(job: dict[str, Any]) -> pd.DataFrame:
    """FINISHED runs of the job's experiment with the same model, data, train preset, device
    type and code version; empty when the store or the experiment does not exist yet."""
    from dat_exp.analysis.load import AnalysisError, load_runs
    from dat_exp.config import device_type
    from dat_exp.provenance import code_version
    from dat_exp.tracking.store import tracking_uri

    tracking = job["tracking"]
    try:
        runs = load_runs(tracking["experiment"], tracking_uri=tracking_uri(tracking)).runs
    except AnalysisError:
        return pd.DataFrame()
    wanted = {
        "model": job["model"]["name"],
        "data": job["data"]["name"],
        "train": job["train"]["name"],
        "device_type": device_type(job["device"]),
        "code_version": code_version(),
    }
    alike = (runs[list(ALIKE)] == pd.Series(wanted)).all(axis=1)
    return runs[alike]

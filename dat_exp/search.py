"""The value a job returns to a search sweeper (``hparams_search``, Optuna): the objective
metric of its run, or a penalty when the job failed or its model is over the GFLOPs budget.

A trial that fails returns the penalty instead of raising, so one bad trial does not stop the
search (the Optuna sweeper aborts on any raised failure by default).
"""

from __future__ import annotations

from typing import Any

from dat_exp.runner import JobResult
from dat_exp.tracking import schema


def budget_excess(cfg: dict[str, Any]) -> str | None:
    """Why this job's model is over ``objective.max_gflops_ratio`` (exact GFLOPs at the
    training size against the stock model's), or None when it is within or there is none."""
    ratio = (cfg.get("objective") or {}).get("max_gflops_ratio")
    if ratio is None or cfg["placement"]["name"] == "none":
        return None
    from dat_exp.metrics.flops import exact_gflops
    from dat_exp.runner import prepare

    stock_cfg = {**cfg, "placement": {"name": "none", "levels": []}}
    gflops, stock = (exact_gflops(p.built.model, p.imgsz) for p in map(prepare, (cfg, stock_cfg)))
    if gflops <= ratio * stock:
        return None
    return f"{gflops:.3f} GFLOPs is over the budget, {ratio} x the stock model's {stock:.3f}"


def objective_value(cfg: dict[str, Any], result: JobResult) -> float:
    """The trial's value: the metric of a finished run (this job's, or the earlier run of the
    same config that it was skipped for), else the penalty."""
    objective = cfg.get("objective") or {}
    metric = objective.get("metric", schema.HEADLINE)
    penalty = float(objective.get("penalty", -1.0))
    if result.status == "FINISHED":
        return float(result.metrics.get(metric, penalty))
    if result.status == "SKIPPED":
        return _finished_metric(cfg, result, metric, penalty)
    return penalty


def _finished_metric(cfg: dict[str, Any], result: JobResult, metric: str, penalty: float) -> float:
    """The metric of the run the job was skipped for: the one it reused, or (a duplicate of an
    earlier trial) the run of the same config that counts as done."""
    from dat_exp.sweep import finished_runs, reusable
    from dat_exp.tracking.store import client_for

    if result.run_id:
        metrics = client_for(cfg["tracking"]).get_run(result.run_id).data.metrics
    else:
        run, _ = reusable(finished_runs(cfg, result.config_hash), cfg["reuse"])
        metrics = run.data.metrics if run is not None else {}
    return float(metrics.get(metric, penalty))

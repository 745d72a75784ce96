"""The value a job returns to a search sweeper (``hparams_search``, Optuna): the objective
metric of its run, or a penalty when the job failed or its model is over the GFLOPs budget.

A trial that fails returns the penalty instead of raising, so one bad trial does not stop the
search (the Optuna sweeper aborts on any raised failure by default).
"""

from __future__ import annotations

from typing import Any

from dat_exp.runner import JobResult


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
    metric, penalty = objective.get("metric", "mAP50-95"), float(objective.get("penalty", -1.0))
    if result.status == "FINISHED":
        return float(result.metrics.get(metric, penalty))
    if result.status == "SKIPPED" and result.config_hash:
        return _finished_metric(cfg, result.config_hash, metric, penalty)
    return penalty


def _finished_metric(cfg: dict[str, Any], h: str, metric: str, penalty: float) -> float:
    from dat_exp.tracking.store import client_for, experiment_id, runs_of_config

    tracking = cfg["tracking"]
    client = client_for(tracking)
    exp_id = experiment_id(client, tracking["experiment"], local=not tracking.get("uri"))
    for run in runs_of_config(client, exp_id, h, "FINISHED"):
        if metric in run.data.metrics:
            return float(run.data.metrics[metric])
    return penalty

"""A sweep: the parent run, one job at a time (dry run, duplicates, done jobs), the summary.

``SweepCallback`` hooks Hydra's multirun; ``execute`` is what each job runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dat_exp.config import config_hash, resolve, variant_name
from dat_exp.runner import JobResult, prepare, run_job
from dat_exp.tracking.store import PARENT_ENV

log = logging.getLogger("dat_exp")


@dataclass
class SweepState:
    """Results of the jobs run in this process (Hydra's basic launcher runs them here)."""

    results: list[JobResult] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # config hash -> job number

    @property
    def failed(self) -> bool:
        return any(r.status == "FAILED" for r in self.results)


STATE = SweepState()


def execute(cfg: dict[str, Any]) -> JobResult:
    """One job: listed (dry run), skipped (duplicate or done), or run."""
    h = config_hash(cfg)
    job = len(STATE.results)
    duplicate_of = STATE.seen.get(h)
    STATE.seen.setdefault(h, job)
    if cfg["dry_run"]:
        result = describe(cfg, job, duplicate_of)
    elif duplicate_of is not None:
        result = JobResult(
            "SKIPPED", variant_name(cfg), h, reason=f"same config as job {duplicate_of}"
        )
    else:
        done = None if cfg["rerun"] else finished_run(cfg, h)
        if done:
            print(f"skipped: done in run {done}")
            result = JobResult("SKIPPED", variant_name(cfg), h, done, reason=f"done in run {done}")
        else:
            result = run_job(cfg, os.environ.get(PARENT_ENV))
    STATE.results.append(result)
    return result


def finished_run(cfg: dict[str, Any], h: str) -> str | None:
    """A FINISHED run of this config hash in the experiment, if any."""
    from dat_exp.tracking.store import client_for

    client = client_for(cfg["tracking"])
    exp = client.get_experiment_by_name(cfg["tracking"]["experiment"])
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`dat_exp.config_hash` = '{h}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def describe(cfg: dict[str, Any], job: int, duplicate_of: int | None) -> JobResult:
    """The dry-run line: variant, hash, modules, exact GFLOPs, attention memory per image."""
    from dat_exp.metrics.flops import attention_memory_mb, exact_gflops

    prepared = prepare(cfg)
    built = prepared.built
    modules = "; ".join(
        _module_line(m.index, m.level, m.channels, m.settings) for m in built.modules
    )
    modules = modules or "no DAT"
    gflops = exact_gflops(built.model, prepared.imgsz)
    memory = attention_memory_mb(built.model, prepared.imgsz)
    dup = f"  [duplicate of job {duplicate_of}: runs once]" if duplicate_of is not None else ""
    print(
        f"job {job}: {variant_name(cfg)} seed={cfg['seed']} hash={config_hash(cfg)}{dup}\n"
        f"    modules: {modules}\n"
        f"    GFLOPs {gflops:.3f} at {prepared.imgsz} px; attention memory {memory:.1f} MB/image"
    )
    return JobResult("DRY_RUN", variant_name(cfg), config_hash(cfg), metrics={"gflops": gflops})


def _module_line(index: int, level: str, channels: int, s: dict[str, Any]) -> str:
    return (
        f"L{index} {level} c{channels} h{s['heads']} g{s['groups']} st{s['stride']} "
        f"k{s['ksize']} {s['pe']} {s['wrap']}"
    )


def summary_table(results: list[JobResult]) -> str:
    import pandas as pd

    rows = [
        {
            "job": i,
            "variant": r.variant,
            "mAP50": r.metrics.get("mAP50"),
            "mAP50-95": r.metrics.get("mAP50-95"),
            "GFLOPs": r.metrics.get("gflops"),
            "latency_ms": r.metrics.get("latency_ms"),
            "status": r.status,
            "run / reason": r.reason or r.run_id or "",
        }
        for i, r in enumerate(results)
    ]
    frame = pd.DataFrame(rows)
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def print_summary(results: list[JobResult], tracking: dict[str, Any]) -> None:
    if not results:
        return
    print("\n" + summary_table(results))
    if any(r.run_id for r in results):
        from dat_exp.tracking.store import tracking_uri

        print(
            f"\nruns logged to {tracking_uri(tracking)} (experiment {tracking['experiment']!r}); "
            "open them side by side with: make ui  (then http://127.0.0.1:5000)"
        )


class SweepCallback(Callback):
    """Parent run for a multirun; children nest under it, also from other processes."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        STATE.results.clear()
        STATE.seen.clear()
        cfg = resolve(config)
        if cfg["dry_run"]:
            return
        from dat_exp.tracking.store import client_for, experiment_id, start_run

        tracking = cfg["tracking"]
        client = client_for(tracking)
        exp_id = experiment_id(client, tracking["experiment"], local=not tracking.get("uri"))
        name = f"sweep {config.hydra.sweep.dir.rsplit('/', 2)[-1]}"
        overrides = " ".join(config.hydra.overrides.task)
        parent = start_run(
            client, exp_id, name, {"dat_exp.sweep": "true", "dat_exp.overrides": overrides}
        )
        os.environ[PARENT_ENV] = parent

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = resolve(config)
        print_summary(STATE.results, cfg["tracking"])
        parent = os.environ.pop(PARENT_ENV, None)
        if parent:
            from dat_exp.tracking.store import client_for

            client_for(cfg["tracking"]).set_terminated(
                parent, "FAILED" if STATE.failed else "FINISHED"
            )

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_summary(STATE.results, resolve(config)["tracking"])

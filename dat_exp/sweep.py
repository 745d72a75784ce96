"""A sweep: the parent run, one job at a time (dry run, duplicates, done jobs), the summary.

``SweepCallback`` hooks Hydra's multirun; ``execute`` is what each job runs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from dat_exp.config import Reuse, config_hash, job_number, resolve, variant_name
from dat_exp.runner import JobResult, prepare, run_job
from dat_exp.search import budget_excess
from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag
from dat_exp.tracking.store import PARENT_ENV
from dat_exp.validate import InvalidJob, validate_job

log = logging.getLogger("dat_exp")
DUPLICATES_ENV = "DAT_EXP_DUPLICATE_JOBS"


@dataclass
class SweepState:
    """Results of the jobs run in this process (Hydra's basic launcher runs them here)."""

    results: list[JobResult] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # config hash -> job number
    tracking: dict[str, Any] | None = None  # the sweep's store, for its parent run
    plan: list[str] = field(default_factory=list)  # a dry run's seed plan, printed at its end
    race: Any = None  # dat_exp.racing.RaceStart of a racing sweep
    decisions: dict[str, str] = field(default_factory=dict)  # racing: variant -> decision
    race_lines: list[str] = field(default_factory=list)  # racing's outcome, printed at the end

    @property
    def failed(self) -> bool:
        """A job failed; in a race, a variant failed (a seed that failed once and then finished
        on its retry does not fail the sweep)."""
        if self.race is not None and not any(r.status == "INVALID" for r in self.results):
            return self.race.failed
        return any(r.status in ("FAILED", "INVALID") for r in self.results)

    def clear(self) -> None:
        self.results.clear()
        self.seen.clear()
        self.plan.clear()
        self.race = None
        self.decisions.clear()
        self.race_lines.clear()


STATE = SweepState()


def execute(cfg: dict[str, Any]) -> JobResult:
    """One job: checked, then listed (dry run), skipped (duplicate or done), resumed or run."""
    try:
        validate_job(cfg)
    except InvalidJob as err:
        result = JobResult("INVALID", cfg["placement"]["name"], "", reason=str(err))
        STATE.results.append(result)
        print(f"error: {err}", file=sys.stderr)
        return result
    h = config_hash(cfg)
    job = job_number(len(STATE.results))
    duplicate_of = duplicates().get(job, STATE.seen.get(h))
    STATE.seen.setdefault(h, job)
    if cfg["dry_run"]:
        result = describe(cfg, job, duplicate_of)
    elif duplicate_of is not None:
        reason = f"same config as job {duplicate_of}"
        result = JobResult("SKIPPED", variant_name(cfg), h, reason=reason)
    elif excess := budget_excess(cfg):
        print(f"not trained: {excess}")
        result = JobResult("OVER_BUDGET", variant_name(cfg), h, reason=excess)
    else:
        result = run_or_skip(cfg, h)
    STATE.results.append(result)
    return result


def duplicates() -> dict[int, int]:
    """Job number -> the earlier job with the same config hash, found when the sweep was
    checked, so that duplicates run once under any launcher."""
    return {int(k): v for k, v in json.loads(os.environ.get(DUPLICATES_ENV, "{}")).items()}


def run_or_skip(cfg: dict[str, Any], h: str) -> JobResult:
    """Skip a config that already FINISHED; mark runs whose process is gone KILLED; resume
    a KILLED run on request; else run anew."""
    from dat_exp.tracking.store import (
        client_for,
        experiment_id,
        mark_stale_runs_killed,
        runs_of_config,
    )

    tracking = cfg["tracking"]
    client = client_for(tracking)
    exp_id = experiment_id(client, tracking["experiment"], local=not tracking.get("uri"))
    for run_id in mark_stale_runs_killed(client, exp_id, h):
        print(f"marked run {run_id} KILLED: its process is gone")
    if not cfg["rerun"]:
        finished = runs_of_config(client, exp_id, h, "FINISHED")
        reused, why = reusable(finished, cfg["reuse"])
        if reused is not None:
            print(f"skipped: {why}")
            if parent := os.environ.get(PARENT_ENV):  # the sweep's tables include the run
                client.set_tag(parent, Tag.REUSED + h, reused.info.run_id)
            return JobResult("SKIPPED", variant_name(cfg), h, reused.info.run_id, reason=why)
        if finished:
            print(f"training again: {why}")
    resume = resumable(client, exp_id, h) if cfg["resume"] else None
    return run_job(cfg, os.environ.get(PARENT_ENV), resume)


def reusable(finished: list, reuse: str) -> tuple[Any | None, str]:
    """The FINISHED run (newest first) a job is skipped for, and why; or None and why not.

    Only a run made by the current code version counts as done, unless ``reuse=any``: results
    of other code are never reused silently."""
    if not finished:
        return None, "not done yet"
    same = next((run for run in finished if not other_code(run)), None)
    if same is not None:
        return same, f"done in run {same.info.run_id}"
    newest = finished[0]
    if reuse == Reuse.any:
        return newest, reuse_reason(newest)
    return None, f"run {newest.info.run_id} was made{other_code(newest)}; reuse=any would reuse it"


def other_code(run: Any) -> str:
    """`` by other code (code version A, now B)`` for a run of another code version, else ''."""
    from dat_exp.provenance import code_version

    old, now = run.data.tags.get(Tag.CODE_VERSION, "not recorded"), code_version()
    return "" if old == now else f" by other code (code version {old}, now {now})"


def reuse_reason(run: Any) -> str:
    """What the summary says of a job skipped for ``run``."""
    other = other_code(run)
    return f"done in run {run.info.run_id}{other}" + ("; reused as reuse=any" if other else "")


def finished_runs(cfg: dict[str, Any], h: str) -> list:
    """FINISHED runs of a config, newest first, without creating a store that is not there."""
    from dat_exp.tracking.store import client_for, experiment_id, runs_of_config, tracking_uri

    tracking = cfg["tracking"]
    uri = tracking_uri(tracking)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    client = client_for(tracking)
    if client.get_experiment_by_name(tracking["experiment"]) is None:
        return []
    exp_id = experiment_id(client, tracking["experiment"], local=not tracking.get("uri"))
    return runs_of_config(client, exp_id, h, "FINISHED")


def resumable(client: Any, exp_id: str, h: str) -> tuple[str, Path] | None:
    """The newest KILLED run of this config with Ultralytics' ``last.pt`` on disk, made by the
    current code version (a run continued by other code would mix two versions)."""
    from dat_exp.env import runs_dir
    from dat_exp.tracking.store import runs_of_config

    for run in runs_of_config(client, exp_id, h, "KILLED"):
        last = runs_dir() / "train" / run.info.run_id / "weights" / "last.pt"
        if not last.exists():
            continue
        if other := other_code(run):
            print(f"not resuming run {run.info.run_id}: it was made{other}; training anew")
            return None
        if unreadable := unreadable_checkpoint(last):
            print(f"not resuming run {run.info.run_id}: {unreadable}; training anew")
            return None
        print(f"resuming run {run.info.run_id} from {last}")
        return run.info.run_id, last
    return None


def unreadable_checkpoint(last: Path) -> str:
    """Why ``last.pt`` cannot be resumed from (cut short by a kill -9 while it was written), or
    ''."""
    from dat_exp.runner import checkpoint_epoch

    try:
        checkpoint_epoch(last)
    except Exception as err:  # noqa: BLE001  (any reason a checkpoint cannot be read)
        return f"its {last.name} cannot be read ({type(err).__name__}: {err})"
    return ""


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
        f"    GFLOPs {gflops:.3f} at {prepared.imgsz} px; attention memory {memory:.1f} MB/image\n"
        f"    {reuse_line(cfg)}"
    )
    return JobResult(
        "DRY_RUN", variant_name(cfg), config_hash(cfg), metrics={schema.GFLOPS: gflops}
    )


def reuse_line(cfg: dict[str, Any]) -> str:
    """What a real run of this job would do with the store's finished runs."""
    if cfg["rerun"]:
        return "would train (rerun=true)"
    reused, why = reusable(finished_runs(cfg, config_hash(cfg)), cfg["reuse"])
    return f"would reuse: {why}" if reused is not None else f"would train: {why}"


def _module_line(index: int, level: str, channels: int, s: dict[str, Any]) -> str:
    return (
        f"L{index} {level} c{channels} h{s['heads']} g{s['groups']} st{s['stride']} "
        f"k{s['ksize']} {s['pe']} {s['wrap']}"
    )


# metric -> the summary's column title
SUMMARY_METRICS = {
    schema.MAP50: schema.MAP50,
    schema.MAP50_95: schema.MAP50_95,
    schema.held_out(schema.MAP50_95): schema.held_out(schema.MAP50_95),
    schema.GFLOPS: "GFLOPs",
    schema.LATENCY_MS: schema.LATENCY_MS,
}


def summary_frame(results: list[JobResult]):
    """One row per job: variant, the headline metrics, whether a finished run was reused for
    it, status, and the run or the reason."""
    import pandas as pd

    rows = [
        {
            "job": i,
            "variant": r.variant,
            **{title: r.metrics.get(m) for m, title in SUMMARY_METRICS.items()},
            "reused": "yes" if r.status == "SKIPPED" and r.run_id else "",
            **({"decision": STATE.decisions.get(r.variant, "")} if STATE.decisions else {}),
            "status": r.status,
            "run / reason": r.reason or r.run_id or "",
        }
        for i, r in enumerate(results)
    ]
    frame = pd.DataFrame(rows)
    titles = list(SUMMARY_METRICS.values())
    frame[titles] = frame[titles].apply(pd.to_numeric)  # a job without a value: NaN, shown "-"
    return frame


def summary_table(results: list[JobResult]) -> str:
    frame = summary_frame(results)
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def summary_note(results: list[JobResult]) -> str:
    """The end-of-sweep table as Markdown, for the parent run's description."""
    from dat_exp.tracking.notes import markdown_table

    frame = summary_frame(results)
    numbers = frame.select_dtypes("number").columns.drop("job")
    frame[numbers] = frame[numbers].apply(
        lambda col: col.map(lambda v: f"{v:.3f}" if v == v else None)
    )
    counts = frame["status"].value_counts()
    statuses = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"{len(frame)} jobs: {statuses}.\n\n{markdown_table(frame)}"


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


def results_from_store(tracking: dict[str, Any], parent: str) -> list[JobResult]:
    """The sweep's jobs as its child runs say, for launchers that ran them elsewhere, and the
    finished runs its jobs were skipped for (the parent's ``dat_exp.reused.*`` tags)."""
    from dat_exp.tracking.store import client_for

    client = client_for(tracking)
    sweep = client.get_run(parent)
    runs = client.search_runs(
        [sweep.info.experiment_id],
        f"{schema.search_tag(Tag.PARENT)} = '{parent}'",
        order_by=["attributes.start_time ASC"],
    )
    results = [job_result(run, run.info.status, run.data.tags.get(Tag.ERROR, "")) for run in runs]
    for key, run_id in sweep.data.tags.items():
        if key.startswith(Tag.REUSED):
            run = client.get_run(run_id)
            results.append(job_result(run, "SKIPPED", reuse_reason(run)))
    return results


def job_result(run: Any, status: str, reason: str) -> JobResult:
    tags = run.data.tags
    variant, h = tags.get(Tag.VARIANT, ""), tags.get(Tag.CONFIG_HASH, "")
    return JobResult(status, variant, h, run.info.run_id, dict(run.data.metrics), reason)


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of each job, as Hydra's basic sweeper will expand them (a racing
    sweep: each point of its grid, at seed 0)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dat_exp.racing import grid_overrides, is_racing

    if is_racing(config):
        return grid_overrides(config)
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def search_space_jobs(config: DictConfig, base: list[str]) -> list[list[str]]:
    """One job per value of each ``choice`` in a search sweeper's space (Optuna's
    ``hydra.sweeper.params``), so that a bad value is reported before any trial trains."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [
        [*base, f"{o.key_or_group}={value}"]
        for o in parsed
        if o.is_choice_sweep()
        for value in o.sweep_string_iterator()
    ]


def compose_job(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    loader = GlobalHydra.instance().config_loader()
    return resolve(loader.load_configuration(config.hydra.job.config_name, overrides, RunMode.RUN))


def composition_error(err: BaseException) -> str:
    """One line from Hydra's and OmegaConf's messages: the override, then the reason (its
    first line: the value and the valid choices), then the full key."""
    # a missing option lists the available ones over several lines, then the search path
    parts = [" ".join(str(err).split()).split(" Config search path")[0]] if str(err) else []
    if getattr(err, "override", None):  # a parse error names its override only here
        parts.insert(0, f"override {err.override!r}")
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause):
        lines = str(cause).splitlines()
        parts += [lines[0]] if not any(lines[0] in part for part in parts) else []
        parts += [line.strip() for line in lines[1:] if line.strip().startswith("full_key:")]
    return "; ".join(parts) or type(err).__name__


def check_every_job(config: DictConfig) -> list[dict[str, Any]]:
    """Compose and check every job of the sweep; list the invalid ones and start none.
    Returns the sweep's jobs, resolved."""
    from dat_exp.racing import is_racing

    jobs = sweep_jobs(config)
    searched = (
        [] if is_racing(config) else search_space_jobs(config, jobs[0] if len(jobs) == 1 else [])
    )
    problems = []
    composed = []
    first: dict[str, int] = {}
    repeated: dict[int, int] = {}
    for number, overrides in enumerate(jobs + searched):
        name = f"job {number}" if number < len(jobs) else "search value"
        try:
            cfg = compose_job(config, overrides)
            validate_job(cfg)
            h = config_hash(cfg)
            composed += [cfg] if number < len(jobs) else []
            if h in first and number < len(jobs):
                repeated[number] = first[h]
            first.setdefault(h, number)
        except InvalidJob as err:
            problems.append(f"  {name} ({' '.join(overrides)}): {err}")
        except Exception as err:  # noqa: BLE001  (a composition error of one job)
            problems.append(f"  {name} ({' '.join(overrides)}): {composition_error(err)}")
    if problems:
        what = "jobs or search values" if searched else "jobs"
        total = len(jobs) + len(searched)
        print(
            f"error: {len(problems)} of {total} {what} are invalid; none was started:",
            file=sys.stderr,
        )
        print("\n".join(problems), file=sys.stderr)
        sys.exit(2)
    # Job numbers are the basic sweeper's; another sweeper (Optuna) numbers its own trials.
    basic = "BasicSweeper" in str(OmegaConf.select(config, "hydra.sweeper._target_"))
    os.environ[DUPLICATES_ENV] = json.dumps(repeated if basic else {})
    return composed


def prepare_ray_launcher(config: DictConfig, names: tuple[str, ...]) -> None:
    """Two fixes to the Ray launcher's ``ray.init`` arguments, made before Hydra instantiates
    the launcher from this config. Ray's workers belong to the cluster, not to this process,
    so they do not inherit its environment: pass the sweep's variables (and an absolute
    ``runs/``) as the job's ``runtime_env``. And the launcher always sets
    ``object_store_memory``, which Ray refuses when joining an existing cluster."""
    init = OmegaConf.select(config, "hydra.launcher.ray.init")
    if init is None:
        return
    from dat_exp.env import RUNS_ENV, runs_dir

    env = {name: os.environ[name] for name in names if name in os.environ}
    env[RUNS_ENV] = str(runs_dir())
    with open_dict(init):
        init.runtime_env = OmegaConf.merge(init.get("runtime_env") or {}, {"env_vars": env})
        if init.get("address"):
            init.setdefault("object_store_memory", None)


def checked_race(config: DictConfig, jobs: list[dict[str, Any]]) -> Any:
    """A racing sweep's settings checked and its metric fixed (exit 2 on bad input, before the
    parent run opens); None for any other sweeper."""
    from dat_exp.racing import RacingError, is_racing, start_race

    if not is_racing(config):
        return None
    try:
        return start_race(config, jobs)
    except RacingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


class SweepCallback(Callback):
    """Parent run for a multirun; children nest under it, also from other processes."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        STATE.clear()
        jobs = check_every_job(config)
        STATE.race = checked_race(config, jobs)
        cfg = resolve(config)
        from dat_exp.planning import bill_check

        racing = STATE.race.settings if STATE.race is not None else None
        bill = bill_check(config, jobs, racing)  # over budget.gpu_hours: one line, exit 2
        if cfg["dry_run"]:
            from dat_exp.planning import sweep_plan

            # racing plans its own seeds: the seed planner's fixed-seed view does not apply
            plan = [] if racing else ["", *sweep_plan(jobs)]
            STATE.plan = [*bill, *plan] if bill else plan[1:]
            return
        from dat_exp.tracking.store import client_for, experiment_id, start_run

        tracking = STATE.tracking = cfg["tracking"]
        client = client_for(tracking)
        exp_id = experiment_id(client, tracking["experiment"], local=not tracking.get("uri"))
        name = f"sweep {config.hydra.sweep.dir.rsplit('/', 2)[-1]}"
        overrides = " ".join(config.hydra.overrides.task)
        parent = start_run(client, exp_id, name, {Tag.SWEEP: "true", Tag.OVERRIDES: overrides})
        os.environ[PARENT_ENV] = parent
        if STATE.race is not None:
            from dat_exp.racing import open_parent_tags

            open_parent_tags(STATE.race, client, parent, tracking)
        prepare_ray_launcher(config, (PARENT_ENV, DUPLICATES_ENV))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = resolve(config)
        parent = os.environ.get(PARENT_ENV)
        if not STATE.results and parent:  # the jobs ran in a launcher's other processes
            STATE.results.extend(results_from_store(cfg["tracking"], parent))
        print_summary(STATE.results, cfg["tracking"])
        if STATE.race_lines:
            print("\n" + "\n".join(STATE.race_lines))
        if STATE.plan:
            print("\n" + "\n".join(STATE.plan))
        parent = os.environ.pop(PARENT_ENV, None)
        if parent:
            from dat_exp.tracking.notes import set_sweep_note
            from dat_exp.tracking.store import client_for

            client = client_for(cfg["tracking"])
            if STATE.results:
                set_sweep_note(client, parent, "summary", summary_note(STATE.results))
            report_search(Path(config.hydra.sweep.dir), client, parent)
            client.set_terminated(parent, "FAILED" if STATE.failed else "FINISHED")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_summary(STATE.results, resolve(config)["tracking"])


def report_search(sweep_dir: Path, client: Any, parent: str) -> None:
    """A search sweeper's best trial (Optuna writes ``optimization_results.yaml``): printed,
    and kept on the parent run as tags and the file."""
    results = sweep_dir / "optimization_results.yaml"
    if not results.exists():
        return
    best = OmegaConf.to_container(OmegaConf.load(results))
    if "best_params" not in best:  # a multi-objective study has a front, not one best
        return
    params = " ".join(f"{k}={v}" for k, v in best["best_params"].items())
    print(f"\nbest trial: {best['best_value']:.4f} with {params}")
    client.set_tag(parent, Tag.BEST_VALUE, best["best_value"])
    client.set_tag(parent, Tag.BEST_PARAMS, params)
    client.log_artifact(parent, str(results))


def interrupted() -> None:
    """SIGINT/SIGTERM: the job's run is already KILLED; end the parent run likewise."""
    from dat_exp.tracking.store import client_for

    print(
        "\ninterrupted: the running job was marked KILLED; run the same command again to "
        "skip what finished (resume=true continues the killed job)",
        file=sys.stderr,
    )
    if STATE.results:
        print(summary_table(STATE.results))
    parent = os.environ.pop(PARENT_ENV, None)
    if parent and STATE.tracking:
        client_for(STATE.tracking).set_terminated(parent, "KILLED")

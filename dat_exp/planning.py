"""The seed plan of a sweep before it runs (``dry_run=true``): the comparisons it will make, the
seeds each side will have, and the smallest Δ those seeds can detect in that family.

σ comes from finished runs like the planned ones (same model, data, train preset, device type
and code version); without any, the plan says "no spread known yet".

The bill (``sweep_bill``): the device-hours and wall time the sweep's jobs will take, predicted
from the training times of the experiment's finished runs on the jobs' device, and the check of
``budget.gpu_hours`` against it (``bill_check``) before anything runs.
"""

from __future__ import annotations

import heapq
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from dat_exp.analysis.planner import make_plan, plan_lines
from dat_exp.analysis.racing import RacingSettings
from dat_exp.analysis.stats import seed_values
from dat_exp.analysis.summary import headline
from dat_exp.config import (
    baseline_hash,
    config_hash,
    device_type,
    variant_hash,
    variant_name,
)
from dat_exp.tracking.schema import TRAIN_TIME_S

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


# -- the bill: device-hours and wall time, before the sweep is paid for ------------------------
HOUR_S = 3600.0
# What makes a finished run's training time a prediction for a job: the runs table's columns.
TIMED_ALIKE = ("model", "data", "train", "device_type")
NO_HISTORY = "no finished run with this model, data and train preset on the jobs' device ({})"
FIRST_SEEDS = "run one seed of each variant first, or drop budget.gpu_hours"
UNBOUNDED = 10**9  # a launcher that starts every job at once
MEASURE_REPS = 5  # training steps timed per model, after one warm-up step

StepRatio = Callable[[dict[str, Any], dict[str, Any]], float]


@dataclass(frozen=True)
class VariantCost:
    """One variant of the bill: the predicted time of one of its jobs, and its seeds to train."""

    name: str
    hours: float | None  # one job's training time; None: no prediction
    source: str  # where the prediction comes from, or why there is none
    devices: int  # devices one job holds (several for DDP)
    seeds: frozenset[int]  # seeds that would train (finished configs are reused, not counted)


@dataclass(frozen=True)
class Case:
    """One way the sweep can go: per round, the variant (index) of each job. Rounds are
    barriers: a round starts when the slowest job of the one before has ended."""

    name: str
    rounds: tuple[tuple[int, ...], ...]

    def jobs(self, variant: int | None = None) -> int:
        return sum(len(r) if variant is None else r.count(variant) for r in self.rounds)


@dataclass(frozen=True)
class Bill:
    """What a sweep will cost: per variant, and per case in total."""

    unit: str  # GPU-hours or CPU-hours
    device: str | None  # the jobs' device, as the history names it; None: no history there
    parallelism: int
    variants: tuple[VariantCost, ...]
    cases: tuple[Case, ...]  # a plain sweep: one; racing: the best and the worst case
    racing: RacingSettings | None = None
    reused: int = 0  # jobs whose config already FINISHED: reused, not paid for again

    @property
    def worst(self) -> Case:
        return self.cases[-1]

    def device_hours(self, case: Case) -> float | None:
        hours = [self._hours(v) for r in case.rounds for v in r]
        return None if None in hours else sum(hours)

    def wall_hours(self, case: Case) -> float | None:
        rounds = [[self.variants[v].hours for v in r] for r in case.rounds]
        if any(None in r for r in rounds):
            return None
        return sum(makespan(r, self.parallelism) for r in rounds)

    def _hours(self, variant: int) -> float | None:
        cost = self.variants[variant]
        return None if cost.hours is None else cost.hours * cost.devices


def makespan(hours: Sequence[float], parallelism: int) -> float:
    """Wall time of jobs taken in order by ``parallelism`` workers, each taking the next job
    when it is free (a pool's rule; with equal jobs, ceil(jobs / parallelism) of them)."""
    free = [0.0] * max(min(parallelism, len(hours)), 1)
    for h in hours:
        heapq.heapreplace(free, free[0] + h)
    return max(free)


def sweep_bill(
    jobs: Sequence[dict[str, Any]],
    parallelism: int,
    racing: RacingSettings | None = None,
    *,
    history: pd.DataFrame | None = None,
    measure: StepRatio | None = None,
) -> Bill:
    """The bill of ``jobs`` (resolved configs; for racing one per grid point, its baseline
    twins added where missing) at ``parallelism``. ``history``: the experiment's FINISHED runs
    (default: from the store); ``measure``: the step-time ratio of a job's model to a
    reference's (default: :func:`measure_step_ratio`)."""
    history = bill_history(jobs[0]) if history is None and jobs else history
    history = pd.DataFrame() if history is None else history
    first = _first_of_each_variant(jobs)
    if racing is not None:  # every variant races against its baseline twin, listed or not
        first = _first_of_each_variant([*first, *map(baseline_twin, first)])
    timed, device = timed_runs(history, first)
    by_variant = timed.groupby("variant_hash") if not timed.empty else []
    times = {vh: (float(r[TRAIN_TIME_S].median()) / HOUR_S, len(r)) for vh, r in by_variant}
    predict = _Predictor(first, times, device, measure or measure_step_ratio)
    seeds = [_seeds_to_train(job, jobs, history, racing) for job in first]
    variants = tuple(
        VariantCost(variant_name(job), *predict(job), _devices(job), s)
        for job, s in zip(first, seeds, strict=True)
    )
    planned = sum(len(_all_seeds(job, jobs, racing)) for job in first)
    unit = "GPU-hours" if first and device_type(first[0]["device"]) == "cuda" else "CPU-hours"
    cases = _cases(variants, racing)
    reused = planned - sum(len(s) for s in seeds)
    return Bill(unit, device, parallelism, variants, cases, racing, reused)


def bill_history(job: dict[str, Any]) -> pd.DataFrame:
    """Every FINISHED run of the job's experiment, of every code version; empty when the store
    or the experiment does not exist yet (nothing is created)."""
    from dat_exp.analysis.load import AnalysisError, load_runs
    from dat_exp.tracking.store import tracking_uri

    tracking = job["tracking"]
    try:
        return load_runs(tracking["experiment"], tracking_uri=tracking_uri(tracking)).pool
    except AnalysisError:
        return pd.DataFrame()


def timed_runs(
    history: pd.DataFrame, jobs: Sequence[dict[str, Any]]
) -> tuple[pd.DataFrame, str | None]:
    """The runs whose training times predict the jobs', and the jobs' device: runs with the
    model, data, train preset and device type of a job, on the device of the newest of them;
    per variant only those of its newest code version (as the analysis keeps them)."""
    from dat_exp.analysis.load import newest_code_only

    if history.empty or TRAIN_TIME_S not in history:
        return history.iloc[:0], None
    wanted = {_alike(job) for job in jobs}
    keys = zip(*(history[c] for c in TIMED_ALIKE), strict=True)
    alike = history[[key in wanted for key in keys]]
    alike = alike[alike[TRAIN_TIME_S].notna()].sort_values("start_time", kind="stable")
    if alike.empty:
        return alike, None
    device = str(alike["device_name"].iloc[-1])
    return newest_code_only(alike[alike["device_name"] == device])[0], device


def _alike(job: dict[str, Any]) -> tuple[str, ...]:
    device = device_type(job["device"])
    return job["model"]["name"], job["data"]["name"], job["train"]["name"], device


class _Predictor:
    """One job's training time (hours) and where it comes from: the median of its variant's
    runs; else the time of a variant of its family (the same config but the placement) scaled
    by their training steps' time ratio, measured here only when this machine is the jobs'
    device (a ratio from another device, or GFLOPs alone, would not predict it)."""

    def __init__(
        self,
        first: Sequence[dict[str, Any]],
        times: dict[str, tuple[float, int]],  # variant hash -> (median hours, runs)
        device: str | None,
        measure: StepRatio,
    ) -> None:
        self.first, self.times, self.device, self.measure = first, times, device, measure

    def __call__(self, job: dict[str, Any]) -> tuple[float | None, str]:
        if (own := self.times.get(variant_hash(job))) is not None:
            return own[0], f"median of {own[1]} run(s)"
        if self.device is None:
            return None, NO_HISTORY.format(device_type(job["device"]))
        ref = self._reference(job)
        if ref is None:
            return None, f"neither it nor a variant of its family has run on {self.device}"
        here = this_device(job)
        if here != self.device:
            return None, f"not run yet; this machine ({here}) is not the jobs' {self.device}"
        try:
            ratio = self.measure(job, ref)
        except RuntimeError as err:  # out of memory, among others: a dry run carries on
            return None, f"timing its training step failed ({type(err).__name__})"
        hours = self.times[variant_hash(ref)][0] * ratio
        return hours, f"{variant_name(ref)}'s time x {ratio:.2f}, the training steps timed here"

    def _reference(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The baseline twin first (always buildable), then the sweep's family members."""
        family = [j for j in self.first if baseline_hash(j) == baseline_hash(job)]
        timed = (c for c in [baseline_twin(job), *family] if variant_hash(c) in self.times)
        return next(timed, None)


def baseline_twin(job: dict[str, Any]) -> dict[str, Any]:
    twin = json.loads(json.dumps(job))
    twin["placement"] = {"name": "none", "levels": []}
    return twin


def this_device(job: dict[str, Any]) -> str:
    """This machine's name for the job's device, as a run tags it (``dat_exp.device_name``)."""
    from dat_exp.runner import device_name

    return device_name(job["device"])


def _devices(job: dict[str, Any]) -> int:
    return len(str(job["device"]).split(",")) if device_type(job["device"]) == "cuda" else 1


def _all_seeds(
    job: dict[str, Any], jobs: Sequence[dict[str, Any]], racing: RacingSettings | None
) -> list[dict[str, Any]]:
    """The variant's jobs, one per seed: the sweep's, or racing's up to its last round."""
    if racing is not None:
        return [{**job, "seed": s} for s in range(racing.seeds(racing.rounds))]
    seeds = {int(j["seed"]): j for j in jobs if variant_hash(j) == variant_hash(job)}
    return list(seeds.values())


def _seeds_to_train(
    job: dict[str, Any],
    jobs: Sequence[dict[str, Any]],
    history: pd.DataFrame,
    racing: RacingSettings | None,
) -> frozenset[int]:
    """Seeds of the variant a real run would train: a finished run of the config is reused."""
    todo = (j for j in _all_seeds(job, jobs, racing) if not would_reuse(j, history))
    return frozenset(int(j["seed"]) for j in todo)


def would_reuse(job: dict[str, Any], history: pd.DataFrame) -> bool:
    """Whether the sweep would skip the job for a FINISHED run of its config (``reuse``)."""
    if job["rerun"] or history.empty:
        return False
    same = history[history["config_hash"] == config_hash(job)]
    if same.empty or job["reuse"] == "any":
        return not same.empty
    from dat_exp.provenance import code_version

    return bool((same["code_version"] == code_version()).any())


def _cases(variants: Sequence[VariantCost], racing: RacingSettings | None) -> tuple[Case, ...]:
    def round_(low: int, high: int) -> tuple[int, ...]:
        return tuple(i for i, v in enumerate(variants) for s in sorted(v.seeds) if low <= s < high)

    if racing is None:
        return (Case("total", (round_(0, sys.maxsize),)),)
    edges = [0] + [racing.seeds(r) for r in range(1, racing.rounds + 1)]
    best = Case("best case: every variant decided in round 1", (round_(0, racing.seeds_min),))
    worst = Case(
        f"worst case: every variant to seeds_max in {racing.rounds} round(s)",
        tuple(round_(a, b) for a, b in zip(edges, edges[1:], strict=False)),
    )
    return best, worst


# -- printing and refusing ---------------------------------------------------------------------
def bill_lines(bill: Bill) -> list[str]:
    """The dry run's bill: per variant and in total, device-hours and wall time."""
    where = (
        f"predicted from this experiment's runs on {bill.device}"
        if bill.device
        else "no history on the jobs' device to predict from"
    )
    lines = [f"bill ({bill.unit}; {where}; parallelism {_shown(bill.parallelism)}):"]
    lines += [_variant_line(bill, i) for i in range(len(bill.variants))]
    lines += [f"  {case.name}: {_case_text(bill, case)}" for case in bill.cases]
    if bill.reused:
        lines.append(f"  not counted: {bill.reused} job(s) a FINISHED run would be reused for")
    if bill.racing is not None:
        lines.append(_barrier_line(bill))
    return lines


def _variant_line(bill: Bill, i: int) -> str:
    cost = bill.variants[i]
    jobs = " to ".join(str(case.jobs(i)) for case in bill.cases)
    if cost.hours is None:
        return f"  {cost.name}: {jobs} job(s), no prediction: {cost.source}"
    total = " to ".join(_amount(case.jobs(i) * cost.hours * cost.devices) for case in bill.cases)
    each = _duration(cost.hours)
    return f"  {cost.name}: {jobs} job(s) x {each} = {total} {bill.unit} ({cost.source})"


def _case_text(bill: Bill, case: Case) -> str:
    hours, wall = bill.device_hours(case), bill.wall_hours(case)
    if hours is None or wall is None:
        missing = sum(v.hours is None and case.jobs(i) > 0 for i, v in enumerate(bill.variants))
        return f"{case.jobs()} job(s), no prediction ({missing} variant(s) have none)"
    return f"{case.jobs()} job(s), {_amount(hours)} {bill.unit}, wall time {_duration(wall)}"


def _barrier_line(bill: Bill) -> str:
    """Rounds wait for their slowest job: racing saves device-hours, not always wall time."""
    rounds = bill.racing.rounds
    at_once = Case("", (tuple(v for r in bill.worst.rounds for v in r),))
    wall = bill.wall_hours(at_once)
    grid = f" ({_duration(wall)} here)" if wall is not None else ""
    return (
        f"  {rounds} round(s), each a barrier (it waits for its slowest job): racing saves "
        f"{bill.unit}, but with many devices it can take up to {rounds}x the wall time of the "
        f"full grid run at once{grid}"
    )


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * HOUR_S:.0f} s"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def _amount(hours: float) -> str:
    """Device-hours: two decimals, or two significant digits below 1 (a CPU test sweep)."""
    return f"{hours:.2f}" if hours >= 1 or hours == 0 else f"{hours:.2g}"


def _shown(parallelism: int) -> str:
    return "every job at once" if parallelism >= UNBOUNDED else str(parallelism)


def budget_problem(bill: Bill, gpu_hours: float | None) -> str | None:
    """The one line refusing a sweep whose worst case exceeds ``budget.gpu_hours``, or one that
    cannot be checked (no prediction); None when it fits or there is no budget."""
    if gpu_hours is None:
        return None
    worst = bill.device_hours(bill.worst)
    if worst is None:
        worst_jobs = enumerate(bill.variants)
        cost = next(v for i, v in worst_jobs if v.hours is None and bill.worst.jobs(i))
        why = cost.source if bill.device is None else f"{cost.name} has none: {cost.source}"
        return (
            f"budget.gpu_hours={gpu_hours:g}, but the bill cannot be checked, having no "
            f"prediction ({why}): {FIRST_SEEDS}"
        )
    if worst > gpu_hours:
        which = "worst case" if bill.racing else "sweep"
        return (
            f"budget.gpu_hours={gpu_hours:g}, but the {which} is predicted at {_amount(worst)} "
            f"{bill.unit}: raise the budget, or sweep fewer variants or seeds"
        )
    return None


def bill_check(
    config: DictConfig, jobs: Sequence[dict[str, Any]], racing: RacingSettings | None = None
) -> list[str]:
    """The bill's lines for a dry run (none outside one without a budget). A sweep over its
    ``budget.gpu_hours``, or whose bill cannot be checked, is refused here: one line, exit 2,
    before anything runs; a dry run says that it would be."""
    budget = OmegaConf.select(config, "budget.gpu_hours")
    dry = bool(OmegaConf.select(config, "dry_run"))
    if not jobs or (budget is None and not dry):
        return []
    bill = sweep_bill(jobs, launcher_parallelism(config), racing)
    problem = budget_problem(bill, budget)
    if problem and not dry:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return bill_lines(bill) + ([f"  a real run would stop here: {problem}"] if problem else [])


def launcher_parallelism(config: DictConfig) -> int:
    """How many jobs the sweep's launcher runs at once, from its Hydra config."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="")).split(".")[-1]
    if launcher == "JoblibLauncher":
        n = OmegaConf.select(config, "hydra.launcher.n_jobs")
        cpus = os.cpu_count() or 1
        # joblib's rule: -1 is every CPU, -2 all but one, ...
        return cpus if n is None else max(cpus + 1 + n, 1) if n < 0 else n
    if launcher == "SlurmLauncher":  # submitit's job array
        return int(OmegaConf.select(config, "hydra.launcher.array_parallelism", default=256))
    if launcher == "LocalLauncher":  # submitit's local executor starts every job at once
        return UNBOUNDED
    if launcher == "RayLauncher":
        return _ray_parallelism(config)
    return 1  # the basic launcher: one job after the other, in this process


def _ray_parallelism(config: DictConfig) -> int:
    """Ray runs what its cluster fits, which the config says only where it sizes the cluster
    (``ray.init.num_gpus``, or ``num_cpus``) and each job (``ray.remote``); else 1."""
    for key in ("num_gpus", "num_cpus"):
        total = OmegaConf.select(config, f"hydra.launcher.ray.init.{key}")
        each = OmegaConf.select(config, f"hydra.launcher.ray.remote.{key}")
        if total and each:
            return max(int(total // each), 1)
    return 1


# -- measuring a training step -----------------------------------------------------------------
def measure_step_ratio(
    job: dict[str, Any], reference: dict[str, Any], reps: int = MEASURE_REPS
) -> float:
    """The time of a training step of ``job``'s model over ``reference``'s, on the job's device:
    forward and backward of one batch at the job's train size and batch, the two interleaved
    after a warm-up (the loss and the optimiser step, about the same for both, are left out, so
    the ratio is a little larger than the whole step's)."""
    import torch

    from dat_exp.bench import interleaved_times
    from dat_exp.runner import prepare

    on_cuda = device_type(job["device"]) == "cuda"
    device = torch.device(f"cuda:{job['device'].split(',')[0]}" if on_cuda else "cpu")
    size, batch = int(job["train"]["imgsz"]), int(job["train"]["batch"])
    x = torch.rand(batch, 3, size, size, device=device)
    amp = on_cuda and bool(job["train"].get("amp", True))  # as the trainer runs it
    steps = {
        name: _train_step(prepare(cfg).built.model.to(device).train(), x, amp)
        for name, cfg in (("job", job), ("reference", reference))
    }
    times = interleaved_times(steps, device, reps, reps, budget_s=0.0)
    # the fastest of each: other work on the machine only ever adds time (a busy CPU: 40 ms
    # steps measured at up to 3.7 s, which a median of 5 does not always outvote)
    return min(times["job"]) / min(times["reference"])


def _train_step(model: Any, x: Any, amp: bool) -> Callable[[], None]:
    import torch

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, enabled=amp):
            out = model(x)
        _total(out).backward()

    return step


def _total(out: Any) -> Any:
    """The sum of every tensor of a training-mode output (a tensor, list or dict of them)."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return sum(_total(o) for o in out)
    return out.float().sum()

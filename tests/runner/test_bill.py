"""The bill of a sweep (``dry_run=true``): device-hours and wall time predicted from the
experiment's history, racing's best and worst case, and ``budget.gpu_hours`` refusing a sweep
before anything runs. Nothing trains: the history is a hand-made runs table."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dat_exp.analysis.racing import RacingSettings
from dat_exp.config import CONF_DIR, config_hash, register_configs, resolve, variant_hash
from dat_exp.planning import (
    bill_check,
    bill_lines,
    budget_problem,
    launcher_parallelism,
    measure_step_ratio,
    sweep_bill,
    this_device,
)
from dat_exp.provenance import code_version
from dat_exp.tracking.schema import TRAIN_TIME_S
from tests.analysis import fakes
from tests.runner.entry import TINY, local_runs, run_entry

register_configs()

SMALL = ["device=cpu", "train=smoke", "train.imgsz=64", "train.batch=2"]
SMALL += ["data.images=4", "data.val_images=4", "data.test_images=4", "data.imgsz=64"]
RACING = RacingSettings(seeds_min=2, seeds_max=4, seeds_step=1, target_delta=0.01)  # K = 3


def composed(*overrides: str, hydra: bool = False):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*SMALL, *overrides], return_hydra_config=hydra)


def job(placement: str = "none", seed: int = 0, *overrides: str) -> dict:
    return resolve(composed(f"placement={placement}", f"seed={seed}", *overrides))


def sweep(placements: tuple[str, ...], seeds: int) -> list[dict]:
    return [job(p, s) for p in placements for s in range(seeds)]


def timed(cfg: dict, seconds: float, device_name: str = fakes.DEVICE_NAME, **values) -> dict:
    """A FINISHED run of ``cfg`` that trained for ``seconds``."""
    keys = {"variant_hash": variant_hash(cfg), "config_hash": config_hash(cfg)}
    row = {**keys, "device_name": device_name, TRAIN_TIME_S: seconds, **values}
    return fakes.run(cfg["placement"]["name"], cfg["seed"], cfg["placement"]["name"], **row)


def history(*rows: dict) -> pd.DataFrame:
    return fakes.frame(list(rows))


def never(job: dict, reference: dict) -> float:
    raise AssertionError("a step was timed where it must not be")


@pytest.fixture(autouse=True)
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DAT_EXP_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


# -- predictions ------------------------------------------------------------------------------
def test_each_variant_is_its_median_training_time_on_the_newest_device():
    none, sppf = job("none"), job("sppf")
    past = history(
        timed(none, 100.0, "Old CPU"),  # another device, older: not the jobs' device
        timed(none, 9000.0, train="gpu"),  # another train preset
        timed(sppf, 1e6, code_version="v0"),  # older code of this variant: set aside
        timed(none, 3600.0),
        timed(none, 7200.0),
        timed(none, 5400.0),
        timed(sppf, 7200.0),
        timed(sppf, 10800.0),
    )
    bill = sweep_bill(sweep(("none", "sppf"), 3), 1, history=past, measure=never)
    assert bill.device == fakes.DEVICE_NAME and bill.unit == "CPU-hours"
    assert [v.hours for v in bill.variants] == [1.5, 2.5]  # medians: 5400 s; 7200, 10800 s
    assert bill.variants[0].source == "median of 3 run(s)"
    total = bill.cases[0]
    assert total.jobs() == 6 and bill.device_hours(total) == pytest.approx(12.0)
    assert bill.wall_hours(total) == pytest.approx(12.0)  # one job after the other
    two = sweep_bill(sweep(("none", "sppf"), 3), 2, history=past, measure=never)
    assert two.wall_hours(two.cases[0]) == pytest.approx(6.5)  # 1.5+1.5+2.5 | 1.5+2.5+2.5
    text = "\n".join(bill_lines(bill))
    assert "none: 3 job(s) x 1.5 h = 4.50 CPU-hours (median of 3 run(s))" in text
    assert "total: 6 job(s), 12.00 CPU-hours, wall time 12.0 h" in text


def test_a_variant_not_run_yet_is_its_baselines_time_scaled_by_a_measured_step_ratio():
    none, sppf = job("none"), job("sppf")
    here = this_device(none)
    calls = []

    def ratio(cfg: dict, reference: dict) -> float:
        calls.append((cfg["placement"]["name"], reference["placement"]["name"]))
        return 1.25

    past = history(timed(none, 3600.0, here), timed(none, 3600.0, here))
    bill = sweep_bill([none, sppf], 1, history=past, measure=ratio)
    assert calls == [("sppf", "none")]
    assert [v.hours for v in bill.variants] == [1.0, 1.25]
    assert "none's time x 1.25, the training steps timed here" in bill.variants[1].source
    # the history is on another machine: never timed here, so no prediction
    elsewhere = history(timed(none, 3600.0, "NVIDIA H100 80GB HBM3"))
    bill = sweep_bill([none, sppf], 1, history=elsewhere, measure=never)
    assert bill.variants[0].hours == 1.0 and bill.variants[1].hours is None
    assert "is not the jobs' NVIDIA H100 80GB HBM3" in bill.variants[1].source
    assert bill.device_hours(bill.cases[0]) is None
    assert "total: 2 job(s), no prediction (1 variant(s) have none)" in bill_lines(bill)[-1]


def test_without_history_on_the_jobs_device_nothing_is_predicted_and_the_budget_refuses():
    none, sppf = job("none"), job("sppf")
    on_gpus = history(timed(none, 3600.0, "NVIDIA A100", device_type="cuda"))
    bill = sweep_bill([none, sppf], 4, history=on_gpus, measure=never)
    assert bill.device is None and all(v.hours is None for v in bill.variants)
    lines = bill_lines(bill)
    assert "no history on the jobs' device" in lines[0]
    assert all("no prediction" in line for line in lines[1:])
    problem = budget_problem(bill, 10.0)
    assert "budget.gpu_hours=10" in problem and "cannot be checked" in problem
    assert "run one seed of each variant first, or drop budget.gpu_hours" in problem
    assert budget_problem(bill, None) is None
    assert sweep_bill([none], 1, history=pd.DataFrame(), measure=never).device is None


def test_a_finished_config_of_this_code_is_reused_not_billed():
    none = job("none")
    done = timed(job("none", 1), 3600.0, code_version=code_version())
    past = history(timed(none, 3600.0), done)  # seed 0 is of other code (v1): trains again
    bill = sweep_bill(sweep(("none",), 3), 1, history=past, measure=never)
    assert bill.variants[0].seeds == {0, 2} and bill.reused == 1
    assert "not counted: 1 job(s) a FINISHED run would be reused for" in bill_lines(bill)[-1]


# -- racing -----------------------------------------------------------------------------------
def racing_bill(parallelism: int, baseline: bool = True):
    grid = [job("none"), job("sppf"), job("neck")]
    past = history(*(timed(cfg, 3600.0) for cfg in grid))
    points = grid if baseline else grid[1:]  # the baseline races whether listed or not
    return sweep_bill(points, parallelism, RACING, history=past, measure=never)


def test_racing_best_and_worst_case_and_its_rounds_are_barriers():
    one, four = racing_bill(1), racing_bill(4)
    best, worst = four.cases
    assert best.jobs() == 3 * 2 and worst.jobs() == 3 * 4  # (variants + 1) x seeds_min, max
    assert [len(r) for r in worst.rounds] == [6, 3, 3]
    assert [one.device_hours(c) for c in one.cases] == [6.0, 12.0]
    assert [four.device_hours(c) for c in four.cases] == [6.0, 12.0]  # same bill, any width
    assert [one.wall_hours(c) for c in one.cases] == [6.0, 12.0]
    # 4 at once: round 1 takes 2 h (6 jobs), rounds 2 and 3 1 h each; the grid at once 3 h
    assert [four.wall_hours(c) for c in four.cases] == [2.0, 4.0]
    unlisted = racing_bill(4, baseline=False)
    assert unlisted.variants[-1].name == "none" and unlisted.cases == four.cases
    text = "\n".join(bill_lines(four))
    assert "best case: every variant decided in round 1: 6 job(s), 6.00 CPU-hours" in text
    assert "worst case: every variant to seeds_max in 3 round(s): 12 job(s)" in text
    assert "up to 3x the wall time" in text and "the full grid run at once (3.0 h here)" in text
    assert "none: 2 to 4 job(s) x 1.0 h = 2.00 to 4.00 CPU-hours" in text


def test_the_budget_refuses_a_worst_case_over_it_naming_both_numbers():
    bill = racing_bill(4)
    problem = budget_problem(bill, 10.0)
    assert "budget.gpu_hours=10" in problem and "12.00 CPU-hours" in problem
    assert "worst case" in problem
    assert budget_problem(bill, 12.0) is None and budget_problem(bill, None) is None


def test_bill_check_exits_2_before_anything_runs_and_a_dry_run_only_says_so(capsys, runs):
    jobs = [job("none")]  # no store under DAT_EXP_RUNS: no history, so no prediction
    assert bill_check(composed("budget.gpu_hours=5", hydra=True), []) == []
    assert bill_check(composed(hydra=True), jobs) == []  # no budget, no dry run: no bill
    with pytest.raises(SystemExit) as stop:
        bill_check(composed("budget.gpu_hours=5", hydra=True), jobs)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: budget.gpu_hours=5") and len(err.splitlines()) == 1
    lines = bill_check(composed("budget.gpu_hours=5", "dry_run=true", hydra=True), jobs)
    assert lines[0].startswith("bill (CPU-hours;") and "a real run would stop here" in lines[-1]
    assert not (runs / "mlflow.db").exists(), "a bill reads the store, never creates it"


def test_a_budget_of_zero_is_bad_input_through_the_entry_point(workdir):
    overrides = ["dry_run=true", "placement=none,sppf", "budget.gpu_hours=0", *TINY]
    out = run_entry(workdir, "-m", *overrides)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "budget.gpu_hours=0.0 must be positive" in out.stderr
    assert "none was started" in out.stderr and "Traceback" not in out.stderr
    assert not local_runs(workdir)


# -- the launcher's parallelism and a real step ratio -----------------------------------------
def test_the_launchers_parallelism_comes_from_its_config():
    assert launcher_parallelism(composed(hydra=True)) == 1  # basic: one after the other
    joblib = ["hydra/launcher=joblib"]
    assert launcher_parallelism(composed(*joblib, "hydra.launcher.n_jobs=3", hydra=True)) == 3
    assert launcher_parallelism(composed(*joblib, hydra=True)) == os.cpu_count()  # -1
    slurm = composed("hydra/launcher=slurm_gpu", "hydra.launcher.array_parallelism=7", hydra=True)
    assert launcher_parallelism(slurm) == 7
    ray = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    cluster = {"init": {"num_gpus": 8}, "remote": {"num_gpus": 2}}
    sized = OmegaConf.create({"hydra": {"launcher": {"_target_": ray, "ray": cluster}}})
    assert launcher_parallelism(sized) == 4
    unsized = OmegaConf.create({"hydra": {"launcher": {"_target_": ray, "ray": {}}}})
    assert launcher_parallelism(unsized) == 1


def test_a_dat_models_training_step_measures_slower_than_the_stock_one():
    """Real models on this CPU: the DAT model does strictly more work."""
    assert measure_step_ratio(job("sppf"), job("none")) > 1.0

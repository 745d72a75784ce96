"""On a real tiny sweep (none and sppf, two seeds each, seed 0 reused from an earlier sweep) plus
injected failures: the tidy table, the aggregate, the report through its command line, the
sampling pictures (the report's and each DAT run's own), the DAT diagnostics per epoch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from dat_exp.analysis import analyse, load_runs
from dat_exp.tracking import schema
from dat_exp.tracking.schema import DEFAULT_EXPERIMENT, Tag
from tests.analysis.cli import network_attempts, run_report
from tests.analysis.conftest import ABSURD
from tests.analysis.test_plots import assert_real_png
from tests.runner.entry import CALIBRATED, run_entry

pytestmark = pytest.mark.slow

COLUMNS = {
    "run_id",
    "status",
    "variant",
    "variant_hash",
    "config_hash",
    "placement",
    "levels",
    "dat.pe",
    "dat.offset_range_factor",
    "dat.no_off",
    "seed",
    "model",
    "data",
    "train",
    "device_type",
    schema.MAP50,
    schema.MAP50_95,
    schema.PRECISION,
    schema.RECALL,
    schema.GFLOPS,
    schema.PARAMS,
    schema.LATENCY_MS,
    schema.TRAIN_TIME_S,
}


@pytest.fixture(scope="module")
def runset(sweep_store):
    return load_runs(sweep=sweep_store.sweep_id, tracking_uri=sweep_store.uri)


def test_one_row_per_finished_run(runset, sweep_store):
    runs = runset.runs
    assert sorted(runs["run_id"]) == sorted(sweep_store.finished)
    assert set(runs.columns) >= COLUMNS, COLUMNS - set(runs.columns)
    assert set(runs["status"]) == {"FINISHED"} and sweep_store.sweep_id not in set(runs["run_id"])
    assert sorted(runs["seed"]) == [0, 0, 1, 1]
    assert dict(zip(runs["placement"], runs["levels"], strict=True)) == {"none": "", "sppf": "P5"}
    assert not runs[schema.MAP50_95].isna().any()
    assert not runs[schema.held_out(schema.MAP50_95)].isna().any(), "every run has test/*"
    series = (schema.VAL, schema.TRAIN, schema.DAT, schema.SYSTEM)
    assert not any(c.startswith(series) for c in runs.columns), "per-epoch series are not final"
    assert dict(zip(runs["run_id"], runs["reused"], strict=True)) == {
        run_id: run_id in sweep_store.reused for run_id in sweep_store.finished
    }
    assert set(runs.loc[runs["reused"], "seed"]) == {0}


def test_best_weights_are_evaluated_once_on_the_test_split(sweep_store):
    client = MlflowClient(sweep_store.uri)
    runs = [client.get_run(run_id) for run_id in sweep_store.finished]
    baseline = {r.data.tags[Tag.VARIANT_HASH] for r in runs if r.data.params["placement"] == "none"}
    held_out = {schema.held_out(m) for m in schema.HELD_OUT}
    for run in runs:
        metrics = run.data.metrics
        assert held_out <= set(metrics), held_out - set(metrics)
        assert all(0 <= metrics[k] <= 1 for k in held_out)
        assert Tag.TEST_SKIPPED not in run.data.tags
        assert {run.data.tags[Tag.BASELINE_HASH]} == baseline
    # Ultralytics read the test split's labels: the evaluation was on test, not on val again.
    (dataset,) = (sweep_store.work / "runs" / "datasets").glob("synthetic-*")
    assert (dataset / "labels" / "test.cache").is_file()


def test_the_end_of_sweep_table_lists_the_reused_jobs(sweep_store):
    table = sweep_store.summary.split("run / reason")[1].split("\n\n")[0]
    rows = [line.split() for line in table.strip().splitlines()]
    assert len(rows) == 4
    for row in rows:  # job variant ... [reused] status run-or-reason
        status = next(word for word in row if word in ("FINISHED", "SKIPPED"))
        before = row[row.index(status) - 1]
        assert (before == "yes") == (status == "SKIPPED"), row
    assert [r[r.index("SKIPPED") + 1] for r in rows if "SKIPPED" in r] == ["done", "done"]


def test_failures_apart_and_superseded(runset, sweep_store):
    f = runset.failures.set_index("run_id")
    assert set(f.index) == {sweep_store.failed_id, sweep_store.superseded_id}
    assert not f.loc[sweep_store.failed_id, "superseded"]
    assert f.loc[sweep_store.superseded_id, "superseded"]
    assert f.loc[sweep_store.superseded_id, "superseded_by"] in sweep_store.finished
    assert "injected" in f.loc[sweep_store.failed_id, "error"]


def test_aggregate_over_two_seeds_without_the_failures(runset):
    result = analyse(runset)
    v = result.variants.set_index("placement")
    assert v["n"].tolist() == [2, 2]
    for placement, row in v.iterrows():
        values = runset.runs.loc[runset.runs["placement"] == placement, schema.MAP50_95]
        assert row[f"{schema.MAP50_95}_mean"] == pytest.approx(values.mean())
        assert row[f"{schema.MAP50_95}_mean"] < ABSURD / 10
    assert v.loc["none", "verdict"] == "baseline"
    assert v.loc["sppf", "baseline_variant"] == "none"
    assert v.loc["sppf", "baseline_match"] == "tag"
    assert v.loc["sppf", "baseline_n"] == 2
    assert result.metric == schema.held_out(schema.MAP50_95), "every run has the test split"
    assert v.loc["sppf", "paired_n"] == 2
    assert v.loc["sppf", "verdict"] in {"better", "worse", "not distinguishable", "no spread"}


def test_experiment_holds_the_same_runs(sweep_store, runset):
    everything = load_runs(DEFAULT_EXPERIMENT, tracking_uri=sweep_store.uri)
    assert sorted(everything.runs["run_id"]) == sorted(runset.runs["run_id"])


def identical_seeds(runs) -> bool:
    quality = [schema.MAP50_95, schema.MAP50, schema.PRECISION, schema.RECALL]
    return any(g[quality].nunique().max() == 1 for _, g in runs.groupby("variant_hash"))


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_report_command_on_the_latest_sweep(sweep_store, runset):
    out = run_report(sweep_store.work)  # no arguments: the latest sweep in ./runs/mlflow.db
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    for variant in runset.runs["variant"].unique():
        assert re.search(rf"^\s*{re.escape(variant)}\s", out.stdout, re.M), variant
    assert ("WARNING" in out.stdout) == identical_seeds(runset.runs)
    folder = sweep_store.work / "runs" / "reports" / runset.name
    markdown = (folder / "report.md").read_text()
    variants = markdown.split("## Variants")[1].split("\n## ")[0]
    lines = [line for line in variants.splitlines() if line.startswith("| ")]
    header, rows = cells(lines[0]), [cells(line) for line in lines[1:]]
    assert len(rows) == runset.runs["variant_hash"].nunique()
    for row in rows:  # both seeds of each variant count, the first sweep's seed 0 marked reused
        assert row[header.index("n")] == "2" and row[header.index("repeats")] == "0", row
        assert row[header.index("reused")] == "seed 0", row
    assert "<table" in (folder / "report.html").read_text()
    pngs = sorted(folder.glob("*.png"))
    assert {p.name for p in pngs} >= {
        "tradeoff_gflops.png",
        "tradeoff_latency.png",
        "curves.png",
        "sampling_points.png",
    }
    for png in pngs:
        assert_real_png(png)
        assert f"]({png.name})" in markdown
    client = MlflowClient(sweep_store.uri)
    logged = {a.path for a in client.list_artifacts(sweep_store.sweep_id, "report")}
    assert {"report/report.md", "report/report.html", "report/curves.png"} <= logged
    dat_runs = [r for r, p in sweep_store.finished.items() if p == "sppf"]
    pictured = [r for r in dat_runs if client.list_artifacts(r, "analysis")]
    assert len(pictured) == 1
    assert network_attempts(sweep_store.work) == []
    # the DAT diagnostics per epoch: a figure each when the runs logged them, else a note
    logged = {k for r in dat_runs for k in client.get_run(r).data.metrics if k.startswith("dat/")}
    shown = {p.name for p in pngs if p.name.startswith("dat_")}
    if logged:
        names = {k.rsplit("/", 1)[1] for k in logged}
        assert shown == {f"dat_{name}.png" for name in names}, (shown, logged)
    else:
        assert not shown and "DAT diagnostics skipped: no run logged" in markdown


def test_every_finished_dat_run_has_its_sampling_picture(sweep_store, tmp_path):
    """Each sppf run logged dat/sampling_points.png at its end (a real picture); none runs none."""
    client = MlflowClient(sweep_store.uri)
    for run_id, placement in sweep_store.finished.items():
        logged = {a.path for a in client.list_artifacts(run_id, "dat")}
        if placement == "sppf":
            assert logged == {"dat/sampling_points.png"}, (run_id, logged)
            path = client.download_artifacts(run_id, "dat/sampling_points.png", str(tmp_path))
            assert_real_png(Path(path))
        else:
            assert logged == set(), (run_id, logged)


@pytest.mark.slow
def test_the_test_configuration_is_calibrated(sweep_store):
    """The analysis runs on real learning, not on zeros: every run of the sweep has learned."""
    client = MlflowClient(sweep_store.uri)
    for run_id in sweep_store.finished:
        assert client.get_run(run_id).data.metrics[schema.MAP50] >= 0.1


def test_dry_run_plans_the_seeds_with_the_spread_of_finished_runs(sweep_store, runset):
    """σ comes from the finished runs like the planned ones; at 2 seeds per side in a family of
    2 (Bonferroni at 0.025, Welch with about 2 df) only a Δ of about 19σ is detected."""
    out = run_entry(
        sweep_store.work, "-m", "placement=none,sppf,neck", "seed=0,1", "dry_run=true", *CALIBRATED
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    plan = out.stdout.split("seed planner")[1]
    metric = schema.held_out(schema.MAP50_95)
    assert plan.startswith(f" of {metric}: two-sided Welch at α/m = 0.05/2")
    groups = [g.groupby("seed")[metric].mean() for _, g in runset.runs.groupby("variant_hash")]
    df = sum(len(g) - 1 for g in groups)
    sigma = np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / df)
    shown = re.search(r"σ = ([0-9.]+) \(pooled over 2 variants, df = 2\)", plan)
    assert shown and float(shown[1]) == pytest.approx(sigma, rel=0.05), plan
    rows = re.findall(
        r"2 vs 2 seeds: smallest Δ detected with 80% power: ([0-9.]+) \(([0-9.]+)σ\)", plan
    )
    assert len(rows) == 2, plan
    for delta, effect in rows:
        assert 18 < float(effect) < 20
        assert float(delta) == pytest.approx(float(effect) * sigma, rel=0.06)
    client = MlflowClient(sweep_store.uri)
    assert len(client.search_runs([sweep_store.experiment_id])) == 8, "a dry run logs nothing"

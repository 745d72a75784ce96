"""The product's main job, through the real entry point: a sweep trains, measures and logs."""

from __future__ import annotations

import re

import pytest

from dat_exp.tracking import schema
from dat_exp.tracking.schema import DEFAULT_EXPERIMENT, Tag
from tests.runner.entry import TINY, local_runs, local_store, network_attempts, run_entry

FINAL_METRICS = {
    schema.MAP50,
    schema.MAP50_95,
    schema.PRECISION,
    schema.RECALL,
    schema.GFLOPS,
    schema.GFLOPS_ULTRALYTICS,
    schema.PARAMS,
    schema.LATENCY_MS,
    schema.LATENCY_P90_MS,
    schema.TRAIN_TIME_S,
}
SERIES = {
    schema.TRAIN + "box_loss",  # Ultralytics' loss names
    schema.TRAIN + "cls_loss",
    schema.TRAIN + "dfl_loss",
    schema.val(schema.MAP50),
    schema.val(schema.MAP50_95),
    schema.val(schema.PRECISION),
    schema.val(schema.RECALL),
}
PARAMS = {
    "placement",
    "placement.levels",
    "dat.pe",
    "dat.offset_range_factor",
    "dat.no_off",
    "dat.stride",
    "dat.ksize",
    "dat.heads",
    "dat.groups",
    "dat.wrap",
    "dat.ref_points",
    "dat.impl",
    "model",
    "data",
    "seed",
    "train",
    "variant",
}
MODULE_PARAMS = {
    f"module.0.{k}" for k in ("layer", "level", "stride", "ksize", "heads", "groups", "pe")
}


def files_outside_runs(workdir) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in workdir.iterdir() if p.name != "runs")


@pytest.mark.slow
def test_two_job_sweep_logs_everything(workdir):
    out = run_entry(workdir, "-m", "placement=none,sppf", *TINY)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = local_store(workdir)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    assert exp.tags[Tag.EXPERIMENT_KIND] == "custom_model_development"
    assert exp.artifact_location.startswith((workdir / "runs").as_uri())
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3, "one parent and two children, no run of Ultralytics' own"
    parents = [r for r in runs if Tag.PARENT not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(Tag.PARENT) == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    by_placement = {r.data.params["placement"]: r for r in children}
    assert set(by_placement) == {"none", "sppf"}
    for run in children:
        assert run.info.status == "FINISHED"
        assert FINAL_METRICS <= set(run.data.metrics), FINAL_METRICS - set(run.data.metrics)
        assert PARAMS <= set(run.data.params), PARAMS - set(run.data.params)
        assert {
            Tag.CONFIG_HASH,
            Tag.VARIANT_HASH,
            Tag.GIT_COMMIT,
            Tag.TORCH_VERSION,
            Tag.ULTRALYTICS_VERSION,
            Tag.DEVICE_NAME,
        } <= set(run.data.tags)
        for key in SERIES:
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
        assert {
            "config.yaml",
            "model.yaml",
            "results.csv",
            "per_class_ap.csv",
            "weights/best.pt",
        } <= artifacts, artifacts
        assert run.inputs.dataset_inputs[0].dataset.name == "synthetic"
    sppf = by_placement["sppf"]
    assert MODULE_PARAMS <= set(sppf.data.params)
    g_none, g_sppf = (by_placement[p].data.metrics[schema.GFLOPS] for p in ("none", "sppf"))
    assert 0 < g_none < g_sppf
    assert re.search(r"\bnone\b.*FINISHED", out.stdout) and re.search(
        r"sppf\[P5\].*FINISHED", out.stdout
    )
    assert "make ui" in out.stdout
    assert files_outside_runs(workdir) == [], "nothing written outside runs/"
    assert list((workdir.parent / "work-home").iterdir()) == [], "the user's home is untouched"
    assert network_attempts(workdir) == []


def test_dry_run_lists_twelve_jobs_and_runs_none(workdir):
    out = run_entry(
        workdir,
        "-m",
        "placement=none,sppf,neck",
        "dat.pe=table,dwc",
        "seed=0,1",
        "dry_run=true",
        "device=cpu",
        *TINY,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = re.findall(r"^job (\d+): (\S+) seed=(\d) hash=([0-9a-f]{12})", out.stdout, re.M)
    assert len(jobs) == 12
    # placement=none ignores dat.pe: its two pe values are one experiment per seed
    duplicates = re.findall(r"duplicate of job \d+", out.stdout)
    assert len(duplicates) == 2
    assert "GFLOPs" in out.stdout and "attention memory" in out.stdout
    assert not (workdir / "runs" / "mlflow.db").exists() or not local_runs(workdir)
    assert network_attempts(workdir) == []

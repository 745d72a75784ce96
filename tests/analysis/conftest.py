"""A real tiny sweep, made once per session through the real entry point, plus failed runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dat_exp.tracking import schema
from dat_exp.tracking.schema import DEFAULT_EXPERIMENT, Tag, search_tag
from tests.runner.entry import CALIBRATED, run_entry

ABSURD = 99.0  # a failed run's metric: any mean that includes it is visibly wrong


@dataclass
class SweepStore:
    work: Path  # the working directory of the sweep (its runs/ is the default store)
    uri: str
    experiment_id: str
    sweep_id: str
    finished: dict[str, str]  # run id -> placement
    failed_id: str  # a failure nothing replaced
    superseded_id: str  # a failure whose config finished later
    reused: set[str]  # runs of the first sweep that the analysed (second) sweep skipped for
    summary: str  # what the second sweep printed


def add_failed_run(
    client: MlflowClient, like, parent: str, seed: str, config_hash: str, start_ms: int
) -> str:
    """A FAILED run of ``like``'s variant, logged as the runner logs one, with absurd metrics."""
    tags = {
        key: like.data.tags[key]
        for key in (Tag.VARIANT_HASH, Tag.VARIANT, Tag.DEVICE_TYPE, Tag.DEVICE_NAME)
    }
    tags.update(
        {
            Tag.CONFIG_HASH: config_hash,
            Tag.ERROR: "RuntimeError: injected by the test",
            Tag.PARENT: parent,
        }
    )
    run_id = client.create_run(
        like.info.experiment_id, start_time=start_ms, tags=tags, run_name="failed"
    ).info.run_id
    for key, value in {**like.data.params, "seed": seed}.items():
        client.log_param(run_id, key, value)
    client.log_metric(run_id, schema.MAP50_95, ABSURD)
    client.set_terminated(run_id, "FAILED")
    return run_id


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory) -> SweepStore:
    """The README's way to add a seed: a sweep of seed 0, then the same sweep with seeds 0,1.
    The second sweep (the one analysed) trains seed 1 and reuses the seed-0 runs."""
    work = tmp_path_factory.mktemp("analysis") / "work"
    work.mkdir()
    for seeds in ("seed=0", "seed=0,1"):
        out = run_entry(work, "-m", "placement=none,sppf", seeds, *CALIBRATED)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    uri = f"sqlite:///{work / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
    parents = client.search_runs(
        [exp], f"{search_tag(Tag.SWEEP)} = 'true'", order_by=["attributes.start_time DESC"]
    )
    assert len(parents) == 2, f"{len(parents)} parent runs, not 2:\n{out.stderr[-3000:]}"
    sweep, first = (p.info.run_id for p in parents)
    children = client.search_runs([exp], f"{search_tag(Tag.PARENT)} = '{sweep}'")
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    reused = client.search_runs([exp], f"{search_tag(Tag.PARENT)} = '{first}'")
    assert {r.data.params["seed"] for r in reused} == {"0"}
    sppf = next(r for r in children if r.data.params["placement"] == "sppf")
    failed = add_failed_run(client, sppf, sweep, "2", "f" * 12, int(time.time() * 1000))
    superseded = add_failed_run(
        client,
        sppf,
        sweep,
        sppf.data.params["seed"],
        sppf.data.tags[Tag.CONFIG_HASH],
        sppf.info.start_time - 60_000,  # failed a minute before the same config finished
    )
    finished = {r.info.run_id: r.data.params["placement"] for r in children + reused}
    reused_ids = {r.info.run_id for r in reused}
    return SweepStore(work, uri, exp, sweep, finished, failed, superseded, reused_ids, out.stdout)

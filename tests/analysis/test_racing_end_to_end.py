"""A racing sweep for real (CPU training) on a copy of the session's store: its seeds 0 and 1
are reused, so round 1 trains seed 2 and round 2 seed 3. Stopped after round 1 by the test-only
hook, resumed with the same command, then run once more through the joblib launcher: the same
decisions each time, and nothing trained twice."""

from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from dat_exp.racing import ROUNDS_ARTIFACT, STOP_AFTER_ROUND_ENV
from dat_exp.tracking.schema import DEFAULT_EXPERIMENT, Tag, search_tag
from tests.runner.entry import CALIBRATED, entry_env, run_module

RACE = [
    "-m",
    "hydra/sweeper=racing",
    "hydra.sweeper.seeds_min=3",
    "hydra.sweeper.seeds_max=4",
    "hydra.sweeper.target_delta=0.0001",  # no equivalence possible: only better/worse stop
    "placement=none,sppf",
    *CALIBRATED,
]


def copy_store(work: Path, to: Path) -> Path:
    """The store and its artifacts under ``to``, the paths inside it pointing there (weights
    and Ultralytics' folders are left behind: nothing here resumes a run)."""
    (to / "runs").mkdir(parents=True)
    for folder in ("mlartifacts", "datasets"):
        shutil.copytree(work / "runs" / folder, to / "runs" / folder)
    with (
        sqlite3.connect(work / "runs" / "mlflow.db") as src,
        sqlite3.connect(to / "runs" / "mlflow.db") as dst,
    ):
        src.backup(dst)
        old, new = str(work / "runs"), str(to / "runs")
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            dst.execute(f"update {table} set {column} = replace({column}, ?, ?)", (old, new))
    return to


def parents(client: MlflowClient, exp: str) -> list:
    return client.search_runs(
        [exp], f"{search_tag(Tag.SWEEP)} = 'true'", order_by=["attributes.start_time ASC"]
    )


def children(client: MlflowClient, exp: str, parent: str) -> list:
    return client.search_runs([exp], f"{search_tag(Tag.PARENT)} = '{parent}'")


def decisions(run) -> dict[str, str]:
    return {k: v for k, v in run.data.tags.items() if k.startswith(Tag.RACING_DECISION)}


def rounds(client: MlflowClient, parent: str, tmp: Path) -> pd.DataFrame:
    path = client.download_artifacts(parent, ROUNDS_ARTIFACT, str(tmp))
    return pd.read_csv(io.StringIO(Path(path).read_text()))


def test_a_race_stopped_after_round_1_resumes_to_the_same_decisions(sweep_store, tmp_path):
    work = copy_store(sweep_store.work, tmp_path / "work")
    stop = {**entry_env(work), STOP_AFTER_ROUND_ENV: "1"}
    first = run_module(work, "dat_exp", *RACE, env=stop, timeout=900)
    assert first.returncode == 130, first.stdout[-2000:] + first.stderr[-3000:]
    assert "racing owns the seeds" not in first.stdout  # no seed given: nothing dropped
    again = run_module(work, "dat_exp", *RACE, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    joblib = run_module(work, "dat_exp", *RACE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert joblib.returncode == 0, joblib.stdout[-2000:] + joblib.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{work / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
    killed, resumed, replayed = parents(client, exp)[-3:]
    assert killed.info.status == "KILLED" and resumed.info.status == "FINISHED"
    assert killed.data.tags[Tag.RACING_METRIC] == "test/mAP50-95"  # CALIBRATED has a test split

    # round 1 trained seed 2 of both variants (seeds 0 and 1 were the session's); the killed
    # sweep kept its round-1 table
    trained = children(client, exp, killed.info.run_id)
    assert sorted((r.data.params["placement"], r.data.params["seed"]) for r in trained) == [
        ("none", "2"),
        ("sppf", "2"),
    ]
    first_rounds = rounds(client, killed.info.run_id, tmp_path / "killed")
    assert first_rounds["round"].tolist() == [1] and first_rounds["n"].tolist() == [3]
    assert not decisions(killed), "a killed race has no final decisions"

    # resumed: round 1 read back from the store, not retrained; round 2 only if still open
    resumed_rounds = rounds(client, resumed.info.run_id, tmp_path / "resumed")
    pd.testing.assert_frame_equal(resumed_rounds.iloc[:1], first_rounds)
    retrained = children(client, exp, resumed.info.run_id)
    still_open = first_rounds["decision"].iloc[0] == "open"
    expected = [("none", "3"), ("sppf", "3")] if still_open else []
    assert (
        sorted((r.data.params["placement"], r.data.params["seed"]) for r in retrained) == expected
    )
    assert len(resumed_rounds) == (2 if still_open else 1)
    made = decisions(resumed)
    assert len(made) == 1 and resumed_rounds["decision"].iloc[-1] in next(iter(made.values()))

    # the same command through joblib: nothing trained, the same decisions
    assert children(client, exp, replayed.info.run_id) == []
    assert decisions(replayed) == made
    assert "decision" in joblib.stdout and "jobs run of 8 for the full grid" in joblib.stdout

"""The report's command line on stores with nothing to report: a message naming what was asked
for, a non-zero exit, no stack trace."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from dat_exp.report import main
from dat_exp.tracking.schema import Tag
from tests.analysis.cli import assert_clean_error, network_attempts, run_report


@pytest.fixture
def store(tmp_path):
    """A store with an empty experiment and one holding a single FAILED run."""
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    uri = f"sqlite:///{work / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("empty", artifact_location=(tmp_path / "art").as_uri())
    exp = client.create_experiment("broken", artifact_location=(tmp_path / "art2").as_uri())
    tags = {Tag.VARIANT_HASH: "v1", Tag.CONFIG_HASH: "c1", Tag.ERROR: "boom"}
    run = client.create_run(exp, tags=tags).info.run_id
    client.set_terminated(run, "FAILED")
    return work, uri


@pytest.mark.slow
def test_no_store(tmp_path):
    (tmp_path / "work").mkdir()
    out = run_report(tmp_path / "work")
    assert_clean_error(out, "no MLflow store at", "mlflow.db")
    assert not (tmp_path / "work" / "runs" / "mlflow.db").exists(), "no empty store created"


CASES = {
    "missing": (["nope"], ["experiment 'nope' not found", "broken", "empty"]),
    "empty": (["empty"], ["experiment 'empty' has no runs"]),
    "only-failed": (["broken"], ["experiment 'broken' has no FINISHED runs", "boom"]),
    "bad-sweep": (["--sweep", "0123abcd"], ["sweep '0123abcd' not found"]),
    "no-sweep": ([], ["no sweep in"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "only-failed"])
def test_nothing_to_report_subprocess(store, case):
    work, uri = store
    args, phrases = CASES[case]
    assert_clean_error(run_report(work, *args, "--tracking-uri", uri), *phrases)
    assert network_attempts(work) == []


@pytest.mark.parametrize("case", CASES)
def test_nothing_to_report(store, case, capsys):
    """Every case in-process (the same ``main``; a subprocess costs seconds of imports)."""
    work, uri = store
    args, phrases = CASES[case]
    assert main([*args, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert all(p in err for p in phrases), err

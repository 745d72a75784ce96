"""The report's command line on stores with nothing to report, and on bad options: a message
naming what was asked for (and what is valid), exit 2, no stack trace."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from dat_exp import report
from dat_exp.report import main
from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag
from tests.analysis.cli import assert_clean_error, network_attempts, run_report
from tests.analysis.fakes import frame, run, runset


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


# -- bad options ---------------------------------------------------------------------------------
BAD_OPTIONS = {  # args -> what the one line must name: the value and the valid choices
    "alpha-0": (["--alpha", "0"], ["alpha 0 ", "(0, 1)"]),
    "alpha-1.5": (["--alpha", "1.5"], ["alpha 1.5 ", "(0, 1)"]),
    "alpha-nan": (["--alpha", "nan"], ["alpha nan ", "(0, 1)"]),
    "target-delta-0": (["--target-delta", "0"], ["target delta 0 ", "> 0"]),
    "target-delta-negative": (["--target-delta", "-0.01"], ["target delta -0.01 ", "> 0"]),
    "metric-nosuch": (
        ["--metric", "nosuch"],
        ["'nosuch'", f"logged: {schema.MAP50_95}", schema.held_out(schema.MAP50_95)],
    ),
    "metric-not-logged": (["--metric", schema.LATENCY_MS], [f"'{schema.LATENCY_MS}'", "logged:"]),
}


@pytest.fixture
def selection(monkeypatch, tmp_path):
    """``select`` answers a small run set without a store; nothing may be written."""
    rows = [run("none", s, "none", **{schema.MAP50_95: 0.40 + s / 100}) for s in range(3)]
    rows += [run("sppf", s, **{schema.MAP50_95: 0.45 + s / 100}) for s in range(3)]
    monkeypatch.setattr(report, "select", lambda *args, **kwargs: runset(frame(rows)))
    return tmp_path / "report"


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_options(selection, case, capsys):
    args, phrases = BAD_OPTIONS[case]
    assert main([*args, "--out", str(selection), "--no-log"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("dat_exp.report: ")
    assert all(p in err for p in phrases), (phrases, err)
    assert not selection.exists(), "no report for bad options"


@pytest.mark.slow
def test_bad_alpha_subprocess_before_any_store(tmp_path):
    """Checked before the store is opened: the message is about the option, not the store."""
    (tmp_path / "work").mkdir()
    out = run_report(tmp_path / "work", "--alpha", "1.5")
    assert out.returncode == 2
    assert_clean_error(out, "alpha 1.5 ", "(0, 1)")
    assert "no MLflow store" not in out.stderr

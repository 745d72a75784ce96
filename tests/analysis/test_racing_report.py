"""A racing sweep's report: the parent's racing tags (written here by hand, as a racing sweep
leaves them) read back by the loader, and the report's Racing section built from them. No
training: a store with a parent run and one finished child."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from dat_exp.analysis.load import AnalysisError, load_runs, racing_record
from dat_exp.analysis.racing import STOPPED_EARLY
from dat_exp.analysis.summary import RACING_BIAS, RACING_UNFINISHED, analyse
from dat_exp.report import Report, render_html, render_markdown
from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag
from tests.analysis.fakes import frame, run, runset

METRIC = schema.held_out(schema.MAP50_95)
SETTINGS = (
    '{"seeds_min": 2, "seeds_max": 8, "seeds_step": 1, "alpha": 0.05, "target_delta": 0.005, '
    '"rounds": 7}'
)
# variant hash -> its decision tag, as the sweeper writes it (json.dumps: NaN for "never tested")
DECISIONS = {
    "h-sppf": '{"variant": "sppf", "decision": "better", "round": 2, "n": 3, "delta": 0.0213, '
    '"stopped_early": true}',
    "h-c2f": '{"variant": "c2f", "decision": "equivalent", "round": 3, "n": 4, "delta": -0.0004, '
    '"stopped_early": true}',
    "h-neck": '{"variant": "neck", "decision": "undecided at budget", "round": 0, "n": 8, '
    '"delta": 0.0031, "stopped_early": false}',
    "h-p5": '{"variant": "p5", "decision": "better (below target_delta)", "round": 7, "n": 8, '
    '"delta": 0.0042, "stopped_early": false}',
    "h-p3": '{"variant": "p3", "decision": "failed (seed 1 failed twice)", "round": 0, "n": 1, '
    '"delta": NaN, "stopped_early": false}',
}
AWAY, TOWARD = STOPPED_EARLY[True], STOPPED_EARLY[False]


def parent_run(client: MlflowClient, exp: str, tags: dict[str, str]) -> str:
    """A sweep's parent run with ``tags`` and one FINISHED child (a sweep with no finished run
    does not load)."""
    parent = client.create_run(exp, tags={Tag.SWEEP: "true", **tags}).info.run_id
    child_tags = {Tag.PARENT: parent, Tag.VARIANT_HASH: "h-none", Tag.CONFIG_HASH: "c-none-0"}
    child = client.create_run(exp, tags=child_tags).info.run_id
    client.log_param(child, "placement", "none")
    client.log_param(child, "seed", "0")
    client.log_metric(child, schema.MAP50_95, 0.4)
    for run_id in (child, parent):
        client.set_terminated(run_id, "FINISHED")
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[MlflowClient, str, str]:
    """One store for the module (creating one takes seconds); each test makes its own parent."""
    tmp = tmp_path_factory.mktemp("racing")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("racing", artifact_location=(tmp / "art").as_uri())
    return client, uri, exp


def racing_tags(decisions: dict[str, str]) -> dict[str, str]:
    tags = {Tag.RACING_METRIC: METRIC, Tag.RACING_SETTINGS: SETTINGS}
    return tags | {Tag.RACING_DECISION + h: record for h, record in decisions.items()}


def test_the_loader_reads_a_racing_parent(store):
    client, uri, exp = store
    parent = parent_run(client, exp, racing_tags(DECISIONS))
    record = load_runs(sweep=parent, tracking_uri=uri).racing
    assert record is not None and record.metric == METRIC
    assert record.settings == {
        "seeds_min": 2,
        "seeds_max": 8,
        "seeds_step": 1,
        "alpha": 0.05,
        "target_delta": 0.005,
        "rounds": 7,
    }
    d = record.decisions.set_index("variant")
    assert sorted(d.index) == ["c2f", "neck", "p3", "p5", "sppf"]
    assert d.loc["sppf"].to_dict() == {
        "variant_hash": "h-sppf",
        "decision": "better",
        "round": 2,
        "n": 3,
        "delta": 0.0213,
        "stopped_early": True,
    }
    assert d.loc["p5", "decision"] == "better (below target_delta)" and d.loc["neck", "n"] == 8
    assert math.isnan(d.loc["p3", "delta"])
    assert d["stopped_early"].tolist() == [True, False, False, False, True]  # c2f…sppf


def test_a_sweep_that_did_not_race_has_no_record_and_no_section(store, tmp_path):
    client, uri, exp = store
    runset = load_runs(sweep=parent_run(client, exp, {}), tracking_uri=uri)
    assert runset.racing is None
    assert racing_record(None) is None, "an experiment is no sweep"
    analysis = analyse(runset, schema.MAP50_95, lambda run_id: None)
    assert "Racing" not in render_markdown(analysis, Report(tmp_path))
    assert "Racing" not in render_html(analysis, Report(tmp_path))


def test_a_bad_decision_tag_is_named(store):
    client, _, exp = store
    parent = parent_run(client, exp, racing_tags({"h-sppf": '{"variant": "sppf", '}))
    with pytest.raises(AnalysisError, match=f"racing tag '{Tag.RACING_DECISION}h-sppf'"):
        racing_record(client.get_run(parent))


def reported(store, tmp_path, decisions: dict[str, str]) -> tuple[str, str]:
    """``(markdown, html)`` of a report of hand-made runs carrying the store's racing record."""
    client, _, exp = store
    record = racing_record(client.get_run(parent_run(client, exp, racing_tags(decisions))))
    rows = [run("none", s, "none", **{schema.MAP50_95: 0.40 + s / 100}) for s in range(3)]
    rows += [run("sppf", s, **{schema.MAP50_95: 0.45 + s / 100}) for s in range(3)]
    analysis = analyse(runset(frame(rows), racing=record), schema.MAP50_95, lambda run_id: None)
    return render_markdown(analysis, Report(tmp_path)), render_html(analysis, Report(tmp_path))


def row(markdown: str, variant: str) -> list[str]:
    """The Racing table's row of ``variant``, its cells."""
    section = markdown.split("## Racing")[1].split("##")[0]
    line = next(x for x in section.splitlines() if x.startswith(f"| {variant} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_racing_section(store, tmp_path):
    markdown, page = reported(store, tmp_path, DECISIONS)
    assert markdown.index("## Variants") < markdown.index("## Racing")
    assert markdown.index("## Racing") < markdown.index("## Runs that did not finish")
    section = markdown.split("## Racing")[1].split("##")[0]
    for phrase in (METRIC, "target_delta 0.005", "α 0.05", "2…8 step 1", "K = 7", "one-shot"):
        assert phrase in section, phrase
    assert "| variant | racing decision | round | seeds | Δ test/mAP50-95 |" in section
    assert row(markdown, "sppf") == ["sppf", "better", "2", "3", f"+0.0213 ({AWAY})"]
    assert row(markdown, "c2f") == ["c2f", "equivalent", "3", "4", f"-0.0004 ({TOWARD})"]
    assert row(markdown, "neck") == ["neck", "undecided at budget", "-", "8", "+0.0031"]
    assert row(markdown, "p5") == ["p5", "better (below target_delta)", "7", "8", "+0.0042"]
    assert row(markdown, "p3") == ["p3", "failed (seed 1 failed twice)", "-", "1", "-"]
    assert section.count(AWAY) == section.count(TOWARD) == 1 and RACING_BIAS in section
    racing_page = page.split("<h2>Racing</h2>")[1].split("<h2>")[0]
    assert racing_page.count(AWAY) == racing_page.count(TOWARD) == 1
    assert "one-shot" in racing_page
    assert "undecided at budget" in racing_page and "2.5σ" in racing_page


def test_no_early_stop_no_bias_sentence_and_an_unfinished_race(store, tmp_path):
    late = {h: DECISIONS[h] for h in ("h-neck", "h-p5")}
    markdown, _ = reported(store, tmp_path, late)
    assert "## Racing" in markdown and "stopped early" not in markdown
    assert RACING_BIAS not in markdown
    markdown, page = reported(store, tmp_path, {})
    section = markdown.split("## Racing")[1].split("##")[0]
    assert RACING_UNFINISHED in section and "| variant |" not in section
    assert RACING_UNFINISHED in page

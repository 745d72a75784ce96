"""The sweep parent's description: sections in a fixed order, cut under MLflow's tag limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from dat_exp.tracking.notes import SECTIONS, markdown_table, set_sweep_note
from dat_exp.tracking.schema import MAX_TAG_CHARS, Tag
from dat_exp.tracking.store import RetryingClient


@pytest.fixture
def parent(tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("notes", artifact_location=(tmp_path / "art").as_uri())
    return client, client.create_run(exp, run_name="sweep").info.run_id


def read_artifact(client: MlflowClient, run_id: str, path: str, dst: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(dst))).read_text()


def test_sections_render_in_fixed_order_and_rewriting_one_keeps_the_other(parent):
    client, run_id = parent
    set_sweep_note(client, run_id, "report", "verdict: DAT wins")
    note = set_sweep_note(client, run_id, "summary", "| a |\n|---|\n| 1 |")
    assert note == "### Summary\n\n| a |\n|---|\n| 1 |\n\n### Report\n\nverdict: DAT wins"
    retrying = RetryingClient(client.tracking_uri)  # the project's client works the same
    note = set_sweep_note(retrying, run_id, "summary", "rewritten")
    assert note == "### Summary\n\nrewritten\n\n### Report\n\nverdict: DAT wins"
    tags = client.get_run(run_id).data.tags
    assert tags[Tag.NOTE] == note
    assert tags[Tag.NOTE_SECTION + "summary"] == "rewritten"
    assert tags[Tag.NOTE_SECTION + "report"] == "verdict: DAT wins"


def test_oversized_section_is_cut_with_a_pointer_and_kept_whole_elsewhere(parent, tmp_path):
    client, run_id = parent
    rows = "\n".join(f"| variant-{i:04d} | {i / 7:.6f} | {'x' * 20} |" for i in range(500))
    table = "| variant | score | note |\n|---|---|---|\n" + rows
    assert len(table) > 20_000
    set_sweep_note(client, run_id, "summary", table)
    note = set_sweep_note(client, run_id, "racing", "round 1: dropped 3 variants")

    pointer = "… (cut: the whole section is in the artifact note/summary.md)"
    assert len(note) <= MAX_TAG_CHARS
    summary, racing = note.split("\n\n### Racing\n\n")
    assert racing == "round 1: dropped 3 variants", "the short section is kept whole"
    assert summary.endswith("\n\n" + pointer) and note.count(pointer) == 1
    kept = summary.removeprefix("### Summary\n\n").removesuffix("\n\n" + pointer)
    assert table.startswith(kept + "\n"), "cut at a line boundary: no row broken"
    assert len(kept) > MAX_TAG_CHARS // 2, "the long section gets what the short one leaves"

    assert read_artifact(client, run_id, "note/summary.md", tmp_path / "dl") == table
    own = client.get_run(run_id).data.tags[Tag.NOTE_SECTION + "summary"]
    assert len(own) <= MAX_TAG_CHARS and own.endswith(pointer)
    assert own.count(pointer) == 1


def test_unknown_section_names_the_valid_ones(parent):
    client, run_id = parent
    with pytest.raises(ValueError, match="verdicts") as err:
        set_sweep_note(client, run_id, "verdicts", "text")
    assert all(name in str(err.value) for name in SECTIONS)
    assert Tag.NOTE not in client.get_run(run_id).data.tags


def test_markdown_table_escapes_pipes_and_shows_missing_as_dash():
    frame = pd.DataFrame(
        {"variant": ["base", "dat|l15"], "score": [0.5, np.nan], "note": [None, "ok"]}
    )
    assert markdown_table(frame) == (
        "| variant | score | note |\n|---|---|---|\n| base | 0.5 | - |\n| dat\\|l15 | - | ok |"
    )

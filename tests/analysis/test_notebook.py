"""The notebook runs top to bottom against the test's sweep, through the same functions."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "ablation_analysis.ipynb"


def test_notebook_executes(sweep_store, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DAT_EXP_TRACKING_URI", sweep_store.uri)
    monkeypatch.setenv("DAT_EXP_SWEEP", sweep_store.sweep_id)
    monkeypatch.setenv("DAT_EXP_RUNS", str(sweep_store.work / "runs"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "trade-offs, curves and the sampling points are shown"
    text = "".join(o.get("text", "") for o in outputs)
    assert sweep_store.sweep_id in text

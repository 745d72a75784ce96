"""Plots on hand-made analyses: each is written, a real PNG, not blank; the sampling pictures on
a freshly built DAT model; the DAT diagnostics per epoch from constructed histories."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dat_exp import report
from dat_exp.analysis.compare import compare
from dat_exp.analysis.plots import (
    curves_figure,
    delta_heatmap,
    diagnostics_figure,
    pareto_mask,
    save_png,
    tradeoff_figure,
)
from dat_exp.analysis.sampling import (
    attention_figure,
    dat_modules,
    query_points,
    record_positions,
    sampling_figure,
    to_pixels,
)
from dat_exp.analysis.stats import aggregate
from dat_exp.tracking import schema
from tests.analysis.fakes import grid_sweep, history, runset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path, min_bytes: int = 5_000) -> None:
    """A PNG file, more than a few KB, with more than one colour in it."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, f"{path} is (nearly) one colour"


@pytest.fixture(scope="module")
def variants():
    runs = grid_sweep()
    return compare(runs, runs, aggregate(runs), lambda run_id: None)


def test_pareto_front_keeps_only_undominated_points():
    cost = [1.0, 2.0, 3.0, 2.0, 1.0]
    quality = [0.5, 0.6, 0.55, 0.4, 0.5]
    assert pareto_mask(cost, quality).tolist() == [True, True, False, False, True]


@pytest.mark.parametrize("x", [schema.GFLOPS, schema.LATENCY_MS])
def test_tradeoff_plots(variants, tmp_path, x):
    two_devices = variants.copy()
    two_devices.loc[two_devices.index[:2], "device_type"] = "cuda"
    assert_real_png(save_png(tradeoff_figure(two_devices, x), tmp_path / f"{x}.png"))


def test_curves(tmp_path):
    runs = grid_sweep()
    assert_real_png(save_png(curves_figure(history(runs)), tmp_path / "curves.png"))


def test_heatmap_over_two_swept_keys(variants, tmp_path):
    fig, note = delta_heatmap(variants)
    assert fig is not None and note == ""
    assert_real_png(save_png(fig, tmp_path / "heat.png"))


def test_heatmap_skipped_when_one_key_varies(variants):
    one_key = variants[variants["dat.pe"] == "table"]
    fig, note = delta_heatmap(one_key)
    assert fig is None and "fewer than two swept keys" in note and "placement" in note


# -- sampling points -----------------------------------------------------------------------------
def test_pixel_mapping_follows_align_corners():
    corners = np.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])  # (y, x)
    px = to_pixels(corners, (4, 8), 64)  # pixels are 16 high, 8 wide
    assert px.tolist() == [[4.0, 8.0], [60.0, 56.0], [32.0, 32.0]]


def test_sampling_positions_of_a_built_model(tmp_path):
    from dat_exp.models.builder import build

    built = build("yolov8n", 2, tmp_path, "neck", ["P4", "P5"], imgsz=64)
    model = built.model.float().eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    records = record_positions(model, image)
    assert [r.layer for r in records] == [m.index for m in built.modules]
    for record, module in zip(records, built.modules, strict=True):
        groups = module.settings["groups"]
        assert record.reference.shape[0] == groups and record.reference.shape[-1] == 2
        assert record.positions.shape == record.reference.shape
        assert record.feature_hw == (64 // {"P4": 16, "P5": 32}[module.level],) * 2
    attn = [m for m in model.modules() if hasattr(m, "record_positions")]
    assert not any(m.record_positions for m in attn), "recording is switched off again"
    fig = sampling_figure(image, records, {m.index: m.level for m in built.modules})
    assert_real_png(save_png(fig, tmp_path / "sampling.png"))


@pytest.fixture(scope="module")
def two_modules(tmp_path_factory):
    """An untrained yolov8n with DAT at P4 and P5 (two modules, 2 and 4 offset groups)."""
    from dat_exp.models.builder import build

    built = build("yolov8n", 2, tmp_path_factory.mktemp("m"), "neck", ["P4", "P5"], imgsz=64)
    torch.manual_seed(0)
    return built, built.model.float().eval()


def test_the_per_run_picture_has_one_panel_per_module(two_modules, tmp_path):
    built, model = two_modules
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    records = record_positions(model, image, attention=True, top_k=5)
    assert [r.layer for r in records] == [m.index for m in built.modules]
    for record, module in zip(records, built.modules, strict=True):
        found = record.attention
        h, w = record.feature_hw
        queries = len(query_points(h, w))
        assert queries >= 2 and found.queries.shape == (queries, 2)
        assert found.keys.shape == (queries, 5, 2) and found.weights.shape == (queries, 5)
        assert (np.diff(found.weights, axis=1) <= 0).all(), "highest weight first"
        assert ((found.weights > 0) & (found.weights < 1)).all()
        assert set(found.groups.ravel()) <= set(range(module.settings["groups"]))
        # every shown key is one of the positions its group sampled
        for q in range(queries):
            for key, g in zip(found.keys[q], found.groups[q], strict=True):
                assert np.isclose(record.positions[g].reshape(-1, 2), key).all(1).any()
    fig = attention_figure(image, records, {m.index: m.level for m in built.modules})
    assert len(fig.axes) == len(built.modules) == 2
    assert_real_png(save_png(fig, tmp_path / "per_run.png"))
    assert len(attention_figure(image, records * 2).axes) == 4, "a 2x3 grid, two cells removed"
    assert [r.attention for r in record_positions(model, image)] == [None, None], "opt-in"


def test_the_pictured_attention_is_the_modules_own(two_modules):
    """The top weights equal the head-mean of the attention the module itself computes on its
    reference path (captured from its forward) at the query pixels."""
    _, model = two_modules
    image = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    records = record_positions(model, image, attention=True, top_k=4)
    captured = {}
    modules = dat_modules(model)
    for name, m in modules:

        def attend(q, k, v, bias, m=m, name=name):
            logits = torch.einsum("bhdm,bhdn->bhmn", q * m.scale, k)
            captured[name] = (logits + (0 if bias is None else bias)).softmax(-1)[0]
            return type(m)._attend_reference(m, q, k, v, bias)

        m._attend_reference, m.impl = attend, "reference"
    try:
        with torch.no_grad():
            model(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255)
    finally:
        for _, m in modules:
            del m._attend_reference
            m.impl = "auto"
    for record, (name, m) in zip(records, modules, strict=True):
        h, w = record.feature_hw
        attn = captured[name]  # (heads, HW, N)
        for q, (i, j) in enumerate(query_points(h, w)):
            per_group = attn[:, i * w + j].reshape(m.groups, m.heads // m.groups, -1).sum(1)
            per_group = (per_group / m.heads).numpy()  # (groups, N)
            expected = np.sort(per_group.ravel())[::-1][:4]
            np.testing.assert_allclose(record.attention.weights[q], expected, atol=1e-5)
            # each shown key sits where its group sampled a key with that weight
            for key, g, weight in zip(
                record.attention.keys[q],
                record.attention.groups[q],
                record.attention.weights[q],
                strict=True,
            ):
                at = np.isclose(record.positions[g].reshape(-1, 2), key).all(1)
                assert np.isclose(per_group[g][at], weight, atol=1e-5).any()


# -- DAT diagnostics per epoch -------------------------------------------------------------------
LAYERS = {10: "P5", 16: "P3"}


def diagnostic_runs() -> pd.DataFrame:
    """grid_sweep's runs with their modules' params: sppf at layer 10, neck at 16 (and 10)."""
    runs = grid_sweep(seeds=2)
    dat = runs["placement"] != "none"
    runs["module.0.layer"] = pd.array(np.where(dat, 10, pd.NA), dtype="Int64")
    runs["module.0.level"] = np.where(dat, "P5", None)
    neck = runs["placement"] == "neck"
    runs["module.1.layer"] = pd.array(np.where(neck, 16, pd.NA), dtype="Int64")
    runs["module.1.level"] = np.where(neck, "P3", None)
    return runs


def diagnostic_history(runs: pd.DataFrame, layer: int, name: str) -> pd.DataFrame:
    """A constructed per-epoch diagnostic: different per variant, layer and diagnostic."""
    base = history(runs, epochs=4)
    scale = 1 + schema.DAT_DIAGNOSTICS.index(name) + layer / 100
    return base.assign(value=base["value"] * scale)


def test_diagnostics_figure_has_a_panel_per_layer(tmp_path):
    runs = diagnostic_runs()
    histories = {
        layer: diagnostic_history(report.with_layer(runs, layer), layer, schema.OFFSET_CELLS)
        for layer in LAYERS
    }
    assert len(histories[10]["variant"].unique()) == 4 and len(histories[16]) == 2 * 2 * 4
    fig = diagnostics_figure(histories, schema.OFFSET_CELLS, LAYERS)
    assert len(fig.axes) == 2
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        f"{schema.dat_diagnostic(10, schema.OFFSET_CELLS)} (P5)",
        f"{schema.dat_diagnostic(16, schema.OFFSET_CELLS)} (P3)",
    ]
    assert [len(ax.get_lines()) for ax in fig.axes] == [4, 2], "a curve per variant"
    assert_real_png(save_png(fig, tmp_path / "diag.png"))


def fake_analysis(runs: pd.DataFrame) -> SimpleNamespace:
    return SimpleNamespace(runset=runset(runs))


def serve(monkeypatch, logged: set[str], calls: list | None = None) -> None:
    """``epoch_history`` of the report answering from constructed histories of ``logged``
    diagnostic names (the others: empty, as for runs from before the diagnostics)."""

    def epoch_history(runs, key, uri):
        if calls is not None:
            calls.append((key, sorted(runs["run_id"])))
        for layer in LAYERS:
            for name in schema.DAT_DIAGNOSTICS:
                if key == schema.dat_diagnostic(layer, name) and name in logged:
                    return diagnostic_history(runs, layer, name)
        return history(runs).iloc[:0]

    monkeypatch.setattr(report, "epoch_history", epoch_history)


def test_report_plots_each_logged_diagnostic_beside_the_curves(monkeypatch, tmp_path):
    runs = diagnostic_runs()
    calls = []
    serve(monkeypatch, {schema.OFFSET_CELLS, schema.ATTN_ENTROPY}, calls)
    out = report.Report(tmp_path)
    report._add_diagnostics(out, fake_analysis(runs), tmp_path)
    assert report.dat_layers(runs) == LAYERS
    assert list(out.figures) == [
        f"DAT {schema.OFFSET_CELLS} per epoch",
        f"DAT {schema.ATTN_ENTROPY} per epoch",
    ]
    for path in out.figures.values():
        assert_real_png(path)
    missing = [
        n for n in schema.DAT_DIAGNOSTICS if n not in (schema.OFFSET_CELLS, schema.ATTN_ENTROPY)
    ]
    assert out.notes == [f"DAT diagnostics not logged by any run: {', '.join(missing)}"]
    # each layer is read from the runs that have it only
    neck = sorted(runs.loc[runs["placement"] == "neck", "run_id"])
    assert (schema.dat_diagnostic(16, schema.GAMMA), neck) in calls
    dat = sorted(runs.loc[runs["placement"] != "none", "run_id"])
    assert (schema.dat_diagnostic(10, schema.GAMMA), dat) in calls


def test_the_report_shows_the_diagnostics_right_after_the_map_curves(
    monkeypatch, tmp_path, variants
):
    runs = diagnostic_runs()
    serve(monkeypatch, {schema.GAMMA})
    analysis = SimpleNamespace(runset=runset(runs), variants=variants, metric=schema.MAP50_95)
    out = report.write_figures(analysis, tmp_path, sampling=False)
    captions = list(out.figures)
    curves = captions.index(f"{schema.val(schema.MAP50_95)} per epoch")
    assert captions[curves + 1] == f"DAT {schema.GAMMA} per epoch"
    assert out.figures[captions[curves + 1]].name == f"dat_{schema.GAMMA}.png"


def test_report_notes_runs_without_diagnostics(monkeypatch, tmp_path):
    runs = diagnostic_runs()
    serve(monkeypatch, set())
    out = report.Report(tmp_path)
    report._add_diagnostics(out, fake_analysis(runs), tmp_path)
    assert out.figures == {} and list(tmp_path.iterdir()) == []
    assert len(out.notes) == 1 and out.notes[0].startswith("DAT diagnostics skipped: no run logged")
    none_only = runs[runs["placement"] == "none"].drop(
        columns=[c for c in runs if c.startswith("module.")]
    )
    out = report.Report(tmp_path)
    report._add_diagnostics(out, fake_analysis(none_only), tmp_path)
    assert out.figures == {} and out.notes == ["DAT diagnostics: no DAT module in the selection"]

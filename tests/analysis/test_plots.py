"""Plots on hand-made analyses: each is written, a real PNG, not blank; the sampling picture on
a freshly built DAT model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dat_exp.analysis.compare import compare
from dat_exp.analysis.plots import (
    curves_figure,
    delta_heatmap,
    pareto_mask,
    save_png,
    tradeoff_figure,
)
from dat_exp.analysis.sampling import record_positions, sampling_figure, to_pixels
from dat_exp.analysis.stats import aggregate
from dat_exp.tracking import schema
from tests.analysis.fakes import grid_sweep, history

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

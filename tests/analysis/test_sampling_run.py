"""The runner's per-run picture: a finished DAT run logs ``dat/sampling_points.png`` from its
local best weights; a ``none`` run logs none; a picture that cannot be drawn never fails a run."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image
from ultralytics import YOLO

from dat_exp import runner
from dat_exp.models.builder import build
from tests.analysis.test_plots import assert_real_png

IMGSZ = 64
ARTIFACT = "dat/sampling_points.png"  # pinned by hand: stored runs are read back by this path


class RecordingClient:
    """The MlflowClient calls ``_log_outputs`` makes, recorded as artifact paths."""

    def __init__(self) -> None:
        self.artifacts: dict[str, Path] = {}

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None):
        assert run_id == "run"
        name = Path(local_path).name
        self.artifacts[f"{artifact_path}/{name}" if artifact_path else name] = Path(local_path)


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    """A dataset YAML whose val split holds two images (a landscape one first, by name)."""
    root = tmp_path_factory.mktemp("data")
    (root / "images" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, shape in (("a.jpg", (48, 80, 3)), ("b.jpg", (64, 64, 3))):
        pixels = rng.integers(0, 255, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / "val" / name)
    path = root / "data.yaml"
    path.write_text(
        yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val", "nc": 2})
    )
    return path


def checkpoint(tmp_path: Path, placement: str, levels: list[str] | None = None) -> Path:
    """A saved, untrained model of ``placement`` (what ``trainer.best`` points at)."""
    built = build("yolov8n", 2, tmp_path / "models", placement, levels, imgsz=IMGSZ)
    best = tmp_path / "weights" / "best.pt"
    best.parent.mkdir(parents=True, exist_ok=True)
    YOLO(str(built.yaml_path)).save(best)
    return best


def trainer(tmp_path: Path, data: Path) -> SimpleNamespace:
    """What ``_log_outputs`` reads of an Ultralytics trainer."""
    save_dir = tmp_path / "train"
    save_dir.mkdir(exist_ok=True)
    return SimpleNamespace(
        save_dir=save_dir, args=SimpleNamespace(data=str(data), imgsz=IMGSZ), validator=None
    )


def test_a_dat_run_logs_its_picture(tmp_path, data_yaml, caplog):
    best = checkpoint(tmp_path, "neck", ["P4", "P5"])
    client = RecordingClient()
    with caplog.at_level(logging.WARNING, "dat_exp"):
        runner._log_outputs(client, "run", trainer(tmp_path, data_yaml), best, False)
    assert caplog.records == []
    assert list(client.artifacts) == [ARTIFACT]
    png = client.artifacts[ARTIFACT]
    assert png.is_relative_to(tmp_path / "train"), "written beside the run's training outputs"
    assert_real_png(png)
    with Image.open(png) as image:
        assert image.width > 1.5 * image.height, "one panel per module, side by side"


def test_a_none_run_logs_no_picture(tmp_path, data_yaml, caplog):
    best = checkpoint(tmp_path, "none")
    client = RecordingClient()
    with caplog.at_level(logging.WARNING, "dat_exp"):
        runner._log_outputs(client, "run", trainer(tmp_path, data_yaml), best, True)
    assert list(client.artifacts) == ["weights/best.pt"]
    assert caplog.records == []
    assert not (tmp_path / "train" / "dat").exists()


def test_a_picture_that_cannot_be_drawn_is_a_warning(tmp_path, caplog):
    best = checkpoint(tmp_path, "sppf")
    client = RecordingClient()
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({"path": str(tmp_path), "val": "nowhere"}))
    with caplog.at_level(logging.WARNING, "dat_exp"):
        runner._log_outputs(client, "run", trainer(tmp_path, empty), best, False)
    assert client.artifacts == {}
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "no DAT sampling picture" in caplog.text and "no validation image" in caplog.text

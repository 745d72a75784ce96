"""Shared fixtures: no network, and a tiny YOLO-format dataset the tests write themselves."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Every attempt to reach a non-loopback address is refused and recorded, in this process and
# (through PYTHONPATH, see tests/runner/entry.py) in the subprocesses the tests start.
NETGUARD_LOG = Path(
    os.environ.setdefault("DAT_EXP_NETGUARD_LOG", f"/tmp/dat-exp-netguard-{os.getpid()}.log")
)
_spec = importlib.util.spec_from_file_location(
    "netguard", Path(__file__).parent / "netguard" / "sitecustomize.py"
)
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))

import dat_exp  # noqa: E402, F401  (offline environment, layer registration)


@pytest.fixture(autouse=True)
def no_network():
    """Fails the test (at teardown) if it tried to reach the network."""
    before = NETGUARD_LOG.read_text() if NETGUARD_LOG.exists() else ""
    yield
    after = NETGUARD_LOG.read_text() if NETGUARD_LOG.exists() else ""
    assert after == before, f"network access attempted: {after[len(before) :]}"


def write_tiny_dataset(root: Path, n_images: int = 8, size: int = 64, nc: int = 2) -> Path:
    """Bright rectangles (class 0) and dark ellipses (class 1) on grey noise."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k in range(n_images):
            img = rng.integers(90, 140, (size, size, 3), dtype=np.uint8)
            lines = []
            for _ in range(2):
                cls = int(rng.integers(0, nc))
                w, h = rng.integers(size // 5, size // 2, 2)
                x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
                yy, xx = np.mgrid[0:h, 0:w]
                mask = (
                    np.ones((h, w), bool)
                    if cls == 0
                    else (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1)
                )
                img[y0 : y0 + h, x0 : x0 + w][mask] = 230 if cls == 0 else 20
                lines.append(
                    f"{cls} {(x0 + w / 2) / size} {(y0 + h / 2) / size} {w / size} {h / size}"
                )
            Image.fromarray(img).save(root / "images" / split / f"{k}.png")
            (root / "labels" / split / f"{k}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: c{i}" for i in range(nc))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty working directory for the entry point (its runs/ is the default store)."""
    d = tmp_path / "work"
    d.mkdir()
    return d

"""Fixtures for the data tests: a small generated dataset, shared across the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dat_exp.data.synthetic import SyntheticSpec, generate

# Small, but with the default difficulty knobs: enough objects for statistics in under a second.
SMALL = SyntheticSpec(images=40, val_images=8, test_images=8, imgsz=160, classes=4, seed=0)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """data.yaml of the SMALL spec."""
    return generate(SMALL, tmp_path_factory.mktemp("small"))

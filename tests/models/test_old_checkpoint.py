"""A checkpoint saved by an earlier version of the project (``tests/fixtures/checkpoints``,
made at ec478f0 by ``make_old_checkpoint.py``) still loads with plain ``YOLO()``, computes what
it computed when it was saved, and predicts. Every change of DAttention or DATBlock must keep
this (a ``__setstate__`` migration where attribute names change)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"


def test_old_checkpoint_loads_and_computes_what_it_did():
    from ultralytics import YOLO

    from dat_exp.nn import DAttention

    yolo = YOLO(str(FIXTURES / "neck_v0.pt"))
    model = yolo.model.float().eval()
    pes = sorted(m.pe for m in model.modules() if isinstance(m, DAttention))
    assert pes == ["fixed", "log_cpb", "table"]
    saved = torch.load(FIXTURES / "neck_v0_io.pt", weights_only=True)
    # Each DAttention's own output too: inside the residual wrap LayerScale (1e-4 at the start)
    # would hide a change of the module from the model's output.
    seen = {}
    for name, m in model.named_modules():
        if isinstance(m, DAttention):
            m.register_forward_hook(lambda m, args, y, name=name: seen.__setitem__(name, y))
    with torch.no_grad():
        out = model(saved["input"])[0]
    torch.testing.assert_close(out, saved["output"], rtol=1e-4, atol=1e-4)
    assert (
        sorted(seen)
        == sorted(saved["modules"])
        == ["model.16.attn", "model.20.attn", "model.24.attn"]
    )
    for name, y in saved["modules"].items():
        torch.testing.assert_close(seen[name], y, rtol=1e-5, atol=1e-6, msg=name)


def test_old_checkpoint_predicts():
    from ultralytics import YOLO

    yolo = YOLO(str(FIXTURES / "neck_v0.pt"))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    results = yolo.predict(image, imgsz=64, device="cpu", verbose=False)
    assert len(results) == 1 and results[0].boxes is not None

"""Pretrained transfer across the index remap.

Ultralytics matches checkpoint tensors by exact name ``model.N.…`` and shape, so a layer
inserted at N would orphan every tensor after it. Renaming the source's layer numbers through
the builder's index map first transfers every unchanged tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dat_exp.models.builder import BuiltModel, stock_yaml

_LAYER_KEY = re.compile(r"^model\.(\d+)\.")


@dataclass
class TransferReport:
    transferred: int
    skipped: int
    source_tensors: int


def _stock_rows(cfg: dict) -> list:
    rows = cfg["backbone"] + cfg["head"]
    return [[r[0], r[1], r[2], r[3]] for r in rows[:-1]]  # Detect's args carry nc


def transfer_pretrained(yolo, built: BuiltModel, checkpoint: str | Path) -> TransferReport:
    """Load a baseline checkpoint of the same base and scale into ``yolo`` (a ``YOLO`` built
    from ``built.yaml_path``), so that Ultralytics' trainer seeds from these weights."""
    from ultralytics.nn.tasks import load_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"model.weights={str(path)!r}: no such checkpoint file")
    source, _ = load_checkpoint(str(path))
    src_cfg = getattr(source, "yaml", {}) or {}
    expected = stock_yaml(built.base)
    if src_cfg.get("scale") != built.scale or _stock_rows(src_cfg) != _stock_rows(expected):
        found = Path(str(src_cfg.get("yaml_file", "unknown"))).name
        raise ValueError(
            f"model.weights={str(path)!r} is a {found} (scale {src_cfg.get('scale')!r}) model, "
            f"not a baseline {built.base}{built.scale}; give a checkpoint of that base and scale"
        )
    target = yolo.model.state_dict()
    renamed = {}
    for key, tensor in source.float().state_dict().items():
        m = _LAYER_KEY.match(key)
        new_key = f"model.{built.index_map[int(m.group(1))]}.{key[m.end() :]}" if m else key
        if new_key in target and target[new_key].shape == tensor.shape:
            renamed[new_key] = tensor
    yolo.model.load_state_dict(renamed, strict=False)
    yolo.load(yolo.model)  # marks the model as pretrained: train() then seeds from it
    total = len(source.state_dict())
    return TransferReport(len(renamed), total - len(renamed), total)

"""The ``c2f`` placement: DAttention on the residual branch of a block's last bottleneck."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ultralytics.nn.modules.block import Bottleneck, C2f, C3k2

from dat_exp.nn.dattention import DAttention


class DATBottleneck(Bottleneck):
    """``y = x + DAttention(cv2(cv1(x)))``: the bottleneck's own residual, no extra wrapper."""

    dat: DAttention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dat(self.cv2(self.cv1(x)))
        return x + y if self.add else y


def attach_to_last_bottleneck(block: torch.nn.Module, settings: Mapping[str, Any]) -> None:
    """Turn the block's last ``Bottleneck`` into a ``DATBottleneck``.

    The bottleneck keeps its parameter names, so a stock checkpoint's tensors still load.
    """
    last = [m for m in block.modules() if isinstance(m, Bottleneck)][-1]
    last.__class__ = DATBottleneck
    last.dat = DAttention(last.cv2.conv.out_channels, **settings)


class C2fDAT(C2f):
    """YOLOv8's C2f with DAT inside its last bottleneck (YAML args: c1, c2, n, shortcut, g, e,
    settings)."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, settings=None) -> None:
        super().__init__(c1, c2, n, shortcut, g, e)
        attach_to_last_bottleneck(self, settings or {})


class C3k2DAT(C3k2):
    """YOLO11's C3k2 with DAT inside its last bottleneck (YAML args: c1, c2, n, c3k, e, attn, g,
    shortcut, settings)."""

    def __init__(
        self, c1, c2, n=1, c3k=False, e=0.5, attn=False, g=1, shortcut=True, settings=None
    ) -> None:
        super().__init__(c1, c2, n, c3k, e, attn, g, shortcut)
        attach_to_last_bottleneck(self, settings or {})

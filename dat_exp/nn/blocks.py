"""DAttention wrapped for insertion into a CNN, as a config choice (``wrap``), not a code fork."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import LayerNorm2d, LayerScale2d
from torch import nn

from dat_exp.nn.dattention import DEFAULTS, NORM_EPS, DAttention
from dat_exp.nn.settings import Wrap

WRAPS = tuple(map(str, Wrap))


class DATBlock(nn.Module):
    """``residual``: ``x + LayerScale(DAttention(LayerNorm(x)))`` (official DAT); ``bare``: the
    module alone, replacing the features (the blog).

    Ultralytics' YAML passes positional args only, so the DAT settings may come as one mapping
    (``[c1, {pe: table, stride: 2}]``); keyword arguments given in Python take precedence.
    """

    def __init__(
        self,
        c1: int,
        settings: Mapping[str, Any] | None = None,
        wrap: str | None = None,
        layer_scale_init: float = 1e-4,
        **dat_kwargs: Any,
    ) -> None:
        super().__init__()
        opts = {**dict(settings or {}), **dat_kwargs}
        wrap = str(wrap or opts.pop("wrap", DEFAULTS.wrap))
        opts.pop("wrap", None)
        if wrap not in WRAPS:
            raise ValueError(f"wrap={wrap!r} is not one of {', '.join(WRAPS)}")
        self.wrap = wrap
        try:
            self.attn = DAttention(c1, **opts)
        except TypeError as err:  # an unknown key in the settings mapping
            raise ValueError(f"bad DAT setting in {sorted(opts)}: {err}") from None
        if wrap == "residual":
            self.norm = LayerNorm2d(c1, eps=NORM_EPS)
            self.layer_scale = LayerScale2d(c1, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wrap == "bare":
            return self.attn(x)
        return x + self.layer_scale(self.attn(self.norm(x)))

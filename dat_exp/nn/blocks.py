"""DAttention wrapped for insertion into a CNN, as a config choice (``wrap``), not a code fork."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import LayerNorm2d, LayerScale2d
from torch import nn

from dat_exp.nn.dattention import DEFAULTS, NORM_EPS, DAttention
from dat_exp.nn.settings import Wrap, valid_layer_scale

WRAPS = tuple(map(str, Wrap))


class DATBlock(nn.Module):
    """``residual``: ``x + LayerScale(DAttention(LayerNorm(x)))`` (official DAT, with LayerScale
    as timm's blocks have it); ``bare``: the module alone, replacing the features (the blog).

    ``layer_scale`` (residual only) is LayerScale's initial gamma; ``None`` leaves LayerScale out,
    ``x + DAttention(LayerNorm(x))`` (official DAT++). ``bare`` ignores it.

    Ultralytics' YAML passes positional args only, so the DAT settings may come as one mapping
    (``[c1, {pe: table, stride: 2, layer_scale: 0.0001}]``); keyword arguments given in Python
    (``wrap``, ``layer_scale`` or DAttention's) take precedence.
    """

    def __init__(
        self,
        c1: int,
        settings: Mapping[str, Any] | None = None,
        wrap: str | None = None,
        **dat_kwargs: Any,
    ) -> None:
        super().__init__()
        opts = {**dict(settings or {}), **dat_kwargs}
        wrap = str(wrap or opts.pop("wrap", DEFAULTS.wrap))
        opts.pop("wrap", None)
        layer_scale = opts.pop("layer_scale", DEFAULTS.layer_scale)
        if wrap not in WRAPS:
            raise ValueError(f"wrap={wrap!r} is not one of {', '.join(WRAPS)}")
        if not valid_layer_scale(layer_scale):
            raise ValueError(f"layer_scale={layer_scale!r} is not None or a positive finite number")
        self.wrap = wrap
        try:
            self.attn = DAttention(c1, **opts)
        except TypeError as err:  # an unknown key in the settings mapping
            raise ValueError(f"bad DAT setting in {sorted(opts)}: {err}") from None
        if wrap == "residual":
            self.norm = LayerNorm2d(c1, eps=NORM_EPS)
            # None: registered as no module (as nn.Linear registers bias=None), no parameters
            scale = None if layer_scale is None else LayerScale2d(c1, float(layer_scale))
            self.register_module("layer_scale", scale)

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """This module's own parameters that train without weight decay: LayerScale's gamma
        (timm's optimizer factory exempts every 1-D tensor); DAttention declares its own."""
        scale = getattr(self, "layer_scale", None)  # a bare block has none
        return list(scale.parameters()) if scale is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wrap == "bare":
            return self.attn(x)
        y = self.attn(self.norm(x))
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        return x + y

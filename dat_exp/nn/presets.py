"""The two DAT presets (instances of ``DATSettings``) and the settings of one module at a level.

``official`` is ``DATSettings()``: its sizing keys are ``auto``, which ``level_settings`` turns
into DAT++'s per-level values. ``blog`` fixes the blog's dense settings. Both are also the Hydra
options of the ``dat`` group (``config.register_configs``), so ``dat=blog`` composes to exactly
the instance below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dat_exp.models.placements import LEVEL_STRIDES
from dat_exp.nn.settings import (
    AUTO,
    DAT_KEYS,
    NULLABLE_KEYS,
    PE,
    DATSettings,
    Preset,
    Wrap,
    as_dict,
    plain,
)

# Offset-network (ksize, stride) by feature stride: DAT++'s stages at a 640 input.
LEVEL_OFFSET_NET = {8: (7, 4), 16: (5, 2), 32: (3, 1)}

PRESETS: dict[str, DATSettings] = {
    Preset.official: DATSettings(),
    Preset.blog: DATSettings(
        preset=Preset.blog, pe=PE.dwc, stride=1, ksize=9, heads=8, groups=1, wrap=Wrap.bare
    ),
}


def default_heads(channels: int, head_dim: int = 32) -> int:
    """Heads of dimension ``head_dim`` (at least one), reduced until they divide ``channels``."""
    heads = max(channels // head_dim, 1)
    while channels % heads:
        heads -= 1
    return heads


def default_groups(heads: int) -> int:
    """The largest divisor of ``heads`` that is at most ``heads / 2`` (at least 1)."""
    return max((d for d in range(1, heads // 2 + 1) if heads % d == 0), default=1)


def preset_settings(name: Any) -> DATSettings:
    if name not in PRESETS:
        raise ValueError(f"dat.preset={plain(name)!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


def level_settings(
    level: str,
    channels: int | None,
    imgsz: int,
    dat: Mapping[str, Any] | DATSettings | None = None,
) -> dict[str, Any]:
    """The settings one DAT module at ``level`` is built with (DAttention's keyword arguments,
    ``feat_size``, and DATBlock's ``wrap`` and ``layer_scale``: ``settings.BLOCK_KEYS``), as
    plain values.

    The level defaults come first (offset net from ``LEVEL_OFFSET_NET``, heads from
    ``channels``, groups from those heads, ``feat_size = ceil(imgsz / level stride)``), then the
    preset's own values, then every key of ``dat`` that is not ``auto`` (nor ``None``, except
    where ``None`` is a value: ``settings.NULLABLE_KEYS``). ``channels=None``
    (inside a block) leaves heads and groups to DAttention, which sizes them by the block's width.
    """
    if level not in LEVEL_STRIDES:
        raise ValueError(f"level {level!r} has no DAT defaults; valid: {', '.join(LEVEL_STRIDES)}")
    if isinstance(dat, DATSettings):
        dat = as_dict(dat)
    dat = dict(dat or {})
    preset = preset_settings(dat.get("preset", Preset.official))
    feature_stride = LEVEL_STRIDES[level]
    ksize, stride = LEVEL_OFFSET_NET[feature_stride]
    heads = default_heads(channels) if channels else None
    settings: dict[str, Any] = {
        **as_dict(DATSettings()),
        "feat_size": math.ceil(imgsz / feature_stride),
        "ksize": ksize,
        "stride": stride,
        "heads": heads,
        "groups": default_groups(heads) if heads else None,
    }
    del settings["preset"]  # which preset, not how a module is built
    for source in (as_dict(preset), dat):
        for key in DAT_KEYS:
            value = source.get(key, AUTO)
            if key == "preset" or value == AUTO or (value is None and key not in NULLABLE_KEYS):
                continue
            settings[key] = plain(value)
    return settings

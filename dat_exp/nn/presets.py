"""DAT settings per pyramid level (official DAT++ style) and the blog's preset."""

from __future__ import annotations

import math
from typing import Any

# Offset-network (ksize, stride) by feature stride: DAT++'s stages at a 640 input.
LEVEL_OFFSET_NET = {8: (7, 4), 16: (5, 2), 32: (3, 1)}
LEVEL_STRIDES = {"P3": 8, "P4": 16, "P5": 32}

OFFICIAL: dict[str, Any] = {
    "pe": "table",
    "offset_range_factor": -1.0,
    "no_off": False,
    "ref_points": "datpp",
    "wrap": "residual",
}
BLOG: dict[str, Any] = {
    "stride": 1,
    "ksize": 9,
    "pe": "dwc",
    "heads": 8,
    "groups": 1,
    "wrap": "bare",
    "offset_range_factor": -1.0,
    "no_off": False,
    "ref_points": "datpp",
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


def level_defaults(channels: int, feature_stride: int, imgsz: int) -> dict[str, Any]:
    """Official-style settings for a module on a ``channels`` map at ``feature_stride``."""
    if feature_stride not in LEVEL_OFFSET_NET:
        raise ValueError(
            f"feature stride {feature_stride} has no DAT defaults; "
            f"valid: {sorted(LEVEL_OFFSET_NET)}"
        )
    ksize, stride = LEVEL_OFFSET_NET[feature_stride]
    heads = default_heads(channels)
    return {
        **OFFICIAL,
        "feat_size": math.ceil(imgsz / feature_stride),
        "ksize": ksize,
        "stride": stride,
        "heads": heads,
        "groups": default_groups(heads),
    }

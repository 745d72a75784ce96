"""The DAT settings of a job: one dataclass, the Hydra schema of ``dat`` and every default.

The choices are ``StrEnum``s: OmegaConf checks them at composition (it rejects ``Literal``), and
``str(value)`` is the plain name (``"dwc"``), so logged params and config hashes read as before.
OmegaConf converts a string to an enum by member *name*, and ``enum_to_str`` writes the name back:
every member's name equals its value, and the alias ``log-cpb`` is a second name of ``log_cpb``.

It imports nothing of the project: the config schema, the presets and DAttention's module
can all import it without a cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

AUTO = "auto"  # a sizing key at ``auto`` takes the per-level default (see presets.level_settings)


class Preset(StrEnum):
    official = "official"  # DAT++'s per-level sizing
    blog = "blog"  # the blog's dense settings, to reproduce its claims


# The functional API, because a member name with a dash (the alias) is no identifier.
PE = StrEnum(
    "PE",
    [(name, name) for name in ("table", "dwc", "log_cpb", "fixed", "none")]
    + [("log-cpb", "log_cpb")],  # an alias: PE["log-cpb"] is PE.log_cpb
    module=__name__,
    qualname="PE",
)
PE.__doc__ = "Position encoding of the attention."


class RefPoints(StrEnum):
    datpp = "datpp"  # official DAT++
    v1 = "v1"  # official CVPR 2022


class Impl(StrEnum):
    auto = "auto"
    fast = "fast"  # scaled_dot_product_attention
    reference = "reference"  # explicit einsums


class Wrap(StrEnum):
    residual = "residual"  # x + LayerScale(DAttention(LayerNorm(x))), see ``layer_scale``
    bare = "bare"  # the module alone, replacing the features


@dataclass
class DATSettings:
    """The ``dat`` node of a job. Field names, order and defaults are part of every config hash:
    a new field changes no earlier hash only if ``hashable_config`` leaves it out at its default.

    ``stride``, ``ksize``, ``heads`` and ``groups`` take an integer or ``auto`` (the per-level
    default), so they are ``Any`` for the schema; ``validate.check_dat`` checks their values.
    ``layer_scale`` is ``null`` (``x + DAT(LN(x))``) or LayerScale's initial gamma (> 0), used
    by the ``residual`` wrap only: ``hashable_config`` drops it where it has no effect.
    """

    preset: Preset = Preset.official
    pe: PE = PE.table  # type: ignore[valid-type]  (a functional-API enum)
    offset_range_factor: float = -1.0
    no_off: bool = False
    stride: Any = AUTO
    ksize: Any = AUTO
    heads: Any = AUTO
    groups: Any = AUTO
    wrap: Wrap = Wrap.residual
    # LayerScale's initial gamma in the residual wrap; null: none, as official DAT++. Measured
    # (benchmarks/layer_scale_measurement.sh, README): null, 1e-4 and 1.0 could not be told
    # apart, so the default is DAT++'s choice; the presets inherit it. 1e-4 was the default
    # before (a model built then pickles its own LayerScale and loads unchanged).
    layer_scale: float | None = None
    ref_points: RefPoints = RefPoints.datpp
    impl: Impl = Impl.auto


DAT_KEYS: tuple[str, ...] = tuple(f.name for f in fields(DATSettings))
SIZING_KEYS = ("stride", "ksize", "heads", "groups")  # ``auto``: the per-level default
NULLABLE_KEYS = ("layer_scale",)  # ``null`` is a value of these, not "unset"
BLOCK_KEYS = ("wrap", "layer_scale")  # how DATBlock wraps DAttention, not DAttention's arguments
# The keys whose values an enum fixes, with their choices (an alias is a valid choice too).
CHOICES: dict[str, type[StrEnum]] = {
    "preset": Preset,
    "pe": PE,
    "wrap": Wrap,
    "ref_points": RefPoints,
    "impl": Impl,
}


def valid_layer_scale(value: Any) -> bool:
    """``null`` (no LayerScale) or a positive finite number (LayerScale's initial gamma)."""
    if value is None:
        return True
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


def plain(value: Any) -> Any:
    """An enum member as its plain string (YAML and JSON dumps take no enum objects)."""
    return str(value) if isinstance(value, StrEnum) else value


def as_dict(settings: DATSettings) -> dict[str, Any]:
    """The settings as plain values, in field order."""
    return {key: plain(getattr(settings, key)) for key in DAT_KEYS}

"""The project's layers: deformable attention, its block wrapper, and their presets."""

from dat_exp.nn.blocks import WRAPS, DATBlock
from dat_exp.nn.dattention import IMPLS, PE_MODES, REF_CONVENTIONS, DAttention
from dat_exp.nn.official import load_official_state_dict
from dat_exp.nn.presets import PRESETS, level_settings
from dat_exp.nn.settings import PE, DATSettings, Impl, Preset, RefPoints, Wrap

__all__ = [
    "IMPLS",
    "PE",
    "PE_MODES",
    "PRESETS",
    "REF_CONVENTIONS",
    "WRAPS",
    "DATBlock",
    "DATSettings",
    "DAttention",
    "Impl",
    "Preset",
    "RefPoints",
    "Wrap",
    "level_settings",
    "load_official_state_dict",
]

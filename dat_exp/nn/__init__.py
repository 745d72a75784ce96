"""The project's layers: deformable attention, its block wrapper, and their presets."""

from dat_exp.nn.blocks import WRAPS, DATBlock
from dat_exp.nn.dattention import IMPLS, PE_MODES, REF_CONVENTIONS, DAttention
from dat_exp.nn.presets import BLOG, OFFICIAL, level_defaults

__all__ = [
    "BLOG",
    "IMPLS",
    "OFFICIAL",
    "PE_MODES",
    "REF_CONVENTIONS",
    "WRAPS",
    "DATBlock",
    "DAttention",
    "level_defaults",
]

"""Make the project's layers resolvable by name in Ultralytics' YAML parser.

``parse_model`` looks module names up in ``ultralytics.nn.tasks``' namespace; adding ours there
needs no edit of the installed package.
"""

from __future__ import annotations

from dat_exp.nn import DATBlock
from dat_exp.nn.inside import C2fDAT, C3k2DAT

LAYERS = {"DATBlock": DATBlock, "C2fDAT": C2fDAT, "C3k2DAT": C3k2DAT}


def register_layers() -> None:
    from ultralytics.nn import tasks

    for name, layer in LAYERS.items():
        setattr(tasks, name, layer)

"""Keep the parameters each module declares decay-free out of weight decay under Ultralytics'
optimizers.

timm's convention, by parameter rather than by name: a module that has parameters to train
without weight decay defines ``no_weight_decay_parameters()``, returning its own (not its
children's): DAttention its position biases, DATBlock its LayerScale gamma. This module asks
every module of a model, and knows none of them.
"""

from __future__ import annotations

import torch
from torch import nn

NO_DECAY_METHOD = "no_weight_decay_parameters"


def no_decay_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter a module of ``model`` declares decay-free, once each, in module order."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        declare = getattr(module, NO_DECAY_METHOD, None)
        if callable(declare):
            found.update((id(p), p) for p in declare())
    return list(found.values())


def exclude_from_decay(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Move the declared decay-free parameters into the optimizer's decay-free, non-Muon group.

    Ultralytics decays every weight that is not a norm or named ``bias`` (LayerScale's
    ``gamma`` too), and MuSGD decays (and orthogonalises) every 2-D/4-D tensor, which would
    include the ``log_cpb`` MLP. The number of groups is kept, so that optimizer state saved by
    a run loads again on resume. Returns the number of parameters moved.
    """
    targets = {id(p) for p in no_decay_parameters(model)}
    if not targets:
        return 0
    free = [
        g
        for g in optimizer.param_groups
        if g.get("weight_decay", 0.0) == 0.0 and not g.get("use_muon", False)
    ]
    if not free:
        raise RuntimeError("optimizer has no parameter group without weight decay")
    moved: dict[int, nn.Parameter] = {}
    for group in optimizer.param_groups:
        if group in free:
            continue
        moved.update((id(p), p) for p in group["params"] if id(p) in targets)
        group["params"] = [p for p in group["params"] if id(p) not in targets]
    # The norm-weight group at its base learning rate (MuSGD also keeps a 3x-lr copy of each).
    target = min(free, key=lambda g: (g.get("param_group") != "bn", g["lr"]))
    present = {id(p) for g in free for p in g["params"]}
    target["params"].extend(p for i, p in moved.items() if i not in present)
    return len(moved)

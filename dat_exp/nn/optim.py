"""Keep DAT's position-bias parameters out of weight decay under Ultralytics' optimizers."""

from __future__ import annotations

import torch
from torch import nn

from dat_exp.nn.dattention import DAttention


def position_bias_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, DAttention) for p in m.bias_parameters()]


def exclude_position_bias_from_decay(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Move the bias parameters into the optimizer's decay-free, non-Muon group.

    Ultralytics decays every weight that is not a norm or named ``bias``, and MuSGD decays (and
    orthogonalises) every 2-D/4-D tensor, which would include the ``log_cpb`` MLP. The number of
    groups is kept, so that optimizer state saved by a run loads again on resume.
    Returns the number of parameters moved.
    """
    targets = {id(p) for p in position_bias_parameters(model)}
    if not targets:
        return 0
    free = [
        g
        for g in optimizer.param_groups
        if g.get("weight_decay", 0.0) == 0.0 and not g.get("use_muon", False)
    ]
    if not free:
        raise RuntimeError("optimizer has no parameter group without weight decay")
    moved = 0
    for group in optimizer.param_groups:
        if group in free:
            continue
        keep = [p for p in group["params"] if id(p) not in targets]
        moved += len(group["params"]) - len(keep)
        group["params"] = keep
    # The norm-weight group at its base learning rate (MuSGD also keeps a 3x-lr copy of each).
    target = min(free, key=lambda g: (g.get("param_group") != "bn", g["lr"]))
    present = {id(p) for g in free for p in g["params"]}
    target["params"].extend(p for p in position_bias_parameters(model) if id(p) not in present)
    return moved

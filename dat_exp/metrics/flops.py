"""Exact FLOPs at the real input size, attention included."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dat_exp.nn import DAttention


@contextlib.contextmanager
def reference_attention(model: nn.Module) -> Iterator[None]:
    """Run every DAttention on its einsum path: FlopCounterMode counts 0 for
    ``scaled_dot_product_attention`` on CPU, the einsums it counts exactly."""
    modules = [m for m in model.modules() if isinstance(m, DAttention)]
    saved = [m.impl for m in modules]
    for m in modules:
        m.impl = "reference"
    try:
        yield
    finally:
        for m, impl in zip(modules, saved, strict=True):
            m.impl = impl


def exact_gflops(model: nn.Module, imgsz: int | tuple[int, int]) -> float:
    """GFLOPs (2 x multiply-adds of matmuls and convolutions) of one image, by FlopCounterMode."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with reference_attention(model), torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, 3, h, w, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
    return fc.get_total_flops() / 1e9


def ultralytics_gflops(model: nn.Module, imgsz: int) -> float:
    """Ultralytics' own figure (``get_flops``), at the same size."""
    from ultralytics.utils.torch_utils import get_flops

    with reference_attention(model):
        return float(get_flops(model, imgsz))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def attention_memory_mb(model: nn.Module, imgsz: int, bytes_per_value: int = 4) -> float:
    """Predicted activation memory of the attention matrices per image (MB): logits and
    softmax, kept for backward, of every DAttention on the reference path. The key grid is
    each module's own (``DAttention.key_grid``: the offset conv's padding rule)."""
    total = 0
    hooks = []

    def count(module: DAttention, args: tuple) -> None:
        nonlocal total
        h, w = args[0].shape[-2:]
        hk, wk = module.key_grid(h, w)
        total += 2 * module.heads * h * w * hk * wk * bytes_per_value

    for m in model.modules():
        if isinstance(m, DAttention):
            hooks.append(m.register_forward_pre_hook(count))
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total / 2**20

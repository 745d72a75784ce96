"""What each DAT module does, measured on a few fixed validation images: how far its sampled
positions move from the reference grid (in key-grid cells), how many sit at their bound, how
spread its attention is, and the size of its LayerScale.

The epoch logger runs :class:`DATDiagnostics` at each epoch end on the EMA weights Ultralytics
validates and logs ``dat/L{layer}/…`` (``schema.dat_diagnostic``; ``layer`` is the model layer
index, as in the ``module.{i}.layer`` params) with step = epoch. A metric that is undefined for a
module is absent, never 0:

- ``offset_cells`` (mean) and ``offset_cells_p95``: ``|pos - ref|`` (Euclidean, y and x each in
  key-grid cells: x (Hk-1)/2 for ``datpp``, x Hk/2 for ``v1``). Absent for ``no_off`` and for
  ``datpp`` at s = 0, whose positions are the reference grid by construction (``v1`` at s = 0
  adds the raw offsets: defined).
- ``at_bound``: the fraction of positions with a coordinate within ``BOUND_TOL`` of its bound:
  s < 0, ``|pos| >= 1 - tol`` (``datpp`` clamps to [-1, 1], ``v1`` takes ``tanh(ref + off)``);
  s > 0, ``|tanh(off)| >= 1 - tol``. Absent for ``no_off`` and at s = 0 (no bound).
- ``attn_entropy``: mean entropy of a query's attention over the keys / log(keys), 1 = uniform;
  from the reference path one image at a time (the fast path never holds the weights). Absent
  for ``no_off`` and for a single key.
- ``gamma``: mean ``|γ|`` of the module's LayerScale, when its layer has one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dat_exp.nn.dattention import DAttention
from dat_exp.tracking import schema

BOUND_TOL = 1e-3
N_IMAGES = 8  # the fixed batch: the first images of the validation split


def cells_per_unit(attn: DAttention, hk: int, wk: int) -> tuple[float, float]:
    """Key-grid cells per unit of normalised [-1, 1] coordinates, (y, x): the reference grid's
    spacing is 2 / (Hk - 1) in DAT++ (guarded at Hk = 1, as the module does) and 2 / Hk in v1."""
    if attn.ref_points == "v1":
        return hk / 2, wk / 2
    return max(hk - 1, 1) / 2, max(wk - 1, 1) / 2


@dataclass
class Tally:
    """One module's diagnostics, accumulated over images."""

    attn: DAttention
    gamma: torch.Tensor | None = None
    cells: list[torch.Tensor] = field(default_factory=list)  # per position, in cells
    at_bound: list[torch.Tensor] = field(default_factory=list)  # per position, bool
    entropy_sum: float = 0.0
    entropy_rows: int = 0

    @property
    def has_offsets(self) -> bool:
        a = self.attn
        return not a.no_off and not (a.offset_range_factor == 0 and a.ref_points == "datpp")

    @property
    def has_bound(self) -> bool:
        return not self.attn.no_off and self.attn.offset_range_factor != 0

    def add_positions(self, ref: torch.Tensor, pos: torch.Tensor) -> None:
        """``(B*g, Hk, Wk, 2)`` (y, x) reference points and sampled positions."""
        hk, wk = pos.shape[1:3]
        per_cell = torch.tensor(cells_per_unit(self.attn, hk, wk), device=pos.device)
        disp = (pos.float() - ref.float()) * per_cell  # in cells
        self.cells.append(disp.norm(dim=-1).flatten().cpu())
        if not self.has_bound:
            return
        s = self.attn.offset_range_factor
        # s < 0: the positions themselves saturate (datpp clamps, v1 takes a tanh); s > 0:
        # pos = ref + tanh(off) * s / (2 cells), so |tanh(off)| = |disp in cells| * 2 / s
        edge = pos.float().abs() if s < 0 else disp.abs() * (2 / s)
        self.at_bound.append((edge >= 1 - BOUND_TOL).any(-1).flatten().cpu())

    def add_attention(self, weights: torch.Tensor) -> None:
        """Softmax weights ``(B, heads, queries, keys)``."""
        keys = weights.shape[-1]
        if keys < 2:
            return
        entropy = torch.special.entr(weights.float()).sum(-1) / math.log(keys)
        self.entropy_sum += float(entropy.double().sum())
        self.entropy_rows += entropy.numel()

    def result(self) -> dict[str, float]:
        """``schema`` diagnostic name -> value; only the defined ones."""
        out: dict[str, float] = {}
        if self.has_offsets and self.cells:
            cells = torch.cat(self.cells).double()
            out[schema.OFFSET_CELLS] = float(cells.mean())
            out[schema.OFFSET_CELLS_P95] = float(torch.quantile(cells, 0.95))
        if self.has_bound and self.at_bound:
            out[schema.AT_BOUND] = float(torch.cat(self.at_bound).double().mean())
        if not self.attn.no_off and self.entropy_rows:
            out[schema.ATTN_ENTROPY] = self.entropy_sum / self.entropy_rows
        if self.gamma is not None:
            out[schema.GAMMA] = float(self.gamma.detach().abs().double().mean())
        return out


@contextlib.contextmanager
def probing(tallies: Iterable[Tally]) -> Iterator[None]:
    """Every tallied module (but ``no_off`` ones) records its positions and passes its attention
    weights to its tally; restored and cleared after, so that a checkpoint saved later pickles
    no probe and no tensor."""
    tallies = [t for t in tallies if not t.attn.no_off]
    before = [getattr(t.attn, "record_positions", False) for t in tallies]  # old pickles lack it
    try:
        for t in tallies:
            t.attn.record_positions = True
            t.attn.attention_probe = t.add_attention
        yield
    finally:
        for t, recorded in zip(tallies, before, strict=True):
            t.attn.record_positions = recorded
            t.attn.last_positions = None
            t.attn.__dict__.pop("attention_probe", None)  # back to the class default (None)


def _tally_module(tally: Tally, inputs: Iterable[torch.Tensor]) -> None:
    """Run the tally's module on ``inputs`` (``(B, C, H, W)`` each) one image at a time, so that
    the reference path holds one image's attention weights at once."""
    attn = tally.attn
    if attn.no_off:  # no offsets and, as the issue has it, no entropy either: nothing to run
        return
    was_training = attn.training
    attn.eval()
    try:
        with torch.no_grad(), probing([tally]):
            for batch in inputs:
                for x in batch.split(1):
                    attn(x)
                    if attn.last_positions is not None:
                        tally.add_positions(*attn.last_positions)
    finally:
        attn.train(was_training)


def module_diagnostics(
    attn: DAttention, inputs: Iterable[torch.Tensor], gamma: torch.Tensor | None = None
) -> dict[str, float]:
    """One DAttention over its inputs ``(B, C, H, W)``: diagnostic name -> value."""
    tally = Tally(attn, gamma)
    _tally_module(tally, inputs)
    return tally.result()


def dat_layers(model: torch.nn.Module, layers: Sequence[int] | None = None) -> dict[int, Tally]:
    """A tally for each layer of an Ultralytics model (``model.model[i]``) holding a DAttention
    (its first, as ``builder.describe_module`` reads it), restricted to ``layers`` if given;
    its LayerScale's γ when the layer has one (``DATBlock``'s residual wrapper)."""
    found = {}
    for i, layer in enumerate(model.model):
        if layers is not None and i not in layers:
            continue
        attn = next((m for m in layer.modules() if isinstance(m, DAttention)), None)
        if attn is None:
            continue
        gamma = getattr(getattr(layer, "layer_scale", None), "gamma", None)  # None: Identity
        found[i] = Tally(attn, gamma if isinstance(gamma, torch.Tensor) else None)
    return found


def model_diagnostics(
    model: torch.nn.Module, images: Sequence[torch.Tensor], layers: Sequence[int] | None = None
) -> dict[str, float]:
    """``dat/L{layer}/…`` -> value for the DAT layers of ``model`` over ``images`` (uint8
    ``3 x H x W``, as Ultralytics' val dataset gives them; scaled as its validator does).

    One batched forward (per image shape) under ``no_grad`` in eval mode (the model's mode is
    restored) keeps each DAT module's input; each module then runs again on its inputs one
    image at a time on the reference path. Nothing but the DAT modules runs twice.
    """
    tallies = dat_layers(model, layers)
    if not tallies or not images:
        return {}
    probed = {i: t for i, t in tallies.items() if not t.attn.no_off}
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in probed}
    hooks = [t.attn.register_forward_pre_hook(_keeper(inputs[i])) for i, t in probed.items()]
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _same_shape_batches(images):
                model(batch.to(p.device).to(p.dtype) / 255)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for i, tally in probed.items():
        _tally_module(tally, inputs[i])
    return {
        schema.dat_diagnostic(i, name): value
        for i, tally in tallies.items()
        for name, value in tally.result().items()
    }


def _keeper(kept: list[torch.Tensor]) -> Any:
    def hook(module: torch.nn.Module, args: tuple) -> None:
        kept.append(args[0])

    return hook


def _same_shape_batches(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The images stacked by shape (validation's rectangular batches may differ), in order."""
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for image in images:
        groups.setdefault(tuple(image.shape), []).append(image)
    return [torch.stack(group) for group in groups.values()]


# -- in training ----------------------------------------------------------------------------------
def main_rank() -> bool:
    from ultralytics import utils

    return utils.RANK in {-1, 0}


def fixed_val_images(trainer: Any, n: int = N_IMAGES) -> list[torch.Tensor]:
    """The first ``n`` images of the trainer's validation dataset, letterboxed as validation
    sees them (uint8 ``3 x H x W``, each at its own rectangular shape), on the CPU."""
    dataset = trainer.test_loader.dataset
    return [dataset[i]["img"].clone() for i in range(min(n, len(dataset)))]


def validated_model(trainer: Any) -> torch.nn.Module:
    """The weights Ultralytics validates: the EMA's (the model itself without EMA)."""
    ema = getattr(trainer, "ema", None)
    if ema is not None and getattr(ema, "ema", None) is not None:
        return ema.ema
    from ultralytics.utils.torch_utils import unwrap_model

    return unwrap_model(trainer.model)


class DATDiagnostics:
    """A run's per-epoch DAT diagnostics (rank 0 only): ``load`` the fixed images at train start,
    ``measure`` at each epoch end. ``layers``: the model layer indices of the DAT modules (none:
    nothing is loaded or measured). ``seconds``: the last measurement's cost."""

    def __init__(self, layers: Sequence[int], n_images: int = N_IMAGES) -> None:
        self.layers = tuple(int(i) for i in layers)
        self.n_images = n_images
        # None until train start: the DDP worker script, pickled before, carries no image
        self.images: list[torch.Tensor] | None = None
        self.seconds = 0.0

    def load(self, trainer: Any) -> None:
        if self.layers and main_rank():
            self.images = fixed_val_images(trainer, self.n_images)

    def measure(self, trainer: Any) -> dict[str, float]:
        if not (self.layers and self.images and main_rank()):
            return {}
        start = time.perf_counter()
        out = model_diagnostics(validated_model(trainer), self.images, self.layers)
        self.seconds = time.perf_counter() - start
        return out

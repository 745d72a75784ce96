"""Deformable attention (DAT, Xia et al. CVPR 2022 / DAT++), written from the paper's math.

One module, input and output ``B x C x H x W``. The query is every pixel; keys and values are
``Hk x Wk`` points sampled from the input at positions a small offset network predicts around a
regular reference grid. See ``shared/reference/DAT-SPEC.md`` and the README for each option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from timm.layers import LayerNorm2d
from torch import nn
from torch.utils.checkpoint import checkpoint

from dat_exp.nn.presets import default_groups, default_heads
from dat_exp.nn.settings import PE, DATSettings, Impl, RefPoints

# The choices are DATSettings' enums (one home); plain strings here, for messages and tests.
PE_MODES = tuple(map(str, PE))  # the canonical names (an enum iterates without its aliases)
PE_ALIASES = {alias: str(m) for alias, m in PE.__members__.items() if alias != m.name}
REF_CONVENTIONS = tuple(map(str, RefPoints))
IMPLS = tuple(map(str, Impl))
NORM_EPS = 1e-5  # official DAT's LayerNormProxy is nn.LayerNorm (timm's LayerNorm2d: 1e-6)
DEFAULTS = DATSettings()  # the choices' defaults: the config's, so a bare layer matches a job
BIAS_PE_MODES = ("table", "log_cpb", "fixed")  # modes that add a bias to the logits
CPB_CHUNK = 2**24  # hidden activations of the log-CPB MLP per chunk (64 MB in float32)


def _choice(name: str, value: str, choices: Sequence[str], aliases: dict | None = None) -> str:
    value = (aliases or {}).get(value, value)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def offset_padding(ksize: int, stride: int, ref_points: str = "datpp") -> int:
    """Padding of the offset network's depthwise conv: the one place this rule lives.

    DAT++ (official ``main``): 0 when ``ksize == stride`` (non-overlapping windows,
    key grid ``floor(H / stride)``), else ``ksize // 2`` (key grid ``ceil(H / stride)`` for odd
    ksize). The CVPR 2022 release (``v1``) always pads ``ksize // 2``.
    """
    if ref_points == "datpp" and ksize == stride:
        return 0
    return ksize // 2


def key_grid_size(size: int, ksize: int, stride: int, padding: int | None = None) -> int:
    """Side of the offset network's output (= key grid) for a map side ``size``; ``padding``
    defaults to :func:`offset_padding` (DAT++)."""
    padding = offset_padding(ksize, stride) if padding is None else padding
    return (size + 2 * padding - ksize) // stride + 1


def normalised_grid(n: int, convention: str, centred: bool, device, dtype) -> torch.Tensor:
    """1-D grid in [-1, 1] coordinates.

    ``centred`` grids are the reference points (pixel centres, ``0.5 .. n-0.5``); otherwise
    the query grid of the bias modes (``0 .. n-1``). DAT++ divides by ``n-1`` (guarded at 1),
    v1 by ``n``; v1's query grid is its reference grid.
    """
    if convention == "v1":
        return torch.linspace(0.5, n - 0.5, n, device=device, dtype=dtype) / n * 2 - 1
    steps = (
        torch.linspace(0.5, n - 0.5, n, device=device, dtype=dtype)
        if centred
        else torch.arange(n, device=device, dtype=dtype)
    )
    return steps / max(n - 1, 1) * 2 - 1


def grid_2d(h: int, w: int, convention: str, centred: bool, device, dtype) -> torch.Tensor:
    """``h x w x 2`` grid of (y, x) points."""
    ys = normalised_grid(h, convention, centred, device, dtype)
    xs = normalised_grid(w, convention, centred, device, dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


def _sample(inp: torch.Tensor, pos_yx: torch.Tensor) -> torch.Tensor:
    """Bilinear ``grid_sample`` at (y, x) positions, align_corners=True, in the input's dtype."""
    return F.grid_sample(inp, pos_yx.flip(-1).to(inp.dtype), mode="bilinear", align_corners=True)


class DAttention(nn.Module):
    """Deformable multi-head attention over a feature map.

    Args:
        c1: input (= output) channels.
        feat_size: nominal feature size (int or (H, W)); sizes the ``table`` and ``fixed``
            position encodings. Any run-time size works.
        heads: attention heads; ``None`` gives head dim 32 (at least one head).
        groups: offset groups; must divide ``heads``. ``None``: the level default (the
            largest divisor of ``heads`` that is at most ``heads / 2``).
        stride: stride of the offset network (key grid ~ feature size / stride).
        ksize: odd kernel of the offset network's depthwise conv, padded as the official code
            does (:func:`offset_padding`: 0 when ``ksize == stride`` in DAT++, so the key grid is
            ``floor(H / stride)`` there and ``ceil(H / stride)`` otherwise).
        offset_range_factor: ``s``; see ``ref_points`` for its meaning per convention.
        pe: position encoding, one of ``table, dwc, log_cpb, fixed, none``.
        no_off: no offsets; keys/values from ``avg_pool2d`` and no position encoding.
        ref_points: ``datpp`` (official DAT++) or ``v1`` (official CVPR 2022).
        attn_drop, proj_drop: dropout on the attention weights and on the output.
        impl: ``reference`` (explicit einsum), ``fast`` (``scaled_dot_product_attention``) or
            ``auto`` (fast where it pays: no bias, or on CUDA).

    Probes, for diagnostics (``dat_exp.metrics.dat_diagnostics``), off by default and set only
    while they run: ``record_positions`` keeps the last ``(reference, positions)`` pair;
    ``attention_probe``, a callable, makes each call take the reference path (the same math as
    the fast one) and passes it the softmax weights ``(B, heads, HW, N)``, detached, before
    dropout.
    """

    # A class default, so that modules pickled before the probe existed still load.
    attention_probe: Callable[[torch.Tensor], None] | None = None

    def __init__(
        self,
        c1: int,
        feat_size: int | Sequence[int] = 20,
        heads: int | None = None,
        groups: int | None = 1,
        stride: int = 1,
        ksize: int = 3,
        offset_range_factor: float = DEFAULTS.offset_range_factor,
        pe: str = str(DEFAULTS.pe),
        no_off: bool = DEFAULTS.no_off,
        ref_points: str = str(DEFAULTS.ref_points),
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: str = str(DEFAULTS.impl),
    ) -> None:
        super().__init__()
        heads = default_heads(c1) if heads is None else int(heads)
        groups = default_groups(heads) if groups is None else int(groups)
        _validate(c1, heads, groups, stride, ksize)
        pe = _choice("pe", pe, PE_MODES, PE_ALIASES)
        self.pe = "none" if no_off else pe  # as in DAT++: no position encoding without offsets
        self.ref_points = _choice("ref_points", ref_points, REF_CONVENTIONS)
        self.impl = _choice("impl", impl, IMPLS)
        self.channels, self.heads, self.groups = c1, heads, groups
        self.head_dim = c1 // heads
        self.scale = self.head_dim**-0.5
        self.stride, self.ksize = stride, ksize
        self.offset_range_factor = float(offset_range_factor)
        self.no_off = bool(no_off)
        self.feat_size = _pair(feat_size)
        self.attn_drop = attn_drop
        self.record_positions = False  # opt-in: keeps the last (reference, positions) pair
        self.last_positions: tuple[torch.Tensor, torch.Tensor] | None = None

        gc = c1 // groups
        pad = offset_padding(ksize, stride, self.ref_points)
        self.conv_offset = nn.Sequential(
            nn.Conv2d(gc, gc, ksize, stride, pad, groups=gc),
            LayerNorm2d(gc, eps=NORM_EPS),
            nn.GELU(),
            nn.Conv2d(gc, 2, 1, bias=False),
        )
        if self.no_off:
            self.conv_offset.requires_grad_(False)
        self.proj_q = nn.Conv2d(c1, c1, 1)
        self.proj_k = nn.Conv2d(c1, c1, 1)
        self.proj_v = nn.Conv2d(c1, c1, 1)
        self.proj_out = nn.Conv2d(c1, c1, 1)
        self.proj_drop = nn.Dropout(proj_drop)
        self._build_position_encoding()

    def _build_position_encoding(self) -> None:
        hq, wq = self.feat_size
        h = self.heads
        if self.pe == "table":
            self.rpe_table = nn.Parameter(torch.empty(h, 2 * hq - 1, 2 * wq - 1))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)
        elif self.pe == "fixed":
            hk, wk = self.key_grid(hq, wq)
            if hk < 1 or wk < 1:
                raise ValueError(
                    f"pe='fixed': feat_size={self.feat_size} gives an empty key grid at "
                    f"ksize={self.ksize} == stride (padding 0, as in official DAT++)"
                )
            self.rpe_table = nn.Parameter(torch.empty(h, hq * wq, hk * wk))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)
        elif self.pe == "log_cpb":
            self.rpe_mlp = nn.Sequential(
                nn.Linear(2, 32), nn.ReLU(inplace=True), nn.Linear(32, h // self.groups, bias=False)
            )
        elif self.pe == "dwc":
            self.rpe_dwc = nn.Conv2d(self.channels, self.channels, 3, 1, 1, groups=self.channels)

    def key_grid(self, h: int, w: int) -> tuple[int, int]:
        """Key grid ``(Hk, Wk)`` for an ``h x w`` map: the offset conv's output size, from the
        conv's own padding (:func:`offset_padding` when built; a checkpoint pickled before the
        DAT++ padding rule keeps the ``ksize // 2`` it was trained with)."""
        pad = self.conv_offset[0].padding[0]
        hk, wk = (key_grid_size(s, self.ksize, self.stride, pad) for s in (h, w))
        return hk, wk

    def bias_parameters(self) -> list[nn.Parameter]:
        """Position-bias parameters, which train without weight decay (as in official DAT)."""
        if self.pe in ("table", "fixed"):
            return [self.rpe_table]
        if self.pe == "log_cpb":
            return list(self.rpe_mlp.parameters())
        return []

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """What ``nn.optim.no_decay_parameters`` asks every module for: the position biases."""
        return self.bias_parameters()

    def uses_fast_path(self, device: torch.device) -> bool:
        """Whether this call takes ``_attend_fast``. ``auto``: on CUDA, without a bias, or when
        no gradient flows to the bias. On CPU SDPA's fused kernel rejects a bias that needs a
        gradient and falls back to its math path, no faster than the einsums (see the bench);
        with a constant bias (inference) the fused kernel still pays."""
        if self.impl != "auto":
            return self.impl == "fast"
        if device.type == "cuda" or self.pe not in BIAS_PE_MODES:
            return True
        return not (
            torch.is_grad_enabled() and any(p.requires_grad for p in self.bias_parameters())
        )

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.groups
        q = self.proj_q(x)
        ref, pos = self._sample_positions(q)  # (B*g, Hk, Wk, 2) each, (y, x)
        if self.record_positions:
            self.last_positions = (ref.detach(), pos.detach())
        if self.no_off:
            # The key grid is ceil(H/stride) (padding ksize//2) or floor(H/stride) (padding 0 at
            # ksize == stride); windows past the edge average the pixels they cover.
            hk, wk = pos.shape[1:3]
            ceil = (hk, wk) != (h // self.stride, w // self.stride)
            x_s = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=ceil)
        else:
            x_s = _sample(x.reshape(b * g, c // g, h, w), pos).reshape(b, c, *pos.shape[1:3])
        n = x_s.shape[-2] * x_s.shape[-1]
        k = self.proj_k(x_s).reshape(b, self.heads, self.head_dim, n)
        v = self.proj_v(x_s).reshape(b, self.heads, self.head_dim, n)
        qh = q.reshape(b, self.heads, self.head_dim, h * w)
        bias = self._logit_bias(h, w, pos, q.dtype)  # (B or 1, heads, HW, N) or None
        if self.attention_probe is None and self.uses_fast_path(x.device):
            out = self._attend_fast(qh, k, v, bias)
        else:
            out = self._attend_reference(qh, k, v, bias)
        out = out.reshape(b, c, h, w)
        if self.pe == "dwc":
            out = out + self.rpe_dwc(q)
        return self.proj_drop(self.proj_out(out))

    def _sample_positions(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference grid and deformed sampling positions, both ``(B*g, Hk, Wk, 2)`` (y, x)."""
        b, c, h, w = q.shape
        g = self.groups
        hk, wk = self.key_grid(h, w)
        if hk < 1 or wk < 1:
            raise ValueError(
                f"a {h}x{w} map is smaller than ksize={self.ksize} at ksize == stride (padding 0, "
                "as in official DAT++): the key grid would be empty"
            )
        if self.no_off:
            ref = grid_2d(hk, wk, self.ref_points, True, q.device, q.dtype)
            ref = ref.expand(b * g, hk, wk, 2)
            return ref, ref
        offset = self.conv_offset(q.reshape(b * g, c // g, h, w))  # (B*g, 2, Hk, Wk)
        hk, wk = offset.shape[-2:]
        offset = offset.permute(0, 2, 3, 1)
        ref = grid_2d(hk, wk, self.ref_points, True, q.device, q.dtype).expand(b * g, hk, wk, 2)
        return ref, self._deform(ref, offset, hk, wk)

    def _deform(self, ref: torch.Tensor, off: torch.Tensor, hk: int, wk: int) -> torch.Tensor:
        s = self.offset_range_factor
        if self.ref_points == "datpp":
            if s < 0:
                return (ref + off).clamp(-1, 1)
            return ref + torch.tanh(off) * self._offset_range(hk - 1, wk - 1, s, off)
        if s > 0:
            return ref + torch.tanh(off) * self._offset_range(hk, wk, s, off)
        if s == 0:
            return ref + off
        return torch.tanh(ref + off)

    @staticmethod
    def _offset_range(dh: int, dw: int, s: float, like: torch.Tensor) -> torch.Tensor:
        # Built in the offsets' dtype and device so that .half() models work.
        r = [1.0 / max(dh, 1) * s, 1.0 / max(dw, 1) * s]
        return torch.tensor(r, dtype=like.dtype, device=like.device)

    def _displacement(self, h: int, w: int, pos: torch.Tensor) -> torch.Tensor:
        """Query-minus-key displacement ``(B*g, HW, N, 2)`` (y, x)."""
        q_grid = grid_2d(h, w, self.ref_points, False, pos.device, pos.dtype).reshape(-1, 1, 2)
        return q_grid.unsqueeze(0) - pos.reshape(pos.shape[0], 1, -1, 2)

    def _logit_bias(self, h: int, w: int, pos: torch.Tensor, dtype) -> torch.Tensor | None:
        if self.pe not in BIAS_PE_MODES:
            return None
        g = self.groups
        bg = pos.shape[0]
        if self.pe == "fixed":
            return self._fixed_bias(h, w, pos.shape[1], pos.shape[2]).to(dtype).unsqueeze(0)
        disp = self._displacement(h, w, pos)
        if self.pe == "table":
            # One copy of each group's heads per image, matching the (B*g) displacements.
            table = repeat(self.rpe_table.to(dtype), "(g n) y x -> (b g) n y x", g=g, b=bg // g)
            bias = _sample(table, disp * 0.5)  # (B*g, heads/g, HW, N)
            return rearrange(bias, "(b g) n q k -> b (g n) q k", g=g)
        bias = self._log_cpb_bias(disp)  # (B*g, HW, N, heads/g)
        return rearrange(bias, "(b g) q k n -> b (g n) q k", g=g).to(dtype)

    def _log_cpb_bias(self, disp: torch.Tensor) -> torch.Tensor:
        """The MLP over log-spaced displacements, ``(B*g, HW, N, heads/g)``. Its 32-wide hidden
        layer is 32 / (heads/g) times the size of the bias (GBs at P4, batch 2), so it runs on
        chunks of query rows, each recomputed in backward instead of kept."""
        hidden = self.rpe_mlp[0].out_features
        rows = max(1, CPB_CHUNK // max(1, disp.shape[0] * disp.shape[2] * hidden))
        parts = disp.split(rows, dim=1)
        if len(parts) == 1 or not torch.is_grad_enabled():
            return torch.cat([self._cpb_mlp(part) for part in parts], 1)
        return torch.cat([checkpoint(self._cpb_mlp, p, use_reentrant=False) for p in parts], 1)

    def _cpb_mlp(self, disp: torch.Tensor) -> torch.Tensor:
        d = disp * 4.0
        d = torch.sign(d) * torch.log2(d.abs() + 1.0) / math.log2(8)
        fc1, _, fc2 = self.rpe_mlp
        # Not the module's in-place ReLU: on the linear's output view it costs a CopySlices
        # copy in backward, and under checkpointing the chunk keeps nothing anyway.
        return fc2(F.relu(fc1(d.to(fc1.weight.dtype))))

    def _fixed_bias(self, h: int, w: int, hk: int, wk: int) -> torch.Tensor:
        """The nominal ``heads x HqWq x HkWk`` table, resized bilinearly to the run-time sizes."""
        hq, wq = self.feat_size
        hk0, wk0 = self.key_grid(hq, wq)
        t = self.rpe_table
        if (hk, wk) != (hk0, wk0):
            t = rearrange(t, "n q (hk wk) -> (n q) 1 hk wk", hk=hk0)
            t = F.interpolate(t, size=(hk, wk), mode="bilinear", align_corners=True)
            t = rearrange(t, "(n q) 1 hk wk -> n q (hk wk)", n=self.heads)
        if (h, w) != (hq, wq):
            t = rearrange(t, "n (hq wq) k -> (n k) 1 hq wq", hq=hq)
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)
            t = rearrange(t, "(n k) 1 h w -> n (h w) k", n=self.heads)
        return t

    def _attend_reference(self, q, k, v, bias) -> torch.Tensor:
        # Scaling q (L x d) rather than the logits (L x N) saves a pass over the largest tensor.
        attn = torch.einsum("bhdm,bhdn->bhmn", q * self.scale, k)
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        if self.attention_probe is not None:
            self.attention_probe(attn.detach())
        attn = F.dropout(attn, self.attn_drop, self.training)
        return torch.einsum("bhmn,bhdn->bhdm", attn, v)

    def _attend_fast(self, q, k, v, bias) -> torch.Tensor:
        # SDPA's fused kernels need the head dim last with stride 1: the transposed views of the
        # (B, heads, d, L) projections silently send it to the math fallback (about 4x slower
        # on CPU). The copies are O(L*d), the attention O(L*N).
        q, k, v = (t.transpose(-1, -2).contiguous() for t in (q, k, v))
        if bias is not None and not torch.is_grad_enabled():
            # Under no_grad a view of a parameter (the ``fixed`` table) still says requires_grad,
            # which the fused CPU kernel refuses.
            bias = bias.detach()
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        return out.transpose(-1, -2)

    def extra_repr(self) -> str:
        return (
            f"c={self.channels}, heads={self.heads}, groups={self.groups}, stride={self.stride}, "
            f"ksize={self.ksize}, s={self.offset_range_factor}, pe={self.pe}, "
            f"no_off={self.no_off}, ref_points={self.ref_points}, impl={self.impl}"
        )


def _validate(c1: int, heads: int, groups: int, stride: int, ksize: int) -> None:
    if c1 < 1:
        raise ValueError(f"channels={c1} must be positive")
    if heads < 1 or c1 % heads:
        divisors = [d for d in range(1, c1 + 1) if c1 % d == 0]
        raise ValueError(f"heads={heads} must divide channels={c1}; valid heads: {divisors}")
    if groups < 1 or heads % groups:
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ValueError(f"groups={groups} must divide heads={heads}; valid groups: {divisors}")
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"ksize={ksize} must be a positive odd number (1, 3, 5, 7, 9, ...)")
    if stride < 1:
        raise ValueError(f"stride={stride} must be >= 1")

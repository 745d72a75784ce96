"""DAttention: every mode at every size, against an independent float64 reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dat_exp.nn import DAttention
from dat_exp.nn.presets import level_settings
from dat_exp.nn.settings import BLOCK_KEYS

PES = ["table", "dwc", "log_cpb", "fixed", "none"]
FACTORS = [-1.0, 0.0, 2.0]
CONVENTIONS = ["datpp", "v1"]
SIZES = [(1, 1), (7, 5), (8, 8), (20, 20)]


def make(c: int = 32, **kw) -> DAttention:
    opts = {"feat_size": 8, "heads": 2, "groups": 2, "ksize": 3, **kw}
    return DAttention(c, **opts)


def randomise(m: DAttention, seed: int = 0) -> DAttention:
    """Weights large enough that offsets, biases and every branch change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.5)
    return m


# -- full matrix -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("s", FACTORS)
@pytest.mark.parametrize("no_off", [False, True])
@pytest.mark.parametrize("pe", PES)
def test_every_mode_every_size(pe, no_off, s, conv, dtype):
    for size, stride in itertools.product(SIZES, [1, 2]):
        torch.manual_seed(0)
        m = make(pe=pe, no_off=no_off, offset_range_factor=s, ref_points=conv, stride=stride)
        m = m.to(dtype)
        x = torch.randn(2, 32, *size, dtype=dtype)
        y = m(x)
        case = f"size={size} stride={stride}"
        assert y.shape == x.shape and y.dtype == dtype, case
        assert torch.isfinite(y).all(), case
        (y.float() * torch.randn(y.shape)).sum().backward()
        for name, p in m.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} {case}"
        offset_grad = m.conv_offset[-1].weight.grad
        if no_off:
            assert not m.conv_offset[-1].weight.requires_grad, "offset net must be frozen"
        elif s != 0.0 and size != (1, 1):
            assert offset_grad.abs().sum() > 0, f"offset net gets no gradient, {case}"


@pytest.mark.parametrize("pe", PES)
@pytest.mark.parametrize("level,side,channels", [("P4", 40, 128), ("P3", 80, 64)])
def test_large_maps_at_level_default(pe, level, side, channels):
    opts = level_settings(level, channels, 640)
    for key in BLOCK_KEYS:  # the block's own keys, not DAttention's
        opts.pop(key)
    m = DAttention(channels, **{**opts, "pe": pe})
    x = torch.randn(1, channels, side, side)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


# -- an independent reference, written from the spec's equations ---------------------------------
def bilinear(img: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` (C,H,W) at normalised (y, x) points ``pts`` (..., 2), align_corners=True,
    zeros outside. Returns (C, ...)."""
    c, h, w = img.shape
    py = (pts[..., 0] + 1) / 2 * (h - 1)
    px = (pts[..., 1] + 1) / 2 * (w - 1)
    y0, x0 = py.floor(), px.floor()
    out = torch.zeros(c, *pts.shape[:-1], dtype=img.dtype)
    for dy, dx in itertools.product([0, 1], [0, 1]):
        yy, xx = y0 + dy, x0 + dx
        wgt = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
        inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        vals = img[:, yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()]
        out += vals * (wgt * inside)
    return out


def ref_axis(n: int, conv: str, centred: bool) -> torch.Tensor:
    if conv == "v1":
        return torch.linspace(0.5, n - 0.5, n, dtype=torch.float64) / n * 2 - 1
    base = torch.linspace(0.5, n - 0.5, n) if centred else torch.arange(n)
    return base.double() / max(n - 1, 1) * 2 - 1


def spec_padding(ksize: int, stride: int, conv: str) -> int:
    """The offset conv's padding as the spec states it: DAT++ pads 0 when ksize == stride,
    ksize // 2 otherwise; the v1 release always pads ksize // 2."""
    return 0 if conv == "datpp" and ksize == stride else ksize // 2


def conv1x1(layer, x):
    return F.conv2d(x, layer.weight, layer.bias)


def reference_forward(m: DAttention, x: torch.Tensor, s: float, conv: str, pe: str):
    """Loop over batch, groups and heads; explicit einsum; float64; outputs poisoned first."""
    b, c, h, w = x.shape
    g, nh, d = m.groups, m.heads, m.head_dim
    gc, hg = c // g, nh // g
    q = conv1x1(m.proj_q, x)
    dw, ln, _, pw = m.conv_offset
    out = torch.full_like(x, float("nan"))
    for bi in range(b):
        positions, xs = [], torch.full((c, 0), float("nan"), dtype=x.dtype)
        for gi in range(g):  # each group samples its own channels at its own positions
            qg = q[bi : bi + 1, gi * gc : (gi + 1) * gc]
            pad = spec_padding(m.ksize, m.stride, conv)
            t = F.conv2d(qg, dw.weight, dw.bias, m.stride, pad, groups=gc)
            t = F.layer_norm(t.permute(0, 2, 3, 1), (gc,), ln.weight, ln.bias, ln.eps)
            off = F.conv2d(F.gelu(t.permute(0, 3, 1, 2)), pw.weight)[0].permute(1, 2, 0)
            hk, wk = off.shape[:2]
            ref = torch.stack(
                torch.meshgrid(ref_axis(hk, conv, True), ref_axis(wk, conv, True), indexing="ij"),
                -1,
            )
            if conv == "datpp":
                rng = torch.tensor([1 / max(hk - 1, 1), 1 / max(wk - 1, 1)], dtype=x.dtype) * s
                pos = (ref + off).clamp(-1, 1) if s < 0 else ref + off.tanh() * rng
            else:
                rng = torch.tensor([1 / hk, 1 / wk], dtype=x.dtype) * s
                pos = (
                    torch.tanh(ref + off)
                    if s < 0
                    else (ref + off if s == 0 else ref + off.tanh() * rng)
                )
            positions.append(pos.reshape(-1, 2))
            sampled = bilinear(x[bi, gi * gc : (gi + 1) * gc], pos).reshape(gc, -1)
            xs = sampled if gi == 0 else torch.cat([xs, sampled])
        # keys and values mix the channels of every group (1x1 convs over all C)
        k = torch.einsum("oc,cn->on", m.proj_k.weight[:, :, 0, 0], xs) + m.proj_k.bias[:, None]
        v = torch.einsum("oc,cn->on", m.proj_v.weight[:, :, 0, 0], xs) + m.proj_v.bias[:, None]
        qgrid = torch.stack(
            torch.meshgrid(ref_axis(h, conv, False), ref_axis(w, conv, False), indexing="ij"), -1
        ).reshape(-1, 1, 2)
        heads_out = torch.full((nh, d, h * w), float("nan"), dtype=x.dtype)
        for head in range(nh):
            gi, j = divmod(head, hg)
            disp = qgrid - positions[gi].reshape(1, -1, 2)  # (HW, N, 2)
            chans = slice(head * d, (head + 1) * d)
            logits = torch.einsum("dm,dn->mn", q[bi, chans].reshape(d, -1), k[chans]) * d**-0.5
            if pe == "table":
                logits = logits + bilinear(m.rpe_table[head : head + 1], disp * 0.5)[0]
            elif pe == "log_cpb":
                z = disp * 4
                z = torch.sign(z) * torch.log2(z.abs() + 1) / math.log2(8)
                logits = logits + m.rpe_mlp(z)[..., j]
            elif pe == "fixed":
                logits = logits + m.rpe_table[head]
            heads_out[head] = torch.einsum("mn,dn->dm", logits.softmax(-1), v[chans])
        o = heads_out.reshape(c, h, w)
        if pe == "dwc":
            o = (
                o
                + F.conv2d(q[bi : bi + 1], m.rpe_dwc.weight, m.rpe_dwc.bias, padding=1, groups=c)[0]
            )
        out[bi] = conv1x1(m.proj_out, o[None])[0]
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("s", FACTORS)
@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("pe", PES)
def test_matches_independent_reference(pe, conv, s, impl):
    size = (6, 5)
    m = make(
        c=16,
        heads=4,
        groups=2,
        stride=2,
        feat_size=size,
        pe=pe,
        ref_points=conv,
        offset_range_factor=s,
        impl=impl,
    )
    m = randomise(m.double()).eval()
    x = torch.randn(2, 16, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = m(x)
        expected = reference_forward(m, x, s, conv, pe)
    assert torch.isfinite(expected).all()
    assert rel_err(got, expected) < 1e-6


def pooled_mean(x: torch.Tensor, stride: int, ceil: bool = True) -> torch.Tensor:
    """Each stride x stride window averages the pixels it covers (``ceil``: windows run past the
    edge; otherwise the pixels past the last whole window are dropped)."""
    b, c, h, w = x.shape
    rounding = math.ceil if ceil else math.floor
    hk, wk = rounding(h / stride), rounding(w / stride)
    out = torch.full((b, c, hk, wk), float("nan"), dtype=x.dtype)
    for i, j in itertools.product(range(hk), range(wk)):
        win = x[:, :, i * stride : (i + 1) * stride, j * stride : (j + 1) * stride]
        out[:, :, i, j] = win.mean(dim=(2, 3))
    return out


@pytest.mark.parametrize(
    "size,stride,ksize",
    [((7, 5), 2, 3), ((9, 7), 3, 3), ((10, 14), 3, 3), ((8, 8), 2, 3), ((5, 5), 1, 3)],
)
@pytest.mark.parametrize("conv", CONVENTIONS)
def test_no_off_is_attention_over_the_pooled_map(size, stride, ksize, conv):
    """The pooled grid is the key grid: ceil(H/stride) with padding ksize//2, floor(H/stride)
    with DAT++'s padding 0 at ksize == stride (the official avg_pool2d, no ceil_mode)."""
    m = make(c=16, heads=4, groups=2, stride=stride, ksize=ksize, no_off=True, ref_points=conv)
    m = randomise(m).double().eval()
    x = torch.randn(1, 16, *size, dtype=torch.float64)
    kv = pooled_mean(x, stride, ceil=not (conv == "datpp" and ksize == stride))
    q = conv1x1(m.proj_q, x).reshape(4, 4, -1)
    k = conv1x1(m.proj_k, kv).reshape(4, 4, -1)
    v = conv1x1(m.proj_v, kv).reshape(4, 4, -1)
    attn = (torch.einsum("hdm,hdn->hmn", q, k) * 0.5).softmax(-1)
    expected = conv1x1(m.proj_out, torch.einsum("hmn,hdn->hdm", attn, v).reshape(1, 16, *size))
    with torch.no_grad():
        assert rel_err(m(x), expected) < 1e-9


@pytest.mark.parametrize("s", FACTORS)
@pytest.mark.parametrize("conv", CONVENTIONS)
def test_zero_offsets_give_the_convention_positions(conv, s):
    m = make(pe="none", ref_points=conv, offset_range_factor=s, stride=2)
    with torch.no_grad():
        m.conv_offset[-1].weight.zero_()
    m.record_positions = True
    m(torch.randn(1, 32, 8, 7))
    ref, pos = m.last_positions
    hk, wk = 4, 4
    assert ref.shape[1:] == (hk, wk, 2)
    ys = torch.linspace(0.5, hk - 0.5, hk) / ((hk - 1) if conv == "datpp" else hk) * 2 - 1
    xs = torch.linspace(0.5, wk - 0.5, wk) / ((wk - 1) if conv == "datpp" else wk) * 2 - 1
    assert torch.allclose(ref[0, :, 0, 0], ys) and torch.allclose(ref[0, 0, :, 1], xs)
    if conv == "datpp":
        expected = ref.clamp(-1, 1) if s < 0 else ref
    else:
        expected = torch.tanh(ref) if s < 0 else ref
    assert torch.allclose(pos, expected)


def test_positions_are_recorded_only_on_request():
    m = make()
    m(torch.randn(1, 32, 8, 8))
    assert m.last_positions is None


@pytest.mark.parametrize("s", [-1.0, 2.0])
@pytest.mark.parametrize("pe", PES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision(pe, s, dtype):
    m = make(pe=pe, offset_range_factor=s, stride=2).to(dtype).eval()
    x = torch.randn(1, 32, 7, 5, dtype=dtype)
    try:
        y = m(x)
    except RuntimeError as err:  # an op without a CPU kernel for this dtype
        if "not implemented" in str(err):
            pytest.skip(f"{dtype} has no CPU kernel here: {err}")
        raise
    assert y.dtype == dtype and torch.isfinite(y).all()


def test_fixed_resizes_and_owns_only_its_nominal_table():
    m = make(pe="fixed", feat_size=8, stride=2, heads=2)
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    assert shapes["rpe_table"] == (2, 64, 16)
    for size in [(8, 8), (5, 11), (16, 12), (1, 1)]:
        y = m(torch.randn(1, 32, *size))
        assert y.shape[-2:] == size and torch.isfinite(y).all()
    assert {k: v.shape for k, v in m.state_dict().items()} == shapes


def test_fixed_at_nominal_size_uses_the_table_as_is():
    m = make(pe="fixed", feat_size=(6, 5), stride=2)
    assert torch.equal(m._fixed_bias(6, 5, 3, 3), m.rpe_table)


def test_log_cpb_spelling_is_accepted():
    assert make(pe="log-cpb").pe == "log_cpb"


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"heads": 3}, "heads=3 must divide channels=32"),
        ({"heads": 4, "groups": 3}, "groups=3 must divide heads=4"),
        ({"ksize": 4}, "ksize=4"),
        ({"ksize": 0}, "ksize=0"),
        ({"stride": 0}, "stride=0"),
        ({"pe": "rope"}, "pe='rope' is not one of table, dwc, log_cpb, fixed, none"),
        ({"ref_points": "v2"}, "ref_points='v2' is not one of datpp, v1"),
        ({"impl": "triton"}, "impl='triton' is not one of auto, fast, reference"),
    ],
)
def test_bad_arguments_name_the_value_and_choices(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make(**kwargs)


def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = randomise(DAttention(64, feat_size=10, stride=2, ksize=3)).eval()
    x = torch.randn(1, 64, 10, 10)
    path = tmp_path / "dat.onnx"
    torch.onnx.export(m, (x,), str(path), opset_version=18, dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert rel_err(torch.from_numpy(got), m(x)) < 1e-4

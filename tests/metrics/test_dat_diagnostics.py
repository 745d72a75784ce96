"""DAT diagnostics on a tiny DAttention with its offsets forced to known values: the expected
figures are worked out here from the issue's formulas (numpy), never by the code under test."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from timm.layers import LayerScale2d
from torch import nn

from dat_exp.metrics.dat_diagnostics import DATDiagnostics, model_diagnostics, module_diagnostics
from dat_exp.nn import DAttention
from dat_exp.tracking import schema

C, SIDE, STRIDE = 8, 8, 2
HK = 4  # key grid: (8 + 2*1 - 3) // 2 + 1 with ksize 3, padding 1, in both conventions
GELU_1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
OFFSET_NAMES = {schema.OFFSET_CELLS, schema.OFFSET_CELLS_P95, schema.AT_BOUND}


def make(s: float = -1.0, ref_points: str = "datpp", pe: str = "none", **kw) -> DAttention:
    torch.manual_seed(0)
    return DAttention(
        C,
        feat_size=SIDE,
        heads=2,
        groups=1,
        stride=STRIDE,
        ksize=3,
        offset_range_factor=s,
        pe=pe,
        ref_points=ref_points,
        **kw,
    )


def force_offsets(m: DAttention, oy: float, ox: float) -> DAttention:
    """Raw offsets (before tanh / clamp) equal to (oy, ox) at every key: the LayerNorm outputs
    its bias (weight 0), GELU(1) for every channel, and the last 1x1 conv picks one channel."""
    _, norm, _, last = m.conv_offset
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.fill_(1.0)
        last.weight.zero_()
        last.weight[0, 0] = oy / GELU_1
        last.weight[1, 0] = ox / GELU_1
    return m


def inputs(n: int = 3) -> list[torch.Tensor]:
    return [torch.randn(n, C, SIDE, SIDE, generator=torch.Generator().manual_seed(1))]


def ref_grid(convention: str) -> np.ndarray:
    """Pixel-centre reference points along one axis of the 4-key grid, by the issue's rule."""
    centres = np.arange(HK) + 0.5
    return centres / (HK - 1) * 2 - 1 if convention == "datpp" else centres / HK * 2 - 1


def expected(convention: str, s: float, oy: float, ox: float) -> dict[str, float]:
    """offset_cells, p95 and at_bound from the formulas, over the 4x4 key grid."""
    ry, rx = np.meshgrid(ref_grid(convention), ref_grid(convention), indexing="ij")
    ref = np.stack([ry, rx], -1)
    off = np.array([oy, ox])
    cell = (HK - 1) / 2 if convention == "datpp" else HK / 2  # cells per normalised unit
    if convention == "datpp" and s < 0:
        pos = np.clip(ref + off, -1, 1)
        bound = np.abs(pos) >= 1 - 1e-3
    elif convention == "v1" and s < 0:
        pos = np.tanh(ref + off)
        bound = np.abs(pos) >= 1 - 1e-3
    else:  # s > 0: ref + tanh(off) * s / (Hk - 1) (datpp) or * s / Hk (v1)
        pos = ref + np.tanh(off) * s / ((HK - 1) if convention == "datpp" else HK)
        bound = np.broadcast_to(np.abs(np.tanh(off)) >= 1 - 1e-3, pos.shape)
    cells = np.linalg.norm((pos - ref) * cell, axis=-1)
    return {
        schema.OFFSET_CELLS: cells.mean(),
        # over every position of every image (3 alike): the interpolation sees the repeats
        schema.OFFSET_CELLS_P95: np.percentile(np.tile(cells.ravel(), 3), 95),
        schema.AT_BOUND: bound.any(-1).mean(),
    }


@pytest.mark.parametrize("convention", ["datpp", "v1"])
@pytest.mark.parametrize("s", [-1.0, 2.0, 0.5])
@pytest.mark.parametrize("off", [(0.1, -0.05), (0.6, 0.3), (10.0, -12.0)])
def test_offsets_and_bounds_match_the_formulas(convention, s, off):
    got = module_diagnostics(force_offsets(make(s, convention), *off), inputs())
    want = expected(convention, s, *off)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-5), name


def test_a_constant_tanh_offset_is_s_over_2_cells_in_both_conventions():
    # s > 0: tanh(off) * s / (Hk-1) in [-1, 1] units is tanh(off) * s / 2 cells (x (Hk-1)/2);
    # v1 divides by Hk and counts Hk/2: the same cells. A wrong cell size breaks one of them.
    want = 2.0 / 2 * math.hypot(math.tanh(0.4), math.tanh(-0.3))
    for convention in ("datpp", "v1"):
        got = module_diagnostics(force_offsets(make(2.0, convention), 0.4, -0.3), inputs())
        assert got[schema.OFFSET_CELLS] == pytest.approx(want, abs=1e-5), convention
        assert got[schema.OFFSET_CELLS_P95] == pytest.approx(want, abs=1e-5), convention
        assert got[schema.AT_BOUND] == 0.0


@pytest.mark.parametrize("convention", ["datpp", "v1"])
@pytest.mark.parametrize("s", [-1.0, 2.0])
def test_offsets_far_out_are_all_at_their_bound(convention, s):
    got = module_diagnostics(force_offsets(make(s, convention), 30.0, -30.0), inputs())
    assert got[schema.AT_BOUND] == pytest.approx(1.0)
    near = module_diagnostics(force_offsets(make(s, convention), 0.0, 0.0), inputs())
    # zero offsets: only datpp's s < 0 clamp reaches the bound (its grid passes 1 at the end)
    assert near[schema.AT_BOUND] == pytest.approx(
        7 / 16 if (convention, s) == ("datpp", -1.0) else 0
    )


@pytest.mark.parametrize("convention", ["datpp", "v1"])
@pytest.mark.parametrize("pe", ["none", "table"])
def test_equal_logits_give_entropy_one(convention, pe):
    m = force_offsets(make(-1.0, convention, pe=pe), 0.2, 0.1)
    with torch.no_grad():
        m.proj_q.weight.zero_()
        m.proj_q.bias.zero_()  # q = 0: every logit is the position bias
        if pe == "table":
            m.rpe_table.zero_()  # ... which is 0
    got = module_diagnostics(m, inputs())
    assert got[schema.ATTN_ENTROPY] == pytest.approx(1.0, abs=1e-6)
    # and peaked attention is not uniform: large random q and k
    m = make(-1.0, convention, pe=pe)
    with torch.no_grad():
        for proj in (m.proj_q, m.proj_k):
            proj.weight.normal_(0, 3, generator=torch.Generator().manual_seed(2))
    assert module_diagnostics(m, inputs())[schema.ATTN_ENTROPY] < 0.9


def test_no_off_has_no_offset_or_entropy_metric_but_its_gamma():
    m = make(no_off=True)
    assert module_diagnostics(m, inputs()) == {}
    got = module_diagnostics(m, inputs(), gamma=torch.tensor([-2.0, 1.0, 0.0]))
    assert got == {schema.GAMMA: pytest.approx(1.0)}


def test_s_zero_logs_only_what_is_defined():
    # datpp, s = 0: positions are the reference grid by construction; no bound either way
    got = module_diagnostics(force_offsets(make(0.0, "datpp"), 0.3, 0.4), inputs())
    assert set(got) == {schema.ATTN_ENTROPY}
    # v1, s = 0: pos = ref + off, unbounded: 0.5 normalised units = 0.5 * Hk / 2 cells
    got = module_diagnostics(force_offsets(make(0.0, "v1"), 0.3, 0.4), inputs())
    assert set(got) == {schema.OFFSET_CELLS, schema.OFFSET_CELLS_P95, schema.ATTN_ENTROPY}
    assert got[schema.OFFSET_CELLS] == pytest.approx(0.5 * HK / 2, abs=1e-5)


def test_the_probe_changes_nothing_and_is_removed_after():
    m = make(-1.0, pe="table", impl="fast").eval()
    x = inputs()[0]
    with torch.no_grad():
        before = m(x)
    module_diagnostics(m, [x])
    assert "attention_probe" not in m.__dict__ and m.attention_probe is None
    assert m.last_positions is None and not m.record_positions
    with torch.no_grad():
        assert torch.allclose(m(x), before)
    seen = []
    m.attention_probe = seen.append
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-5)  # the reference path: same math
    assert seen[0].shape == (3, 2, SIDE * SIDE, HK * HK)


class Tiny(nn.Module):
    """An Ultralytics-like model: layers in ``.model``; layer 1 a residual DATBlock (with its
    LayerScale), layer 2 a bare no_off one, layer 3 a DATBlock left out of ``layers``."""

    def __init__(self) -> None:
        super().__init__()
        from dat_exp.nn import DATBlock

        opts = {"feat_size": 8, "heads": 2, "groups": 1, "stride": 2, "ksize": 3}
        self.model = nn.Sequential(
            nn.Conv2d(3, C, 3, 2, 1),
            DATBlock(C, {**opts, "wrap": "residual"}),
            DATBlock(C, {**opts, "wrap": "bare", "no_off": True}),
            DATBlock(C, {**opts, "wrap": "residual"}),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_a_model_gets_each_layers_family():
    torch.manual_seed(0)
    model = Tiny().train()
    if getattr(model.model[1], "layer_scale", None) is None:  # not the default wrap's any more
        model.model[1].layer_scale = LayerScale2d(C)
    with torch.no_grad():
        model.model[1].layer_scale.gamma.copy_(torch.linspace(-1, 1, C) * 0.5)
    images = [torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8) for _ in range(3)]
    images.append(torch.randint(0, 255, (3, 16, 24), dtype=torch.uint8))  # a rectangle
    got = model_diagnostics(model, images, layers=[1, 2])
    assert set(got) == {schema.dat_diagnostic(1, n) for n in schema.DAT_DIAGNOSTICS}
    assert got[schema.dat_diagnostic(1, schema.GAMMA)] == pytest.approx(
        float((torch.linspace(-1, 1, C) * 0.5).abs().mean())
    )
    assert 0 < got[schema.dat_diagnostic(1, schema.ATTN_ENTROPY)] <= 1
    assert model.training  # its mode restored
    attn = model.model[1].attn
    assert attn.last_positions is None and "attention_probe" not in attn.__dict__
    # the same figures as the module alone on the inputs it saw, image by image
    with torch.no_grad():
        seen = [model.model[0](im[None].float() / 255) for im in images]
    model.eval()
    alone = module_diagnostics(attn, [model.model[1].norm(x) for x in seen])
    for name, value in alone.items():
        assert got[schema.dat_diagnostic(1, name)] == pytest.approx(value, rel=1e-5), name
    # no LayerScale (or an Identity): no gamma
    for scale in (None, nn.Identity()):
        model.model[1].layer_scale = scale
        got = model_diagnostics(model, images, layers=[1])
        assert schema.dat_diagnostic(1, schema.GAMMA) not in got
        assert schema.dat_diagnostic(1, schema.OFFSET_CELLS) in got


def test_diagnostics_in_training_use_the_ema_and_rank_zero_only(monkeypatch):
    from ultralytics import utils

    torch.manual_seed(0)
    ema, live = Tiny(), Tiny()
    images = [torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8) for _ in range(10)]
    trainer = SimpleNamespace(
        ema=SimpleNamespace(ema=ema),
        model=live,
        test_loader=SimpleNamespace(dataset=[{"img": im} for im in images]),
    )
    diag = pickle.loads(pickle.dumps(DATDiagnostics([1, 3])))  # as Ultralytics' DDP script does
    monkeypatch.setattr(utils, "RANK", 1)
    diag.load(trainer)
    assert diag.images is None and diag.measure(trainer) == {}
    monkeypatch.setattr(utils, "RANK", -1)
    diag.load(trainer)
    assert len(diag.images) == 8 and diag.images[0] is not images[0]
    assert torch.equal(diag.images[7], images[7])
    got = diag.measure(trainer)
    assert got == model_diagnostics(ema, images[:8], [1, 3]) != model_diagnostics(live, images[:8])
    assert diag.seconds > 0
    assert DATDiagnostics([]).measure(trainer) == {}

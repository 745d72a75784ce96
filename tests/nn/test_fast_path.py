"""The SDPA path equals the einsum path: every mode, forward and gradients, FLOPs, training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from ultralytics.cfg import get_cfg

from dat_exp.bench import peak_memory_mb
from dat_exp.metrics.flops import exact_gflops
from dat_exp.models.builder import build
from dat_exp.nn import DAttention, dattention

PES = ["table", "dwc", "log_cpb", "fixed", "none"]
FACTORS = [-1.0, 0.0, 2.0]
CONVENTIONS = ["datpp", "v1"]
SIZE = (9, 7)  # odd and non-square, so that a transposed layout would show
# Zero in exact arithmetic: each adds the same constant to every logit of a row, and softmax
# ignores it. Computed, they are rounding noise, which no relative tolerance can compare.
ZERO_GRADS = ("proj_k.bias",)


def make(impl: str, dtype: torch.dtype = torch.float32, **kw) -> DAttention:
    torch.manual_seed(0)
    opts = {"feat_size": SIZE, "heads": 4, "groups": 2, "stride": 2, "ksize": 3, **kw}
    m = DAttention(32, impl=impl, **opts)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights large enough that the offsets and biases matter
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.to(dtype)


def pair(dtype: torch.dtype = torch.float32, **kw) -> tuple[DAttention, DAttention]:
    ref = make("reference", dtype, **kw)
    fast = copy.deepcopy(ref)
    fast.impl = "fast"
    return ref, fast


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-12)
    return ((got.float() - expected.float()).abs().max() / scale).item()


def forward_and_grads(m: DAttention, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = m(x)
    (y * g).sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    return {"output": y.detach(), "input.grad": x.grad, **grads}


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("s", FACTORS)
@pytest.mark.parametrize("no_off", [False, True])
@pytest.mark.parametrize("pe", PES)
def test_float32_forward_and_gradients_agree(pe, no_off, s, conv):
    ref, fast = pair(pe=pe, no_off=no_off, offset_range_factor=s, ref_points=conv)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 32, *SIZE, generator=gen)
    g = torch.randn(2, 32, *SIZE, generator=gen)
    assert_same(forward_and_grads(fast, x, g), forward_and_grads(ref, x, g))


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    largest = max(v.abs().max().item() for v in expected.values())
    for name, value in expected.items():
        assert value is not None and got[name] is not None, name
        if name in ZERO_GRADS:  # rounding noise on both paths: compare with the largest grad
            assert max(value.abs().max(), got[name].abs().max()) <= 1e-5 * largest, name
        else:
            assert rel_err(got[name], value) <= 1e-5, name


def test_log_cpb_bias_in_chunks_matches_one_piece_and_saves_memory(monkeypatch):
    """The MLP runs on chunks of query rows, recomputed in backward: same values and
    gradients, a fraction of the memory (its hidden layer is 16x the bias here). In float64:
    the weight gradients sum 10^6 terms, in another order per chunk."""
    side = 16
    m = make("reference", torch.float64, pe="log_cpb", stride=1, feat_size=side)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 32, side, side, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 32, side, side, generator=gen, dtype=torch.float64)
    results, peaks = {}, {}
    for name, chunk in (("whole", 2**40), ("chunked", 2**20)):
        monkeypatch.setattr(dattention, "CPB_CHUNK", chunk)
        m.zero_grad(set_to_none=True)
        results[name] = forward_and_grads(m, x, g)
        peaks[name] = peak_memory_mb(lambda: m(x).backward(g), torch.device("cpu"))
    assert_same(results["chunked"], results["whole"])
    assert peaks["chunked"] < 0.25 * peaks["whole"], peaks


@pytest.mark.parametrize("s", [-1.0, 2.0])
@pytest.mark.parametrize("pe", PES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_forward_agrees(pe, s, dtype):
    ref, fast = pair(dtype, pe=pe, offset_range_factor=s)
    x = torch.randn(2, 32, *SIZE, generator=torch.Generator().manual_seed(2)).to(dtype)
    outputs = {}
    with torch.no_grad():
        for name, m in (("reference", ref), ("fast", fast)):
            try:
                outputs[name] = m(x)
            except (RuntimeError, NotImplementedError) as err:
                pytest.skip(f"{name} path: no CPU kernel for {dtype} here: {err}")
    assert outputs["fast"].dtype == dtype
    assert rel_err(outputs["fast"], outputs["reference"]) <= 1e-2


def sdpa_calls(monkeypatch) -> list[int]:
    """Records each call of ``scaled_dot_product_attention``: a backend restriction proves
    nothing if the module never reaches SDPA."""
    calls: list[int] = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    return calls


@pytest.mark.parametrize("pe", PES)
def test_fast_path_reaches_the_fused_cpu_kernel(pe, monkeypatch):
    """With only the flash backend allowed, SDPA raises unless q/k/v have the layout the
    fused kernel needs (head dim last, stride 1); a constant bias is accepted."""
    calls = sdpa_calls(monkeypatch)
    _, fast = pair(pe=pe)
    x = torch.randn(2, 32, *SIZE)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
        fast(x)
    assert len(calls) == 1
    if pe in ("dwc", "none"):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            fast(x.requires_grad_(True)).sum().backward()
        assert len(calls) == 2


@pytest.mark.parametrize("pe", PES)
def test_auto_takes_the_reference_only_when_a_bias_needs_a_gradient_on_cpu(pe):
    m = make("auto", pe=pe)
    cpu = torch.device("cpu")
    with torch.no_grad():
        assert m.uses_fast_path(cpu)
    assert m.uses_fast_path(cpu) == (pe in ("dwc", "none"))
    m.requires_grad_(False)  # frozen: the bias is a constant
    assert m.uses_fast_path(cpu)
    assert m.uses_fast_path(torch.device("cuda"))


def test_exact_flops_force_the_reference_path_and_restore_impl(tmp_path):
    models = {
        impl: build("yolov8n", 2, tmp_path, "neck", dat={"impl": impl, "pe": "dwc"}, imgsz=64)
        for impl in ("fast", "reference")
    }
    flops = {impl: exact_gflops(b.model, 64) for impl, b in models.items()}
    assert flops["fast"] == pytest.approx(flops["reference"], rel=1e-9)
    attns = [m for m in models["fast"].model.modules() if isinstance(m, DAttention)]
    assert len(attns) == 3 and all(m.impl == "fast" for m in attns)


class Fails(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_impl_is_restored_when_counting_fails():
    attn = DAttention(32, heads=2, impl="fast")
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 1), attn, Fails())
    with pytest.raises(RuntimeError, match="boom"):
        exact_gflops(m, 8)
    assert attn.impl == "fast"


# -- no loss of accuracy: the same training run on both paths --------------------------------
STEPS = 50


def fixed_batch(n: int = 2, size: int = 64, boxes: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    k = n * boxes
    centres = torch.rand(k, 2, generator=g) * 0.4 + 0.3
    sizes = torch.rand(k, 2, generator=g) * 0.3 + 0.1
    return {
        "img": torch.rand(n, 3, size, size, generator=g),
        "cls": torch.randint(0, 2, (k, 1), generator=g).float(),
        "bboxes": torch.cat([centres, sizes], 1),
        "batch_idx": torch.arange(n).repeat_interleave(boxes).float(),
    }


def loss_curve(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # frozen statistics: see test_training_loss_curves_agree
    model.args = get_cfg()  # the loss reads Ultralytics' default box/cls/dfl gains
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    curve = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss, _ = model.loss(batch)
        loss.sum().backward()
        opt.step()
        curve.append(float(loss.sum().detach()))
    return curve


@pytest.mark.parametrize("dat", [{"preset": "blog"}, {"pe": "table"}], ids=["blog-dwc", "table"])
def test_training_loss_curves_agree(dat, tmp_path):
    """50 SGD steps of a neck model give the same loss on both paths at every step.

    BatchNorm statistics are frozen: with batch statistics of 2 images at 64 px, the stock
    yolov8n alone is chaotic (weights perturbed by 1e-7 give losses 20-200% apart within 50
    steps), which would hide the attention paths. The residual wrap's LayerScale, if any, starts
    at 1 so that the attention carries the features.
    """
    torch.manual_seed(0)
    dat = {**dat, "impl": "reference", "layer_scale": 1.0}  # the attention carries the features
    built = build("yolov8n", 2, tmp_path, "neck", dat=dat, imgsz=64)
    fast = copy.deepcopy(built.model)
    for m in fast.modules():
        if isinstance(m, DAttention):
            m.impl = "fast"
    batch = fixed_batch()
    expected = loss_curve(built.model, batch)
    got = loss_curve(fast, batch)
    assert expected[-1] < 0.9 * expected[0], "training must move the loss"
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == pytest.approx(b, rel=1e-3), f"step {step}: fast {a} vs reference {b}"

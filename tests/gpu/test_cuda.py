"""What only a GPU shows: the fused CUDA kernels, fp16 on CUDA, and a real CUDA training job
whose final validation runs the best checkpoint in half precision (Ultralytics does that on
CUDA). Skipped, with the reason in the summary, where there is no CUDA device."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag
from tests.nn.test_fast_path import PES, SIZE, pair, rel_err, sdpa_calls
from tests.runner.entry import TINY, local_runs, run_entry

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; none on this machine"),
]
FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def cuda_pair(pe: str, s: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    ref, fast = pair(torch.float16, pe=pe, offset_range_factor=s)
    return ref.cuda(), fast.cuda()


@pytest.mark.parametrize("s", [-1.0, 2.0])
@pytest.mark.parametrize("pe", PES)
def test_fp16_paths_agree_and_train_on_cuda(pe, s):
    ref, fast = cuda_pair(pe, s)
    x = torch.randn(2, 32, *SIZE, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        expected, got = ref(x), fast(x)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert rel_err(got, expected) <= 1e-2
    fast(x.clone().requires_grad_(True)).float().square().mean().backward()
    for name, p in fast.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("pe", ["dwc", "none"])
def test_unbiased_modes_train_on_the_fused_cuda_kernels(pe, monkeypatch):
    """With the math fallback excluded, SDPA raises unless a fused kernel takes the call; the
    spy shows that the module called SDPA at all."""
    calls = sdpa_calls(monkeypatch)
    _, fast = cuda_pair(pe, -1.0)
    x = torch.randn(2, 32, *SIZE, device="cuda", dtype=torch.float16, requires_grad=True)
    with sdpa_kernel(FUSED):
        fast(x).float().sum().backward()
    assert calls, "the fast path did not reach scaled_dot_product_attention"
    assert torch.isfinite(x.grad).all()


@pytest.mark.slow
def test_a_neck_job_trains_on_cuda_and_validates_in_half(workdir):
    out = run_entry(workdir, "placement=neck", "device=0", *TINY)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = local_runs(workdir)
    assert run.info.status == "FINISHED"
    assert run.data.tags[Tag.DEVICE_TYPE] == "cuda"
    metrics = run.data.metrics
    assert metrics[schema.PEAK_MEM_MB] > 0 and metrics[schema.LATENCY_MS] > 0
    assert all(
        math.isfinite(metrics[k])
        for k in (schema.MAP50, schema.MAP50_95, schema.PRECISION, schema.RECALL)
    )

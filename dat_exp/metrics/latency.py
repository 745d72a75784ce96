"""One latency routine, shared by the runner and the bench.

Batch-1 inference of the fused model in eval mode: warm-up, then repeats until the median is
stable (p50, p90 and spread reported); CUDA events and fp16 on GPU, a fixed thread count and
wall clock on CPU.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

CPU_THREADS = 2


@dataclass
class Latency:
    p50_ms: float
    p90_ms: float
    spread: float  # (p90 - p10) / p50
    repeats: int
    device: str


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    model = copy.deepcopy(model).float().eval()
    if hasattr(model, "fuse"):
        model = model.fuse(verbose=False) if _fuse_takes_verbose(model) else model.fuse()
    model = model.to(device)
    return model.half() if device.type == "cuda" else model


def _fuse_takes_verbose(model: nn.Module) -> bool:
    import inspect

    return "verbose" in inspect.signature(model.fuse).parameters


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call; CUDA events on GPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def measure_latency(
    model: nn.Module,
    imgsz: int | tuple[int, int],
    device: str | torch.device = "cpu",
    warmup: int = 5,
    block: int = 10,
    max_seconds: float = 15.0,
    tolerance: float = 0.02,
) -> Latency:
    """Repeat in blocks until two successive medians agree within ``tolerance`` (or time runs
    out), then report percentiles over all timed calls."""
    device = torch.device(device)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    model = prepare_for_inference(model, device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.zeros(1, 3, h, w, device=device, dtype=dtype)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            times: list[float] = []
            previous = None
            deadline = time.perf_counter() + max_seconds
            while True:
                times += [time_call(lambda: model(x), device) for _ in range(block)]
                median = statistics.median(times)
                stable = previous is not None and abs(median - previous) <= tolerance * previous
                if stable or time.perf_counter() > deadline:
                    break
                previous = median
    finally:
        torch.set_num_threads(threads)
    q = statistics.quantiles(times, n=10)
    p50 = statistics.median(times)
    return Latency(p50, q[8], (q[8] - q[0]) / p50, len(times), str(device))

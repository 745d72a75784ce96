"""One latency routine, shared by the runner and the bench.

Batch-1 inference of the fused model in eval mode: warm-up, then blocks of timed calls until the
timings are stationary (the medians of their first and second half agree); p50, p90 and spread
reported. CUDA events and fp16 on GPU; a fixed thread count and wall clock on CPU; the garbage
collector off while timing.
"""

from __future__ import annotations

import copy
import gc
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
    min_blocks: int = 4,
    warmup_seconds: float = 0.5,
) -> Latency:
    """Time blocks of calls until the medians of the first and second half of all timed calls
    agree within ``tolerance`` (at least ``min_blocks`` blocks; at most ``max_seconds``), then
    report percentiles over all of them."""
    device = torch.device(device)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    model = prepare_for_inference(model, device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    # A fixed image rather than zeros: no data-dependent shortcut, the same input every time.
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        with torch.inference_mode():
            _warm_up(lambda: model(x), device, warmup, warmup_seconds)
            gc.collect()
            gc.disable()  # a collection inside a timed call is noise, not the model
            times = _timed_blocks(
                lambda: model(x), device, block, min_blocks, max_seconds, tolerance
            )
    finally:
        torch.set_num_threads(threads)
        if gc_was_enabled:
            gc.enable()
    q = statistics.quantiles(times, n=10)
    p50 = statistics.median(times)
    return Latency(p50, q[8], (q[8] - q[0]) / p50, len(times), str(device))


def _warm_up(fn: Callable[[], object], device: torch.device, calls: int, seconds: float) -> None:
    """At least ``calls`` calls and ``seconds`` of them: allocator, kernel caches, clocks."""
    deadline = time.perf_counter() + seconds
    done = 0
    while done < calls or time.perf_counter() < deadline:
        time_call(fn, device)
        done += 1


def _timed_blocks(
    fn: Callable[[], object],
    device: torch.device,
    block: int,
    min_blocks: int,
    max_seconds: float,
    tolerance: float,
) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while True:
        times += [time_call(fn, device) for _ in range(block)]
        half = len(times) // 2
        early, late = statistics.median(times[:half]), statistics.median(times[half:])
        stable = len(times) >= min_blocks * block and abs(late - early) <= tolerance * early
        if stable or time.perf_counter() > deadline:
            return times

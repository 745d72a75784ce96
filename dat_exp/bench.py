"""Speed and memory of DAttention's two attention paths, and what each DAT placement costs.

``python -m dat_exp.bench`` (``make bench``): a small CPU grid; ``--full``: P3/P4/P5 at n and s
widths, for a GPU. Each cell times forward (inference) and forward+backward of the ``reference``
(einsum) and ``fast`` (SDPA) paths, interleaved so that machine noise hits both, and measures
their peak tensor memory. The model view times a training step and inference latency (the
shared ``measure_latency``) per placement against the stock model, and checks that latency
repeats within 5%. Tables print as Markdown and are saved as CSV under ``--out``; CUDA runs
are also saved in ``benchmarks/`` (committed), named by date, device and torch version.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import itertools
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import dat_exp  # noqa: F401  (before ultralytics: offline environment, layer registration)
from dat_exp.metrics.latency import CPU_THREADS, measure_latency, time_call
from dat_exp.models.placements import LEVEL_STRIDES
from dat_exp.nn import PE_MODES, DAttention
from dat_exp.nn.dattention import BIAS_PE_MODES, key_grid_size
from dat_exp.nn.presets import LEVEL_OFFSET_NET, PRESETS, default_groups, default_heads
from dat_exp.tracking import schema

IMGSZ = 640
BLOG_HEADS = PRESETS["blog"].heads  # the other head count is the default (head dim 32)
CHANNELS = {"n": {"P3": 64, "P4": 128, "P5": 256}, "s": {"P3": 128, "P4": 256, "P5": 512}}
PATHS = ("reference", "fast")
KINDS = ("fwd", "step")  # inference forward; forward + backward
FUSED = [
    getattr(SDPBackend, n)
    for n in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
    if hasattr(SDPBackend, n)
]
REPEAT_TOLERANCE = 0.05
# Issue #7's CPU targets: fwd+bwd speed-up of the fast path on P4 (40x40, C=128), stride 1.
TARGET_HEADS = (8, 4)
TARGET_SPEEDUP = {"dwc": 1.5, "none": 1.5, "table": 0.95, "log_cpb": 0.95, "fixed": 0.95}
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@dataclass(frozen=True)
class Cell:
    """One DAttention configuration: a pyramid level of a 640 input at a model width."""

    level: str
    width: str
    channels: int
    side: int
    stride: int
    ksize: int
    heads: int
    pe: str
    batch: int = 2

    def module(self, impl: str) -> DAttention:
        return DAttention(
            self.channels,
            feat_size=self.side,
            heads=self.heads,
            groups=default_groups(self.heads),
            stride=self.stride,
            ksize=self.ksize,
            pe=self.pe,
            impl=impl,
        )


def grid(full: bool = False) -> list[Cell]:
    """The default CPU grid (P4, P5 at n width) or the full one (P3-P5, n and s): offset stride 1
    and the level default, 8 heads and the default heads, every position encoding."""
    levels = ("P3", "P4", "P5") if full else ("P4", "P5")
    widths = ("n", "s") if full else ("n",)
    cells = []
    for width, level in itertools.product(widths, levels):
        c = CHANNELS[width][level]
        ksize, level_stride = LEVEL_OFFSET_NET[LEVEL_STRIDES[level]]
        side = IMGSZ // LEVEL_STRIDES[level]
        for stride in dict.fromkeys((1, level_stride)):
            for heads in dict.fromkeys((BLOG_HEADS, default_heads(c))):
                cells += [Cell(level, width, c, side, stride, ksize, heads, pe) for pe in PE_MODES]
    return cells


# -- timing and memory ------------------------------------------------------------------------
def interleaved_times(
    calls: dict[Any, Callable[[], object]],
    device: torch.device,
    min_repeats: int = 3,
    max_repeats: int = 9,
    budget_s: float = 4.0,
    warm_up: bool = True,
) -> dict[Any, list[float]]:
    """Milliseconds of each call, repeated round-robin (the order reversed every other round,
    so that no call always runs first), after one warm-up round unless the calls ran already.
    The first round sizes the rest: as many as fill ``budget_s``, within the bounds."""
    if warm_up:
        for fn in calls.values():
            time_call(fn, device)
    keys = list(calls)
    times: dict[Any, list[float]] = {k: [] for k in keys}
    repeats, r = min_repeats, 0
    while r < repeats:
        for k in keys if r % 2 == 0 else keys[::-1]:
            times[k].append(time_call(calls[k], device))
        if r == 0:
            one_round = max(sum(t[0] for t in times.values()) / 1000, 1e-6)
            repeats = min(max(int(budget_s / one_round), min_repeats), max_repeats)
        r += 1
    return times


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak tensor memory allocated while ``fn`` runs, above what was live before (MB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return _cpu_peak_memory_mb(fn)


def _cpu_peak_memory_mb(fn: Callable[[], object]) -> float:
    # The profiler records every CPU allocation and free with its size; their running sum in
    # time order peaks where max_memory_allocated would on a GPU. (tracemalloc sees no tensors.)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Kineto writes start/stop lines straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "can't allocate memory")
    )


# -- one cell ---------------------------------------------------------------------------------
def cell_calls(
    cell: Cell, device: torch.device, dtype: torch.dtype = torch.float32
) -> dict[tuple[str, str], Callable[[], object]]:
    """(path, kind) -> a call: the same weights and input on both paths."""
    torch.manual_seed(0)
    ref = cell.module("reference").to(device, dtype)
    fast = copy.deepcopy(ref)
    fast.impl = "fast"
    shape = (cell.batch, cell.channels, cell.side, cell.side)
    x = torch.randn(shape, device=device, dtype=dtype)
    grad = torch.randn(shape, device=device, dtype=dtype)

    def forward(m: DAttention) -> Callable[[], object]:
        def fn() -> object:
            m.eval()
            with torch.no_grad():
                return m(x)

        return fn

    def step(m: DAttention) -> Callable[[], object]:
        def fn() -> object:
            m.train()
            m.zero_grad(set_to_none=True)
            m(x.detach().requires_grad_(True)).backward(grad)

        return fn

    mods = {"reference": ref, "fast": fast}
    return {(p, k): (forward if k == "fwd" else step)(mods[p]) for p in PATHS for k in KINDS}


def fused_kernel_used(fn: Callable[[], object]) -> bool:
    """Whether SDPA runs this call with a fused kernel (else its math fallback)."""
    try:
        with sdpa_kernel(FUSED), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the refusal's reasons: we only want the verdict
            fn()
    except RuntimeError as err:
        if "No available kernel" in str(err):
            return False
        raise
    return True


def auto_paths(cell: Cell, device: torch.device) -> dict[str, str]:
    """The path ``impl=auto`` takes here, training and in inference."""
    m = cell.module("auto")
    with torch.no_grad():
        infer = m.uses_fast_path(device)
    train = m.uses_fast_path(device)
    return {"auto_step": PATHS[train], "auto_fwd": PATHS[infer]}


def run_cell(
    cell: Cell, device: torch.device, dtype: torch.dtype = torch.float32, budget_s: float = 4.0
) -> dict[str, Any]:
    """Median times (ms), peak memory (MB) and reference/fast ratios of one cell."""
    keys = key_grid_size(cell.side, cell.ksize, cell.stride) ** 2
    row: dict[str, Any] = {**asdict(cell), "head_dim": cell.channels // cell.heads, "keys": keys}
    row.update(auto_paths(cell, device))
    try:
        calls = cell_calls(cell, device, dtype)
        kernel = {k: fused_kernel_used(calls["fast", k]) for k in KINDS}
        memory = {key: peak_memory_mb(fn, device) for key, fn in calls.items()}
        # The memory round ran every call once: it is the timing's warm-up.
        times = interleaved_times(calls, device, 5, 9, budget_s, warm_up=False)
    except (RuntimeError, torch.OutOfMemoryError) as err:
        if not _is_oom(err):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {**row, "note": "out of memory"}
    for k in KINDS:
        ref_ms, fast_ms = (statistics.median(times[p, k]) for p in PATHS)
        row[f"{k}_ref_ms"], row[f"{k}_fast_ms"], row[f"{k}_x"] = ref_ms, fast_ms, ref_ms / fast_ms
        ref_mb, fast_mb = memory["reference", k], memory["fast", k]
        row[f"{k}_ref_mb"], row[f"{k}_fast_mb"] = ref_mb, fast_mb
        row[f"{k}_mem_x"] = ref_mb / fast_mb if fast_mb > 0 else math.nan
        row[f"{k}_kernel"] = "fused" if kernel[k] else "math"
    row["repeats"] = len(times["fast", "step"])
    row["note"] = ""
    return row


CELL_COLUMNS = [
    ("level", "level", "{}"),
    ("channels", "C", "{}"),
    ("side", "map", "{}"),
    ("stride", "s", "{}"),
    ("keys", "N", "{}"),
    ("heads", "heads", "{}"),
    ("pe", "pe", "{}"),
    ("fwd_ref_ms", "fwd ref ms", "{:.1f}"),
    ("fwd_fast_ms", "fwd fast ms", "{:.1f}"),
    ("fwd_x", "fwd ×", "{:.2f}"),
    ("step_ref_ms", "f+b ref ms", "{:.1f}"),
    ("step_fast_ms", "f+b fast ms", "{:.1f}"),
    ("step_x", "f+b ×", "{:.2f}"),
    ("step_kernel", "f+b SDPA", "{}"),
    ("step_ref_mb", "f+b ref MB", "{:.0f}"),
    ("step_fast_mb", "f+b fast MB", "{:.0f}"),
    ("step_mem_x", "mem ×", "{:.1f}"),
    ("auto_step", "auto train", "{}"),
    ("auto_fwd", "auto infer", "{}"),
    ("note", "note", "{}"),
]


# -- the whole model --------------------------------------------------------------------------
def training_step_call(
    model: torch.nn.Module, imgsz: int, batch: int, device: torch.device
) -> Callable[[], None]:
    """One SGD step of Ultralytics' detection loss on a fixed batch of random images and boxes."""
    from ultralytics.cfg import get_cfg

    model = model.to(device).train()
    model.args = get_cfg()  # the loss reads Ultralytics' default box/cls/dfl gains
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    n = 3 * batch
    data = {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
        "cls": torch.randint(0, 80, (n, 1), generator=g).float(),
        "bboxes": torch.cat(
            [torch.rand(n, 2, generator=g) * 0.5 + 0.25, torch.rand(n, 2, generator=g) * 0.3 + 0.1],
            1,
        ),
        "batch_idx": torch.arange(batch).repeat_interleave(3).float(),
    }
    data = {k: v.to(device) for k, v in data.items()}

    def fn() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = model.loss(data)
        loss.sum().backward()
        opt.step()

    return fn


def model_rows(
    device: torch.device, imgsz: int, batch: int, placements: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Per placement (official per-level settings): training-step time and inference latency
    relative to the stock model; and the latency repeatability line."""
    from dat_exp.metrics.flops import count_params
    from dat_exp.models.builder import build
    from dat_exp.models.placements import PLACEMENTS

    placements = list(placements or PLACEMENTS)
    with tempfile.TemporaryDirectory() as tmp:
        models = {p: build("yolov8n", 80, tmp, p, imgsz=imgsz).model for p in placements}
    steps = {p: training_step_call(m, imgsz, batch, device) for p, m in models.items()}
    step_ms = {
        p: statistics.median(t) for p, t in interleaved_times(steps, device, 5, 7, 20).items()
    }
    latency = {p: measure_latency(m, imgsz, device) for p, m in models.items()}
    base = placements[0]
    again = measure_latency(models[base], imgsz, device)  # the same model, later, same process
    rows = []
    for p in placements:
        lat = latency[p]
        rows.append(
            {
                "placement": p,
                "params_m": count_params(models[p]) / 1e6,
                "step_ms": step_ms[p],
                "step_x": step_ms[p] / step_ms[base],
                schema.LATENCY_MS: lat.p50_ms,
                schema.LATENCY_P90_MS: lat.p90_ms,
                "latency_spread": lat.spread,
                "latency_x": lat.p50_ms / latency[base].p50_ms,
                "latency_repeats": lat.repeats,
            }
        )
    return rows, repeatability_line(base, latency[base].p50_ms, again.p50_ms)


def repeatability_line(name: str, first_ms: float, second_ms: float) -> str:
    apart = abs(second_ms - first_ms) / min(first_ms, second_ms)
    verdict = "PASS" if apart <= REPEAT_TOLERANCE else "FAIL"
    return (
        f"latency repeatability ({name}, measured twice in one process): {first_ms:.2f} ms vs "
        f"{second_ms:.2f} ms, {apart:.1%} apart (within {REPEAT_TOLERANCE:.0%}): {verdict}"
    )


MODEL_COLUMNS = [
    ("placement", "placement", "{}"),
    ("params_m", "params M", "{:.2f}"),
    ("step_ms", "train step ms", "{:.0f}"),
    ("step_x", "step × stock", "{:.2f}"),
    (schema.LATENCY_MS, "latency p50 ms", "{:.1f}"),
    (schema.LATENCY_P90_MS, "p90 ms", "{:.1f}"),
    ("latency_x", "latency × stock", "{:.2f}"),
]


# -- report -----------------------------------------------------------------------------------
def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key, "")
        if value == "" or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return fmt.format(value)

    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """PASS/FAIL per issue #7 target (CPU, fwd+bwd, P4 40x40 C=128 stride 1, batch 2)."""
    lines = []
    fields = ("level", "channels", "stride", "heads", "pe", "batch")
    by_cell = {tuple(r[f] for f in fields): r for r in rows if "step_x" in r}
    for heads, pe in itertools.product(TARGET_HEADS, PE_MODES):
        row = by_cell.get(("P4", 128, 1, heads, pe, 2))
        if row is None:
            continue
        need, got = TARGET_SPEEDUP[pe], row["step_x"]
        ok = got >= need
        why = ""
        if pe in BIAS_PE_MODES:
            ok = ok or row["auto_step"] == "reference"
            why = f"; auto trains on the {row['auto_step']} path"
        lines.append(
            f"P4 40x40 C=128 stride 1, {heads} heads, {pe:7s}: fwd+bwd fast {got:.2f}x the "
            f"reference (target >= {need}x{why}): {'PASS' if ok else 'FAIL'}"
        )
    return lines


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return (
        f"{names[0] if names else platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


# -- entry point ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m dat_exp.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="P3/P4/P5, n and s widths (for a GPU)")
    ap.add_argument(
        "--device",
        default=None,
        help="cpu or cuda[:i] (default: cuda with --full when available, else cpu)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the CSVs")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the attention cells",
    )
    ap.add_argument("--threads", type=int, default=CPU_THREADS, help="CPU threads")
    ap.add_argument("--no-models", action="store_true", help="skip the whole-model view")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if args.full and _has_cuda() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    # SDPA says once per call site why it took its math fallback; the table's column says it.
    warnings.filterwarnings("ignore", message=".*(kernel not used because|stride 1).*")
    started, stamp = time.perf_counter(), datetime.datetime.now()
    header = [
        f"# DAttention bench, {stamp:%Y-%m-%d %H:%M}",
        f"device: {device_name(device)}; torch {torch.__version__}; dtype {args.dtype}; "
        f"{'full' if args.full else 'default'} grid",
    ]
    print("\n".join(header), flush=True)
    cells = run_cells(grid(args.full), device, getattr(torch, args.dtype))
    report = [*header, "", "## Attention paths, batch 2 (× = reference / fast)", ""]
    report.append(markdown_table(cells, CELL_COLUMNS))
    if device.type == "cpu":
        report += ["", "## Targets (issue #7)", "", *target_lines(cells)]
    models: list[dict[str, Any]] = []
    if not args.no_models:
        imgsz, batch = (640, 8) if device.type == "cuda" else (320, 2)
        models, repeat = model_rows(device, imgsz, batch)
        title = f"## Whole model: yolov8n, train step {imgsz} px batch {batch}, latency batch 1"
        report += ["", title, "", markdown_table(models, MODEL_COLUMNS), "", repeat]
    report += ["", f"bench time: {time.perf_counter() - started:.0f} s"]
    text = "\n".join(report)
    print("\n" + text)
    save(args.out, device, stamp, text, cells, models)
    return 0


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def run_cells(cells: list[Cell], device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    for i, cell in enumerate(cells, 1):
        rows.append(run_cell(cell, device, dtype))
        x = rows[-1].get("step_x", math.nan)
        print(f"  [{i}/{len(cells)}] {cell}: fwd+bwd x{x:.2f}", flush=True)
    return rows


def save(
    out: Path,
    device: torch.device,
    stamp: datetime.datetime,
    text: str,
    cells: list[dict[str, Any]],
    models: list[dict[str, Any]],
) -> list[Path]:
    """The report and CSVs under ``out``; CUDA runs also in ``benchmarks/``, named by date,
    device and torch version."""
    folders = [out] + ([BENCHMARKS] if device.type == "cuda" else [])
    dev = f"{device.type}-{slug(device_name(device).split(',')[0])}"
    name = f"{stamp:%Y%m%d-%H%M%S}-{dev}-torch{torch.__version__.split('+')[0]}"
    written = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        write_csv(folder / f"{name}-cells.csv", cells)
        if models:
            write_csv(folder / f"{name}-models.csv", models)
        (folder / f"{name}.md").write_text(text + "\n")
        written.append(folder / name)
        print(f"saved {folder / name}.md and CSVs", flush=True)
    return written


if __name__ == "__main__":
    raise SystemExit(main())

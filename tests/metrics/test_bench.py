"""The bench's pieces on tiny inputs: columns, positive numbers, files; no speed assertions."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from dat_exp import bench
from dat_exp.bench import Cell
from dat_exp.metrics.latency import measure_latency
from dat_exp.tracking import schema

CPU = torch.device("cpu")
TINY = [Cell("P5", "n", 32, 8, 1, 3, 2, pe) for pe in ("dwc", "table")]


@pytest.fixture(scope="module")
def tiny_rows() -> list[dict]:
    return [bench.run_cell(cell, CPU, budget_s=0.1) for cell in TINY]


def test_cell_rows_have_every_column_and_positive_numbers(tiny_rows):
    for row in tiny_rows:
        for key, _, _ in bench.CELL_COLUMNS:
            assert key in row, key
        for key in ("fwd", "step"):
            for field in ("ref_ms", "fast_ms", "x", "ref_mb", "fast_mb", "mem_x"):
                value = row[f"{key}_{field}"]
                assert isinstance(value, float) and value > 0 and math.isfinite(value), field
        assert row["repeats"] >= 3 and row["note"] == ""
    dwc, table = tiny_rows
    assert (dwc["step_kernel"], table["step_kernel"]) == ("fused", "math")
    assert (dwc["auto_step"], table["auto_step"], table["auto_fwd"]) == (
        "fast",
        "reference",
        "fast",
    )


def test_table_and_csv(tiny_rows, tmp_path):
    text = bench.markdown_table(tiny_rows, bench.CELL_COLUMNS)
    lines = text.splitlines()
    assert lines[0] == "| " + " | ".join(t for _, t, _ in bench.CELL_COLUMNS) + " |"
    assert len(lines) == 2 + len(tiny_rows)
    path = tmp_path / "cells.csv"
    bench.write_csv(path, tiny_rows)
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert len(read) == 2 and {k for k, _, _ in bench.CELL_COLUMNS} <= set(read[0])
    assert all(float(r["step_ref_ms"]) > 0 and float(r["step_fast_mb"]) > 0 for r in read)


def test_grids():
    small, full = bench.grid(), bench.grid(full=True)
    assert len(small) == len(set(small)) == 25  # P4: 2 strides x 2 head counts; P5: 1 x 1
    assert {(c.level, c.channels, c.side) for c in small} == {("P4", 128, 40), ("P5", 256, 20)}
    targets = [c for c in small if (c.level, c.stride) == ("P4", 1)]
    assert {c.heads for c in targets} == {8, 4} and {c.pe for c in targets} == set(bench.PE_MODES)
    assert len(full) == len(set(full)) and set(small) <= set(full)
    assert {(c.level, c.width) for c in full} == {
        (lv, w) for lv in ("P3", "P4", "P5") for w in "ns"
    }


def test_interleaving_alternates_the_order():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "ab"}
    times = bench.interleaved_times(calls, CPU, min_repeats=4, max_repeats=4, warm_up=False)
    assert order == list("abbaabba")
    assert all(len(t) == 4 for t in times.values())


def test_targets_pass_and_fail_on_the_ratios():
    def row(pe: str, x: float, auto: str) -> dict:
        keys = ("level", "channels", "stride", "heads", "batch")
        return dict(zip(keys, ("P4", 128, 1, 8, 2), strict=True)) | {
            "pe": pe,
            "step_x": x,
            "auto_step": auto,
        }

    lines = bench.target_lines(
        [row("dwc", 1.6, "fast"), row("none", 1.4, "fast"), row("table", 0.5, "reference")]
    )
    assert len(lines) == 3
    assert lines[0].endswith("PASS") and "table" in lines[0]  # auto trains on the reference
    assert "dwc" in lines[1] and lines[1].endswith("PASS")
    assert "none" in lines[2] and lines[2].endswith("FAIL")


def test_peak_memory_sees_tensors():
    mb = bench.peak_memory_mb(lambda: torch.ones(2**22).sum(), CPU)  # 16 MB
    assert 15 < mb < 40


def test_repeatability_line():
    assert bench.repeatability_line("m", 10.0, 10.4).endswith("PASS")
    assert bench.repeatability_line("m", 10.0, 11.0).endswith("FAIL")


def test_measure_latency_reports_percentiles_and_restores_threads():
    # How well two measurements agree is the bench's claim (timings are not unit-test material).
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
    threads = torch.get_num_threads()
    # A generous time limit: the minimum of 4 blocks of 10 calls must be reached on a busy host.
    lat = measure_latency(model, 64, "cpu", max_seconds=60.0)
    assert torch.get_num_threads() == threads
    assert lat.p50_ms > 0 and lat.p90_ms >= lat.p50_ms and lat.repeats >= 40
    assert lat.device == "cpu" and lat.spread >= 0


def test_model_rows_relative_to_the_stock_model():
    rows, repeat = bench.model_rows(CPU, imgsz=64, batch=2, placements=["none", "sppf"])
    assert [r["placement"] for r in rows] == ["none", "sppf"]
    assert rows[0]["step_x"] == 1.0 and rows[0]["latency_x"] == 1.0
    for r in rows:
        assert {k for k, _, _ in bench.MODEL_COLUMNS} <= set(r)
        assert r["step_ms"] > 0 and r[schema.LATENCY_MS] > 0
    assert rows[1]["params_m"] > rows[0]["params_m"]
    assert repeat.startswith("latency repeatability (none") and repeat[-4:] in ("PASS", "FAIL")


def test_main_writes_the_report_and_csvs_only_under_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "grid", lambda full=False: TINY[:1])
    monkeypatch.setattr(bench, "BENCHMARKS", tmp_path / "benchmarks")
    assert bench.main(["--out", str(tmp_path / "out"), "--no-models"]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) == 2 and files[0].endswith("-cells.csv") and files[1].endswith(".md")
    assert "-cpu-" in files[0] and torch.__version__.split("+")[0] in files[0]
    assert not (tmp_path / "benchmarks").exists()  # CPU runs are not committed
    out = capsys.readouterr().out
    assert "| level | C |" in out and "bench time" in out

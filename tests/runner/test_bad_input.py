"""Bad input: a short error that names the value and the choices, before anything starts."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import write_tiny_dataset
from tests.runner.entry import TINY, entry_env


def broken_datasets(root: Path) -> dict[str, Path]:
    """A malformed YAML, labels with a class out of range, an empty image folder."""
    root.mkdir(parents=True, exist_ok=True)
    malformed = root / "malformed.yaml"
    malformed.write_text("train: [unclosed\nnames: {0: a\n")
    out_of_range = write_tiny_dataset(root / "oor", n_images=2, size=32)
    label = next((root / "oor" / "labels" / "train").glob("*.txt"))
    label.write_text("7 0.5 0.5 0.2 0.2\n")
    empty = write_tiny_dataset(root / "empty", n_images=2, size=32)
    for image in (root / "empty" / "images" / "val").iterdir():
        image.unlink()
    return {"malformed": malformed, "out_of_range": out_of_range, "empty": empty}


# (overrides, fragments the message must contain)
CASES = [
    (["placement=everywhere"], ["placement/everywhere", "neck", "sppf"]),
    (["model=yolov9n"], ["model/yolov9n", "yolov8n"]),
    (["data=imagenet"], ["data/imagenet", "synthetic"]),
    (["dat=paper"], ["dat/paper", "official", "blog"]),
    (["placement=neck", "dat.pe=rope"], ["'rope'", "dat.pe", "table, dwc, log_cpb, fixed, none"]),
    (["dat.pe=banana"], ["'banana'", "dat.pe", "table, dwc, log_cpb, fixed, none"]),
    (["dat.no_off=maybe"], ["maybe", "no_off"]),
    (["dat.offset_range_factor=abc"], ["abc", "offset_range_factor"]),
    (["seed=abc"], ["abc", "seed"]),
    (["train.epochs=-1"], ["train.epochs=-1", "at least 1"]),
    (["train.batch=0"], ["train.batch=0", "at least 1"]),
    (["train.imgsz=100"], ["train.imgsz=100", "multiple of 32"]),
    (["train.optimizer=Lion"], ["Lion", "AdamW"]),
    (["placement=neck", "dat.heads=3"], ["dat.heads=3", "must divide channels=64 at P3"]),
    (["placement=neck", "dat.groups=3"], ["dat.groups=3", "must divide heads=2 at P3"]),
    (["dat.heads=7"], ["dat.heads=7", "no level of yolov8n", "valid: 1, 2, 4"]),
    (["dat.offset_range_factor=nan"], ["dat.offset_range_factor=nan", "finite"]),
    (["placement=neck", "dat.offset_range_factor=nan"], ["dat.offset_range_factor=nan", "finite"]),
    (["dat.groups=3"], ["dat.groups=3", "no level of yolov8n", "valid: 1, 2, 4"]),
    (["dat.ksize=4"], ["dat.ksize=4", "odd positive integer"]),
    (["reuse=sometimes"], ["reuse=sometimes", "same_code, any"]),
    (["placement=neck", "dat.ksize=4"], ["ksize=4", "odd"]),
    (["placement=neck", "dat.stride=0"], ["dat.stride=0", "integer >= 1"]),
    (["placement=neck", "dat.wrap=sandwich"], ["'sandwich'", "dat.wrap", "residual, bare"]),
    (["placement=neck", "dat.ref_points=v3"], ["'v3'", "dat.ref_points", "datpp, v1"]),
    (["placement=neck", "dat.impl=triton"], ["'triton'", "dat.impl", "auto, fast, reference"]),
    (["dat.layer_scale=0"], ["dat.layer_scale=0.0", "null", "positive finite number"]),
    (["placement=neck", "dat.layer_scale=-1"], ["dat.layer_scale=-1.0", "positive finite"]),
    (["placement=neck", "dat.layer_scale=abc"], ["'abc'", "dat.layer_scale"]),
    (["placement=neck", "dat.layer_scale=nan"], ["dat.layer_scale=nan", "positive finite"]),
    (["placement=neck", "placement.levels=[P9]"], ["'P9'", "P3, P4, P5"]),
    (["placement=sppf", "placement.levels=[P3]"], ["sppf has no level P3", "P5"]),
    (["data.classes=99"], ["classes=99"]),
    (["data=custom"], ["data.path"]),
    (["data=custom", "data.path=/nonexistent/data.yaml"], ["/nonexistent/data.yaml"]),
    (["data=custom", "data.path={malformed}"], ["malformed.yaml"]),
    (["data=custom", "data.path={out_of_range}"], ["class 7", "0..1"]),
    (["data=custom", "data.path={empty}"], ["images/val"]),
    (["data=coco8"], ["coco8", "data=synthetic"]),
    (["model.weights=/nonexistent/baseline.pt"], ["/nonexistent/baseline.pt"]),
    (["device=0"], ["device='0'", "no CUDA", "device=cpu"]),
    (["tracking=server", "tracking.uri=http://127.0.0.1:9"], ["127.0.0.1:9", "tracking=local"]),
    (["tracking.uri=file:///tmp/mlruns"], ["file:///tmp/mlruns", "sqlite:///"]),
    (["RUNS_IS_A_FILE"], ["is a file"]),
    (["budget.gpu_hours=0"], ["budget.gpu_hours=0.0", "must be positive"]),
    (
        ["-m", "placement=neck,sppf", "placement.levels=[P3]"],
        ["1 of 2 jobs are invalid", "sppf has no level P3"],
    ),
    (["-m", "hydra/sweeper=racing", "placement=sppf"], ["target_delta is required", "0.005"]),
    (
        [
            "-m",
            "hydra/sweeper=racing",
            "placement=sppf",
            *[
                f"hydra.sweeper.{s}"
                for s in (
                    "seeds_min=1",
                    "seeds_max=0",
                    "seeds_step=0",
                    "alpha=1.5",
                    "target_delta=-1",
                )
            ],
        ],
        [
            "seeds_min=1: must be at least 2",
            "seeds_max=0: must be at least seeds_min=1",
            "seeds_step=0: must be at least 1",
            "alpha=1.5: must be in (0, 1)",
            "target_delta=-1.0: must be > 0",
        ],
    ),
    (
        [
            "-m",
            "hydra/sweeper=racing",
            "hydra.sweeper.target_delta=0.01",
            "hydra.sweeper.metric=latency_ms",
        ],
        ["metric='latency_ms'", "valid: mAP50-95"],
    ),
]


def run_case(workdir: Path, overrides: list[str], paths: dict[str, Path]):
    env = entry_env(workdir)
    if overrides == ["RUNS_IS_A_FILE"]:
        (workdir / "runs").write_text("not a folder")
        overrides = []
    flags = [o for o in overrides if o == "-m"]  # Hydra's flags come before the overrides
    overrides = [o.format(**paths) for o in overrides if o != "-m"]
    start = time.time()
    args = [*flags, *TINY, *overrides]
    out = subprocess.run(
        [sys.executable, "-m", "dat_exp", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out, time.time() - start


@pytest.mark.slow
def test_bad_inputs_fail_fast_and_clearly(tmp_path):
    paths = broken_datasets(tmp_path / "data")
    workdirs = []
    for i in range(len(CASES)):
        (tmp_path / f"case{i}").mkdir()
        workdirs.append(tmp_path / f"case{i}")
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda i: run_case(workdirs[i], CASES[i][0], paths), range(len(CASES)))
        )
    problems = []
    for (overrides, fragments), workdir, (out, seconds) in zip(
        CASES, workdirs, results, strict=True
    ):
        text = out.stdout + out.stderr
        missing = [f for f in fragments if f.format(**paths) not in text]
        db = workdir / "runs" / "mlflow.db"
        runs = []
        if db.exists():
            client = MlflowClient(f"sqlite:///{db}")
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        one_line = "-m" in overrides or len(lines) == 1  # a sweep lists each invalid job
        if (
            out.returncode != 2
            or missing
            or not one_line
            or "Traceback" in text
            or runs
            or seconds > 60
        ):
            problems.append(
                f"{overrides}: rc={out.returncode} missing={missing} runs={len(runs)} "
                f"{seconds:.0f}s\n{text[-800:]}"
            )
    assert len(CASES) >= 25
    assert not problems, "\n\n".join(problems)

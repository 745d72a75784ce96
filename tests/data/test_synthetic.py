"""The embedded dataset: deterministic bytes, a held-out split disjoint from train and val, valid
labels, a task with scales, classes, occlusion, safe caching; and (slow) that YOLOv8n learns its
tiny configuration under the smoke settings."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from dat_exp.data import synthetic
from dat_exp.data.synthetic import CLASS_NAMES, SyntheticSpec, clip_box, generate

TINY_A = SyntheticSpec(images=6, val_images=3, test_images=3, imgsz=96, classes=4, seed=0)
# The calibrated tiny training configuration (see test_tiny_configuration_learns).
TINY_TRAIN = SyntheticSpec(
    images=160,
    val_images=16,
    test_images=16,
    imgsz=96,
    classes=2,
    clutter=0.0,
    palette=1.0,
    min_size=0.2,
    max_size=0.5,
    max_objects=4,
)
TINY_EPOCHS = 15


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file, by relative path; data.yaml with its (root-dependent) path removed."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        if f.name == "data.yaml":
            data = data.replace(str(folder).encode(), b"<root>")
        out[str(f.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def read_labels(yaml_path: Path) -> dict[Path, list[list[float]]]:
    """Labels of every image of a generated dataset (KeyError-free: all must exist)."""
    root, out = yaml_path.parent, {}
    for image in sorted((root / "images").rglob("*.png")):
        label = root / "labels" / image.parent.name / f"{image.stem}.txt"
        out[image] = [[float(v) for v in ln.split()] for ln in label.read_text().splitlines()]
    return out


# --------------------------------------------------------------------------- determinism


def test_same_spec_gives_identical_bytes(tmp_path):
    a = generate(TINY_A, tmp_path / "a")
    b = generate(TINY_A, tmp_path / "b")
    assert a.parent.name == b.parent.name == f"synthetic-{TINY_A.digest()}"
    ha, hb = file_hashes(a.parent), file_hashes(b.parent)
    assert len([k for k in ha if k.endswith(".png")]) == 12
    assert len([k for k in ha if k.startswith("images/test/")]) == 3
    assert ha == hb


# sha256 of files that generator version 1, which had no test split, wrote for TINY_A's train
# and val (under images/ and labels/): adding the split and bumping the version changed none.
V1_IMAGES = {
    "train/train_00000.png": "5aea4373941d85c2a7ade4701708350ec814b5fffed73f497641a12d9ac118d3",
    "train/train_00005.png": "f7a7fb1708499329b1cb03bb7327a9931e7902451fd22ab3a452c5c03a3f9bfb",
    "val/val_00000.png": "724fd061997f48f71ffde5379588ede7489b1081eb805403123d59eac3a72918",
    "val/val_00002.png": "19c9235134e57d413f49249ff18e36765aadba564a86ca4eab8bca4d0e4eed61",
}
V1_LABELS = {
    "train/train_00005.txt": "efd77c016e2a7f4a8a472533100541f11faab258dcdac7dd06f4ae9e77da2e3b",
    "val/val_00002.txt": "7a803b941e0ae4a1d05b7f596b820dd4d571201a4ea5d6d5e63521554bb395ea",
}


def test_train_and_val_are_the_files_of_generator_v1(tmp_path):
    hashes = file_hashes(generate(TINY_A, tmp_path).parent)
    assert {k: hashes[f"images/{k}"] for k in V1_IMAGES} == V1_IMAGES
    assert {k: hashes[f"labels/{k}"] for k in V1_LABELS} == V1_LABELS


def test_the_test_split_is_held_out_and_labelled(tmp_path):
    """Its own pictures: no image of train or val, byte for byte (a third generator stream)."""
    y = generate(TINY_A, tmp_path)
    assert yaml.safe_load(y.read_text())["test"] == "images/test"
    images = {
        split: {f.read_bytes() for f in (y.parent / "images" / split).glob("*.png")}
        for split in synthetic.SPLITS
    }
    assert [len(images[s]) for s in synthetic.SPLITS] == [6, 3, 3]  # no repeat within a split
    assert not images["test"] & (images["train"] | images["val"])
    assert sum(map(len, read_labels(y).values())) > 0
    assert len(list((y.parent / "labels" / "test").glob("*.txt"))) == 3


def test_seed_changes_images_and_folder(tmp_path):
    a = generate(TINY_A, tmp_path)
    b = generate(
        SyntheticSpec(images=6, val_images=3, test_images=3, imgsz=96, classes=4, seed=1), tmp_path
    )
    assert a.parent != b.parent
    ha, hb = file_hashes(a.parent), file_hashes(b.parent)
    pngs = [k for k in ha if k.endswith(".png")]
    assert all(ha[k] != hb[k] for k in pngs)


def test_digest_is_stable_and_covers_every_field():
    assert SyntheticSpec().digest() == SyntheticSpec().digest()
    variants = [
        SyntheticSpec(images=201),
        SyntheticSpec(val_images=51),
        SyntheticSpec(test_images=51),
        SyntheticSpec(imgsz=128),
        SyntheticSpec(classes=5),
        SyntheticSpec(seed=3),
        SyntheticSpec(clutter=0.5),
        SyntheticSpec(palette=0.5),
    ]
    digests = {s.digest() for s in variants} | {SyntheticSpec().digest()}
    assert len(digests) == len(variants) + 1


# --------------------------------------------------------------------------- the files


def test_layout_and_yaml(small_data):
    root = small_data.parent
    data = yaml.safe_load(small_data.read_text())
    assert data["path"] == str(root) and Path(data["path"]).is_absolute()
    assert data["train"] == "images/train" and data["val"] == "images/val"
    assert data["test"] == "images/test"
    assert data["names"] == {0: "disc", 1: "triangle", 2: "hstripes", 3: "vstripes"}
    assert len(list((root / "images/train").glob("*.png"))) == 40
    assert len(list((root / "images/val").glob("*.png"))) == 8
    assert len(list((root / "images/test").glob("*.png"))) == 8
    assert (root / synthetic.MARKER).is_file()


def test_labels_are_valid(small_data):
    labels = read_labels(small_data)
    assert len(labels) == 56  # every image has a label file
    for image, rows in labels.items():
        for row in rows:
            assert len(row) == 5, image
            cls, x, y, w, h = row
            assert cls == int(cls) and 0 <= cls < 4
            assert w > 0 and h > 0
            assert x - w / 2 >= -1e-6 and x + w / 2 <= 1 + 1e-6, (image, row)
            assert y - h / 2 >= -1e-6 and y + h / 2 <= 1 + 1e-6, (image, row)
    text = next(iter((small_data.parent / "labels/train").glob("*.txt"))).read_text()
    assert all(len(v.split(".")[1]) == 6 for v in text.split()[1:5])  # 6 decimals


def test_a_task_with_scales_classes_occlusion_and_borders(small_data):
    rows = [r for rs in read_labels(small_data).values() for r in rs]
    classes = {int(r[0]) for r in rows}
    sides = np.array([math.sqrt(r[3] * r[4]) for r in rows])  # relative to the image side
    assert classes == {0, 1, 2, 3}
    assert len(rows) >= 48 * 2  # several objects per image on average
    assert (sides < 0.15).mean() > 0.2  # small objects (< 24 px at 160)
    assert (sides > 0.3).mean() > 0.1  # large ones
    edges = [r for r in rows if min(r[1] - r[3] / 2, r[2] - r[4] / 2) < 1e-6]
    assert len(edges) > 5  # objects cut by the border, clipped to it
    assert _overlapping_pairs(read_labels(small_data)) > 10  # partial occlusion


def test_occluded_objects_stay_mostly_visible(small_data):
    """Label order is drawing order: a later object hides at most ~MAX_COVERED of an earlier
    object's box, so no label is of an invisible object."""
    for rows in read_labels(small_data).values():
        boxes = [(x - w / 2, y - h / 2, x + w / 2, y + h / 2) for _, x, y, w, h in rows]
        for i, old in enumerate(boxes):
            area = (old[2] - old[0]) * (old[3] - old[1])
            for new in boxes[i + 1 :]:
                iw = min(old[2], new[2]) - max(old[0], new[0])
                ih = min(old[3], new[3]) - max(old[1], new[1])
                assert max(iw, 0) * max(ih, 0) <= 0.5 * area


def _overlapping_pairs(labels) -> int:
    n = 0
    for rows in labels.values():
        boxes = [(x - w / 2, y - h / 2, x + w / 2, y + h / 2) for _, x, y, w, h in rows]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                n += min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
    return n


def test_stripe_classes_differ_only_in_orientation():
    """hstripes vary along y, vstripes along x (within +-20 deg): same rectangle, same hues."""
    for seed in range(5):
        spread = {}
        for vertical in (False, True):
            canvas = np.full((96, 96, 3), 128, np.float32)
            rng = np.random.default_rng(seed)
            mask = synthetic._draw_striped_box(canvas, rng, 96, (20, 20, 76, 76), (4, 5), vertical)
            assert mask.sum() == 57 * 57  # the whole rectangle, whatever the class
            patch = canvas[24:72, 24:72].mean(2)
            spread[vertical] = patch.mean(1).std(), patch.mean(0).std()  # along y, along x
        assert spread[False][0] > 2 * spread[False][1]
        assert spread[True][1] > 2 * spread[True][0]


def test_fewer_classes_use_the_first_names(tmp_path):
    spec = SyntheticSpec(images=20, val_images=2, test_images=2, imgsz=64, classes=2)
    y = generate(spec, tmp_path)
    assert yaml.safe_load(y.read_text())["names"] == {0: CLASS_NAMES[0], 1: CLASS_NAMES[1]}
    assert {int(r[0]) for rs in read_labels(y).values() for r in rs} == {0, 1}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"classes": 0}, "classes=0 must be an integer in 1..6"),
        ({"classes": 7}, "classes=7 must be an integer in 1..6"),
        ({"images": 0}, "images=0"),
        ({"test_images": 0}, "test_images=0 must be an integer in 1..1000000"),
        ({"imgsz": 16}, "imgsz=16 must be an integer in 32..4096"),
        ({"seed": -1}, "seed=-1"),
        ({"min_size": 0.5, "max_size": 0.2}, "min_size=0.5"),
        ({"palette": 2.0}, "palette=2.0"),
    ],
)
def test_spec_rejects_bad_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        SyntheticSpec(**kwargs)


def test_clip_box_clips_and_drops():
    assert clip_box((-10, 10, 30, 50), 100) == (0, 10, 30, 50)  # 3/4 inside: clipped
    assert clip_box((-30, 10, 10, 50), 100) is None  # 1/4 inside: dropped
    assert clip_box((120, 10, 150, 50), 100) is None  # all outside


# --------------------------------------------------------------------------- caching, atomicity


def test_complete_folder_is_reused_not_regenerated(tmp_path, monkeypatch):
    y = generate(TINY_A, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in y.parent.rglob("*")}

    def fail(*args):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synthetic, "_write_dataset", fail)
    assert generate(TINY_A, tmp_path) == y
    assert {p: p.stat().st_mtime_ns for p in y.parent.rglob("*")} == before


def test_crash_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def crash(spec, rng):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("crash")
        return np.zeros((spec.imgsz, spec.imgsz, 3), np.uint8), []

    monkeypatch.setattr(synthetic, "render_image", crash)
    with pytest.raises(RuntimeError):
        generate(TINY_A, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_folder_is_replaced(tmp_path):
    final = tmp_path / f"synthetic-{TINY_A.digest()}"
    (final / "images").mkdir(parents=True)  # e.g. copied by hand, no marker
    y = generate(TINY_A, tmp_path)
    assert (final / synthetic.MARKER).is_file() and len(list(final.rglob("*.png"))) == 12
    assert y == final / "data.yaml"


def test_moved_folder_gets_its_path_fixed(tmp_path):
    y = generate(TINY_A, tmp_path / "a")
    (tmp_path / "b").mkdir()
    moved = Path(shutil.move(y.parent, tmp_path / "b" / y.parent.name)) / "data.yaml"
    assert generate(TINY_A, tmp_path / "b") == moved
    assert yaml.safe_load(moved.read_text())["path"] == str(moved.parent)


def test_killed_processes_leftovers_are_removed(tmp_path):
    dead = _dead_pid()
    name = f".synthetic-{TINY_A.digest()}.tmp"
    mine = tmp_path / f"{name}-{synthetic._HOST}-{dead}-abcd1234"
    alive = tmp_path / f"{name}-{synthetic._HOST}-{os.getpid()}-abcd1234"
    other_host = tmp_path / f"{name}-elsewhere-{dead}-abcd1234"
    for d in (mine, alive, other_host):
        d.mkdir()
    generate(TINY_A, tmp_path)
    assert not mine.exists() and alive.exists() and other_host.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_losing_the_rename_race_uses_the_winner(tmp_path, monkeypatch):
    """Another process renamed its copy into place while we were writing ours."""
    winner = generate(TINY_A, tmp_path / "other")
    real_write = synthetic._write_dataset

    def write_then_lose(spec, tmp, final):
        real_write(spec, tmp, final)
        winner.parent.rename(final)  # the other process finishes first

    monkeypatch.setattr(synthetic, "_write_dataset", write_then_lose)
    y = generate(TINY_A, tmp_path)
    assert (y.parent / synthetic.MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name != "other"] == [y.parent.name]


def _generate_in_process(root: str) -> str:
    return str(generate(TINY_A, Path(root)))


def test_concurrent_processes_agree(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        paths = pool.map(_generate_in_process, [str(tmp_path)] * 2)
    assert paths[0] == paths[1]
    assert [p.name for p in tmp_path.iterdir()] == [f"synthetic-{TINY_A.digest()}"]
    reference = generate(TINY_A, tmp_path / "ref").parent
    assert file_hashes(Path(paths[0]).parent) == file_hashes(reference)


def test_generation_is_fast(tmp_path):
    import time

    t = time.perf_counter()
    generate(SyntheticSpec(images=100, val_images=25, test_images=25), tmp_path)
    assert time.perf_counter() - t < 5  # 150 images at 160 px take ~3 s on 2 busy cores


# --------------------------------------------------------------------------- calibration


@pytest.mark.slow
def test_tiny_configuration_learns(tmp_path):
    """The tiny configuration under the smoke preset's settings: about 30 s on 2 CPU cores,
    mAP50 about 0.95 when calibrated (0.25 already at epoch 9), so 0.1 has a wide margin."""
    from ultralytics import YOLO

    import dat_exp  # noqa: F401  (offline environment before Ultralytics)
    from dat_exp.trainer import DATDetectionTrainer

    data = generate(TINY_TRAIN, tmp_path / "data")
    metrics = YOLO("yolov8n.yaml").train(
        data=str(data),
        epochs=TINY_EPOCHS,
        imgsz=TINY_TRAIN.imgsz,
        batch=16,
        optimizer="AdamW",
        lr0=0.002,
        workers=0,
        amp=False,
        plots=False,
        device="cpu",
        seed=0,
        deterministic=True,
        project=str(tmp_path / "runs"),
        name="tiny",
        trainer=DATDetectionTrainer,
        verbose=False,
    )
    assert metrics.box.map50 >= 0.1

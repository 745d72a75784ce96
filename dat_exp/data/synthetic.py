"""The embedded default dataset: a small, deterministic, *not trivial* detection task.

Plain shapes on noise saturate within a few epochs, which leaves no room for a better model to
show. This task adds what makes detection hard: objects from 10% to 45% of the image side (a third
of them under 24 px at 160 px), textured backgrounds, clutter that is never labelled (lines,
outlines, polygons, striped look-alikes), partial occlusion, objects cut by the border, and a
class pair (``hstripes`` / ``vstripes``: the same rectangle in the same hues) that only the stripe
orientation across the whole object tells apart; the stripes are noisy, tilted up to 20 degrees,
and diagonally striped rectangles and striped ellipses in the same hues are among the decoys.
The other classes have a hue family (``palette``), a partial shortcut that lets a small model
learn within a few epochs while the stripe pair stays hard.

Calibrated for the ``smoke`` preset (YOLOv8n from scratch, CPU): mAP50 about 0.44 after 12
epochs and 0.53 after 20 on the default spec, with the stripe pair near 0.2.

Three disjoint splits: ``train``, ``val`` (picks the best epoch) and ``test`` (held out: the best
weights are evaluated on it once), 200 images each by default. Each picture is drawn from its own
generator seeded by (seed, split, index), so adding a split or images changes no other picture.

Written as Ultralytics YOLO-format folders plus ``data.yaml``; same spec -> same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

CLASS_NAMES: tuple[str, ...] = ("disc", "triangle", "hstripes", "vstripes", "cross", "ring")
# Hue families (hue in 0..6, i.e. units of 60 degrees). Both stripe classes share one, and so do
# the striped decoys: for that pair the colour says nothing, only the stripe orientation does.
HUES = {
    "disc": (0.0, 1.0),
    "triangle": (2.0, 3.0),
    "hstripes": (4.0, 5.0),
    "vstripes": (4.0, 5.0),
    "cross": (1.0, 2.0),
    "ring": (3.0, 4.0),
}
GENERATOR_VERSION = 2  # bump whenever the pictures change, so cached folders are not reused
MARKER = ".complete"  # written last: its presence means the folder is whole
SPLITS = ("train", "val", "test")  # the index is part of each picture's seed: append only
MIN_VISIBLE = 0.5  # an object cut by the border is labelled only if this much of its box is inside
MAX_COVERED = 0.35  # a later object may hide at most this much of an earlier object's box

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class SyntheticSpec:
    images: int = 200  # train images
    val_images: int = 200
    test_images: int = 200  # held out: evaluated once, on the val-selected best weights
    imgsz: int = 160
    classes: int = 4  # how many of CLASS_NAMES to use (the first N)
    seed: int = 0
    clutter: float = 1.0  # scales the number of unlabelled distractors
    max_objects: int = 8  # labelled objects per image: 1..max_objects
    min_size: float = 0.1  # object size range, as a fraction of the image side (log-uniform)
    max_size: float = 0.45
    palette: float = 0.9  # probability that an object takes its class's hue family

    def __post_init__(self) -> None:
        _check_range("classes", self.classes, 1, len(CLASS_NAMES))
        _check_range("images", self.images, 1, 1_000_000)
        _check_range("val_images", self.val_images, 1, 1_000_000)
        _check_range("test_images", self.test_images, 1, 1_000_000)
        _check_range("imgsz", self.imgsz, 32, 4096)
        _check_range("max_objects", self.max_objects, 1, 100)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an integer >= 0")
        if not isinstance(self.clutter, int | float) or not 0 <= self.clutter <= 10:
            raise ValueError(f"clutter={self.clutter!r} must be a number in [0, 10]")
        if not isinstance(self.palette, int | float) or not 0 <= self.palette <= 1:
            raise ValueError(f"palette={self.palette!r} must be a number in [0, 1]")
        sizes = (self.min_size, self.max_size)
        if not all(isinstance(v, int | float) for v in sizes) or not (
            0.01 <= self.min_size <= self.max_size <= 0.9
        ):
            raise ValueError(
                f"min_size={self.min_size!r}, max_size={self.max_size!r}: need "
                "0.01 <= min_size <= max_size <= 0.9"
            )

    @property
    def names(self) -> tuple[str, ...]:
        return CLASS_NAMES[: self.classes]

    def digest(self) -> str:
        """Short stable hash of the spec and generator version: the dataset folder's name."""
        key = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:10]


def _check_range(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} must be an integer in {lo}..{hi}")


def spec_from_mapping(cfg: Mapping[str, Any]) -> SyntheticSpec:
    """A spec from the keys of ``cfg`` that are SyntheticSpec fields (others are ignored)."""
    known = {f.name for f in fields(SyntheticSpec)}
    return SyntheticSpec(**{k: v for k, v in cfg.items() if k in known and v is not None})


# --------------------------------------------------------------------------- writing


def generate(spec: SyntheticSpec, root: Path) -> Path:
    """Write (or reuse) the dataset for ``spec`` under ``root``; returns its data.yaml path.

    Built in a temporary sibling folder and renamed into place, so a crash or a concurrent
    process never leaves a half-written dataset behind under the final name.
    """
    root = Path(root).resolve()
    final = root / f"synthetic-{spec.digest()}"
    if (final / MARKER).exists():
        return _ensure_path(final)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, final.name)
    tmp = root / f".{final.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_dataset(spec, tmp, final)
        _move_into_place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "data.yaml"


_HOST = socket.gethostname().replace("-", "_")


def _remove_stale_tmp(root: Path, name: str) -> None:
    """Temporary folders left by killed processes of this host (never another host's: the
    runs folder may be shared, and a pid there means nothing here)."""
    for tmp in root.glob(f".{name}.tmp-{_HOST}-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 2)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (PermissionError, ValueError):
            pass  # alive (someone else's), or not a name generate() makes


def _ensure_path(final: Path) -> Path:
    """data.yaml of a complete folder, its absolute ``path`` fixed if the folder was moved."""
    yaml_path = final / "data.yaml"
    data = yaml.safe_load(yaml_path.read_text())
    if data.get("path") != str(final):
        data["path"] = str(final)
        tmp = final / f".data.yaml.{os.getpid()}"
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, yaml_path)  # atomic: readers see the old or the new file
    return yaml_path


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists() and not (final / MARKER).exists():
        shutil.rmtree(final, ignore_errors=True)  # left by something other than generate()
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / MARKER).exists():  # not a lost race: a real failure
            raise
        # Lost the race to a concurrent process with the same spec: its folder is identical.


def _write_dataset(spec: SyntheticSpec, tmp: Path, final: Path) -> None:
    counts = {"train": spec.images, "val": spec.val_images, "test": spec.test_images}
    for split_id, split in enumerate(SPLITS):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(counts[split]):
            rng = np.random.default_rng([spec.seed, split_id, i])
            image, labels = render_image(spec, rng)
            stem = f"{split}_{i:05d}"
            Image.fromarray(image).save(tmp / "images" / split / f"{stem}.png", compress_level=1)
            (tmp / "labels" / split / f"{stem}.txt").write_text(format_labels(labels, spec.imgsz))
    data = {
        "path": str(final),
        **{split: f"images/{split}" for split in SPLITS},
        "names": dict(enumerate(spec.names)),
    }
    (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp / "spec.json").write_text(json.dumps(asdict(spec), sort_keys=True) + "\n")
    (tmp / MARKER).write_text(spec.digest() + "\n")


def format_labels(labels: list[tuple[int, Box]], size: int) -> str:
    """YOLO lines ``cls xc yc w h`` normalised, 6 decimals, from pixel xyxy boxes."""
    lines = []
    for cls, (x0, y0, x1, y1) in labels:
        xc, yc, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        lines.append(f"{cls} {xc / size:.6f} {yc / size:.6f} {w / size:.6f} {h / size:.6f}\n")
    return "".join(lines)


def clip_box(box: Box, size: int, min_visible: float = MIN_VISIBLE) -> Box | None:
    """The part of ``box`` inside the image, or None if less than ``min_visible`` of it is."""
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(size)), min(y1, float(size))
    area = (x1 - x0) * (y1 - y0)
    if cx1 <= cx0 or cy1 <= cy0 or area <= 0:
        return None
    if (cx1 - cx0) * (cy1 - cy0) < min_visible * area:
        return None
    return cx0, cy0, cx1, cy1


# --------------------------------------------------------------------------- one image


def render_image(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """One picture (HxWx3 uint8) and its labels ``[(cls, xyxy pixel box), ...]``."""
    size = spec.imgsz
    canvas = _background(rng, size)
    n_clutter = rng.poisson(6 * spec.clutter)
    for _ in range(n_clutter):  # beneath the objects
        _draw_distractor(canvas, rng, spec)
    labels = _draw_objects(canvas, rng, spec)
    for _ in range(rng.poisson(1.5 * spec.clutter)):  # on top: partial occluders
        _draw_line(canvas, rng, size)
    return np.clip(canvas, 0, 255).astype(np.uint8), labels


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency, muted colour field + grain, sometimes a faint full-image grating."""
    grid = rng.integers(3, 8)
    grey = rng.uniform(50, 205, (grid, grid, 1))
    coarse = np.clip(grey + rng.uniform(-25, 25, (grid, grid, 3)), 0, 255).astype(np.uint8)
    field = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float32
    )
    field = field + rng.normal(0, rng.uniform(4, 14), (size, size, 1)).astype(np.float32)
    if rng.random() < 0.4:
        angle, period = rng.uniform(0, math.pi), rng.uniform(3, 10)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        field += rng.uniform(6, 16) * _stripes(yy, xx, angle, period, rng.uniform(0, 2))[..., None]
    return field


def _stripes(yy, xx, angle: float, period: float, phase: float) -> np.ndarray:
    """A square wave in {-1, 1} at pixel coordinates (yy, xx), varying along ``angle``."""
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase
    return np.where(np.floor(t) % 2 == 0, 1.0, -1.0).astype(np.float32)


def _mask(size: int, draw_fn) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(img))
    return np.asarray(img) > 0


def _vivid_colour(canvas: np.ndarray, mask: np.ndarray, rng, hues: tuple[float, float]):
    """A saturated colour with hue in ``hues`` that stands out from what is under ``mask``.

    Objects (and the striped decoys) are vivid, plain clutter is muted like the background: that
    makes "is there an object" learnable in a few epochs and leaves the shape as the class cue.
    """
    return _contrasting(canvas, mask, lambda: _hsv(rng.uniform(*hues), rng))


def _muted_colour(canvas: np.ndarray, mask: np.ndarray, rng) -> np.ndarray:
    return _contrasting(canvas, mask, lambda: rng.uniform(30, 225) + rng.uniform(-25, 25, 3))


def _contrasting(canvas: np.ndarray, mask: np.ndarray, draw) -> np.ndarray:
    """The first of up to 8 colours from ``draw()`` at RGB distance >= 70 from the pixels under
    ``mask`` (else the last one): objects are never invisible, yet contrast varies."""
    under = canvas[mask].mean(0) if mask.any() else np.full(3, 128.0)
    for _ in range(8):
        colour = draw()
        if np.linalg.norm(colour - under) >= 70:
            break
    return colour.astype(np.float32)


def _hsv(hue: float, rng) -> np.ndarray:
    """RGB of ``hue`` (0..6) at saturation 0.6..1 and value 0.5..1."""
    sat, val = rng.uniform(0.6, 1), rng.uniform(0.5, 1)
    k = (np.array([5.0, 3.0, 1.0]) + hue) % 6
    return 255 * val * (1 - sat * np.clip(np.minimum(k, 4 - k), 0, 1))


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng, grain: float = 8) -> None:
    n = int(mask.sum())
    canvas[mask] = colour + rng.normal(0, grain, (n, 1)).astype(np.float32)


def _paint_striped(canvas, mask, rng, hues, angle: float, period: float) -> None:
    """Two-tone stripes with a moderate, random contrast (the orientation pair's texture)."""
    base = _vivid_colour(canvas, mask, rng, hues)
    contrast = rng.uniform(30, 70) * rng.choice([-1.0, 1.0])
    yy, xx = (c.astype(np.float32) for c in np.nonzero(mask))  # row-major, like canvas[mask]
    wave = _stripes(yy, xx, angle, period, rng.uniform(0, 2))[:, None]
    noise = rng.normal(0, 10, (int(mask.sum()), 1)).astype(np.float32)
    canvas[mask] = base + contrast / 2 * wave + noise


# --------------------------------------------------------------------------- labelled objects


def _draw_objects(canvas: np.ndarray, rng, spec: SyntheticSpec) -> list[tuple[int, Box]]:
    """Objects in random order; each label is the tight pixel box of its drawn shape (inside the
    image), so it is exact for every shape and scale, and later objects may occlude it."""
    size, slots, labels = spec.imgsz, [], []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        cls = int(rng.integers(0, spec.classes))
        slot = _place(rng, spec, slots, square=cls in (1, 4))
        if slot is None:
            continue
        name = CLASS_NAMES[cls]
        hues = HUES[name] if rng.random() < spec.palette else (0.0, 6.0)
        mask = _DRAW[name](canvas, rng, size, slot, hues)
        if mask.any():
            slots.append(slot)
            labels.append((cls, _mask_box(mask)))
    return labels


def _mask_box(mask: np.ndarray) -> Box:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _place(rng, spec: SyntheticSpec, others: list[Box], square: bool) -> Box | None:
    """A box at a log-uniform scale that may stick out of the image (at most half its area)
    and hides at most MAX_COVERED of any earlier object's box; None after 30 tries."""
    size = spec.imgsz
    lo, hi = math.log(spec.min_size * size), math.log(spec.max_size * size)
    for _ in range(30):
        s = math.exp(rng.uniform(lo, hi))
        w, h = (s, s) if square else (s * rng.uniform(0.7, 1.4), s * rng.uniform(0.7, 1.4))
        x0, y0 = rng.uniform(-0.4 * w, size - 0.6 * w), rng.uniform(-0.4 * h, size - 0.6 * h)
        box = (x0, y0, x0 + w, y0 + h)
        if clip_box(box, size) and all(_covered(o, box) <= MAX_COVERED for o in others):
            return box
    return None


def _covered(old: Box, new: Box) -> float:
    """Fraction of ``old``'s box area that ``new`` covers."""
    iw = min(old[2], new[2]) - max(old[0], new[0])
    ih = min(old[3], new[3]) - max(old[1], new[1])
    area = (old[2] - old[0]) * (old[3] - old[1])
    return max(iw, 0) * max(ih, 0) / area


def _draw_disc(canvas, rng, size: int, box: Box, hues) -> np.ndarray:
    mask = _mask(size, lambda d: d.ellipse(box, fill=1))
    _paint(canvas, mask, _vivid_colour(canvas, mask, rng, hues), rng)
    return mask


def _draw_ring(canvas, rng, size: int, box: Box, hues) -> np.ndarray:
    width = max(2, round(0.15 * min(box[2] - box[0], box[3] - box[1])))
    mask = _mask(size, lambda d: d.ellipse(box, outline=1, width=width))
    _paint(canvas, mask, _vivid_colour(canvas, mask, rng, hues), rng)
    return mask


def _draw_triangle(canvas, rng, size: int, box: Box, hues) -> np.ndarray:
    """A rotated, slightly irregular triangle inside ``box``."""
    pts = _polygon(rng, box, 3, jitter=0.15)
    mask = _mask(size, lambda d: d.polygon(pts, fill=1))
    _paint(canvas, mask, _vivid_colour(canvas, mask, rng, hues), rng)
    return mask


def _draw_cross(canvas, rng, size: int, box: Box, hues) -> np.ndarray:
    x0, y0, x1, y1 = box
    arm = rng.uniform(0.25, 0.4) * (x1 - x0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2

    def draw(d: ImageDraw.ImageDraw) -> None:
        d.rectangle((x0, cy - arm / 2, x1, cy + arm / 2), fill=1)
        d.rectangle((cx - arm / 2, y0, cx + arm / 2, y1), fill=1)

    mask = _mask(size, draw)
    _paint(canvas, mask, _vivid_colour(canvas, mask, rng, hues), rng)
    return mask


def _draw_striped_box(canvas, rng, size: int, box: Box, hues, vertical: bool) -> np.ndarray:
    """Same rectangle for both classes; only the stripe orientation (+-20 deg) differs."""
    mask = _mask(size, lambda d: d.rectangle(box, fill=1))
    n_stripes = rng.uniform(3, 6)
    period = max(2.0, min(box[2] - box[0], box[3] - box[1]) / n_stripes)
    angle = (0.0 if vertical else math.pi / 2) + math.radians(rng.uniform(-20, 20))
    _paint_striped(canvas, mask, rng, hues, angle, period)
    return mask


def _polygon(rng, box: Box, n: int, jitter: float) -> list[tuple[float, float]]:
    """``n`` vertices around the ellipse inscribed in ``box``, randomly rotated."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    start = rng.uniform(0, 2 * math.pi)
    angles = start + 2 * math.pi * np.arange(n) / n + rng.uniform(-jitter, jitter, n)
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


_DRAW = {
    "disc": _draw_disc,
    "triangle": _draw_triangle,
    "hstripes": lambda *a: _draw_striped_box(*a, vertical=False),
    "vstripes": lambda *a: _draw_striped_box(*a, vertical=True),
    "cross": _draw_cross,
    "ring": _draw_ring,
}


# --------------------------------------------------------------------------- clutter


def _draw_distractor(canvas: np.ndarray, rng, spec: SyntheticSpec) -> None:
    size = spec.imgsz
    kind = rng.integers(0, 5)
    if kind == 0:
        _draw_line(canvas, rng, size)
        return
    s = math.exp(rng.uniform(math.log(0.08 * size), math.log(0.35 * size)))
    x0, y0 = rng.uniform(-0.3 * s, size - 0.7 * s, 2)
    box = (x0, y0, x0 + s * rng.uniform(0.7, 1.4), y0 + s * rng.uniform(0.7, 1.4))
    if kind == 1:  # pentagon..octagon: disc-like only at a glance
        pts = _polygon(rng, box, int(rng.integers(5, 9)), jitter=0.1)
        mask = _mask(size, lambda d: d.polygon(pts, fill=1))
    elif kind == 2:  # rectangle outline
        mask = _mask(size, lambda d: d.rectangle(box, outline=1, width=int(rng.integers(1, 3))))
    else:  # striped decoys: ellipses with any stripes, rectangles with diagonal stripes
        shape = "ellipse" if kind == 3 else "rectangle"
        mask = _mask(size, lambda d: getattr(d, shape)(box, fill=1))
        angle = rng.uniform(0, math.pi) if kind == 3 else math.pi / 4 * rng.choice([1, 3])
        period = max(2.0, min(box[2] - box[0], box[3] - box[1]) / rng.uniform(3, 6))
        hues = HUES["hstripes"] if rng.random() < spec.palette else (0.0, 6.0)
        _paint_striped(canvas, mask, rng, hues, angle, period)
        return
    _paint(canvas, mask, _muted_colour(canvas, mask, rng), rng)


def _draw_line(canvas: np.ndarray, rng, size: int) -> None:
    pts = [tuple(p) for p in rng.uniform(-0.1 * size, 1.1 * size, (int(rng.integers(2, 4)), 2))]
    width = int(rng.integers(1, 4))
    mask = _mask(size, lambda d: d.line(pts, fill=1, width=width))
    _paint(canvas, mask, _muted_colour(canvas, mask, rng), rng, grain=4)

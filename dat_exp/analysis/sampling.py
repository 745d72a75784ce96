"""Where deformable attention looks: the reference grid and the deformed sampling positions of
each DAT module of a trained model over one image (figure 1 of the DAT paper), and for a few
query points the keys they attend to most.

Two pictures: :func:`sampling_figure` (one panel per module and offset group; the report's, of
the best DAT run) and :func:`attention_figure` (one panel per module; every finished DAT run
logs it as ``dat/sampling_points.png``, see :func:`run_picture`)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from mlflow import MlflowClient
from PIL import Image

from dat_exp.analysis.load import AnalysisError, download_artifact, resolve_tracking_uri, run_config
from dat_exp.analysis.plots import save_png
from dat_exp.env import runs_dir
from dat_exp.tracking import schema

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
WEIGHTS = "weights/best.pt"
ARTIFACT_DIR = "analysis"  # the report's picture of the best DAT run
FILENAME = "sampling_points.png"
RUN_ARTIFACT_DIR = schema.DAT.rstrip("/")  # every DAT run's own picture: dat/sampling_points.png
RUN_ARTIFACT = f"{RUN_ARTIFACT_DIR}/{FILENAME}"
# The query points of the per-run picture, as (y, x) fractions of the module's input map:
# spread over the map, not on one line.
QUERY_FRACTIONS = ((0.25, 0.25), (0.5, 0.75), (0.8, 0.4))
TOP_K = 6  # keys shown per query, by attention weight
QUERY_COLOURS = ("cyan", "magenta", "lime", "orange", "white", "yellow")
GROUP_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown")


@dataclass
class ModulePositions:
    """One DAttention's points for one image; arrays are ``(groups, Hk, Wk, 2)``, (y, x) in
    [-1, 1] over its input feature map of ``feature_hw``."""

    name: str
    layer: int | None
    feature_hw: tuple[int, int]
    reference: np.ndarray
    positions: np.ndarray
    attention: QueryAttention | None = None  # with ``record_positions(..., attention=True)``


@dataclass
class QueryAttention:
    """A few queries of one DAttention and the keys they attend to most. Points are (y, x) in
    [-1, 1] like :class:`ModulePositions`'; ``weights[q, j]`` is the attention of query ``q`` on
    key ``j`` averaged over all heads (a key of offset group ``g`` is sampled at that group's
    position and attended by that group's heads), so over every key of every group it sums to 1.
    """

    queries: np.ndarray  # (Q, 2)
    keys: np.ndarray  # (Q, k, 2)
    weights: np.ndarray  # (Q, k), highest first
    groups: np.ndarray  # (Q, k): the offset group of each key


# -- model and image -----------------------------------------------------------------------------
def load_checkpoint(path: Path) -> torch.nn.Module:
    from ultralytics import YOLO

    return YOLO(str(path)).model.float().eval()


def dat_modules(model: torch.nn.Module) -> list[tuple[str, Any]]:
    from dat_exp.nn import DAttention

    return [(name, m) for name, m in model.named_modules() if isinstance(m, DAttention)]


def letterbox(path: Path, size: int) -> np.ndarray:
    """The image padded to a square (YOLO's grey) and resized to ``size``: ``(size, size, 3)``."""
    image = Image.open(path).convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), (114, 114, 114))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR))


def record_positions(
    model: torch.nn.Module, image: np.ndarray, attention: bool = False, top_k: int = TOP_K
) -> list[ModulePositions]:
    """Run ``model`` once on ``image`` (uint8 HxWx3) with every DAttention recording; with
    ``attention``, also the ``top_k`` keys of a few query points (:data:`QUERY_FRACTIONS`)."""
    modules = dat_modules(model)
    if not modules:
        raise AnalysisError("the model has no DAttention module: nothing to picture")
    sizes: dict[str, tuple[int, int]] = {}
    found: dict[str, QueryAttention] = {}
    hooks = [m.register_forward_pre_hook(_size_hook(sizes, name)) for name, m in modules]
    if attention:
        for name, m in modules:
            hooks += _attention_hooks(m, found, name, top_k)
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    try:
        for _, m in modules:
            m.record_positions = True
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
        for _, m in modules:
            m.record_positions = False
    return [
        ModulePositions(
            name,
            _layer(name),
            sizes[name],
            *(t[: m.groups].float().cpu().numpy() for t in m.last_positions),
            found.get(name),
        )
        for name, m in modules
    ]


def _attention_hooks(m: Any, found: dict[str, QueryAttention], name: str, top_k: int) -> list:
    """Hooks on the module's query and key projections (their outputs are ``q`` and ``k``) and
    on the module (after its forward: the attention of a few queries from them)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[key] = out.detach()

        return hook

    def attend(module: Any, args: tuple, out: torch.Tensor) -> None:
        found[name] = query_attention(module, seen["q"], seen["k"], module.last_positions[1], top_k)

    return [
        m.proj_q.register_forward_hook(keep("q")),
        m.proj_k.register_forward_hook(keep("k")),
        m.register_forward_hook(attend),
    ]


def query_points(h: int, w: int, fractions=QUERY_FRACTIONS) -> list[tuple[int, int]]:
    """Query pixels ``(i, j)`` of an ``h x w`` map at ``fractions`` of it, without repeats."""
    points = [(round(fy * (h - 1)), round(fx * (w - 1))) for fy, fx in fractions]
    return list(dict.fromkeys(points))


def query_attention(
    m: Any, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, top_k: int = TOP_K
) -> QueryAttention:
    """The attention of a few queries of the first image, on DAttention's reference path
    (logits = scaled q . k + the position bias, softmax over the keys), from the module's own
    projections ``q`` (``B x C x H x W``), keys ``k`` (``B x C x Hk x Wk``) and sampled
    positions ``pos`` (``B*groups x Hk x Wk x 2``). Dropout and the fast path play no part."""
    _, _, h, w = q.shape
    heads, groups = m.heads, m.groups
    n = k.shape[-2] * k.shape[-1]
    points = query_points(h, w)
    index = [i * w + j for i, j in points]
    qh = q[:1].reshape(1, heads, m.head_dim, h * w)[..., index].float()
    kh = k[:1].reshape(1, heads, m.head_dim, n).float()
    logits = torch.einsum("bhdm,bhdn->bhmn", qh * m.scale, kh)
    bias = m._logit_bias(h, w, pos, q.dtype)  # (B or 1, heads, HW, N) or None
    if bias is not None:
        logits = logits + bias[:1, :, index].float()
    attn = logits.softmax(dim=-1)[0]  # (heads, Q, N)
    per_group = attn.reshape(groups, heads // groups, len(index), n).sum(1) / heads
    flat = per_group.permute(1, 0, 2).reshape(len(index), groups * n)  # (Q, groups * N)
    weights, where = flat.topk(min(top_k, groups * n), dim=-1)
    group, key = where // n, where % n
    keys = pos[:groups].reshape(groups, n, 2).float()[group, key]
    ys = torch.tensor([i for i, _ in points], dtype=torch.float32) / max(h - 1, 1) * 2 - 1
    xs = torch.tensor([j for _, j in points], dtype=torch.float32) / max(w - 1, 1) * 2 - 1
    return QueryAttention(
        torch.stack([ys, xs], dim=-1).numpy(),
        keys.cpu().numpy(),
        weights.cpu().numpy(),
        group.cpu().numpy(),
    )


def _size_hook(sizes: dict[str, tuple[int, int]], name: str) -> Any:
    def hook(module: torch.nn.Module, args: tuple) -> None:
        sizes[name] = tuple(args[0].shape[-2:])

    return hook


def _layer(name: str) -> int | None:
    """``model.10.attn`` -> 10 (Ultralytics' layer index)."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def to_pixels(points: np.ndarray, feature_hw: tuple[int, int], size: int) -> np.ndarray:
    """(y, x) in [-1, 1] -> image (x, y) pixels. grid_sample runs with align_corners=True, so
    -1 and 1 are the centres of the first and last feature pixels."""
    h, w = feature_hw
    y = ((points[..., 0] + 1) / 2 * (h - 1) + 0.5) * size / h
    x = ((points[..., 1] + 1) / 2 * (w - 1) + 0.5) * size / w
    return np.stack([x, y], axis=-1)


# -- the figure ----------------------------------------------------------------------------------
def sampling_figure(
    image: np.ndarray, records: list[ModulePositions], levels: dict[int, str] | None = None
) -> Figure:
    """One panel per module and offset group: the image, the reference grid (white rings), the
    sampled positions (red dots) and the offset from one to the other (yellow lines)."""
    cols = max(r.reference.shape[0] for r in records)
    fig = Figure(figsize=(3.4 * cols, 3.6 * len(records) + 0.4), layout="constrained")
    axes = fig.subplots(len(records), cols, squeeze=False)
    for row, record in zip(axes, records, strict=True):
        for g, ax in enumerate(row):
            if g < record.reference.shape[0]:
                _panel(ax, image, record, g, (levels or {}).get(record.layer, ""))
            else:
                ax.set_axis_off()
    fig.suptitle("DAT sampling points: reference grid (white) -> sampled positions (red)")
    return fig


def _panel(ax: Any, image: np.ndarray, record: ModulePositions, g: int, level: str) -> None:
    size = image.shape[0]
    ref = to_pixels(record.reference[g], record.feature_hw, size).reshape(-1, 2)
    pos = to_pixels(record.positions[g], record.feature_hw, size).reshape(-1, 2)
    ax.imshow(image, extent=(0, size, size, 0))
    ax.add_collection(LineCollection(np.stack([ref, pos], axis=1), colors="yellow", lw=0.8))
    ax.scatter(ref[:, 0], ref[:, 1], s=14, facecolors="none", edgecolors="white", lw=0.8)
    ax.scatter(pos[:, 0], pos[:, 1], s=10, c="red")
    # DAT++'s reference grid may reach past the map (it divides by Hk - 1): show every point
    points = np.concatenate([ref, pos])
    lo, hi = min(0.0, points.min()) - 0.05 * size, max(size, points.max()) + 0.05 * size
    ax.set_xlim(lo, hi)
    ax.set_ylim(hi, lo)
    hk, wk = record.reference.shape[1:3]
    groups = record.reference.shape[0]
    ax.set_title(f"layer {record.layer} {level} group {g + 1}/{groups}, {hk}x{wk} keys", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def attention_figure(
    image: np.ndarray, records: list[ModulePositions], levels: dict[int, str] | None = None
) -> Figure:
    """One panel per module (records from ``record_positions(..., attention=True)``): the image,
    the positions every offset group samples its keys at (small dots, one colour per group: the
    deformed grid, shared by all queries of the group), a few query points (stars) and, per
    query, its top keys by attention (rings sized by weight, joined to the query)."""
    cols = min(len(records), 3)
    rows = -(-len(records) // cols)
    width = max(4.6 * cols, 6.4)  # room for the title beside a single panel
    fig = Figure(figsize=(width, 4.8 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, record in zip(axes, records, strict=False):
        level = (levels or {}).get(record.layer) or _level(image.shape[0], record.feature_hw)
        _attention_panel(ax, image, record, level)
    for ax in axes[len(records) :]:
        ax.remove()  # exactly one axes per module
    fig.suptitle(
        "DAT: sampled key positions (dots, colour = offset group),\n"
        "query points (stars) and their top keys by attention (rings, size ~ weight)",
        fontsize=10,
    )
    return fig


def _level(size: int, feature_hw: tuple[int, int]) -> str:
    """The pyramid level of a map of ``feature_hw`` in an image of side ``size``: ``P5``."""
    return f"P{round(np.log2(size / max(feature_hw[0], 1)))}"


def _attention_panel(ax: Any, image: np.ndarray, record: ModulePositions, level: str) -> None:
    size = image.shape[0]
    ax.imshow(image, extent=(0, size, size, 0))
    groups, hk, wk = record.positions.shape[:3]
    shown = []
    for g in range(groups):
        pos = to_pixels(record.positions[g], record.feature_hw, size).reshape(-1, 2)
        colour = GROUP_COLOURS[g % len(GROUP_COLOURS)]
        ax.scatter(pos[:, 0], pos[:, 1], s=9, color=colour, alpha=0.75, lw=0)
        shown.append(pos)
    found = record.attention
    if found is not None:
        queries = to_pixels(found.queries, record.feature_hw, size)
        for qi, (query, keys, weights) in enumerate(
            zip(queries, found.keys, found.weights, strict=True)
        ):
            colour = QUERY_COLOURS[qi % len(QUERY_COLOURS)]
            keys = to_pixels(keys, record.feature_hw, size)
            segments = np.stack([np.broadcast_to(query, keys.shape), keys], axis=1)
            ax.add_collection(LineCollection(segments, colors=colour, lw=0.7, alpha=0.8))
            sizes = 40 + 400 * weights / max(float(found.weights.max()), 1e-12)
            ax.scatter(keys[:, 0], keys[:, 1], s=sizes, facecolors="none", edgecolors=colour)
            ax.scatter(*query, s=160, marker="*", color=colour, edgecolors="black", lw=0.6)
            shown += [keys, query[None]]
    points = np.concatenate(shown)
    lo, hi = min(0.0, points.min()) - 0.03 * size, max(size, points.max()) + 0.03 * size
    ax.set_xlim(lo, hi)
    ax.set_ylim(hi, lo)
    top = f", top {found.keys.shape[1]} keys" if found is not None else ""
    ax.set_title(
        f"layer {record.layer} {level}: {record.feature_hw[0]}x{record.feature_hw[1]} map, "
        f"{groups} group(s) x {hk}x{wk} keys{top}",
        fontsize=9,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def run_picture(weights: Path, data_yaml: Path, imgsz: int, out: Path) -> Path | None:
    """A finished run's own picture (:func:`attention_figure`) from its local weights, over the
    first validation image of ``data_yaml`` letterboxed to ``imgsz``, written to ``out``; None
    (and nothing written) when the model has no DAttention (placement none)."""
    model = load_checkpoint(Path(weights))
    if not dat_modules(model):
        return None
    image = _first_val_image(Path(data_yaml))
    if image is None:
        raise AnalysisError(f"no validation image in {data_yaml}")
    picture = letterbox(image, int(imgsz))
    return save_png(attention_figure(picture, record_positions(model, picture, True)), out)


# -- a logged run --------------------------------------------------------------------------------
def validation_image(tracking_uri: str, run_id: str) -> Path:
    """The first image of the validation split of the dataset the run trained on (the data YAML
    it logged as its dataset input, or the one its config resolves to)."""
    for data_yaml in _data_yamls(tracking_uri, run_id):
        image = _first_val_image(data_yaml)
        if image is not None:
            return image
    raise AnalysisError(f"no validation image found for run {run_id}: pass an image path")


def _data_yamls(tracking_uri: str, run_id: str) -> list[Path]:
    run = MlflowClient(tracking_uri).get_run(run_id)
    found = []
    for entry in run.inputs.dataset_inputs if run.inputs else []:
        try:
            found.append(Path(json.loads(entry.dataset.source)["uri"]))
        except (ValueError, KeyError, TypeError):
            continue
    cfg = run_config(tracking_uri, run_id)
    try:
        from dat_exp.data import resolve_dataset

        if cfg is not None:
            found.append(Path(resolve_dataset(cfg["data"], runs_dir())))
    except Exception:  # noqa: BLE001  (a fallback only: the dataset may be gone or not local)
        pass
    return [p for p in found if p.is_file()]


def _first_val_image(data_yaml: Path) -> Path | None:
    data = yaml.safe_load(data_yaml.read_text()) or {}
    root = Path(data.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = data_yaml.parent / root
    val = data.get("val")
    for entry in val if isinstance(val, list) else [val]:
        where = root / str(entry)
        if where.is_dir():
            images = sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if images:
                return images[0]
        elif where.is_file() and where.suffix == ".txt":  # a list of image paths
            lines = [line.strip() for line in where.read_text().splitlines() if line.strip()]
            if lines:
                return (root / lines[0]).resolve()
    return None


def levels_of(params: dict[str, str]) -> dict[int, str]:
    """Layer index -> pyramid level, from the run's ``module.i.layer`` / ``.level`` params."""
    out = {}
    for key, layer in params.items():
        if key.startswith("module.") and key.endswith(".layer"):
            level = params.get(key[: -len("layer")] + "level")
            if level and str(layer).isdigit():
                out[int(layer)] = level
    return out


def sampling_picture(
    run_id: str,
    tracking_uri: str | None = None,
    image: Path | None = None,
    out_dir: Path | None = None,
    log: bool = True,
) -> Path:
    """Download the run's ``weights/best.pt``, picture its DAT sampling points over ``image``
    (default: the first validation image), write the PNG, and log it to the run under
    ``analysis/``. Returns the PNG's path."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        weights = download_artifact(uri, run_id, WEIGHTS, Path(tmp))
        if weights is None:
            raise AnalysisError(f"run {run_id} has no {WEIGHTS} artifact (log_weights=false?)")
        model = load_checkpoint(weights)
    size = int((run_config(uri, run_id) or {}).get("train", {}).get("imgsz") or 640)
    picture = letterbox(Path(image) if image else validation_image(uri, run_id), size)
    fig = sampling_figure(picture, record_positions(model, picture), levels_of(run.data.params))
    out_dir = Path(out_dir) if out_dir else runs_dir() / "reports" / "sampling" / run_id
    path = save_png(fig, out_dir / FILENAME)
    if log:
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    return path

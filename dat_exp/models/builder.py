"""YAML surgery: a stock Ultralytics YAML + placement + DAT settings -> a model YAML on disk.

Inserting a layer shifts every later index and every ``from`` reference; this module does the
shift, rewires the consumers the placement names, and proves the result (Detect reads strides
8/16/32 with the stock channels).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dat_exp.models.placements import (
    BASES,
    LEVELS,
    Base,
    check_placement,
    target_layer,
)
from dat_exp.nn.presets import level_settings
from dat_exp.nn.settings import BLOCK_KEYS

CHANNEL_MODULES = {"Conv", "C2f", "C3k2", "SPPF", "C2PSA"}  # first YAML arg = output channels


@dataclass
class InsertedModule:
    """One DAT module of a built model, for logging."""

    index: int  # layer index in the new YAML
    level: str
    channels: int
    settings: dict[str, Any]


@dataclass
class BuiltModel:
    yaml_path: Path
    cfg: dict[str, Any]
    base: str
    scale: str
    index_map: dict[int, int]  # stock layer index -> index in the new YAML
    modules: list[InsertedModule] = field(default_factory=list)
    model: Any = None  # the DetectionModel built from the YAML, for model facts


def split_model_name(name: str) -> tuple[str, str]:
    """``yolov8n`` -> (``yolov8``, ``n``), checked against the bases and their scales."""
    match = re.fullmatch(r"(yolov8|yolo11)([a-z]?)", name)
    valid = [f"{b}{s}" for b in BASES for s in "nsmlx"]
    if not match or match.group(1) not in BASES:
        raise ValueError(f"model={name!r} is not one of {', '.join(valid)}")
    base, scale = match.groups()
    scales = stock_yaml(base)["scales"]
    if scale not in scales:
        raise ValueError(
            f"model={name!r}: base {base} has no scale {scale!r}; it has {', '.join(scales)}"
        )
    return base, scale


def stock_yaml(base: str) -> dict[str, Any]:
    """Ultralytics' own YAML for a base, read from the installed package (no download)."""
    import ultralytics

    if base not in BASES:
        raise ValueError(f"base {base!r} is not one of {', '.join(BASES)}")
    roots = Path(ultralytics.__file__).parent / "cfg" / "models"
    path = next(roots.rglob(BASES[base].yaml))
    return yaml.safe_load(path.read_text())


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(-(-x // divisor) * divisor)


def layer_channels(layers: list, width: float, max_channels: int) -> list[int]:
    """Output channels of each stock layer, as Ultralytics' ``parse_model`` computes them."""
    ch: list[int] = []
    for f, _, m, args in layers:
        if m in CHANNEL_MODULES:
            ch.append(make_divisible(min(args[0], max_channels) * width, 8))
        elif m == "Concat":
            ch.append(sum(ch[x] for x in f))
        elif m == "Detect":
            ch.append(0)
        else:  # nn.Upsample and friends keep their input's channels
            ch.append(ch[f] if ch else 3)
    return ch


def stock_channels(base: str, scale: str) -> tuple[list, list[int]]:
    """The stock layers of a base and each one's output channels at ``scale``."""
    cfg = stock_yaml(base)
    _, width, max_channels = cfg["scales"][scale]
    stock = cfg["backbone"] + cfg["head"]
    return stock, layer_channels(stock, width, max_channels)


def _plan(base: Base, placement: str, levels: tuple[str, ...]) -> dict[int, list[str]]:
    """Stock layer index -> levels whose module attaches there."""
    plan: dict[int, list[str]] = {}
    for level in levels:
        plan.setdefault(target_layer(base, placement, level), []).append(level)
    return plan


def _abs(f: int, i: int) -> int:
    return i + f if f < 0 else f


def build_yaml(
    model: str,
    nc: int,
    placement: str = "none",
    levels: list[str] | tuple[str, ...] | None = None,
    dat: dict[str, Any] | None = None,
    imgsz: int = 640,
) -> tuple[dict[str, Any], dict[int, int], list[tuple[int, str]]]:
    """The new YAML dict, the stock->new index map, and (new index, level) of each module."""
    base_name, scale = split_model_name(model)
    base = BASES[base_name]
    levels = check_placement(placement, levels)
    dat = dict(dat or {})
    cfg = stock_yaml(base_name)
    depth, width, max_channels = cfg["scales"][scale]
    stock = cfg["backbone"] + cfg["head"]
    ch = layer_channels(stock, width, max_channels)
    plan = _plan(base, placement, levels)
    n_backbone = len(cfg["backbone"])

    if placement == "c2f":
        stock = copy.deepcopy(stock)
        for i, lvls in plan.items():
            stock[i] = _dat_inside(base, stock[i], ch, i, scale, depth, imgsz, lvls[0], dat)
        inserted: list[tuple[int, str]] = [(i, lvls[0]) for i, lvls in plan.items()]
        return (
            _assemble(cfg, stock, n_backbone, nc, scale),
            {i: i for i in range(len(stock))},
            inserted,
        )

    new_layers: list[list] = []
    index_map: dict[int, int] = {}
    dat_after: dict[
        int, int
    ] = {}  # stock index -> new index of the DAT that replaces it for readers
    head_branch: dict[int, int] = {}  # stock index -> new index of a Detect-only DAT branch
    inserted = []
    new_backbone = n_backbone
    detect = len(stock) - 1
    for i, layer in enumerate(stock):
        if i == detect and placement == "head":
            for src in stock[detect][0]:
                level = next(lv for lv in levels if base.neck[lv] == src) if src in plan else None
                if level:
                    head_branch[src] = len(new_layers)
                    new_layers.append(_dat_row(src, ch[src], level, imgsz, dat))
                    inserted.append((len(new_layers) - 1, level))
        index_map[i] = len(new_layers)
        new_layers.append(copy.deepcopy(layer))
        if placement != "head" and i in plan:
            dat_after[i] = len(new_layers)
            new_layers.append(_dat_row(i, ch[i], plan[i][0], imgsz, dat))
            inserted.append((len(new_layers) - 1, plan[i][0]))
            if i < n_backbone:
                new_backbone += 1

    # Rewire: every ``from`` points at the new index of what it read, or at the DAT output.
    readers = {new_index for new_index, _ in inserted}
    for i, layer in enumerate(stock):
        row = new_layers[index_map[i]]
        sources = layer[0] if isinstance(layer[0], list) else [layer[0]]
        remapped = []
        if i == 0:
            continue  # the first layer reads the image
        for f in sources:
            a = _abs(f, i)
            if i == detect and a in head_branch:
                remapped.append(head_branch[a])
            else:
                remapped.append(dat_after.get(a, index_map[a]))
        # Ultralytics' own style: Detect lists absolute indices, other layers say -1 for "previous"
        relative = remapped if i == detect else [_relative(r, index_map[i]) for r in remapped]
        row[0] = relative if isinstance(layer[0], list) else relative[0]
    for new_index in readers:
        row = new_layers[new_index]
        row[0] = _relative(index_map[row[0]], new_index)
    return _assemble(cfg, new_layers, new_backbone, nc, scale), index_map, inserted


def _relative(target: int, at: int) -> int:
    return -1 if target == at - 1 else target


def _dat_row(src: int, channels: int, level: str, imgsz: int, dat: dict) -> list:
    # ``from`` holds the stock source index until the rewiring pass resolves it.
    return [src, 1, "DATBlock", [channels, level_settings(level, channels, imgsz, dat)]]


def _dat_inside(
    base: Base,
    layer: list,
    ch: list[int],
    i: int,
    scale: str,
    depth: float,
    imgsz: int,
    level: str,
    dat: dict,
) -> list:
    f, n, m, args = layer
    c1, c2 = ch[_abs(f, i)], ch[i]
    if c1 != c2:
        raise ValueError(
            f"placement=c2f at {level} of {base.yaml.removesuffix('.yaml')}: its {m} (layer {i}) "
            f"changes channels {c1}->{c2}, which Ultralytics' parser cannot record for a custom "
            f"layer; choose levels without {level} or base yolov8"
        )
    settings = level_settings(level, None, imgsz, dat)
    for key in BLOCK_KEYS:  # the bottleneck's own residual wraps it: DAttention's keys only
        settings.pop(key)
    n = max(round(n * depth), 1) if n > 1 else n
    if m == "C2f":
        shortcut = args[1] if len(args) > 1 else False
        return [f, 1, "C2fDAT", [c1, c2, n, shortcut, 1, C2F_E, settings]]
    c3k, e = _c3k2_args(args, scale)
    return [f, 1, "C3k2DAT", [c1, c2, n, c3k, e, False, 1, True, settings]]


C2F_E = 0.5  # C2fDAT's expansion: its bottlenecks are half the block's width


def _c3k2_args(args: list, scale: str) -> tuple[bool, float]:
    """``(c3k, e)`` of a stock C3k2 row, as Ultralytics' parser sets them per scale."""
    c3k = True if scale in "mlx" else (args[1] if len(args) > 1 else False)
    return bool(c3k), args[2] if len(args) > 2 else 0.5


def _inner_width(layer: list, c2: int, scale: str) -> int:
    """Channels of the last bottleneck of a ``c2f`` block (what its DAttention works on)."""
    if layer[2] == "C2f":
        return int(c2 * C2F_E)
    c3k, e = _c3k2_args(layer[3], scale)
    hidden = int(c2 * e)
    return int(hidden * 0.5) if c3k else hidden  # C3k halves again (its own e=0.5)


def dat_channels(
    model: str, placement: str, levels: list[str] | tuple[str, ...] | None = None
) -> dict[str, int]:
    """Channels of the map each DAT module of ``placement`` works on, by level (inside a ``c2f``
    block: its last bottleneck's width); for ``none``, of every level Detect reads."""
    base_name, scale = split_model_name(model)
    base = BASES[base_name]
    stock, ch = stock_channels(base_name, scale)
    if placement == "none":
        return {level: ch[base.neck[level]] for level in LEVELS}
    out = {}
    for level in check_placement(placement, levels):
        i = target_layer(base, placement, level)
        out[level] = _inner_width(stock[i], ch[i], scale) if placement == "c2f" else ch[i]
    return out


def _assemble(cfg: dict, layers: list, n_backbone: int, nc: int, scale: str) -> dict[str, Any]:
    return {
        "nc": nc,
        "scale": scale,
        "scales": cfg["scales"],
        "backbone": layers[:n_backbone],
        "head": layers[n_backbone:],
    }


def config_digest(obj: Any, length: int = 10) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def build(
    model: str,
    nc: int,
    out_dir: str | Path,
    placement: str = "none",
    levels: list[str] | tuple[str, ...] | None = None,
    dat: dict[str, Any] | None = None,
    imgsz: int = 640,
) -> BuiltModel:
    """Write the model YAML (its file name carries the scale letter, which Ultralytics reads),
    build it once to prove the wiring, and describe each inserted module as built."""
    from ultralytics.nn.tasks import DetectionModel

    base, scale = split_model_name(model)
    cfg, index_map, inserted = build_yaml(model, nc, placement, levels, dat, imgsz)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = "".join(lv for _, lv in inserted)
    path = out / f"{model}-{placement}{'-' + tag if tag else ''}-{config_digest(cfg)}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
    torch_model = DetectionModel(str(path), nc=nc, verbose=False)
    check_detect_inputs(torch_model, base, scale)
    modules = [describe_module(torch_model.model[i], i, level) for i, level in inserted]
    return BuiltModel(path, cfg, base, scale, index_map, modules, torch_model)


def check_detect_inputs(model: Any, base: str, scale: str) -> None:
    """Detect must read strides 8/16/32 with the stock model's channels."""
    stock, ch = stock_channels(base, scale)
    expected = [ch[i] for i in stock[-1][0]]
    detect = model.model[-1]
    got = [branch[0].conv.in_channels for branch in detect.cv2]
    strides = [int(s) for s in model.stride]
    if strides != [8, 16, 32] or got != expected:
        raise RuntimeError(
            f"miswired model: Detect reads strides {strides} with channels {got}; "
            f"expected [8, 16, 32] with {expected}"
        )


def describe_module(layer: Any, index: int, level: str) -> InsertedModule:
    """The settings a DAT module was actually built with."""
    from dat_exp.nn import DATBlock, DAttention

    attn = next(m for m in layer.modules() if isinstance(m, DAttention))
    wrap = layer.wrap if isinstance(layer, DATBlock) else "inside"
    settings = {
        "feat_size": list(attn.feat_size),
        "heads": attn.heads,
        "groups": attn.groups,
        "stride": attn.stride,
        "ksize": attn.ksize,
        "offset_range_factor": attn.offset_range_factor,
        "pe": attn.pe,
        "no_off": attn.no_off,
        "ref_points": attn.ref_points,
        "impl": attn.impl,
        "wrap": wrap,
    }
    return InsertedModule(index, level, attn.channels, settings)

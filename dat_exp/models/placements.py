"""Where each placement puts DAT, per base model (indices of Ultralytics' own YAMLs)."""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("P3", "P4", "P5")
LEVEL_STRIDES = {"P3": 8, "P4": 16, "P5": 32}


@dataclass(frozen=True)
class Base:
    """Layer indices of one Ultralytics base YAML."""

    yaml: str
    block: str  # the residual block type of the backbone: C2f (v8) or C3k2 (v11)
    backbone: dict[str, int]  # last backbone block per level
    sppf: int
    neck: dict[str, int]  # last neck block per level (Detect's inputs)


BASES = {
    "yolov8": Base(
        yaml="yolov8.yaml",
        block="C2f",
        backbone={"P3": 4, "P4": 6, "P5": 8},
        sppf=9,
        neck={"P3": 15, "P4": 18, "P5": 21},
    ),
    "yolo11": Base(
        yaml="yolo11.yaml",
        block="C3k2",
        backbone={"P3": 4, "P4": 6, "P5": 8},
        sppf=9,
        neck={"P3": 16, "P4": 19, "P5": 22},
    ),
}

# placement -> levels it has
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "backbone": LEVELS,
    "c2f": LEVELS,
    "sppf": ("P5",),
    "neck": LEVELS,
    "head": LEVELS,
}


def check_placement(placement: str, levels: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate a placement and its levels; ``None`` or empty means all the placement has."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} is not one of {', '.join(PLACEMENTS)}")
    valid = PLACEMENTS[placement]
    for level in levels or ():
        if level not in LEVELS:
            raise ValueError(f"level {level!r} is not one of {', '.join(LEVELS)}")
        if level not in valid:
            have = ", ".join(valid) or "no levels"
            raise ValueError(f"placement={placement} has no level {level}; it has {have}")
    chosen = tuple(level for level in LEVELS if level in (levels or valid))
    return chosen


def target_layer(base: Base, placement: str, level: str) -> int:
    """The stock layer a placement's module at ``level`` attaches to."""
    if placement in ("backbone", "c2f"):
        return base.backbone[level]
    if placement == "sppf":
        return base.sppf
    return base.neck[level]

"""Which dataset a run trains on, and proof that it is usable, before any training starts.

Nothing here downloads: Ultralytics' ``check_det_dataset`` would fetch a missing dataset, so the
bundled ones (coco8, coco, VOC) are used only when their images are already on disk, and every
dataset's YAML, image folders and label files are checked here with messages that say what to do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ultralytics.data.utils import IMG_FORMATS  # the suffixes its loader takes as images

from dat_exp.data.synthetic import generate, spec_from_mapping

DATA_CHOICES = ("synthetic", "coco8", "coco", "VOC", "custom")
BUILTIN = ("coco8", "coco", "VOC")  # bundled with Ultralytics as YAMLs; the images are not
OFFLINE_HINT = "use data=synthetic, or data=custom data.path=<Ultralytics data YAML>"
NO_TEST = "the data YAML has no test split"


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the bad value and what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    nc: int
    names: tuple[str, ...]
    train_images: int
    val_images: int
    yaml_path: Path
    test_images: int = 0  # the held-out split's images; 0 when it is not used
    test_skipped: str | None = NO_TEST  # why the test split is not used (one line); None: used


# --------------------------------------------------------------------------- resolution


def resolve_dataset(data_cfg: Mapping[str, Any], runs_dir: Path) -> Path:
    """The checked data YAML for ``data_cfg`` (keys: name, path, and the synthetic spec's)."""
    name = data_cfg.get("name")
    if name == "synthetic":
        return _resolve_synthetic(data_cfg, Path(runs_dir))
    if name == "custom":
        return _resolve_custom(data_cfg.get("path"))
    if name in BUILTIN:
        return _resolve_builtin(name, data_cfg.get("path"), Path(runs_dir))
    raise DatasetError(f"data={name!r} is not one of {', '.join(DATA_CHOICES)}")


def _resolve_synthetic(data_cfg: Mapping[str, Any], runs_dir: Path) -> Path:
    try:
        spec = spec_from_mapping(dict(data_cfg))
    except (TypeError, ValueError) as e:
        raise DatasetError(f"data=synthetic: {e}") from e
    yaml_path = generate(spec, runs_dir / "datasets")
    check_dataset(yaml_path)
    return yaml_path


def _resolve_custom(path: Any) -> Path:
    if not path:
        raise DatasetError("data=custom needs data.path=<Ultralytics data YAML>")
    yaml_path = Path(str(path)).expanduser().resolve()
    check_dataset(yaml_path)
    return yaml_path


def _resolve_builtin(name: str, root: Any, runs_dir: Path) -> Path:
    """Ultralytics' bundled YAML, pointed at images already on disk: ``data.path`` if given,
    else Ultralytics' ``datasets_dir`` setting joined with the YAML's ``path``."""
    from ultralytics.utils import ROOT, SETTINGS  # after dat_exp's offline environment

    data = _load_yaml(ROOT / "cfg" / "datasets" / f"{name}.yaml")
    if root:
        where, source = Path(str(root)).expanduser().resolve(), "data.path"
    else:
        where = (Path(SETTINGS["datasets_dir"]) / str(data["path"])).resolve()
        source = f"Ultralytics' datasets_dir setting + {data['path']!r}"
    splits = [where / p for key in ("train", "val") for p in _as_list(data.get(key))]
    if not all(p.exists() for p in splits):
        raise DatasetError(
            f"data={name}: the dataset is not on disk at {where} ({source}); downloads need "
            f"internet and are off at run time: {OFFLINE_HINT}"
        )
    data = {k: v for k, v in data.items() if k not in ("download", "yaml_file")}
    data["path"] = str(where)  # absolute, so Ultralytics never looks (or downloads) elsewhere
    out = runs_dir / "datasets" / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, out)  # atomic: a concurrent run reads a whole file
    check_dataset(out)
    return out


# --------------------------------------------------------------------------- checks


def check_dataset(yaml_path: Path) -> DatasetInfo:
    """Check a detection data YAML the way training would read it, without downloading."""
    yaml_path = Path(yaml_path)
    data = _load_yaml(yaml_path)
    for key in ("train", "val", "names"):
        if data.get(key) in (None, "", []) and not (key == "names" and "nc" in data):
            raise DatasetError(f"{yaml_path}: missing key {key!r} (train, val and names needed)")
    names = _names(data, yaml_path)
    root = _dataset_root(data, yaml_path)
    counts, fitted = {}, []
    for split in ("train", "val"):
        images = _image_files(data[split], root, yaml_path, split)
        _check_labels(images, len(names), yaml_path, split)
        counts[split] = len(images)
        fitted += images
    n_test, skipped = _test_split(data, root, yaml_path, len(names), fitted)
    return DatasetInfo(
        len(names), names, counts["train"], counts["val"], yaml_path, n_test, skipped
    )


def _test_split(
    data: dict[str, Any], root: Path, yaml_path: Path, nc: int, fitted: list[Path]
) -> tuple[int, str | None]:
    """The test split's size, or 0 and why it is not used. Held out means labelled and shared
    with neither train nor val (Ultralytics' VOC.yaml lists test2007 as val and as test, COCO's
    test-dev has no labels). Only train and val are required: a broken entry is a reason too."""
    if data.get("test") in (None, "", []):
        return 0, NO_TEST
    try:
        images = _image_files(data["test"], root, yaml_path, "test")
        _check_labels(images, nc, yaml_path, "test")
    except DatasetError as err:
        return 0, str(err).removeprefix(f"{yaml_path}: ")
    seen = {p.resolve() for p in fitted}  # resolved: a link or a .txt list may name a file twice
    shared = [p for p in images if p.resolve() in seen]
    if shared:
        return 0, (
            f"{len(shared)} of the {len(images)} test images are also in train or val, "
            f"e.g. {shared[0]}"
        )
    return len(images), None


def _yaml_problem(err: Exception) -> str:
    """One line: PyYAML draws the place of a problem over several lines."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None and getattr(err, "problem", None):
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"data YAML {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid YAML ({_yaml_problem(e)})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with train, val and names keys")
    return data


def _names(data: dict[str, Any], yaml_path: Path) -> tuple[str, ...]:
    """``names`` as a list or a mapping with the keys 0..nc-1, or just ``nc`` (Ultralytics'
    three forms); ``nc`` and ``names`` must agree when both are given."""
    names, nc = data.get("names"), _int_or_none(data.get("nc"))
    if names is None and nc and nc > 0:
        return tuple(f"class_{i}" for i in range(nc))
    keyed = dict(enumerate(names)) if isinstance(names, list) else _int_keys(names)
    if keyed is None or sorted(keyed) != list(range(len(keyed))) or not keyed:
        raise DatasetError(f"{yaml_path}: names must be a list or a mapping 0..nc-1, not {names!r}")
    if nc is not None and nc != len(keyed):
        raise DatasetError(f"{yaml_path}: nc={data['nc']!r} but names has {len(keyed)} entries")
    return tuple(str(keyed[i]) for i in range(len(keyed)))


def _int_keys(names: Any) -> dict[int, Any] | None:
    try:
        return {int(k): v for k, v in names.items()}
    except (AttributeError, TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and float(value) == int(value) else None
    except (TypeError, ValueError):
        return None


def _dataset_root(data: dict[str, Any], yaml_path: Path) -> Path:
    """Ultralytics' rule: ``path`` (relative: to the working dir if it exists there, else to
    its datasets_dir), or the YAML's folder when there is no ``path``."""
    if not data.get("path"):
        return yaml_path.parent.resolve()
    root = Path(str(data["path"])).expanduser()
    if root.is_absolute() or root.exists():
        return root.resolve()
    from ultralytics.utils import SETTINGS

    return (Path(SETTINGS["datasets_dir"]) / root).resolve()


def _image_files(entry: Any, root: Path, yaml_path: Path, split: str) -> list[Path]:
    """Images of a split given as a folder, a .txt list of images, or a list of those."""
    files: list[Path] = []
    for item in _as_list(entry):
        path = (root / str(item)).resolve()
        if path.is_dir():
            found = [p for p in _walk(path) if p.suffix[1:].lower() in IMG_FORMATS]
        elif path.is_file() and path.suffix == ".txt":
            found = _listed_images(path)
        elif path.is_file():
            raise DatasetError(
                f"{yaml_path}: {split}: {item!r} is a file but not a .txt list of images; "
                "give a folder of images, a .txt list, or a list of those"
            )
        else:
            raise DatasetError(
                f"{yaml_path}: {split} folder {path} does not exist (from {split}: {item!r}, "
                f"relative to {root})"
            )
        if not found:
            raise DatasetError(f"{yaml_path}: {split} folder {path} has no images")
        files += found
    return sorted(files)


def _as_list(entry: Any) -> list[Any]:
    return list(entry) if isinstance(entry, list | tuple) else [entry]


def _walk(folder: Path) -> Iterator[Path]:
    """Every file below ``folder`` (os.scandir: fast on large folders)."""
    for entry in os.scandir(folder):
        if entry.is_dir():
            yield from _walk(Path(entry.path))
        else:
            yield Path(entry.path)


def _listed_images(txt: Path) -> list[Path]:
    """Ultralytics' image-list files: one path a line, ``./`` relative to the list's folder."""
    lines = txt.read_text(encoding="utf-8-sig").split()
    paths = [txt.parent / x[2:] if x.startswith("./") else Path(x) for x in lines]
    images = [p for p in paths if p.suffix[1:].lower() in IMG_FORMATS]
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise DatasetError(f"{txt}: {len(missing)} listed images do not exist, e.g. {missing[0]}")
    return images


# --------------------------------------------------------------------------- labels


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` becomes ``/labels/``, the extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def _check_labels(images: list[Path], nc: int, yaml_path: Path, split: str) -> None:
    """Every label line valid; and labels exist at all (an image without one is background,
    but a split without any means the labels folder is not where Ultralytics looks)."""
    found = 0
    for image in images:
        label = label_path(image)
        try:
            text = label.read_text()
        except FileNotFoundError:
            continue
        found += 1
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                _check_line(line, nc, label, n)
    if not found:
        raise DatasetError(
            f"{yaml_path}: none of the {len(images)} {split} images has a label file; expected "
            f"e.g. {label_path(images[0])} (Ultralytics replaces /images/ with /labels/)"
        )


def _check_line(line: str, nc: int, path: Path, n: int) -> None:
    """``cls x y w h`` (or ``cls`` + polygon x y pairs, which Ultralytics also reads for
    detection), all coordinates normalised to [0, 1]."""
    parts = line.split()
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if not all(map(math.isfinite, values)) or (
        len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0)
    ):
        raise DatasetError(
            f"{path}:{n}: malformed label line {line.strip()!r}; expected 5 numbers: class x y w h"
        )
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < nc:
        raise DatasetError(
            f"{path}:{n}: class {parts[0]} is outside the valid range 0..{nc - 1} (nc={nc})"
        )
    if not all(-1e-6 <= v <= 1 + 1e-6 for v in values[1:]):
        raise DatasetError(
            f"{path}:{n}: coordinates {' '.join(parts[1:])} are not normalised to [0, 1]"
        )

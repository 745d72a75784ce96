"""Which code produced a run: a content hash of everything that can change a result, plus the
git commit as provenance.

The code version is computed from the files themselves, not from git, so it is the same in a
checkout, an editable install and a wheel, sees uncommitted and untracked edits, and ignores
commits that change nothing that trains (a README fix retrains nothing). A finished run is
reused only when its code version equals the current one.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import cache
from pathlib import Path

from dat_exp.tracking.schema import Tag

PACKAGE = Path(__file__).resolve().parent
# Code that reads results, or only chooses which jobs run (a dry run's plan, racing's rounds),
# but never makes one: a change there must not retrain anything.
NOT_TRAINING = ("analysis/", "report.py", "bench.py", "planning.py", "racing.py")


def result_files(package: Path = PACKAGE, conf: Path | None = None) -> list[tuple[str, Path]]:
    """``(name, path)`` of every file that can change a training result, in a fixed order.

    Names are relative (``dat_exp/nn/dattention.py``, ``conf/train/smoke.yaml``), so the
    same tree hashes the same wherever it is installed."""
    from dat_exp.config import CONF_DIR

    conf = conf or CONF_DIR
    code = [
        (f"dat_exp/{p.relative_to(package).as_posix()}", p)
        for p in package.rglob("*.py")
        if not p.relative_to(package).as_posix().startswith(NOT_TRAINING)
        and "conf" not in p.relative_to(package).parts  # a wheel's conf/ holds YAML only
    ]
    configs = [(f"conf/{p.relative_to(conf).as_posix()}", p) for p in conf.rglob("*.yaml")]
    return sorted(code + configs)


def version_digest(files: list[tuple[str, Path]], libraries: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name, path in files:
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for name, version in sorted(libraries.items()):
        h.update(f"{name}={version}\0".encode())
    return h.hexdigest()[:12]


def libraries() -> dict[str, str]:
    """Versions outside the project that change a result: Ultralytics, torch, timm (its
    LayerNorm2d and LayerScale2d are part of DAT's block), and the synthetic generator."""
    import timm
    import torch
    import ultralytics

    from dat_exp.data.synthetic import GENERATOR_VERSION

    return {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "synthetic_generator": str(GENERATOR_VERSION),
    }


@cache
def code_version() -> str:
    """The current code version (12 hex digits), computed once per process."""
    return version_digest(result_files(), libraries())


def git_state() -> tuple[str, str]:
    """``(commit, dirty)`` of the checkout the package runs from; ``unknown`` outside one (a
    wheel installed in a virtual environment inside some checkout is not that checkout)."""
    root = PACKAGE.parent
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel").strip()).resolve() != root:
            return "unknown", "unknown"
        commit = _git(root, "rev-parse", "HEAD").strip()
        dirty = str(bool(_git(root, "status", "--porcelain").strip())).lower()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"
    return commit, dirty


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout


def provenance_tags() -> dict[str, str]:
    """The tags that say which code and which machine made a run."""
    commit, dirty = git_state()
    versions = libraries()
    return {
        Tag.CODE_VERSION: code_version(),
        Tag.GIT_COMMIT: commit,
        Tag.GIT_DIRTY: dirty,
        Tag.TORCH_VERSION: versions["torch"],
        Tag.ULTRALYTICS_VERSION: versions["ultralytics"],
        Tag.MACHINE: platform.node(),
    }

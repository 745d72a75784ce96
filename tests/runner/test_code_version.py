"""The code version: a content hash of what can change a result, and the rule that a finished
run is reused only when it was made by the current code (or ``reuse=any``, said so)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dat_exp.analysis.load import load_runs, set_aside_warning
from dat_exp.provenance import code_version, libraries, result_files, version_digest
from dat_exp.sweep import resumable, reusable
from dat_exp.tracking.schema import DEFAULT_EXPERIMENT, Tag
from tests.runner.entry import TINY, local_runs, local_store, run_entry

ROOT = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns("__pycache__")


def copy_tree(tmp_path: Path) -> tuple[Path, Path]:
    """The package and conf/ as plain folders (no link), as a user's edited checkout."""
    package, conf = tmp_path / "dat_exp", tmp_path / "conf"
    shutil.copytree(ROOT / "dat_exp", package, ignore=shutil.ignore_patterns("__pycache__", "conf"))
    assert (ROOT / "dat_exp" / "conf").is_symlink(), "a checkout links dat_exp/conf to conf/"
    shutil.copytree(ROOT / "conf", conf)
    return package, conf


def version_of(package: Path, conf: Path, libs: dict[str, str] | None = None) -> str:
    return version_digest(result_files(package, conf), libs or libraries())


def test_code_version_follows_what_trains_and_nothing_else(tmp_path):
    package, conf = copy_tree(tmp_path)
    before = version_of(package, conf)
    assert before == code_version(), "a copy of the tree hashes as the tree itself"

    for harmless in ("analysis/stats.py", "report.py", "bench.py", "planning.py", "racing.py"):
        (package / harmless).write_text((package / harmless).read_text() + "\n# a comment\n")
    (tmp_path / "README.md").write_text("a README fix")
    assert version_of(package, conf) == before, "analysis, planning, racing, docs train nothing"

    changes = {
        "an edit of the module": lambda: (package / "nn" / "dattention.py").write_text(
            (package / "nn" / "dattention.py").read_text().replace("1e-5", "1e-6")
        ),
        "an untracked file": lambda: (package / "nn" / "extra.py").write_text("X = 1\n"),
        "a config group": lambda: (conf / "train" / "smoke.yaml").write_text(
            (conf / "train" / "smoke.yaml").read_text() + "\n# changed\n"
        ),
    }
    seen = {before}
    for what, change in changes.items():
        change()
        now = version_of(package, conf)
        assert now not in seen, f"{what} did not change the code version"
        seen.add(now)
    libs = {**libraries(), "ultralytics": "0.0.1"}
    assert version_of(package, conf, libs) not in seen, "the Ultralytics version is part of it"
    libs = {**libraries(), "synthetic_generator": "999"}
    assert version_of(package, conf, libs) not in seen, "the generator version is part of it"


@pytest.mark.slow
def test_a_wheel_has_the_same_code_version_as_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy, so that setuptools' scratch files stay out of ROOT
    shutil.copytree(ROOT / "dat_exp", source / "dat_exp", symlinks=True, ignore=IGNORED)
    shutil.copytree(ROOT / "conf", source / "conf")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("dat_exp-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    package = tmp_path / "site" / "dat_exp"
    assert (package / "conf" / "config.yaml").is_file(), "conf/ travels in the wheel"
    assert version_of(package, package / "conf") == code_version()


def fake_run(run_id: str, version: str | None) -> SimpleNamespace:
    tags = {Tag.CODE_VERSION: version} if version else {}
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(tags=tags))


def test_only_runs_of_the_current_code_count_as_done_unless_reuse_any():
    now = code_version()
    old, older, untagged = (
        fake_run("old", "0" * 12),
        fake_run("older", "1" * 12),
        fake_run("x", None),
    )
    current = fake_run("current", now)

    assert reusable([], "same_code") == (None, "not done yet")
    run, why = reusable([old, current], "same_code")
    assert run is current and why == "done in run current"
    for finished in ([old, older], [untagged]):
        run, why = reusable(finished, "same_code")
        assert run is None and "reuse=any would reuse it" in why
        assert f"now {now}" in why
        run, why = reusable(finished, "any")
        assert run is finished[0] and "reused as reuse=any" in why
    assert "code version 000000000000" in reusable([old], "any")[1]


@pytest.mark.slow
def test_a_run_of_other_code_is_trained_again_and_reused_only_when_asked(workdir):
    sweep = ["-m", "placement=none", *TINY]
    assert run_entry(workdir, *sweep).returncode == 0
    (first,) = [r for r in local_runs(workdir) if Tag.PARENT in r.data.tags]
    assert first.data.tags[Tag.CODE_VERSION] == code_version()
    (parent,) = [r for r in local_runs(workdir) if Tag.PARENT not in r.data.tags]
    note = parent.data.tags[Tag.NOTE]  # the end-of-sweep table, as the run's description
    assert note.startswith("### Summary") and "1 jobs: 1 FINISHED" in note
    assert "| 0 | none | " in note and f"|  | FINISHED | {first.info.run_id} |" in note
    local_store(workdir).set_tag(first.info.run_id, Tag.CODE_VERSION, "0" * 12)

    dry = run_entry(workdir, *sweep, "dry_run=true")
    assert f"would train: run {first.info.run_id} was made by other code" in dry.stdout

    for launcher in ([], ["hydra/launcher=joblib"]):  # jobs in this process, or in workers
        reused = run_entry(workdir, *sweep, *launcher, "reuse=any")
        assert reused.returncode == 0, reused.stderr[-2000:]
        assert re.search(r"SKIPPED .*reused as reuse=any", reused.stdout), reused.stdout[-2000:]
        assert f"done in run {first.info.run_id} by other code" in reused.stdout
    assert len([r for r in local_runs(workdir) if Tag.PARENT in r.data.tags]) == 1
    key = Tag.REUSED + first.data.tags[Tag.CONFIG_HASH]
    reusing = [r for r in local_runs(workdir) if r.data.tags.get(key) == first.info.run_id]
    assert len(reusing) == 2, "each sweep that skipped the job names the run on its parent"

    again = run_entry(workdir, *sweep)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"training again: run {first.info.run_id} was made by other code" in again.stdout
    children = [r for r in local_runs(workdir) if Tag.PARENT in r.data.tags]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == 2
    newest = max(finished, key=lambda r: r.info.start_time)
    assert newest.data.tags[Tag.CODE_VERSION] == code_version()

    dry = run_entry(workdir, *sweep, "dry_run=true")
    assert f"would reuse: done in run {newest.info.run_id}" in dry.stdout

    # the analysis takes the newest code version's runs and says what it set aside
    runset = load_runs(experiment=DEFAULT_EXPERIMENT, tracking_uri=local_store_uri(workdir))
    assert list(runset.runs["run_id"]) == [newest.info.run_id]
    assert list(runset.set_aside["run_id"]) == [first.info.run_id]
    assert "1 run(s) of older code (code version 000000000000) set aside" in " ".join(
        set_aside_warning(runset)
    )
    pooled = load_runs(
        experiment=DEFAULT_EXPERIMENT,
        tracking_uri=local_store_uri(workdir),
        pool_code_versions=True,
    )
    assert sorted(pooled.runs["run_id"]) == sorted([first.info.run_id, newest.info.run_id])
    assert pooled.set_aside.empty
    assert set_aside_warning(pooled) == [  # sorted: the all-zero version comes first
        f"NOTE: --pool-code-versions: runs of code versions 000000000000, {code_version()} pooled"
    ]


def local_store_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'runs' / 'mlflow.db'}"


def test_a_killed_run_of_other_code_is_not_resumed(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.setenv("DAT_EXP_RUNS", str(tmp_path / "runs"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e")
    run = client.create_run(exp, tags={Tag.CONFIG_HASH: "h", Tag.CODE_VERSION: "0" * 12})
    run_id = run.info.run_id
    client.set_terminated(run_id, "KILLED")
    last = tmp_path / "runs" / "train" / run_id / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")

    assert resumable(client, exp, "h") is None
    assert f"not resuming run {run_id}: it was made by other code" in capsys.readouterr().out
    client.set_tag(run_id, Tag.CODE_VERSION, code_version())
    assert resumable(client, exp, "h") is None, "an empty last.pt is no checkpoint"
    assert f"not resuming run {run_id}: its last.pt cannot be read" in capsys.readouterr().out
    torch.save({"epoch": 2}, last)
    assert resumable(client, exp, "h") == (run_id, last)

"""Dataset resolution and checks: every bad input fails before training, with a message that names
the bad value and what to do; the bundled datasets are used only from disk, never downloaded."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from dat_exp.data import DATA_CHOICES, DatasetError, check_dataset, resolve_dataset
from dat_exp.data.resolve import NO_TEST, label_path

SYNTH = {
    "name": "synthetic",
    "path": None,
    "images": 8,
    "val_images": 2,
    "test_images": 2,
    "imgsz": 64,
}


def make_dataset(root: Path, n: int = 3, labels: str = "0 0.5 0.5 0.2 0.2\n", **keys) -> Path:
    """A minimal YOLO-format dataset (images need not decode: nothing here opens them)."""
    for split in ("train", "val"):
        write_split(root, split, n, labels)
    data = {"path": str(root), "train": "images/train", "val": "images/val"}
    data["names"] = {0: "a", 1: "b"}
    data.update(keys)
    out = root / "data.yaml"
    out.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    return out


def write_split(root: Path, split: str, n: int = 3, labels: str | None = "0 .5 .5 .2 .2\n") -> None:
    """``n`` images under images/<split>, each with a label file unless ``labels`` is None."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "images" / split / f"{i}.jpg").write_bytes(b"")
        if labels is not None:
            (root / "labels" / split / f"{i}.txt").write_text(labels)


def raises(match: str, fn, *args) -> str:
    with pytest.raises(DatasetError) as err:
        fn(*args)
    assert match in str(err.value), str(err.value)
    return str(err.value)


@pytest.fixture
def refuse_network(monkeypatch):
    """Any connection attempt, or Ultralytics' downloading checker, fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import ultralytics.data.utils

    monkeypatch.setattr(ultralytics.data.utils, "check_det_dataset", refuse)


@pytest.fixture
def datasets_dir(tmp_path, monkeypatch) -> Path:
    """Ultralytics' datasets_dir setting, pointed at an empty folder (the file is not touched)."""
    import ultralytics.utils

    where = tmp_path / "ultralytics-datasets"
    where.mkdir()
    monkeypatch.setattr(ultralytics.utils, "SETTINGS", {"datasets_dir": str(where)})
    return where


# --------------------------------------------------------------------------- resolve_dataset


def test_synthetic_is_generated_under_runs_and_checked(tmp_path):
    y = resolve_dataset(SYNTH, tmp_path)
    assert y.parent.parent == tmp_path / "datasets" and y.name == "data.yaml"
    info = check_dataset(y)
    assert (info.nc, info.train_images, info.val_images) == (4, 8, 2)
    assert (info.test_images, info.test_skipped) == (2, None)
    assert info.names == ("disc", "triangle", "hstripes", "vstripes")
    assert resolve_dataset(SYNTH, tmp_path) == y  # cached


def test_synthetic_bad_spec_names_value_and_range(tmp_path):
    cfg = {**SYNTH, "classes": 9}
    raises("classes=9 must be an integer in 1..6", resolve_dataset, cfg, tmp_path)


def test_unknown_name_lists_the_choices(tmp_path):
    msg = raises("data='imagenet'", resolve_dataset, {"name": "imagenet", "path": None}, tmp_path)
    assert all(choice in msg for choice in DATA_CHOICES)


def test_custom_needs_a_path(tmp_path):
    raises(
        "data=custom needs data.path=<Ultralytics data YAML>",
        resolve_dataset,
        {"name": "custom", "path": None},
        tmp_path,
    )


def test_custom_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    raises(str(missing), resolve_dataset, {"name": "custom", "path": str(missing)}, tmp_path)


def test_custom_valid(tmp_path):
    y = make_dataset(tmp_path / "ds")
    assert resolve_dataset({"name": "custom", "path": str(y)}, tmp_path) == y


def test_tiny_data_fixture_passes(tiny_data):
    info = check_dataset(tiny_data)
    assert (info.nc, info.train_images, info.val_images) == (2, 8, 8)
    assert (info.test_images, info.test_skipped) == (0, NO_TEST)


@pytest.mark.parametrize("name", ["coco8", "coco", "VOC"])
def test_builtin_not_on_disk_gives_offline_hint(name, tmp_path, datasets_dir, refuse_network):
    msg = raises("not on disk", resolve_dataset, {"name": name, "path": None}, tmp_path)
    assert str(datasets_dir / name) in msg
    assert "internet" in msg and "data=synthetic" in msg and "data=custom data.path=" in msg
    assert not (tmp_path / "datasets").exists()


def test_coco8_on_disk_is_used_with_an_absolute_path(tmp_path, datasets_dir, refuse_network):
    make_dataset(datasets_dir / "coco8")
    y = resolve_dataset({"name": "coco8", "path": None}, tmp_path)
    assert y == tmp_path / "datasets" / "coco8.yaml"
    data = yaml.safe_load(y.read_text())
    assert data["path"] == str(datasets_dir / "coco8") and "download" not in data
    info = check_dataset(y)
    assert (info.nc, info.names[0], info.train_images) == (80, "person", 3)


def test_builtin_root_can_be_given_as_path(tmp_path, datasets_dir, refuse_network):
    cfg = {"name": "coco8", "path": str(tmp_path / "elsewhere")}
    raises(f"not on disk at {tmp_path / 'elsewhere'} (data.path)", resolve_dataset, cfg, tmp_path)
    make_dataset(tmp_path / "elsewhere")
    y = resolve_dataset(cfg, tmp_path)
    assert yaml.safe_load(y.read_text())["path"] == str(tmp_path / "elsewhere")


# --------------------------------------------------------------------------- check_dataset: YAML


def test_missing_yaml_names_the_path(tmp_path):
    raises(str(tmp_path / "x.yaml"), check_dataset, tmp_path / "x.yaml")


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [images/train\nval: images/val\n")
    raises(f"{bad}: not valid YAML", check_dataset, bad)
    bad.write_text("- just\n- a list\n")
    raises(f"{bad}: expected a mapping", check_dataset, bad)


@pytest.mark.parametrize("key", ["train", "val", "names"])
def test_missing_key_is_named(key, tmp_path):
    y = make_dataset(tmp_path)
    data = yaml.safe_load(y.read_text())
    del data[key]
    y.write_text(yaml.safe_dump(data))
    raises(f"{y}: missing key '{key}'", check_dataset, y)


def test_names_forms_and_nc_mismatch(tmp_path):
    y = make_dataset(tmp_path, names=["a", "b", "c"])
    assert check_dataset(y).names == ("a", "b", "c")
    y = make_dataset(tmp_path, names=None, nc=2)
    assert check_dataset(y).names == ("class_0", "class_1")
    y = make_dataset(tmp_path, nc=3)
    raises("nc=3 but names has 2 entries", check_dataset, y)
    y = make_dataset(tmp_path, names={0: "a", 2: "c"})
    raises("names must be a list or a mapping 0..nc-1", check_dataset, y)
    y = make_dataset(tmp_path, names={"1": "b", "0": "a"})
    assert check_dataset(y).names == ("a", "b")


def test_no_path_and_relative_path(tmp_path, datasets_dir):
    y = make_dataset(tmp_path / "ds", path=None)  # no path: the YAML's folder
    assert check_dataset(y).train_images == 3
    y = make_dataset(datasets_dir / "rel", path="rel")  # relative: under datasets_dir
    moved = tmp_path / "rel.yaml"
    shutil.move(y, moved)
    assert check_dataset(moved).train_images == 3


# --------------------------------------------------------------------------- check_dataset: images


def test_missing_image_folder_is_named(tmp_path):
    y = make_dataset(tmp_path, val="images/valid")
    raises(f"val folder {tmp_path / 'images' / 'valid'} does not exist", check_dataset, y)


def test_empty_image_folder_is_named(tmp_path):
    y = make_dataset(tmp_path)
    shutil.rmtree(tmp_path / "images" / "train")
    (tmp_path / "images" / "train").mkdir()
    (tmp_path / "images" / "train" / "notes.md").write_text("not an image")
    raises(f"train folder {tmp_path / 'images' / 'train'} has no images", check_dataset, y)


def test_lists_of_folders_and_txt_lists(tmp_path):
    y = make_dataset(tmp_path)
    (tmp_path / "images" / "extra").mkdir()
    (tmp_path / "images" / "extra" / "e.png").write_bytes(b"")
    (tmp_path / "labels" / "extra").mkdir()
    (tmp_path / "labels" / "extra" / "e.txt").write_text("1 0.1 0.1 0.1 0.1\n")
    (tmp_path / "val.txt").write_text("./images/val/0.jpg\n./images/val/1.jpg\n")
    data = yaml.safe_load(y.read_text())
    data.update(train=["images/train", "images/extra"], val="val.txt")
    y.write_text(yaml.safe_dump(data))
    info = check_dataset(y)
    assert (info.train_images, info.val_images) == (4, 2)


def test_txt_list_with_missing_images_is_named(tmp_path):
    y = make_dataset(tmp_path)
    (tmp_path / "val.txt").write_text("./images/val/0.jpg\n./images/val/9.jpg\n")
    y.write_text(y.read_text().replace("val: images/val", "val: val.txt"))
    raises(f"1 listed images do not exist, e.g. {tmp_path / 'images/val/9.jpg'}", check_dataset, y)


def test_a_split_without_any_labels_is_an_error(tmp_path):
    y = make_dataset(tmp_path)
    shutil.rmtree(tmp_path / "labels" / "val")
    msg = raises("none of the 3 val images has a label file", check_dataset, y)
    assert str(tmp_path / "labels" / "val" / "0.txt") in msg


def test_label_path_follows_ultralytics():
    from ultralytics.data.utils import img2label_paths

    images = ["/d/images/x/images/train/a.b.jpg", "/d/images/train/c.png"]
    assert [str(label_path(Path(p))) for p in images] == img2label_paths(images)


# --------------------------------------------------------------------------- check_dataset: labels


def test_class_out_of_range_names_file_line_class_and_range(tmp_path):
    y = make_dataset(tmp_path, labels="0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    msg = raises("class 7 is outside the valid range 0..1", check_dataset, y)
    assert f"{tmp_path / 'labels' / 'train' / '0.txt'}:3" in msg


@pytest.mark.parametrize(
    "line",
    ["0 0.5 0.5 0.2", "0 0.5 0.5 0.2 0.2 0.1", "a b c d e", "0 0.5 nan 0.2 0.2"],
)
def test_malformed_line_names_file_and_line(line, tmp_path):
    y = make_dataset(tmp_path, labels=f"0 0.5 0.5 0.2 0.2\n{line}\n")
    msg = raises("malformed label line", check_dataset, y)
    assert f"{tmp_path / 'labels' / 'train' / '0.txt'}:2" in msg and line in msg


@pytest.mark.parametrize("line", ["0 1.5 0.5 0.2 0.2", "1 0.5 -0.1 0.2 0.2"])
def test_coordinates_outside_unit_range(line, tmp_path):
    y = make_dataset(tmp_path, labels=f"{line}\n")
    msg = raises("not normalised to [0, 1]", check_dataset, y)
    assert f"{tmp_path / 'labels' / 'train' / '0.txt'}:1" in msg


def test_negative_and_fractional_classes(tmp_path):
    for cls in ("-1", "0.5", "2"):
        y = make_dataset(tmp_path, labels=f"{cls} .5 .5 .2 .2\n")
        raises(f"class {cls} is outside the valid range 0..1", check_dataset, y)


def test_polygons_and_empty_label_files_are_accepted(tmp_path):
    y = make_dataset(tmp_path, labels="1 0.1 0.1 0.5 0.1 0.3 0.4\n")
    assert check_dataset(y).nc == 2
    assert check_dataset(make_dataset(tmp_path / "bg", labels="")).train_images == 3


def test_thousands_of_label_files_are_all_checked(tmp_path):
    # How fast is not unit-test material (a loaded machine took 1.5 s here, a quiet one 0.3 s).
    y = make_dataset(tmp_path, n=3000, labels="0 0.5 0.5 0.2 0.2\n" * 5)
    info = check_dataset(y)
    assert info.train_images == info.val_images == 3000


# --------------------------------------------------------------------------- check_dataset: test


def test_a_labelled_test_split_of_its_own_is_used(tmp_path):
    write_split(tmp_path, "test", n=4)
    info = check_dataset(make_dataset(tmp_path, test="images/test"))
    assert (info.test_images, info.test_skipped) == (4, None)


@pytest.mark.parametrize("test", [None, "", []])
def test_no_test_split_is_a_reason_not_an_error(test, tmp_path):
    info = check_dataset(make_dataset(tmp_path, test=test))
    assert (info.test_images, info.test_skipped) == (0, "the data YAML has no test split")


def test_unlabelled_test_images_are_not_used(tmp_path):
    """COCO's test-dev: images whose labels only the benchmark's server has."""
    write_split(tmp_path, "test", labels=None)
    info = check_dataset(make_dataset(tmp_path, test="images/test"))
    assert info.test_images == 0
    assert info.test_skipped.startswith("none of the 3 test images has a label file; expected e.g.")
    assert str(tmp_path / "labels" / "test" / "0.txt") in info.test_skipped


@pytest.mark.parametrize(
    "test,n,shared",
    [("images/val", 3, 3), (["images/test", "images/train"], 5, 3), ("linked.txt", 1, 1)],
)
def test_test_images_also_in_train_or_val_are_not_used(test, n, shared, tmp_path):
    """Ultralytics' VOC.yaml has ``val: images/test2007`` and ``test: images/test2007``; a file
    named through a link (here in a .txt list) is the same image too."""
    write_split(tmp_path, "test", n=2)
    (tmp_path / "alias").symlink_to(tmp_path)
    (tmp_path / "linked.txt").write_text(f"{tmp_path / 'alias/images/val/1.jpg'}\n")
    info = check_dataset(make_dataset(tmp_path, test=test))
    assert info.test_images == 0
    assert info.test_skipped.startswith(
        f"{shared} of the {n} test images are also in train or val, e.g. "
    ), info.test_skipped
    assert info.test_skipped.endswith(".jpg")


@pytest.mark.parametrize(
    "test,reason",
    [
        ("images/nope", "test folder {root}/images/nope does not exist (from test: 'images/nope'"),
        ("notes.md", "test: 'notes.md' is a file but not a .txt list of images"),
        ("test.txt", "{root}/test.txt: 1 listed images do not exist"),
    ],
)
def test_a_broken_test_entry_is_a_reason_not_an_error(test, reason, tmp_path):
    """Only train and val are required: a job trains, and its run says why it has no test/*."""
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "test.txt").write_text("./images/gone.jpg\n")
    info = check_dataset(make_dataset(tmp_path, test=test))
    assert info.test_images == 0
    assert info.test_skipped.startswith(reason.format(root=tmp_path)), info.test_skipped
    assert "\n" not in info.test_skipped


def test_a_malformed_test_label_is_a_reason_with_its_file_and_line(tmp_path):
    write_split(tmp_path, "test", labels="0 0.5 0.5 0.2\n")
    info = check_dataset(make_dataset(tmp_path, test="images/test"))
    assert info.test_skipped.startswith(f"{tmp_path / 'labels' / 'test' / '0.txt'}:1: malformed")

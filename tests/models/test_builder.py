"""Placement surgery: every placement builds, is wired right, trains, and transfers weights."""

from __future__ import annotations

import itertools
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from dat_exp.metrics.flops import exact_gflops
from dat_exp.models.builder import build, dat_channels, stock_yaml
from dat_exp.models.placements import PLACEMENTS
from dat_exp.models.transfer import transfer_pretrained
from dat_exp.nn import DATBlock, DAttention
from dat_exp.trainer import DATDetectionTrainer

NC = 2


def subsets(levels):
    return [list(c) for r in range(1, len(levels) + 1) for c in itertools.combinations(levels, r)]


CASES = [("yolov8n", "none", None)]
CASES += [("yolov8n", p, lv) for p in PLACEMENTS if p != "none" for lv in subsets(PLACEMENTS[p])]
CASES += [(m, p, None) for m in ("yolov8s", "yolo11n") for p in PLACEMENTS]


def case_id(case):
    model, placement, levels = case
    return f"{model}-{placement}-{''.join(levels or ['all'])}"


def n_dat(model: nn.Module) -> int:
    return sum(isinstance(m, DAttention) for m in model.modules())


def expected_levels(model: str, placement: str, levels):
    chosen = levels or list(PLACEMENTS[placement])
    if model.startswith("yolo11") and placement == "c2f":
        chosen = [lv for lv in chosen if lv != "P3"]  # C3k2 at P3 changes channels: rejected
    return chosen


def one_training_step(model: DetectionModel) -> float:
    """Forward, Ultralytics' detection loss, backward and an optimizer step on random boxes."""
    model.train()
    model.args = get_cfg()  # the loss reads Ultralytics' default box/cls/dfl gains
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = {
        "img": torch.rand(2, 3, 64, 64),
        "cls": torch.tensor([[0.0], [1.0], [0.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.4], [0.6, 0.4, 0.4, 0.2]]),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
    }
    loss, _ = model.loss(batch)
    loss.sum().backward()
    opt.step()
    return float(loss.sum().detach())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_placement_builds_runs_and_trains(case, tmp_path):
    model_name, placement, levels = case
    if model_name.startswith("yolo11") and placement == "c2f":
        levels = ["P4", "P5"]
    built = build(model_name, NC, tmp_path, placement, levels, imgsz=320)
    model = built.model
    assert n_dat(model) == len(expected_levels(model_name, placement, levels))
    assert [m.level for m in built.modules] == expected_levels(model_name, placement, levels)
    if placement != "none":  # the channels validate.check_dat checks heads and groups against
        assert {m.level: m.channels for m in built.modules} == dat_channels(
            model_name, placement, levels
        )
    model.eval()
    for h, w in [(64, 64), (320, 256)]:
        with torch.no_grad():
            y = model(torch.rand(1, 3, h, w))[0]
        anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
        assert y.shape == (1, 4 + NC, anchors)
        assert torch.isfinite(y).all()
    assert torch.isfinite(torch.tensor(one_training_step(model)))


def test_yolo11_c2f_at_p3_is_rejected_clearly(tmp_path):
    with pytest.raises(ValueError, match="changes channels 64->128.*choose levels without P3"):
        build("yolo11n", NC, tmp_path, "c2f", ["P3"])


def test_none_is_the_stock_model(tmp_path):
    built = build("yolov8n", 80, tmp_path, "none")
    torch.manual_seed(0)
    ours = DetectionModel(str(built.yaml_path), nc=80, verbose=False)
    torch.manual_seed(0)
    stock = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    a, b = ours.state_dict(), stock.state_dict()
    assert list(a) == list(b) and len(a) == 355
    assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def copy_baseline_weights(baseline: DetectionModel, model: DetectionModel, index_map) -> None:
    renamed = {}
    for key, t in baseline.state_dict().items():
        _, n, rest = key.split(".", 2)
        renamed[f"model.{index_map[int(n)]}.{rest}"] = t
    missing = model.load_state_dict(renamed, strict=False).missing_keys
    assert all(
        ".dat." in k or "DAT" in k or k.split(".")[1] not in map(str, index_map.values())
        for k in missing
    )


@pytest.mark.parametrize("placement", ["backbone", "sppf", "neck", "head"])
def test_wiring_with_dat_replaced_by_identity_equals_baseline(placement, tmp_path):
    baseline = build("yolov8n", NC, tmp_path, "none").model.eval()
    built = build("yolov8n", NC, tmp_path, placement)
    model = built.model.eval()
    copy_baseline_weights(baseline, model, built.index_map)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        with_dat = model(x)[0]
    for i, layer in enumerate(model.model):
        if isinstance(layer, DATBlock):
            identity = nn.Identity()
            identity.i, identity.f, identity.type = layer.i, layer.f, "Identity"
            model.model[i] = identity
    with torch.no_grad():
        assert torch.equal(model(x)[0], baseline(x)[0])
    assert not torch.equal(with_dat, baseline(x)[0]), "DAT must be on the path"


def test_head_placement_feeds_only_detect(tmp_path):
    built = build("yolov8n", NC, tmp_path, "head")
    rows = built.cfg["backbone"] + built.cfg["head"]
    dat_rows = [i for i, r in enumerate(rows) if r[2] == "DATBlock"]
    assert dat_rows == [22, 23, 24]
    assert [rows[i][0] for i in dat_rows] == [15, 18, 21]
    assert rows[-1][0] == [22, 23, 24]
    readers = [i for i, r in enumerate(rows[:-1]) if set(dat_rows) & set(_sources(r[0], i))]
    assert readers == []


def _sources(f, i):
    return [i + x if x < 0 else x for x in (f if isinstance(f, list) else [f])]


def test_neck_rewires_every_consumer(tmp_path):
    built = build("yolov8n", NC, tmp_path, "neck", ["P3"])
    rows = built.cfg["backbone"] + built.cfg["head"]
    assert rows[16][2] == "DATBlock" and _sources(rows[16][0], 16) == [15]
    assert _sources(rows[17][0], 17) == [16]  # the bottom-up conv reads DAT
    assert rows[-1][0] == [16, 19, 22]  # Detect reads DAT at P3
    assert built.index_map[21] == 22 and built.index_map[22] == 23


@pytest.fixture(scope="module")
def baseline_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    built = build("yolov8n", NC, d, "none", imgsz=64)
    yolo = YOLO(str(built.yaml_path))
    yolo.save(d / "baseline.pt")
    return d / "baseline.pt"


def test_transfer_survives_the_trainer(baseline_ckpt, tiny_data, tmp_path):
    built = build("yolov8n", NC, tmp_path, "neck", imgsz=64)
    yolo = YOLO(str(built.yaml_path))
    report = transfer_pretrained(yolo, built, baseline_ckpt)
    source = torch.load(baseline_ckpt, weights_only=False)["model"].float().state_dict()
    assert report.source_tensors == len(source) == 355
    assert report.transferred == 355 and report.skipped == 0
    expected = {}
    for key, t in source.items():
        _, n, rest = key.split(".", 2)
        expected[f"model.{built.index_map[int(n)]}.{rest}"] = t
    seen = {}

    def before_first_step(trainer):
        sd = trainer.model.state_dict()
        seen["equal"] = sum(torch.equal(sd[k].float().cpu(), v) for k, v in expected.items())

    yolo.add_callback("on_train_start", before_first_step)
    yolo.train(
        data=str(tiny_data),
        epochs=1,
        imgsz=64,
        batch=4,
        device="cpu",
        workers=0,
        plots=False,
        val=False,
        amp=False,
        project=str(tmp_path),
        name="t",
        trainer=DATDetectionTrainer,
        verbose=False,
    )
    assert seen["equal"] == 355
    # the trained checkpoint loads again in a fresh process with plain YOLO()
    last = tmp_path / "t" / "weights" / "last.pt"
    code = (
        f"import torch; from ultralytics import YOLO; m = YOLO(r'{last}');"
        "n = sum(type(x).__name__ == 'DAttention' for x in m.model.modules());"
        "y = m.model.float().eval()(torch.rand(1, 3, 64, 64))[0]; print(n, tuple(y.shape))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"3 (1, {4 + NC}, 84)"


def test_transfer_rejects_another_scale(tmp_path):
    other = build("yolov8s", NC, tmp_path, "none")
    YOLO(str(other.yaml_path)).save(tmp_path / "s.pt")
    built = build("yolov8n", NC, tmp_path, "neck")
    with pytest.raises(ValueError, match="not a baseline yolov8n"):
        transfer_pretrained(YOLO(str(built.yaml_path)), built, tmp_path / "s.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        transfer_pretrained(YOLO(str(built.yaml_path)), built, tmp_path / "missing.pt")


def module_cost(c: int, h: int, w: int, heads_ok: bool = True) -> float:
    """FLOPs (2 x MAC) of one blog-preset DAttention (stride 1, ksize 9, dwc) on c x h x w."""
    hw = n = h * w
    projections = 2 * c * c * (hw + n + n + hw)  # q, k, v, out
    offsets = 2 * c * 81 * n + 2 * c * 2 * n  # depthwise 9x9, then 1x1 to two channels
    attention = 2 * hw * n * c * 2  # q.k^T and attn.v
    dwc = 2 * c * 9 * hw
    return projections + offsets + attention + dwc


def test_exact_gflops_include_the_attention(tmp_path):
    imgsz = 320
    base = exact_gflops(build("yolov8n", NC, tmp_path, "none").model, imgsz)
    blog = build("yolov8n", NC, tmp_path, "neck", dat={"preset": "blog"}, imgsz=imgsz)
    expected = (
        sum(
            module_cost(m.channels, imgsz // s, imgsz // s)
            for m, s in zip(blog.modules, (8, 16, 32), strict=True)
        )
        / 1e9
    )
    measured = exact_gflops(blog.model, imgsz) - base
    assert abs(measured - expected) / expected < 0.02


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"placement": "everywhere"}, "placement='everywhere' is not one of none, backbone, c2f"),
        ({"placement": "neck", "levels": ["P9"]}, "level 'P9' is not one of P3, P4, P5"),
        ({"placement": "sppf", "levels": ["P3"]}, "placement=sppf has no level P3; it has P5"),
        ({"model": "yolov9n"}, "model='yolov9n' is not one of yolov8n"),
        ({"model": "yolov8q"}, "base yolov8 has no scale 'q'; it has n, s, m, l, x"),
        ({"dat": {"preset": "paper"}}, "dat.preset='paper' is not one of official, blog"),
        ({"placement": "neck", "dat": {"heads": 3}}, "heads=3 must divide channels=64"),
    ],
)
def test_bad_input_names_the_value_and_choices(kwargs, error, tmp_path):
    args = {"model": "yolov8n", "placement": "neck", **kwargs}
    with pytest.raises(ValueError, match=error):
        build(args.pop("model"), NC, tmp_path, **args)


@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_layer_scale_reaches_every_block_and_trains_without_decay(layer_scale, tmp_path):
    """Ultralytics builds DATBlock from the YAML's positional settings mapping: the job's
    ``dat.layer_scale`` arrives there; gamma lands in the trainer's decay-free group; a c2f
    block (no wrap) ignores the key."""
    built = build("yolov8n", NC, tmp_path, "neck", dat={"layer_scale": layer_scale}, imgsz=64)
    rows = [r for r in built.cfg["backbone"] + built.cfg["head"] if r[2] == "DATBlock"]
    assert len(rows) == 3 and all(r[3][1]["layer_scale"] == layer_scale for r in rows)
    blocks = [m for m in built.model.modules() if isinstance(m, DATBlock)]
    assert len(blocks) == 3
    if layer_scale is None:
        assert all(b.layer_scale is None for b in blocks)
    else:
        gammas = [b.layer_scale.gamma for b in blocks]
        assert all(torch.equal(g, torch.full_like(g, layer_scale)) for g in gammas)
        trainer = object.__new__(DATDetectionTrainer)  # build_optimizer reads args and data
        trainer.args = SimpleNamespace(lr0=0.01, optimizer="SGD", warmup_bias_lr=0.1)
        trainer.data = {"nc": NC}
        opt = trainer.build_optimizer(built.model, "SGD", 0.01, 0.9, 5e-4, 100)
        free = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        assert {id(g) for g in gammas} <= free and not {id(g) for g in gammas} & decayed
    c2f = build("yolov8n", NC, tmp_path, "c2f", dat={"layer_scale": layer_scale}, imgsz=64)
    assert n_dat(c2f.model) == 3


def test_stock_yaml_is_read_from_the_package():
    cfg = stock_yaml("yolov8")
    assert cfg["head"][-1][2] == "Detect" and cfg["head"][-1][0] == [15, 18, 21]

"""The parameters modules declare decay-free (DAT's position biases, LayerScale's gamma) train
without weight decay under every Ultralytics optimizer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer

from dat_exp.nn import DATBlock
from dat_exp.nn.optim import no_decay_parameters
from dat_exp.trainer import DATDetectionTrainer


class Detector(nn.Module):
    """Ultralytics' MuSGD set-up reads ``model.model[-1]`` (the head)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)


def dat_model() -> nn.Module:
    return Detector(
        nn.Conv2d(3, 64, 3, padding=1),
        DATBlock(64, {"pe": "table", "feat_size": 8, "layer_scale": 1e-4}),
        DATBlock(64, {"pe": "fixed", "feat_size": 8, "stride": 2, "layer_scale": 1.0}),
        DATBlock(64, {"pe": "log_cpb", "heads": 4, "groups": 2, "layer_scale": 0.5}),
        DATBlock(64, {"pe": "dwc", "layer_scale": None}),  # no LayerScale
        DATBlock(64, {"pe": "dwc", "wrap": "bare"}),  # no wrap
        nn.Conv2d(64, 8, 1),
    )


def build(name: str, iterations: float) -> tuple[torch.optim.Optimizer, nn.Module, int]:
    trainer = object.__new__(DATDetectionTrainer)  # build_optimizer reads only args and data
    trainer.args = SimpleNamespace(lr0=0.01, optimizer=name, warmup_bias_lr=0.1)
    trainer.data = {"nc": 3}
    model = dat_model()
    plain = DetectionTrainer.build_optimizer(trainer, model, name, 0.01, 0.9, 5e-4, iterations)
    opt = trainer.build_optimizer(
        model, name=name, lr=0.01, momentum=0.9, decay=5e-4, iterations=iterations
    )
    return opt, model, len(plain.param_groups)


@pytest.mark.parametrize(
    "name,iterations",
    [
        ("SGD", 100),
        ("AdamW", 100),
        ("Adam", 100),
        ("RMSprop", 100),
        ("MuSGD", 100),
        ("auto", 100),
        ("auto", 1e6),
    ],
)
def test_declared_parameters_get_no_weight_decay(name, iterations):
    opt, model, plain_groups = build(name, iterations)
    biases = {id(p) for p in no_decay_parameters(model)}
    gammas = {id(m.layer_scale.gamma) for m in model.modules() if getattr(m, "layer_scale", None)}
    # table, fixed, and the log_cpb MLP's two weights and one bias (its last Linear has no
    # bias, as in official DAT); the gamma of each of the three blocks with LayerScale
    assert len(gammas) == 3 and gammas <= biases
    assert len(biases) == 1 + 1 + 3 + len(gammas)
    seen: dict[int, int] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
            if id(p) in biases:
                assert group["weight_decay"] == 0.0, group.get("param_group")
                assert not group.get("use_muon", False)
    assert all(seen.get(i) == 1 for i in biases), "each bias parameter in exactly one group"
    assert sum(seen.values()) == len(list(model.parameters()))
    assert len(opt.param_groups) == plain_groups, "group count kept, so saved state reloads"
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert decayed and any(len(g["params"]) for g in decayed), "ordinary weights still decay"


def test_every_module_is_asked_for_its_own():
    """The optimizer code knows no module: anything defining ``no_weight_decay_parameters``
    is asked, each parameter is listed once."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.alpha = nn.Parameter(torch.ones(3))

        def no_weight_decay_parameters(self):
            return [self.alpha, self.alpha]

    block = DATBlock(8, {"pe": "table", "feat_size": 4, "heads": 2, "layer_scale": 1e-4})
    model = Detector(Scaled(), block)
    found = no_decay_parameters(model)
    assert [p.shape for p in found] == [(3,), (8,), (2, 7, 7)]  # alpha, gamma, rpe table

"""Ultralytics' detection trainer, with DAT's position biases kept out of weight decay."""

from __future__ import annotations

import torch
from ultralytics.models.yolo.detect import DetectionTrainer

from dat_exp.nn.optim import exclude_position_bias_from_decay


class DATDetectionTrainer(DetectionTrainer):
    """Every optimizer Ultralytics builds (the named ones, ``auto``'s AdamW or MuSGD) gets the
    position-bias parameters moved into its decay-free group before the first step."""

    def build_optimizer(self, model, *args, **kwargs) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(model, *args, **kwargs)
        exclude_position_bias_from_decay(optimizer, model)
        return optimizer

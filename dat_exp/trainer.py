"""Ultralytics' detection trainer, with the parameters modules declare decay-free (DAT's
position biases, LayerScale's gamma) kept out of weight decay, and checkpoints written whole
even when an interruption arrives meanwhile."""

from __future__ import annotations

import torch
from ultralytics.models.yolo.detect import DetectionTrainer

from dat_exp.interrupts import interrupts_held
from dat_exp.nn.optim import exclude_from_decay


class DATDetectionTrainer(DetectionTrainer):
    """Every optimizer Ultralytics builds (the named ones, ``auto``'s AdamW or MuSGD) gets the
    declared decay-free parameters (``nn.optim.no_decay_parameters``) moved into its decay-free
    group before the first step."""

    def build_optimizer(self, model, *args, **kwargs) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(model, *args, **kwargs)
        exclude_from_decay(optimizer, model)
        return optimizer

    def save_model(self) -> bool:
        """``last.pt`` and ``best.pt``, never truncated by a SIGTERM (see ``interrupts``)."""
        with interrupts_held():
            return super().save_model()

"""Trainer callbacks that stop a job instead of letting Ultralytics paper over a problem.

Ultralytics reloads ``last.pt`` up to 3 times after a non-finite loss and carries on, and it
halves the batch silently after an out-of-memory in the first epoch; a sweep must see both.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class Diverged(RuntimeError):
    """A non-finite training loss."""


class FaultInjected(RuntimeError):
    """The test-only ``fault=raise`` setting."""


class TrainingGuard:
    def __init__(self, configured_batch: int, fault: str | None = None) -> None:
        self.configured_batch = configured_batch
        self.fault = fault
        self.batch_used = configured_batch

    def attach(self, yolo: Any) -> None:
        yolo.add_callback("on_train_start", self.on_train_start)
        yolo.add_callback("on_train_batch_start", self.on_train_batch_start)
        yolo.add_callback("on_train_batch_end", self.on_train_batch_end)
        yolo.add_callback("on_train_epoch_end", self.on_train_epoch_end)

    @property
    def batch_changed(self) -> bool:
        return self.batch_used != self.configured_batch

    def on_train_start(self, trainer: Any) -> None:
        if self.fault == "raise":
            raise FaultInjected("fault=raise: this job fails on purpose (a test setting)")

    def on_train_batch_start(self, trainer: Any) -> None:
        if self.fault == "nan" and trainer.epoch == trainer.start_epoch:
            with torch.no_grad():  # a real divergence: the next forward is NaN everywhere
                next(trainer.model.parameters()).fill_(float("nan"))

    def on_train_batch_end(self, trainer: Any) -> None:
        loss = None if trainer.loss is None else float(trainer.loss.detach())
        if loss is not None and not math.isfinite(loss):
            raise Diverged(f"non-finite training loss ({loss}) in epoch {trainer.epoch + 1}")

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.batch_used = int(trainer.batch_size)

"""Ultralytics trainer callbacks that log to one MLflow run by explicit id.

Per epoch (step = 1-based epoch): ``train/*`` losses, ``val/*`` metrics and, given a
:class:`~dat_exp.metrics.dat_diagnostics.DATDiagnostics`, each DAT module's ``dat/L{layer}/*``
diagnostics on the EMA weights just validated. Ultralytics calls ``on_fit_epoch_end`` once more
after training with the best checkpoint's metrics; that call feeds the final metrics only, under
keys no per-epoch series uses. A resumed run may lack the diagnostics of the epochs ``backfill``
fills (they are not in ``results.csv``).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from dat_exp.tracking import schema
from dat_exp.tracking.store import log_metrics

log = logging.getLogger("dat_exp")

# Ultralytics' validation keys -> the registry's names
VAL_KEYS = {
    "metrics/precision(B)": schema.PRECISION,
    "metrics/recall(B)": schema.RECALL,
    "metrics/mAP50(B)": schema.MAP50,
    "metrics/mAP50-95(B)": schema.MAP50_95,
}


class EpochLogger:
    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.epochs_done = 0
        self.final: dict[str, float] = {}
        self._in_loop = False
        self.diagnostics: Any = None  # dat_exp.metrics.dat_diagnostics.DATDiagnostics

    def attach(self, yolo: Any, diagnostics: Any = None) -> None:
        """Register the callbacks; ``diagnostics`` (a ``DATDiagnostics``) adds the DAT series."""
        self.diagnostics = diagnostics
        yolo.add_callback("on_train_start", self.on_train_start)
        yolo.add_callback("on_train_epoch_end", self.on_train_epoch_end)
        yolo.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)

    def on_train_start(self, trainer: Any) -> None:
        if self.diagnostics is not None:
            self.diagnostics.load(trainer)  # the fixed images, once per run (rank 0)

    def on_train_epoch_end(self, trainer: Any) -> None:
        self._in_loop = True  # the next on_fit_epoch_end belongs to this epoch

    def on_fit_epoch_end(self, trainer: Any) -> None:
        metrics = {
            VAL_KEYS[k]: float(v) for k, v in (trainer.metrics or {}).items() if k in VAL_KEYS
        }
        if not self._in_loop:  # the post-training call: best checkpoint's metrics
            self.final = metrics
            return
        self._in_loop = False
        self.epochs_done = trainer.epoch + 1
        series = {schema.val(k): v for k, v in metrics.items()}
        series.update(trainer.label_loss_items(trainer.tloss, prefix=schema.TRAIN.rstrip("/")))
        series.update(self._diagnose(trainer))
        log_metrics(self.client, self.run_id, series, step=self.epochs_done)

    def _diagnose(self, trainer: Any) -> dict[str, float]:
        """The DAT diagnostics of this epoch; a failure costs the diagnostics, not the run."""
        if self.diagnostics is None:
            return {}
        try:
            found = self.diagnostics.measure(trainer)
        except Exception:  # noqa: BLE001  (a diagnostic must not end a training)
            log.warning("DAT diagnostics failed at epoch %d", self.epochs_done, exc_info=True)
            return {}
        if found:
            epoch_s = float(getattr(trainer, "epoch_time", 0.0) or 0.0)
            share = (
                f", {100 * self.diagnostics.seconds / epoch_s:.2f}% of the epoch's {epoch_s:.1f} s"
                if epoch_s
                else ""
            )
            log.info(
                "DAT diagnostics, epoch %d: %.3f s%s",
                self.epochs_done,
                self.diagnostics.seconds,
                share,
            )
        return found

    def backfill(self, results_csv: Path, epochs_saved: int) -> list[int]:
        """Log the epochs that Ultralytics recorded (``results.csv``, written before the
        checkpoint) but this run has not: an interruption between saving an epoch's checkpoint
        and its ``on_fit_epoch_end`` would otherwise leave a hole in the resumed series. Only
        epochs up to ``epochs_saved`` (the checkpoint's) count: later ones will train again."""
        if not results_csv.exists():
            return []
        history = self.client.get_metric_history(self.run_id, schema.val(schema.MAP50))
        logged = {m.step for m in history}
        filled = []
        with results_csv.open(newline="") as f:
            for row in csv.DictReader(f):
                row = {k.strip(): v.strip() for k, v in row.items() if k}
                epoch = int(float(row["epoch"]))
                if epoch in logged or epoch > epochs_saved:
                    continue
                series = {
                    schema.val(name): float(row[k]) for k, name in VAL_KEYS.items() if k in row
                }
                series.update({k: float(v) for k, v in row.items() if k.startswith(schema.TRAIN)})
                log_metrics(self.client, self.run_id, series, step=epoch)
                filled.append(epoch)
        return filled

"""Per-epoch logging survives an interruption between Ultralytics' checkpoint and our callback."""

from __future__ import annotations

from mlflow import MlflowClient

from dat_exp.tracking import schema
from dat_exp.tracking.epoch_logger import EpochLogger

HEADER = (
    "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),"
    "metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss\n"
)


def test_backfill_logs_the_saved_epochs_the_run_missed(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    for step in (1, 2):  # epochs 1 and 2 were logged; epoch 3 was saved, then the job killed
        client.log_metric(run_id, schema.val(schema.MAP50), 0.1 * step, step=step)
    csv = tmp_path / "results.csv"
    rows = [f"{e},{e}.0,1.{e},2.{e},3.{e},0.{e},0.{e},0.{e}1,0.{e}2,4.{e}\n" for e in (1, 2, 3, 4)]
    csv.write_text(HEADER + "".join(rows))
    logger = EpochLogger(client, run_id)

    assert logger.backfill(csv, epochs_saved=3) == [3]  # epoch 4 is not in the checkpoint
    history = client.get_metric_history(run_id, schema.val(schema.MAP50))
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.31)]
    (cls,) = client.get_metric_history(run_id, schema.TRAIN + "cls_loss")
    assert (cls.step, cls.value) == (3, 2.3)
    (m95,) = client.get_metric_history(run_id, schema.val(schema.MAP50_95))
    assert m95.value == 0.32
    assert logger.backfill(csv, epochs_saved=3) == []  # nothing twice
    assert logger.backfill(tmp_path / "missing.csv", epochs_saved=3) == []

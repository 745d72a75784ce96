"""Multi-GPU training of one job: Ultralytics' DDP worker script must rebuild our trainer,
DAT model and callbacks in a fresh process (verified here on CPU, without a second GPU)."""

from __future__ import annotations

import subprocess
import sys

from ultralytics.utils.dist import generate_ddp_file

from dat_exp.guards import TrainingGuard
from dat_exp.models.builder import build
from dat_exp.tracking.epoch_logger import EpochLogger
from dat_exp.tracking.store import client_for, experiment_id, start_run
from dat_exp.trainer import DATDetectionTrainer

CHECK = """
import sys
from ultralytics.utils import DEFAULT_CFG_DICT
from ultralytics.utils.patches import torch_load
state = torch_load(sys.argv[1], map_location="cpu")
cfg = DEFAULT_CFG_DICT.copy()
cfg.update(save_dir="")
trainer = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
trainer.model = state["model"]
n_dat = sum(type(m).__name__ == "DAttention" for m in trainer.model.modules())
loggers = [cb.__self__ for cbs in trainer.callbacks.values() for cb in cbs
           if type(getattr(cb, "__self__", None)).__name__ == "EpochLogger"]
loggers[0].client.set_tag(loggers[0].run_id, "from_worker", "yes")
import torch
y = trainer.model.eval()(torch.rand(1, 3, 64, 64))[0]
print(type(trainer).__name__, n_dat, tuple(y.shape), loggers[0].run_id)
"""


def test_ddp_worker_state_unpickles_in_a_fresh_process(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("DAT_EXP_RUNS", str(tmp_path / "runs"))
    built = build("yolov8n", 2, tmp_path, "neck", imgsz=64)
    tracking = {"uri": None, "experiment": "ddp"}
    client = client_for(tracking)
    run_id = start_run(client, experiment_id(client, "ddp", local=True), "ddp", {})
    trainer = DATDetectionTrainer(
        overrides={
            "model": str(built.yaml_path),
            "data": str(tiny_data),
            "epochs": 1,
            "imgsz": 64,
            "device": "cpu",
            "workers": 0,
            "project": str(tmp_path),
            "name": "ddp",
            "plots": False,
        }
    )
    EpochLogger(client, run_id).attach(trainer)
    TrainingGuard(16).attach(trainer)
    trainer.model = trainer.get_model(cfg=str(built.yaml_path), verbose=False)
    script = generate_ddp_file(trainer)
    state = script.removesuffix(".py") + ".pt"
    out = subprocess.run(
        [sys.executable, "-c", CHECK, state],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == f"DATDetectionTrainer 3 (1, 6, 84) {run_id}"
    assert client.get_run(run_id).data.tags["from_worker"] == "yes"

"""DAT diagnostics through the real entry point: a 2-epoch run with modules at two levels logs
each module's ``dat/L{layer}/…`` family at steps 1 and 2, and its checkpoints carry no probe."""

from __future__ import annotations

import pytest
import torch

from dat_exp.nn import DAttention
from dat_exp.tracking import schema
from tests.runner.entry import TINY, local_runs, local_store, run_entry


@pytest.mark.slow
def test_each_dat_module_logs_its_diagnostics_every_epoch(workdir):
    # a LayerScale named, so that its gamma is logged whatever the default
    scale = "dat.layer_scale=1e-4"
    out = run_entry(workdir, "placement=neck", "placement.levels=[P4,P5]", scale, *TINY)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = local_runs(workdir)
    assert run.info.status == "FINISHED", run.data.tags
    params = run.data.params
    layers = sorted(int(params[f"module.{i}.layer"]) for i in range(2))
    assert "module.2.layer" not in params and len(set(layers)) == 2
    names = schema.DAT_DIAGNOSTICS
    client = local_store(workdir)
    for layer in layers:
        for name in names:
            history = client.get_metric_history(run.info.run_id, schema.dat_diagnostic(layer, name))
            assert sorted(m.step for m in history) == [1, 2], (layer, name)
            values = [m.value for m in history]
            assert all(v >= 0 for v in values), (layer, name, values)
            if name in (schema.AT_BOUND, schema.ATTN_ENTROPY):
                assert all(v <= 1 for v in values), (layer, name, values)
    logged = {k for k in run.data.metrics if k.startswith(schema.DAT)}
    assert logged == {schema.dat_diagnostic(i, n) for i in layers for n in names}
    # last.pt was saved after epoch 1's diagnostics (the stripped checkpoint keeps the EMA as
    # its model): no probe, no recorded tensor pickled
    (last,) = (workdir / "runs" / "train").glob("*/weights/last.pt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    model = checkpoint.get("ema") or checkpoint["model"]
    attns = [m for m in model.modules() if isinstance(m, DAttention)]
    assert len(attns) == 2
    assert all(
        "attention_probe" not in m.__dict__ and m.last_positions is None and not m.record_positions
        for m in attns
    )

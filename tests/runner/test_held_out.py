"""A dataset without a usable test split says why, through the real entry point (the runs with
a test split are checked on the analysis tests' session store, test_end_to_end.py)."""

from __future__ import annotations

import pytest

from dat_exp.data.resolve import NO_TEST
from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag
from tests.conftest import write_tiny_dataset
from tests.runner.entry import TINY, local_runs, run_entry


def children(workdir) -> list:
    runs = [r for r in local_runs(workdir) if Tag.PARENT in r.data.tags]
    assert all(r.info.status == "FINISHED" for r in runs), [r.data.tags for r in runs]
    return runs


@pytest.mark.slow
def test_a_dataset_without_a_test_split_says_why_and_logs_no_test_metric(workdir, tmp_path):
    data = write_tiny_dataset(tmp_path / "custom", n_images=4)
    out = run_entry(workdir, "-m", "data=custom", f"data.path={data}", *TINY, "train.epochs=1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = children(workdir)
    assert run.data.tags[Tag.TEST_SKIPPED] == NO_TEST
    assert not [k for k in run.data.metrics if k.startswith(schema.TEST)]
    assert schema.MAP50_95 in run.data.metrics  # the job itself went on
    assert run.data.tags[Tag.BASELINE_HASH] == run.data.tags[Tag.VARIANT_HASH]

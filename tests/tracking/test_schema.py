"""The registry of names. Stored runs are read back by these exact strings, so each is pinned
here by hand (a rename must be a decision, with a migration), and no module of the package
spells one outside the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dat_exp.tracking import schema
from dat_exp.tracking.schema import Tag

PACKAGE = Path(schema.__file__).resolve().parents[1]

# What runs in existing stores are logged under: written out by hand, not read from the schema.
METRIC_NAMES = {
    "MAP50_95": "mAP50-95",
    "MAP50": "mAP50",
    "PRECISION": "precision",
    "RECALL": "recall",
    "GFLOPS": "gflops",
    "GFLOPS_ULTRALYTICS": "gflops_ultralytics",
    "PARAMS": "params",
    "LATENCY_MS": "latency_ms",
    "LATENCY_P90_MS": "latency_p90_ms",
    "TRAIN_TIME_S": "train_time_s",
    "PEAK_MEM_MB": "peak_mem_mb",
}
TAG_KEYS = {
    "CONFIG_HASH": "dat_exp.config_hash",
    "VARIANT_HASH": "dat_exp.variant_hash",
    "VARIANT": "dat_exp.variant",
    "CODE_VERSION": "dat_exp.code_version",
    "GIT_COMMIT": "dat_exp.git_commit",
    "GIT_DIRTY": "dat_exp.git_dirty",
    "ERROR": "dat_exp.error",
    "LAST_EPOCH": "dat_exp.last_epoch",
    "BATCH_CHANGED": "dat_exp.batch_changed",
    "SWEEP": "dat_exp.sweep",
    "OVERRIDES": "dat_exp.overrides",
    "REUSED": "dat_exp.reused.",
    "RACING_METRIC": "dat_exp.racing.metric",
    "RACING_SETTINGS": "dat_exp.racing.settings",
    "RACING_DECISION": "dat_exp.racing.decision.",
    "BASELINE_HASH": "dat_exp.baseline_hash",
    "TEST_SKIPPED": "dat_exp.test_skipped",
    "PARENT": "mlflow.parentRunId",
    "NOTE": "mlflow.note.content",
    "DEVICE_NAME": "device_name",
    "DEVICE_TYPE": "device_type",
}


def test_logged_names_are_the_ones_stored_runs_have():
    assert {k: getattr(schema, k) for k in METRIC_NAMES} == METRIC_NAMES
    assert {k: getattr(Tag, k) for k in TAG_KEYS} == TAG_KEYS
    assert set(schema.METRICS) == set(METRIC_NAMES.values()), "every final metric is registered"
    assert schema.HEADLINE == "mAP50-95"
    assert schema.default_tracking_uri().endswith("/mlflow.db")


def test_the_naming_scheme():
    assert schema.val("mAP50-95") == "val/mAP50-95"
    assert schema.val("test/mAP50-95") == "val/mAP50-95", "test is never evaluated per epoch"
    assert schema.held_out("mAP50-95") == "test/mAP50-95"
    assert [schema.held_out(m) for m in schema.HELD_OUT] == [
        "test/mAP50",
        "test/mAP50-95",
        "test/precision",
        "test/recall",
    ]
    assert schema.sub("mAP50-95", "small") == "mAP50-95_small"
    assert schema.dat_diagnostic(15, "offset_cells") == "dat/L15/offset_cells"
    assert schema.DAT_DIAGNOSTICS == (
        "offset_cells",
        "offset_cells_p95",
        "at_bound",
        "attn_entropy",
        "gamma",
    )
    assert schema.search_tag(Tag.CONFIG_HASH) == "tags.`dat_exp.config_hash`"
    finals = ["mAP50-95", "test/mAP50-95", "mAP50-95_small", "test/recall"]
    series = [
        "val/mAP50",
        "train/box_loss",
        "dat/L15/at_bound",
        "system/cpu_utilization_percentage",
    ]
    assert all(map(schema.is_final, finals)) and not any(map(schema.is_final, series))
    assert schema.spec("test/mAP50").higher_is_better and not schema.spec("gflops").over_seeds
    with pytest.raises(KeyError, match="'AP' is not one of mAP50-95"):
        schema.spec("AP")


def test_no_module_spells_a_registered_name_outside_the_registry():
    # device_type/device_name also name columns of the analysis' runs table; "params" an
    # optimizer group's key: those words are allowed as plain words, the others nowhere.
    names = {*METRIC_NAMES.values(), *TAG_KEYS.values()} - {"device_type", "device_name", "params"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "schema.py" or "conf" in path.relative_to(PACKAGE).parts:
            continue
        text = path.read_text()
        found += [
            f"{path.relative_to(PACKAGE)}: {name}"
            for name in names
            if re.search(rf"[\"']{re.escape(name)}[\"']", text)
        ]
    assert found == []

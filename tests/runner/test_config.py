"""Composition, resolution, hashing and variant names."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from dat_exp.config import (
    CONF_DIR,
    config_hash,
    register_configs,
    resolve,
    variant_hash,
    variant_name,
)

register_configs()


def composed(*overrides: str) -> dict:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return resolve(compose("config", overrides=list(overrides)))


def test_defaults_resolve_train_auto_to_smoke_on_cpu():
    cfg = composed("device=cpu")
    assert cfg["train"]["name"] == "smoke" and cfg["train"]["optimizer"] == "AdamW"
    assert cfg["train"]["epochs"] > 0 and cfg["device"] == "cpu"


def test_a_key_set_under_train_auto_overrides_the_preset():
    cfg = composed("device=cpu", "train.epochs=3")
    assert cfg["train"]["name"] == "smoke" and cfg["train"]["epochs"] == 3


@pytest.mark.parametrize(
    "a,b",
    [
        (["tracking.experiment=x"], ["tracking.experiment=y"]),
        (["log_weights=false"], ["log_weights=true"]),
        (["dry_run=true"], []),
        (["rerun=true"], ["resume=true"]),
        (["device=0"], ["device=1"]),  # the index does not change a result, the type does
        (["placement=none", "dat.pe=dwc"], ["placement=none", "dat=blog"]),
        (
            ["placement=neck", "dat.no_off=true", "dat.pe=dwc"],
            ["placement=neck", "dat.no_off=true"],
        ),
        (
            ["placement=neck", "dat.no_off=true", "dat.offset_range_factor=2"],
            ["placement=neck", "dat.no_off=true", "dat.ref_points=v1"],
        ),
        (["placement=c2f", "dat.wrap=bare"], ["placement=c2f"]),
        (["placement=neck"], ["placement=neck", "placement.levels=[P5,P3,P4]"]),
        (["placement=neck", "placement.levels=[]"], ["placement=neck"]),
    ],
)
def test_irrelevant_keys_hash_equal(a, b):
    assert config_hash(composed("device=cpu", *a)) == config_hash(composed("device=cpu", *b))


@pytest.mark.parametrize(
    "a,b",
    [
        (["seed=0"], ["seed=1"]),
        (["placement=neck"], ["placement=sppf"]),
        (["placement=neck", "dat.pe=dwc"], ["placement=neck"]),
        (["placement=neck", "dat.impl=fast"], ["placement=neck"]),
        (["device=cpu"], ["device=0"]),
        (["train.epochs=3"], ["train.epochs=4"]),
    ],
)
def test_relevant_keys_hash_differently(a, b):
    assert config_hash(composed(*a)) != config_hash(composed(*b))


def test_variant_hash_ignores_the_seed_only():
    a, b = composed("device=cpu", "seed=0"), composed("device=cpu", "seed=5")
    assert variant_hash(a) == variant_hash(b) and config_hash(a) != config_hash(b)


def test_variant_names_are_short_and_readable():
    assert variant_name(composed("device=cpu")) == "none"
    assert (
        variant_name(composed("device=cpu", "placement=neck", "placement.levels=[P3,P4]"))
        == "neck[P3,P4]/table/s-1/off"
    )
    assert (
        variant_name(composed("device=cpu", "placement=sppf", "dat.no_off=true"))
        == "sppf[P5]/no_off"
    )
    assert variant_name(composed("device=cpu", "placement=neck", "dat=blog", "model=yolov8s")) == (
        "yolov8s/neck[P3,P4,P5]/blog/dwc/s-1/off/st1/k9/h8/g1/bare"
    )


@pytest.mark.parametrize(
    "override",
    [
        "dat.no_off=maybe",
        "seed=abc",
        "dat.offset_range_factor=x",
        "train.epochs=many",
        "nonsense=1",
    ],
)
def test_bad_types_and_keys_fail_at_composition(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        composed(override)

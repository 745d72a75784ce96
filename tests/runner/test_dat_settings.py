"""DAT settings: one dataclass (schema, presets, per-level values) and the checks every job gets.

Pure and fast: composition, resolution and ``check_dat``; nothing trains.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from dat_exp.config import CONF_DIR, config_hash, register_configs, resolve
from dat_exp.nn import IMPLS, PE_MODES, REF_CONVENTIONS, WRAPS
from dat_exp.nn.presets import PRESETS, level_settings
from dat_exp.nn.settings import PE, DATSettings, Impl, Preset, RefPoints, Wrap, as_dict
from dat_exp.validate import InvalidJob, check_dat, validate_job

register_configs()

# The config hashes the previous code (DatConfig and conf/dat/*.yaml, commit 812ee24) gave these
# jobs: equal hashes keep the runs made before this schema recognised as done. Changed once in
# the verdicts issue (were d6448afe8a8b and 30c8fa8e2ecc): the default dataset grew a test split
# and 200 val images, so runs on the old defaults are of another experiment.
HASH_DEFAULT_JOB = "921af0b4ff96"  # python -m dat_exp device=cpu
HASH_NECK_BLOG = "4d439ca49fa2"  # python -m dat_exp device=cpu placement=neck dat=blog
# A residual-wrap DAT job hashes the key dat.layer_scale (the two above do not: placement=none
# hashes no dat, wrap=bare drops it). Its hash changed with that key (was 0d3013c93be2), and again
# when the measured default became null (another model): the old 1e-4 runs keep theirs when asked
# for by dat.layer_scale=1e-4.
HASH_NECK_OFFICIAL = "e2efefb641ed"  # python -m dat_exp device=cpu placement=neck
HASH_NECK_LS_1E4 = "65eb4e5628d7"  # … placement=neck dat.layer_scale=1e-4 (the default until then)


def composed(*overrides: str) -> dict:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return resolve(compose("config", overrides=["device=cpu", *overrides]))


def check(cfg: dict) -> None:
    placement = cfg["placement"]
    check_dat(cfg["dat"], cfg["model"]["name"], placement["name"], placement["levels"])


# -- the schema -----------------------------------------------------------------------------------
def test_fields_names_order_and_defaults_are_the_hashed_ones():
    """Changing a name or default changes the hash of every earlier run; the order is that of
    the logged params and the resolved config."""
    assert [(f.name, f.default) for f in dataclasses.fields(DATSettings)] == [
        ("preset", "official"),
        ("pe", "table"),
        ("offset_range_factor", -1.0),
        ("no_off", False),
        ("stride", "auto"),
        ("ksize", "auto"),
        ("heads", "auto"),
        ("groups", "auto"),
        ("wrap", "residual"),
        ("layer_scale", None),
        ("ref_points", "datpp"),
        ("impl", "auto"),
    ]
    assert list(composed()["dat"]) == [f.name for f in dataclasses.fields(DATSettings)]


def test_enum_names_are_their_values_and_match_the_module():
    """OmegaConf writes an enum back by name: name == value keeps resolved configs readable."""
    for enum in (Preset, PE, RefPoints, Impl, Wrap):
        assert all(
            name == str(member) for name, member in enum.__members__.items() if "-" not in name
        )
    assert PE["log-cpb"] is PE.log_cpb
    assert [m.value for m in PE] == list(PE_MODES)
    assert [m.value for m in RefPoints] == list(REF_CONVENTIONS)
    assert [m.value for m in Impl] == list(IMPLS)
    assert [m.value for m in Wrap] == list(WRAPS)


def test_config_hashes_of_the_previous_code_are_unchanged():
    assert config_hash(composed()) == HASH_DEFAULT_JOB
    assert config_hash(composed("placement=neck", "dat=blog")) == HASH_NECK_BLOG
    assert config_hash(composed("placement=neck")) == HASH_NECK_OFFICIAL
    assert config_hash(composed("placement=neck", "dat.layer_scale=1e-4")) == HASH_NECK_LS_1E4


def test_resolved_config_holds_plain_strings():
    cfg = composed("placement=neck", "dat=blog", "dat.pe=log-cpb")
    assert cfg["dat"]["pe"] == "log_cpb" and type(cfg["dat"]["pe"]) is str
    assert all(type(v) is not PE for v in cfg["dat"].values())
    assert yaml.safe_load(yaml.safe_dump(cfg))["dat"] == cfg["dat"]


# -- dat.layer_scale ------------------------------------------------------------------------------
@pytest.mark.parametrize("placement", ["placement=none", "placement=neck", "placement=c2f"])
@pytest.mark.parametrize(
    "overrides,expected",
    [
        ([], None),
        (["dat.layer_scale=null"], None),
        (["dat.layer_scale=0.5"], 0.5),
        (["dat.layer_scale=1"], 1.0),
        (["dat=blog"], None),  # the presets inherit the default
        (["dat=blog", "dat.layer_scale=null"], None),
    ],
)
def test_layer_scale_composes_null_or_a_number(placement, overrides, expected):
    cfg = composed(placement, *overrides)
    assert cfg["dat"]["layer_scale"] == expected
    check(cfg)


def test_layer_scale_reaches_the_module_settings():
    """``null`` is a value of this key (not "unset"): the job's null wins over the default."""
    assert level_settings("P3", 64, 640)["layer_scale"] is None
    assert level_settings("P3", 64, 640, {"layer_scale": 1e-4})["layer_scale"] == 1e-4
    assert level_settings("P3", 64, 640, {"layer_scale": 0.5})["layer_scale"] == 0.5
    assert level_settings("P3", 64, 640, {"preset": "blog"})["layer_scale"] is None
    assert level_settings("P3", 64, 640, PRESETS["blog"])["layer_scale"] is None


@pytest.mark.parametrize("placement", ["placement=none", "placement=neck", "placement=c2f"])
@pytest.mark.parametrize(
    "override,shown",
    [
        ("dat.layer_scale=0", "0.0"),
        ("dat.layer_scale=-1", "-1.0"),
        ("dat.layer_scale=nan", "nan"),
        ("dat.layer_scale=inf", "inf"),
        ("dat.layer_scale=-1e-4", "-0.0001"),
    ],
)
def test_layer_scale_out_of_range_is_refused_for_every_job(placement, override, shown):
    """Refused also where the wrap ignores it (c2f, none): a typo fails instead of training."""
    message = (
        rf"^dat.layer_scale={shown} must be null \(no LayerScale: x \+ DAT\(LN\(x\)\)\) or a "
        r"positive finite number \(LayerScale's initial gamma, e.g. 1e-4\)$"
    )
    with pytest.raises(InvalidJob, match=message):
        check(composed(placement, override))


@pytest.mark.parametrize("value", ["abc", True, [1e-4]])
def test_layer_scale_not_a_number_is_refused(value):
    with pytest.raises(ConfigCompositionException) as err:
        composed(f"dat.layer_scale={value}")
    assert "dat.layer_scale" in str(err.value.__cause__)
    with pytest.raises(
        InvalidJob, match=rf"^dat.layer_scale={re.escape(repr(value))} must be null"
    ):
        check_dat({"layer_scale": value}, "yolov8n", "neck")


def test_layer_scale_is_hashed_only_where_the_residual_wrap_uses_it():
    def hashed(*overrides: str) -> str:
        return config_hash(composed(*overrides))

    neck = hashed("placement=neck")
    assert len({neck, hashed("placement=neck", "dat.layer_scale=0.5")}) == 2
    assert len({neck, hashed("placement=neck", "dat.layer_scale=1e-4")}) == 2
    assert hashed("placement=neck", "dat.layer_scale=null") == neck
    for where in (["placement=neck", "dat.wrap=bare"], ["placement=c2f"], ["placement=none"]):
        assert hashed(*where, "dat.layer_scale=0.5") == hashed(*where), where
        assert hashed(*where, "dat.layer_scale=null") == hashed(*where), where
    assert hashed("placement=neck", "dat=blog", "dat.layer_scale=null") == HASH_NECK_BLOG


# -- presets --------------------------------------------------------------------------------------
def test_presets_are_datsettings_instances_and_the_dat_options():
    assert composed()["dat"] == as_dict(DATSettings()) == as_dict(PRESETS["official"])
    assert composed("dat=official")["dat"] == as_dict(DATSettings())
    blog = composed("dat=blog")["dat"]
    assert blog == as_dict(PRESETS["blog"])
    assert (blog["pe"], blog["stride"], blog["ksize"], blog["heads"], blog["groups"]) == (
        "dwc",
        1,
        9,
        8,
        1,
    )
    assert blog["wrap"] == "bare" and blog["preset"] == "blog"
    assert composed("dat=blog", "dat.pe=table")["dat"]["pe"] == "table"


def test_an_unknown_preset_lists_the_options():
    with pytest.raises(ConfigCompositionException, match="dat/paper") as err:
        composed("dat=paper")
    assert "blog" in str(err.value) and "official" in str(err.value)


@pytest.mark.parametrize(
    "level,channels,expected",
    [  # (ksize, stride, heads, groups, feat_size at 640)
        ("P3", 64, (7, 4, 2, 1, 80)),
        ("P4", 128, (5, 2, 4, 2, 40)),
        ("P5", 256, (3, 1, 8, 4, 20)),
        ("P5", 320, (3, 1, 10, 5, 20)),  # heads C/32; groups: largest divisor <= heads/2
        ("P4", 192, (5, 2, 6, 3, 40)),
    ],
)
def test_level_settings_of_the_official_preset(level, channels, expected):
    s = level_settings(level, channels, 640)
    assert (s["ksize"], s["stride"], s["heads"], s["groups"], s["feat_size"]) == expected
    assert (s["pe"], s["wrap"], s["offset_range_factor"], s["impl"]) == (
        "table",
        "residual",
        -1.0,
        "auto",
    )
    assert "preset" not in s


def test_level_settings_order_level_then_preset_then_job():
    assert level_settings("P3", 64, 100)["feat_size"] == math.ceil(100 / 8)
    inside = level_settings("P3", None, 640)  # inside a block: DAttention sizes heads/groups
    assert inside["heads"] is None and inside["groups"] is None and inside["ksize"] == 7
    blog = level_settings("P3", 64, 640, PRESETS["blog"])
    assert (blog["ksize"], blog["stride"], blog["heads"], blog["groups"], blog["pe"]) == (
        9,
        1,
        8,
        1,
        "dwc",
    )
    assert type(blog["pe"]) is str
    job = level_settings("P3", 64, 640, {"preset": "blog", "heads": 4, "stride": "auto"})
    assert job["heads"] == 4 and job["stride"] == 1  # auto keeps the preset's value, not P3's 4
    assert job["ksize"] == 9 and job["pe"] == "dwc" and job["wrap"] == "bare"
    official = level_settings("P5", 256, 640, {"ksize": 5, "groups": "auto"})
    assert official["ksize"] == 5 and official["groups"] == 4 and official["stride"] == 1
    with pytest.raises(ValueError, match="dat.preset='paper' is not one of official, blog"):
        level_settings("P3", 64, 640, {"preset": "paper"})
    with pytest.raises(ValueError, match="level 'P9'"):
        level_settings("P9", 64, 640)


# -- checks: every job, whatever its placement -----------------------------------------------------
PLACEMENTS = ["placement=none", "placement=neck"]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_an_unknown_pe_fails_at_composition_with_the_choices(placement):
    with pytest.raises(ConfigCompositionException) as err:
        composed(placement, "dat.pe=banana")
    reason = str(err.value.__cause__)
    assert "'banana'" in reason and "dat.pe" in reason
    assert "table, dwc, log_cpb, fixed, none" in reason


@pytest.mark.parametrize("placement", ["none", "neck", "c2f"])
@pytest.mark.parametrize(
    "dat,message",
    [
        ({"pe": "banana"}, "dat.pe='banana' is not one of table, dwc, log_cpb, fixed, none"),
        ({"wrap": "sandwich"}, "dat.wrap='sandwich' is not one of residual, bare"),
        ({"preset": "paper"}, "dat.preset='paper' is not one of official, blog"),
        ({"kernel": 3}, "dat.kernel is not a DAT setting; valid: preset, pe,"),
    ],
)
def test_check_dat_refuses_values_outside_their_choices(placement, dat, message):
    """Without Hydra (a dict from elsewhere) the enums' choices are checked too."""
    with pytest.raises(InvalidJob, match=message):
        check_dat(dat, "yolov8n", placement)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize(
    "override,message",
    [
        ("dat.ksize=4", r"dat.ksize=4 must be auto or an odd positive integer \(1, 3, 5, ...\)"),
        ("dat.ksize=-3", "dat.ksize=-3 must be auto or an odd positive integer"),
        ("dat.ksize=abc", "dat.ksize='abc' must be auto or an odd positive integer"),
        ("dat.offset_range_factor=nan", "dat.offset_range_factor=nan must be a finite number"),
        ("dat.offset_range_factor=inf", "dat.offset_range_factor=inf must be a finite number"),
        ("dat.offset_range_factor=-inf", "dat.offset_range_factor=-inf must be a finite number"),
        ("dat.heads=0", r"dat.heads=0 must be auto or a positive integer \(1, 2, 3, ...\)"),
        ("dat.heads=2.5", "dat.heads=2.5 must be auto or a positive integer"),
        ("dat.groups=-1", "dat.groups=-1 must be auto or a positive integer"),
        ("dat.stride=0", r"dat.stride=0 must be auto or an integer >= 1 \(1, 2, 3, ...\)"),
        ("dat.stride=true", "dat.stride=True must be auto or an integer >= 1"),
    ],
)
def test_single_values_are_refused_with_key_value_and_choices(placement, override, message):
    with pytest.raises(InvalidJob, match=message):
        check(composed(placement, override))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["dat.heads=7"],
            r"dat.heads=7 divides the channels of no level of yolov8n \(P3 64, P4 128, P5 256\); "
            r"valid: 1, 2, 4, 8, 16, 32, 64, 128, 256$",
        ),
        (
            ["dat.groups=3"],
            r"dat.groups=3 divides the heads of no level of yolov8n \(P3 2, P4 4, P5 8 heads\); "
            "valid: 1, 2, 4, 8$",
        ),
        (["dat.heads=4", "dat.groups=3"], r"dat.groups=3 divides the heads of no level.*4 heads"),
        (
            ["model=yolov8m", "dat.heads=5"],
            r"no level of yolov8m \(P3 192, P4 384, P5 576\); valid: 1, 2, 3, 4, 6,",
        ),
    ],
)
def test_placement_none_refuses_what_no_level_could_take(overrides, message):
    with pytest.raises(InvalidJob, match=message):
        check(composed("placement=none", *overrides))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["placement=neck", "dat.heads=7"],
            r"dat.heads=7 must divide channels=64 at P3 \(placement=neck of yolov8n\); "
            "valid at every level it uses: 1, 2, 4, 8, 16, 32, 64$",
        ),
        (
            ["placement=neck", "placement.levels=[P5]", "dat.heads=3"],
            "dat.heads=3 must divide channels=256 at P5",
        ),
        (
            ["placement=neck", "dat.groups=3"],
            r"dat.groups=3 must divide heads=2 at P3 \(placement=neck of yolov8n\); "
            "valid at every level it uses: 1, 2$",
        ),
        (
            ["placement=neck", "dat.heads=2"],  # P5's default groups (4) do not divide 2 heads
            "dat.groups=auto is 4 at P5 .*does not divide dat.heads=2; set dat.groups to one "
            "of 1, 2$",
        ),
        (
            ["placement=c2f", "dat.heads=3"],
            r"dat.heads=3 must divide channels=32 \(the width inside its block\) at P3",
        ),
    ],
)
def test_a_dat_placement_refuses_what_a_level_it_uses_cannot_take(overrides, message):
    with pytest.raises(InvalidJob, match=message):
        check(composed(*overrides))


@pytest.mark.parametrize(
    "overrides",
    [  # the default placement is none
        [],
        ["dat=blog"],
        ["dat.heads=4"],
        ["dat.heads=2"],
        ["dat.heads=256"],  # P5 of yolov8n has 256 channels: valid somewhere
        ["dat.groups=4"],  # P5's default 8 heads
        ["dat.pe=log-cpb"],
        ["dat.offset_range_factor=0", "dat.ksize=1", "dat.stride=3"],
        ["placement=neck", "dat.heads=2", "dat.groups=2"],
        ["placement=neck", "dat=blog"],
        ["placement=neck", "placement.levels=[P5]", "dat.groups=8"],
        ["placement=c2f", "dat.heads=2"],  # inside a block groups follow the heads set
        ["placement=sppf", "dat.heads=32", "dat.pe=log-cpb", "dat.ksize=auto"],
    ],
)
def test_valid_values_pass(overrides):
    cfg = composed(*overrides)
    check(cfg)
    if "dat.pe=log-cpb" in overrides:
        assert cfg["dat"]["pe"] == "log_cpb"


def test_every_job_is_checked_before_anything_else_runs(monkeypatch, tmp_path):
    """``validate_job`` (which every job of a sweep goes through) refuses a typo also where the
    placement builds no DAT module, before the dataset or the tracking store are looked at."""
    monkeypatch.setenv("DAT_EXP_RUNS", str(tmp_path / "runs"))
    cfg = composed("placement=none", "dat.heads=7", "tracking.uri=http://127.0.0.1:9")
    with pytest.raises(InvalidJob, match="dat.heads=7 divides the channels of no level"):
        validate_job(cfg)


def test_ksize_equal_to_stride_needs_a_map_that_large_at_every_level_it_uses():
    """DAT++ pads the offset net 0 at ksize == stride: a smaller map has no key grid, and
    Ultralytics builds every model with a 256-px forward first (P5 8x8)."""
    with pytest.raises(
        InvalidJob, match=r"dat.ksize=9 with dat.stride=9 at P5 .* P5 is 8x8 at 256"
    ):
        check_dat({"ksize": 9, "stride": 9}, "yolov8n", "sppf", None, 640)
    with pytest.raises(InvalidJob, match=r"at P5 .* P5 is 4x4 at 128 px"):
        check_dat({"ksize": 5, "stride": 5}, "yolov8n", "neck", None, 128)
    check_dat({"ksize": 5, "stride": 5}, "yolov8n", "neck", ["P3", "P4"], 128)
    check_dat({"ksize": 3, "stride": 3}, "yolov8n", "neck", None, 640)
    check_dat({"ksize": 9, "stride": 9, "ref_points": "v1"}, "yolov8n", "sppf", None, 640)

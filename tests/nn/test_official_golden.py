"""DAttention computes what the official DAT code computes.

``tests/fixtures/official-golden/cases.pt`` holds 41 cases run through the official
``DAttentionBaseline`` (LeapLabTHU/DAT: DAT++ ``main`` 32173fc, v1 tag ``CVPR2022``) in float64.
Each is loaded through ``load_official_state_dict`` and must match on both attention paths to
1e-6 of the output's largest value. The s >= 0 cases agree to ~1e-8 rather than ~1e-16: the
official code builds the offset range ``[1/(Hk-1), 1/(Wk-1)]`` as a float32 tensor, ours in the
input's dtype (which ``.half()`` needs); rounded to float32 as the official does, every case
agrees to 1e-15.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dat_exp.nn import DAttention, load_official_state_dict
from dat_exp.nn.dattention import offset_padding

CASES_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "official-golden" / "cases.pt"
CASES = torch.load(CASES_PATH, weights_only=False)
TOLERANCE = 1e-6
IMPLS = ["reference", "fast"]


def case_id(case: dict) -> str:
    s = case["settings"]
    h, w = s["feat_size"]
    parts = [
        s["ref_points"],
        s["pe"],
        f"s{s['offset_range_factor']:g}",
        f"stride{s['stride']}",
        f"k{s['ksize']}",
        f"h{s['heads']}g{s['groups']}",
        f"{h}x{w}",
    ]
    return "-".join(parts + (["no_off"] if s["no_off"] else []))


def find(**settings) -> dict:
    """The one golden case with these settings."""
    hits = [c for c in CASES if all(c["settings"][k] == v for k, v in settings.items())]
    assert len(hits) == 1, (settings, len(hits))
    return hits[0]


def build(case: dict, impl: str = "reference") -> DAttention:
    s = dict(case["settings"])
    return DAttention(s.pop("channels"), **s, impl=impl).double().eval()


def loaded(case: dict, impl: str = "reference") -> DAttention:
    return load_official_state_dict(build(case, impl), case["state_dict"])


def rel_err(m: DAttention, case: dict) -> float:
    with torch.no_grad():
        y = m(case["input"])
    expected = case["output"]
    return ((y - expected).abs().max() / expected.abs().max()).item()


def test_the_golden_file_is_the_one_described():
    assert len(CASES) == 41
    assert all(c["input"].dtype == c["output"].dtype == torch.float64 for c in CASES)
    assert len({case_id(c) for c in CASES}) == len(CASES)  # ids are unique


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_the_official_output(case, impl):
    m = loaded(case, impl)
    assert m.uses_fast_path(torch.device("cpu")) == (impl == "fast")
    assert rel_err(m, case) <= TOLERANCE


# -- the loader ---------------------------------------------------------------------------------
def test_loader_maps_every_official_name():
    """Each parameter lands where it belongs (the golden test would also catch a swap, but not
    say where)."""
    mapping = {
        "dwc": {"rpe_table.weight": "rpe_dwc.weight", "rpe_table.bias": "rpe_dwc.bias"},
        "log_cpb": {
            "rpe_table.0.weight": "rpe_mlp.0.weight",
            "rpe_table.0.bias": "rpe_mlp.0.bias",
            "rpe_table.2.weight": "rpe_mlp.2.weight",
        },
    }
    norm = {"conv_offset.1.norm.weight": "conv_offset.1.weight"}
    norm["conv_offset.1.norm.bias"] = "conv_offset.1.bias"
    for pe in ("table", "dwc", "log_cpb", "fixed", "none"):
        case = find(pe=pe, stride=2, ksize=3, offset_range_factor=-1.0, ref_points="datpp")
        ours = loaded(case).state_dict()
        names = {**norm, **mapping.get(pe, {})}
        assert len(ours) == len(case["state_dict"]), pe
        for key, value in case["state_dict"].items():
            assert torch.equal(ours[names.get(key, key)], value), f"{pe}: {key}"


def test_loader_takes_one_module_out_of_a_model_state_dict():
    case = find(pe="log_cpb", stride=2, offset_range_factor=2.0)
    prefix = "stages.2.attns.1."
    model_sd = {f"{prefix}{k}": v for k, v in case["state_dict"].items()}
    other = find(pe="table", stride=2, offset_range_factor=2.0, ref_points="datpp", groups=2)
    model_sd.update({f"stages.2.attns.0.{k}": v for k, v in other["state_dict"].items()})
    model_sd["stages.2.layer_norms.0.weight"] = torch.ones(32, dtype=torch.float64)
    m = load_official_state_dict(build(case), model_sd, prefix=prefix)
    assert rel_err(m, case) <= TOLERANCE
    message = refused(case, model_sd, prefix="stages.2.attns.7.")
    assert "no key starts with 'stages.2.attns.7.'" in message
    assert "missing stages.2.attns.7.conv_offset.0.weight (16, 1, 3, 3)" in message


def refused(case: dict, state_dict: dict, **kw) -> str:
    """The loader's error for this state dict; the module must be left untouched."""
    m = build(case)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_official_state_dict(m, state_dict, **kw)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items()), "partial load"
    message = str(err.value)
    assert "\n" not in message
    return message


def test_loader_refuses_a_renamed_key():
    case = find(pe="table", stride=2, ksize=3, offset_range_factor=-1.0, ref_points="datpp")
    sd = dict(case["state_dict"])
    sd["conv_offset.1.weight"] = sd.pop("conv_offset.1.norm.weight")  # our name, not official
    message = refused(case, sd)
    assert "missing conv_offset.1.norm.weight (16,)" in message
    assert "unexpected conv_offset.1.weight (16,)" in message


def test_loader_refuses_a_missing_and_an_extra_key():
    case = find(pe="dwc", stride=2, ksize=3, offset_range_factor=-1.0, ref_points="datpp")
    sd = dict(case["state_dict"])
    del sd["rpe_table.bias"]
    sd["relative_position_bias_table"] = torch.zeros(3)
    message = refused(case, sd)
    assert "missing rpe_table.bias (32,)" in message
    assert "unexpected relative_position_bias_table (3,)" in message


def test_loader_refuses_a_table_for_another_feat_size():
    case = find(pe="table", stride=2, ksize=3, offset_range_factor=-1.0, ref_points="datpp")
    m = DAttention(32, feat_size=(10, 13), heads=4, groups=2, stride=2, pe="table").double()
    with pytest.raises(ValueError) as err:
        load_official_state_dict(m, case["state_dict"])
    assert "mis-shaped rpe_table (4, 17, 25) (expected (4, 19, 25) for rpe_table)" in str(err.value)


def test_loader_refuses_a_mis_shaped_tensor():
    case = find(pe="log_cpb", stride=1, offset_range_factor=-1.0, groups=2)
    sd = dict(case["state_dict"])
    sd["rpe_table.2.weight"] = torch.zeros(4, 32, dtype=torch.float64)  # heads, not heads/groups
    message = refused(case, sd)
    assert "mis-shaped rpe_table.2.weight (4, 32) (expected (2, 32) for rpe_mlp.2.weight)" in (
        message
    )


def test_loader_refuses_a_state_dict_of_another_pe():
    case = find(pe="table", stride=2, ksize=3, offset_range_factor=-1.0, ref_points="datpp")
    m = DAttention(32, feat_size=(9, 13), heads=4, groups=2, stride=2, pe="dwc").double()
    with pytest.raises(ValueError, match=r"rpe_table \(4, 17, 25\)"):
        load_official_state_dict(m, case["state_dict"])


# -- fix 1: the offset network's norm is nn.LayerNorm's (eps 1e-5), not timm's 1e-6 -------------
def test_offset_norm_eps_is_the_official_one():
    case = find(pe="table", stride=1, ksize=3, offset_range_factor=-1.0, ref_points="datpp")
    m = loaded(case)
    assert m.conv_offset[1].eps == nn.LayerNorm(16).eps == 1e-5  # official LayerNormProxy
    assert rel_err(m, case) <= TOLERANCE
    m.conv_offset[1].eps = 1e-6  # timm LayerNorm2d's default, as before the fix
    assert rel_err(m, case) > 10 * TOLERANCE  # the eps is visible in this case's output


def test_loader_refuses_a_module_with_the_old_eps():
    case = find(pe="table", stride=1, ksize=3, offset_range_factor=-1.0, ref_points="datpp")
    m = build(case)
    m.conv_offset[1].eps = 1e-6  # as a module pickled before the fix
    with pytest.raises(ValueError, match=r"offset norm eps 1e-06 \(official 1e-05\)"):
        load_official_state_dict(m, case["state_dict"])


# -- fix 2: the log-CPB MLP's last Linear has no bias ------------------------------------------
@pytest.mark.parametrize("groups", [2, 4])
def test_log_cpb_last_linear_has_no_bias(groups):
    case = find(pe="log_cpb", stride=1, offset_range_factor=-1.0, groups=groups)
    m = build(case)
    assert m.rpe_mlp[2].bias is None and "rpe_mlp.2.bias" not in m.state_dict()
    assert "rpe_table.2.bias" not in case["state_dict"]
    load_official_state_dict(m, case["state_dict"])  # strict: every key used, none missing
    assert rel_err(m, case) <= TOLERANCE


def test_loader_refuses_a_log_cpb_module_with_the_old_bias():
    case = find(pe="log_cpb", stride=1, offset_range_factor=-1.0, groups=2)
    m = build(case)
    m.rpe_mlp[2] = nn.Linear(32, 2).double()  # as built before the fix
    with pytest.raises(ValueError, match=r"missing rpe_table\.2\.bias \(2,\)"):
        load_official_state_dict(m, case["state_dict"])


# -- fix 3: DAT++ pads the offset conv 0 when ksize == stride ------------------------------------
def test_padding_rule():
    assert offset_padding(3, 3) == 0 and offset_padding(7, 7) == 0
    assert offset_padding(3, 1) == 1 and offset_padding(5, 2) == 2 and offset_padding(7, 4) == 3
    assert offset_padding(1, 1) == 0
    # The CVPR 2022 release always padded ksize // 2 (no golden case has v1 at ksize == stride).
    assert offset_padding(3, 3, "v1") == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_ksize_equal_to_stride_matches_the_official_key_grid(impl):
    case = find(stride=3, ksize=3)
    assert case["settings"]["feat_size"] == (10, 14) and case["settings"]["ref_points"] == "datpp"
    m = loaded(case, impl)
    assert m.conv_offset[0].padding == (0, 0)
    assert m.key_grid(10, 14) == (3, 4)  # floor(10/3) x floor(14/3); ksize//2 gave 4 x 5
    m.record_positions = True
    assert rel_err(m, case) <= TOLERANCE
    assert m.last_positions[1].shape == (2, 3, 4, 2)  # (B*groups, Hk, Wk, yx)


@pytest.mark.parametrize("size", [(10, 14), (11, 13), (3, 5)])
def test_no_off_and_fixed_at_ksize_equal_to_stride(size):
    """H, W not multiples of the stride: the key grid is floor(H/3) x floor(W/3) everywhere."""
    hk, wk = size[0] // 3, size[1] // 3
    fixed = DAttention(32, feat_size=(10, 14), heads=4, groups=2, stride=3, ksize=3, pe="fixed")
    assert fixed.rpe_table.shape == (4, 10 * 14, 3 * 4)
    no_off = DAttention(32, feat_size=(10, 14), heads=4, stride=3, ksize=3, no_off=True)
    for m in (fixed, no_off):
        m.record_positions = True
        assert m.key_grid(*size) == (hk, wk)
        y = m(torch.randn(2, 32, *size))
        assert y.shape == (2, 32, *size) and torch.isfinite(y).all()
        assert m.last_positions[1].shape[1:3] == (hk, wk)
    assert torch.equal(fixed._fixed_bias(10, 14, 3, 4), fixed.rpe_table)


def test_a_map_smaller_than_ksize_at_ksize_equal_to_stride_is_refused_clearly():
    m = DAttention(32, heads=4, stride=3, ksize=3)
    with pytest.raises(ValueError, match="2x5 map is smaller than ksize=3"):
        m(torch.randn(1, 32, 2, 5))


def test_a_module_pickled_with_the_old_padding_keeps_its_key_grid():
    """Before the fix the offset conv padded ksize // 2 at ksize == stride too; an old pickle
    keeps that conv, and its key grid, pooling and fixed table follow the conv, not the rule."""
    old = DAttention(32, feat_size=(10, 14), heads=4, stride=3, ksize=3, pe="fixed")
    old.conv_offset[0].padding = (1, 1)
    old.rpe_table = nn.Parameter(torch.zeros(4, 140, 4 * 5))  # ceil(10/3) x ceil(14/3)
    assert old.key_grid(10, 14) == (4, 5)
    assert old(torch.randn(1, 32, 10, 14)).shape == (1, 32, 10, 14)
    pooled = DAttention(32, heads=4, stride=3, ksize=3, no_off=True)
    pooled.conv_offset[0].padding = (1, 1)
    pooled.record_positions = True
    pooled(torch.randn(1, 32, 10, 14))
    assert pooled.last_positions[1].shape[1:3] == (4, 5)


def test_fixed_with_a_nominal_map_smaller_than_ksize_equal_to_stride_is_refused():
    with pytest.raises(ValueError, match=r"feat_size=\(2, 2\) gives an empty key grid"):
        DAttention(32, feat_size=2, heads=4, stride=3, ksize=3, pe="fixed")


@pytest.mark.parametrize("ref_points,grid", [("datpp", (3, 4)), ("v1", (4, 5))])
def test_attention_memory_follows_the_key_grid(ref_points, grid):
    """``attention_memory_mb`` counts logits and softmax over each module's own key grid."""
    from dat_exp.metrics.flops import attention_memory_mb

    attn = DAttention(32, feat_size=(10, 14), heads=4, stride=3, ksize=3, ref_points=ref_points)
    model = nn.Sequential(nn.Conv2d(3, 32, 1), nn.AdaptiveAvgPool2d((10, 14)), attn)
    expected = 2 * 4 * (10 * 14) * (grid[0] * grid[1]) * 4 / 2**20
    assert attention_memory_mb(model, 16) == pytest.approx(expected, rel=1e-12)

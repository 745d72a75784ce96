"""The block wrapper and the per-level presets."""

from __future__ import annotations

import pytest
import torch

from dat_exp.nn import DATBlock
from dat_exp.nn.presets import PRESETS, default_groups, default_heads, level_settings


def test_residual_block_starts_close_to_identity_and_bare_replaces():
    x = torch.randn(2, 64, 8, 8)
    residual = DATBlock(64, {"feat_size": 8}, layer_scale=1e-4)
    bare = DATBlock(64, {"feat_size": 8}, wrap="bare")
    assert (residual(x) - x).abs().max() < 1e-2
    assert (bare(x) - x).abs().max() > 1e-1
    assert not hasattr(bare, "norm")


def test_keyword_settings_override_the_mapping():
    b = DATBlock(64, {"pe": "dwc", "stride": 2}, pe="none")
    assert b.attn.pe == "none" and b.attn.stride == 2


def test_layer_scale_null_adds_the_attention_unscaled():
    """``layer_scale=None``: ``x + attn(norm(x))`` exactly, with no LayerScale parameter."""
    torch.manual_seed(0)
    block = DATBlock(64, {"feat_size": 8, "layer_scale": None}).eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x + block.attn(block.norm(x)))
    assert block.layer_scale is None and block.no_weight_decay_parameters() == []
    assert not any("layer_scale" in name for name, _ in block.named_parameters())
    assert DATBlock(64, {"feat_size": 8}, layer_scale=None).layer_scale is None  # as a keyword


@pytest.mark.parametrize("init", [0.5, 1e-4, 1])
def test_layer_scale_sets_the_initial_gamma(init):
    block = DATBlock(64, {"feat_size": 8, "layer_scale": init})
    gamma = block.layer_scale.gamma
    assert gamma.shape == (64,) and torch.equal(gamma, torch.full((64,), float(init)))
    assert block.no_weight_decay_parameters() == [gamma]
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        y = x + init * block.attn(block.norm(x))
        torch.testing.assert_close(block(x), y)


def test_layer_scale_default_is_none_as_dat_pp_and_bare_ignores_it():
    """The default, chosen by the LayerScale measurement: none (``x + DAT(LN(x))``), as
    official DAT++; ``bare`` builds no LayerScale whatever it is given."""
    from dat_exp.nn.settings import DATSettings

    assert DATSettings().layer_scale is None and DATBlock(64).layer_scale is None
    bare = DATBlock(64, {"wrap": "bare", "layer_scale": 0.5})
    assert not hasattr(bare, "layer_scale") and bare.no_weight_decay_parameters() == []


@pytest.mark.parametrize(
    "settings,fragment",
    [
        ({"wrap": "sandwich"}, "wrap='sandwich'"),
        ({"kernel": 3}, "bad DAT setting"),
        ({"layer_scale": 0}, "layer_scale=0 is not None or a positive"),
        ({"layer_scale": -1.0}, "layer_scale=-1.0"),
        ({"layer_scale": float("nan")}, "layer_scale=nan"),
        ({"layer_scale": "abc"}, "layer_scale='abc'"),
        ({"layer_scale": True}, "layer_scale=True"),
    ],
)
def test_bad_block_settings(settings, fragment):
    with pytest.raises(ValueError, match=fragment):
        DATBlock(64, settings)


def test_level_defaults_follow_dat_plus_plus():
    p3, p4, p5 = (level_settings(lv, c, 640) for lv, c in [("P3", 64), ("P4", 128), ("P5", 256)])
    assert (p3["ksize"], p3["stride"], p3["feat_size"], p3["heads"], p3["groups"]) == (
        7,
        4,
        80,
        2,
        1,
    )
    assert (p4["ksize"], p4["stride"], p4["feat_size"], p4["heads"], p4["groups"]) == (
        5,
        2,
        40,
        4,
        2,
    )
    assert (p5["ksize"], p5["stride"], p5["feat_size"], p5["heads"], p5["groups"]) == (
        3,
        1,
        20,
        8,
        4,
    )
    assert p5["pe"] == "table" and p5["wrap"] == "residual" and p5["offset_range_factor"] == -1
    with pytest.raises(ValueError, match="level 'P2' has no DAT defaults; valid: P3, P4, P5"):
        level_settings("P2", 64, 640)


def test_default_heads_and_groups():
    assert [default_heads(c) for c in (16, 64, 192, 320, 48)] == [1, 2, 6, 10, 1]
    assert [default_groups(h) for h in (1, 2, 3, 4, 6, 8, 10)] == [1, 1, 1, 2, 3, 4, 5]


def test_blog_preset():
    blog = level_settings("P4", 128, 640, PRESETS["blog"])
    assert blog == {
        "feat_size": 40,
        "stride": 1,
        "ksize": 9,
        "pe": "dwc",
        "heads": 8,
        "groups": 1,
        "wrap": "bare",
        "layer_scale": None,  # the default's, which the preset inherits (the wrap ignores it)
        "offset_range_factor": -1.0,
        "no_off": False,
        "ref_points": "datpp",
        "impl": "auto",
    }
    block = DATBlock(128, blog)
    assert block.attn.heads == 8 and block.attn.head_dim == 16 and block.wrap == "bare"


def test_the_residual_wrap_normalises_as_official_dat():
    """Official DAT's pre-attention norm is nn.LayerNorm (eps 1e-5), as in the offset net."""
    block = DATBlock(64, {"feat_size": 8})
    assert block.norm.eps == block.attn.conv_offset[1].eps == 1e-5
    x = torch.randn(1, 64, 4, 4)
    expected = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (64,), eps=1e-5)
    torch.testing.assert_close(block.norm(x), expected.permute(0, 3, 1, 2))

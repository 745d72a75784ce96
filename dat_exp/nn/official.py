"""Load the weights of one official DAT ``DAttentionBaseline`` (LeapLabTHU/DAT) into a
``DAttention`` built with the same settings.

Names differ in three places: the offset network's norm (official ``LayerNormProxy`` wraps an
``nn.LayerNorm`` as ``.norm``), and ``rpe_table``, which officially is whichever position
encoding the module uses: the bias table (``table``, ``fixed``: ours is ``rpe_table`` too), the
LePE depthwise conv (``dwc``: ours ``rpe_dwc``) or the log-CPB MLP (``log_cpb``: ours
``rpe_mlp``). Everything else keeps its name. The load is strict: anything that does not fit is
refused with a ``ValueError`` naming the keys and shapes, never resized or partly loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dat_exp.nn.dattention import NORM_EPS, DAttention, offset_padding

OFFICIAL_NORM = "conv_offset.1.norm."
OURS_NORM = "conv_offset.1."
OURS_PE = {"dwc": "rpe_dwc.", "log_cpb": "rpe_mlp."}  # official ``rpe_table.*`` submodules


def official_name(key: str, pe: str) -> str:
    """The official name of one of our state-dict keys."""
    if key.startswith(OURS_NORM):
        return OFFICIAL_NORM + key[len(OURS_NORM) :]
    ours = OURS_PE.get(pe)
    if ours and key.startswith(ours):
        return "rpe_table." + key[len(ours) :]
    return key


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _check_computes_as_official(module: DAttention) -> list[str]:
    """Settings a module pickled by older code may carry that the official code never had."""
    problems = []
    norm, conv = module.conv_offset[1], module.conv_offset[0]
    if norm.eps != NORM_EPS:
        problems.append(f"offset norm eps {norm.eps:g} (official {NORM_EPS:g})")
    pad = offset_padding(module.ksize, module.stride, module.ref_points)
    if conv.padding[0] != pad:
        problems.append(f"offset conv padding {conv.padding[0]} (official {pad})")
    return problems


def load_official_state_dict(
    module: DAttention, state_dict: Mapping[str, torch.Tensor], prefix: str = ""
) -> DAttention:
    """Copy an official ``DAttentionBaseline`` state dict into ``module`` (strict).

    ``prefix`` selects one module's keys from a larger state dict (e.g. a whole DAT model's,
    with ``prefix="stages.2.attns.1."``): keys outside it are not looked at; every key inside
    it must map onto one of the module's, with the same shape, and every key of the module must
    be given. Returns the module.
    """
    if not isinstance(module, DAttention):
        raise TypeError(f"expected a DAttention, got {type(module).__name__}")
    given = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    ours = module.state_dict()
    expected = {official_name(k, module.pe): k for k in ours}  # official name -> ours

    problems = [] if given or not prefix else [f"no key starts with {prefix!r}"]
    missing = [k for k in expected if k not in given]
    if missing:
        problems.append(
            "missing " + ", ".join(f"{prefix}{k} {_shape(ours[expected[k]])}" for k in missing)
        )
    unexpected = [k for k in given if k not in expected]
    if unexpected:
        problems.append(
            "unexpected " + ", ".join(f"{prefix}{k} {_shape(given[k])}" for k in unexpected)
        )
    mis_shaped = [
        f"{prefix}{k} {_shape(v)} (expected {_shape(ours[expected[k]])} for {expected[k]})"
        for k, v in given.items()
        if k in expected and tuple(v.shape) != tuple(ours[expected[k]].shape)
    ]
    if mis_shaped:
        problems.append("mis-shaped " + ", ".join(mis_shaped))
    problems += _check_computes_as_official(module)
    if problems:
        raise ValueError(
            f"official DAttentionBaseline state dict does not fit DAttention({module.extra_repr()}"
            f", feat_size={module.feat_size}): " + "; ".join(problems)
        )
    module.load_state_dict({expected[k]: v for k, v in given.items()}, strict=True)
    return module

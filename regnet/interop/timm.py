"""timm's RegNets (``timm.models.regnet``): state-dict keys and model names.

timm keeps pycls's stage names (``s1.b1``, ``stem.conv``, ``head.fc``) but renames the
modules inside a block: ``conv1.conv/bn`` (our ``f.a``/``f.a_bn``), ``conv2``, ``conv3``,
``se.fc1``/``se.fc2`` (our ``f.se.f_ex.0``/``f_ex.2``) and ``downsample.conv/bn`` (our
``proj``/``bn``). timm's pycls-derived weights already take RGB input (timm flipped the
first conv), unlike pycls's own files.

timm's ``regnetx_002`` ... ``regnety_320`` are pycls's 24 configs with pycls's rounding,
so they match our zoo models of the same name. ``regnetx_004_tv``, ``regnety_008_tv`` and
``regnety_080_tv`` use torchvision's rounding and match ``create_model("regnet_x_400mf")``,
``("regnet_y_800mf")`` and ``("regnet_y_8gf")``; ``regnety_1280`` has the same widths
under both roundings and matches torchvision's ``regnet_y_128gf``. timm's RegNet-Z/V, its
``_sgn`` variant and ``regnety_640``/``regnety_2560`` have no counterpart here.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import nn

from ..checkpoint import load_state_dict_strict
from ..zoo import ZOO
from ._layout import OURS, Layout, convert_state_dict

__all__ = ["TIMM", "TIMM_TO_REGNET", "convert_timm_state_dict", "load_timm"]

TIMM = Layout(
    "timm",
    OURS.block_re,
    OURS.block_fmt,
    OURS.first_block,
    ("stem.conv", "stem.bn", "head.fc"),
    ("downsample.conv", "downsample.bn", "conv1.conv", "conv1.bn", "conv2.conv", "conv2.bn", "se.fc1", "se.fc2",
     "conv3.conv", "conv3.bn"),
)

# timm model name -> the name ``regnet.create_model`` builds the same network from.
TIMM_TO_REGNET: Dict[str, str] = {
    **{name: name for name in ZOO},
    "regnetx_004_tv": "regnet_x_400mf",
    "regnety_008_tv": "regnet_y_800mf",
    "regnety_080_tv": "regnet_y_8gf",
    "regnety_1280": "regnet_y_128gf",
}


def convert_timm_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm RegNet keys (``s1.b1.conv1.conv``, ``s1.b1.se.fc1``...) renamed to ours
    (``s1.b1.f.a``, ``s1.b1.f.se.f_ex.0``...). Tensors are shared."""
    return convert_state_dict(state, TIMM)


def load_timm(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a timm RegNet state dict into `model` (strict: mismatches raise ValueError)."""
    load_state_dict_strict(model, convert_timm_state_dict(state), source="timm state dict")
    return model

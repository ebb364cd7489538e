"""torchvision's RegNets: its width rule, its 15 configs, and its state-dict keys.

torchvision computes the stage widths like pycls except for the last step, the
compatibility of bottleneck and group widths: pycls rounds the bottleneck width to the
nearest multiple of the group width (ties to even), torchvision uses ``_make_divisible``
(ties up, then one more multiple if the result fell below 90% of the width). It also
quantizes in float32 (torch) where pycls uses float64 (numpy). For three configs this gives
different networks:

=================  ==========================  ==========================
torchvision name   pycls widths                torchvision widths
=================  ==========================  ==========================
regnet_x_400mf     32, 64, 160, 384            32, 64, 160, 400
regnet_y_800mf     64, 128, 320, 768           64, 144, 320, 784
regnet_y_8gf       168, 448, 896, 2016         224, 448, 896, 2016
=================  ==========================  ==========================

(checked by the tests against torchvision's modules). ``regnet.create_model(name)`` with a
torchvision name builds torchvision's widths, so torchvision checkpoints load with
:func:`load_torchvision`. Importing this module registers the names with ``regnet.zoo``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Dict, List, Mapping, Optional, Tuple, Type

import torch
from torch import nn

from ..blocks import Xblock, Yblock
from ..checkpoint import load_state_dict_strict
from ..model import AnyNet
from ..widths import StageSpec, check_design
from ..zoo import ZOO, register_model
from ._layout import Layout, convert_state_dict

__all__ = [
    "TORCHVISION",
    "TORCHVISION_CONFIGS",
    "TORCHVISION_TO_ZOO",
    "torchvision_stage_specs",
    "torchvision_stages",
    "convert_torchvision_state_dict",
    "load_torchvision",
]

TORCHVISION = Layout(
    "torchvision",
    r"trunk_output\.block(?P<s>\d+)\.block(?P=s)-(?P<b>\d+)",
    "trunk_output.block{s}.block{s}-{b}",
    0,
    ("stem.0", "stem.1", "fc"),
    ("proj.0", "proj.1", "f.a.0", "f.a.1", "f.b.0", "f.b.1", "f.se.fc1", "f.se.fc2", "f.c.0", "f.c.1"),
)

# name: (depth, w0, wa, wm, group_w, se_r), from torchvision.models.regnet (bot_mul 1 for all).
TORCHVISION_CONFIGS: Dict[str, Tuple[int, int, float, float, int, float]] = {
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16, 0.0),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16, 0.0),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24, 0.0),
    "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48, 0.0),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120, 0.0),
    "regnet_x_16gf": (22, 216, 55.59, 2.1, 128, 0.0),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168, 0.0),
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8, 0.25),
    "regnet_y_800mf": (14, 56, 38.84, 2.4, 16, 0.25),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24, 0.25),
    "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24, 0.25),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56, 0.25),
    "regnet_y_16gf": (18, 200, 106.23, 2.48, 112, 0.25),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232, 0.25),
    "regnet_y_128gf": (27, 456, 160.83, 2.52, 264, 0.25),  # SWAG only; no pycls counterpart
}

# torchvision name -> our zoo name with the same six numbers (the widths may still differ).
TORCHVISION_TO_ZOO: Dict[str, str] = {
    tv: zoo
    for tv, cfg in TORCHVISION_CONFIGS.items()
    for zoo, p in ZOO.items()
    if (p.depth, p.w0, p.wa, p.wm, p.group_w, p.se_r) == cfg
}


def _make_divisible(v: float, divisor: int) -> int:
    """torchvision's rounding to a multiple of `divisor`: ties up, never below `divisor`,
    and bumped up one multiple when rounding lost more than 10%."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def torchvision_stage_specs(depth: int, w0: int, wa: float, wm: float, group_w: int, bot_mul: float = 1.0,
                            se_r: float = 0.0, q: int = 8) -> List[StageSpec]:
    """Stage specs by torchvision's ``BlockParams.from_init_params``.

    The quantized linear widths are computed in float32 with torch (as torchvision does);
    runs of equal consecutive widths form the stages; the bottleneck width is made a
    multiple of the (capped) group width with :func:`_make_divisible`.
    """
    check_design(depth, w0, wa, wm, group_w, bot_mul, se_r, q)
    # float32 like torchvision; on the CPU whatever the default device (e.g. building on meta)
    u = torch.arange(depth, dtype=torch.float32, device="cpu") * wa + w0
    k = torch.round(torch.log(u / w0) / math.log(wm))
    block_ws = (torch.round(w0 * torch.pow(wm, k) / q) * q).int().tolist()
    specs = []
    for width, run in itertools.groupby(block_ws):
        w_b = int(width * bot_mul)
        g = min(group_w, w_b)
        width = int(_make_divisible(w_b, g) / bot_mul)
        specs.append(StageSpec(len(list(run)), width, 2, bot_mul, g, se_r))
    return specs


def torchvision_stages(name: str) -> List[StageSpec]:
    """Stage specs of a torchvision RegNet by name (``regnet_x_400mf`` ... ``regnet_y_128gf``)."""
    if name not in TORCHVISION_CONFIGS:
        raise ValueError(f"torchvision RegNet {name!r} is unknown: expected one of {list(TORCHVISION_CONFIGS)}")
    depth, w0, wa, wm, g, se_r = TORCHVISION_CONFIGS[name]
    return torchvision_stage_specs(depth, w0, wa, wm, g, se_r=se_r)


def _factory(name: str):
    se_r = TORCHVISION_CONFIGS[name][-1]

    def build(block: Optional[Type[Xblock]] = None, num_classes: int = 1000, **kwargs) -> AnyNet:
        stages = torchvision_stages(name)
        if block is None:
            block = Yblock if se_r > 0 else Xblock
        else:  # as in regnet.zoo: the block class switches SE on or off
            stages = [replace(s, se_r=block.default_se_r) for s in stages]
        return AnyNet(stages, block=block, num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"torchvision's {name} with torchvision's widths (``regnet.interop.torchvision``)."
    return build


for _name in TORCHVISION_CONFIGS:
    register_model(_name, _factory(_name), lambda _n=_name: torchvision_stages(_n))


def convert_torchvision_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision RegNet keys (``stem.0``, ``trunk_output.block1.block1-0.f.a.0``, ``fc``)
    renamed to ours (``stem.conv``, ``s1.b1.f.a``, ``head.fc``). Tensors are shared."""
    return convert_state_dict(state, TORCHVISION)


def load_torchvision(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a torchvision RegNet state dict into `model` (strict: mismatches raise ValueError)."""
    load_state_dict_strict(model, convert_torchvision_state_dict(state), source="torchvision state dict")
    return model

"""Export to mmdetection's RegNet backbone key layout.

This is the renaming mmdetection's ``tools/model_converters/regnet2mmdet.py`` applies to
pycls weights, done on our state dict:

==========================  ===============================
ours                        mmdetection
==========================  ===============================
stem.conv / stem.bn         conv1 / bn1
sN.bM.proj / sN.bM.bn       layerN.(M-1).downsample.0 / .1
sN.bM.f.a / f.a_bn          layerN.(M-1).conv1 / bn1
sN.bM.f.b / f.b_bn          layerN.(M-1).conv2 / bn2
sN.bM.f.c / f.c_bn          layerN.(M-1).conv3 / bn3
sN.bM.f.se.f_ex.0 / f_ex.2  layerN.(M-1).se.conv1.conv / se.conv2.conv   (Y models, see below)
head.fc                     dropped (``fc`` with keep_head=True, as regnet2mmdet does)
==========================  ===============================

**Y models.** mmdetection's ``RegNet`` backbone has no squeeze-excitation: it builds
RegNetX only. The SE weights are exported under the names mmdetection's own ``SELayer``
(``mmdet.models.layers.SELayer``, whose convs are ``ConvModule``\\ s) would give them as a
``se`` attribute of each bottleneck. Loading them into the stock backbone reports them as
unexpected keys and, worse, runs the network without SE; a Y model needs a custom
backbone whose SE follows the 3x3 conv and is ``round(0.25 * block input width)`` wide
(not ``SELayer``'s ``channels / ratio``).

The input channel order is whatever the model takes: a model loaded from pycls weights
without ``to_rgb`` still expects BGR, which is what mmdetection's RegNet configs for
pycls weights assume (pycls's BGR mean/std with ``to_rgb=False`` / ``bgr_to_rgb=False``).
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Union

import torch
from torch import nn

from ..checkpoint import atomic_save
from ._layout import OURS, Layout, convert_state_dict

__all__ = ["MMDET", "to_mmdet_state_dict", "export_mmdet"]

MMDET = Layout(
    "mmdet",
    r"layer(?P<s>\d+)\.(?P<b>\d+)",
    "layer{s}.{b}",
    0,
    ("conv1", "bn1", "fc"),
    ("downsample.0", "downsample.1", "conv1", "bn1", "conv2", "bn2", "se.conv1.conv", "se.conv2.conv", "conv3", "bn3"),
)


def to_mmdet_state_dict(model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]],
                        keep_head: bool = False) -> Dict[str, torch.Tensor]:
    """Our state dict (or a model's) renamed to mmdetection's RegNet layout. Tensors are shared."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return convert_state_dict(state, OURS, MMDET, drop=() if keep_head else ("head.fc",))


def export_mmdet(model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]], path: Union[str, os.PathLike],
                 keep_head: bool = False) -> Dict[str, torch.Tensor]:
    """Write ``{"state_dict": <mmdet keys>}`` to `path` atomically (as regnet2mmdet does);
    returns the converted state dict. Use it as ``init_cfg=dict(type="Pretrained",
    checkpoint=path)`` of an mmdetection RegNet backbone."""
    state = to_mmdet_state_dict(model_or_state, keep_head)
    atomic_save({"state_dict": state}, path)
    return state

"""Interoperability with the other RegNet implementations.

* ``load_weights(model, path_or_state_dict, source="auto")``: pycls, torchvision, timm,
  mmdetection or our own weights, layout detected from the keys, strict, weights_only.
* torchvision: its width rule and configs (``create_model("regnet_x_400mf")``) and keys.
* timm: its keys and which timm names match ours.
* pycls: ``.pyth`` checkpoints and their BGR first conv.
* mmdet: export to mmdetection's RegNet backbone layout.
"""

from ._layout import Layout, convert_state_dict
from .load import SOURCES, detect_source, load_weights
from .mmdet import MMDET, export_mmdet, to_mmdet_state_dict
from .pycls import BGR_WARNING, bgr_to_rgb_first_conv, load_pycls, pycls_state_dict
from .timm import TIMM, TIMM_TO_REGNET, convert_timm_state_dict, load_timm
from .torchvision import (
    TORCHVISION,
    TORCHVISION_CONFIGS,
    TORCHVISION_TO_ZOO,
    convert_torchvision_state_dict,
    load_torchvision,
    torchvision_stage_specs,
    torchvision_stages,
)

__all__ = [
    "Layout", "convert_state_dict", "SOURCES", "detect_source", "load_weights",
    "MMDET", "export_mmdet", "to_mmdet_state_dict",
    "BGR_WARNING", "bgr_to_rgb_first_conv", "load_pycls", "pycls_state_dict",
    "TIMM", "TIMM_TO_REGNET", "convert_timm_state_dict", "load_timm",
    "TORCHVISION", "TORCHVISION_CONFIGS", "TORCHVISION_TO_ZOO", "convert_torchvision_state_dict",
    "load_torchvision", "torchvision_stage_specs", "torchvision_stages",
]

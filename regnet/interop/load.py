"""One entry point for RegNet weights from any of the supported implementations."""

from __future__ import annotations

import os
from typing import Any, Mapping, Union

from torch import nn

from ..checkpoint import load_state_dict_strict, safe_load
from ._layout import OURS, Layout, convert_state_dict, detect_layout
from .mmdet import MMDET
from .pycls import load_pycls
from .timm import TIMM
from .torchvision import TORCHVISION

__all__ = ["SOURCES", "detect_source", "load_weights"]

_LAYOUTS = {"regnet": OURS, "torchvision": TORCHVISION, "timm": TIMM, "mmdet": MMDET}
SOURCES = ("auto", "regnet", "pycls", "torchvision", "timm", "mmdet")

# Wrappers around a state dict in training checkpoints: pycls, mmdetection/lightning, timm/others.
_WRAPPERS = ("model_state", "state_dict", "model")


def _unwrap(obj: Any):
    """(state dict, wrapper key or None). Strips a DataParallel ``module.`` prefix."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"weights: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    wrapper = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
    state = obj[wrapper] if wrapper else obj
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, wrapper


def detect_source(state: Mapping[str, Any]) -> str:
    """"regnet" (our / pycls keys), "torchvision", "timm" or "mmdet", from the keys."""
    return detect_layout(state, list(_LAYOUTS.values())).name


def load_weights(model: nn.Module, weights: Union[str, os.PathLike, Mapping[str, Any]], source: str = "auto",
                 to_rgb: bool = False) -> nn.Module:
    """Load RegNet weights saved by us, pycls, torchvision, timm or mmdetection into `model`.

    Args:
        model: an ``AnyNet`` of the matching architecture (e.g. ``create_model("regnet_x_400mf")``
            for torchvision's regnet_x_400mf weights).
        weights: a file path (read with ``torch.load(weights_only=True)``: no pickled code
            runs) or a loaded state dict / checkpoint dict (``{"model_state": ...}``,
            ``{"state_dict": ...}`` and ``{"model": ...}`` wrappers are unwrapped).
        source: "auto" detects the layout from the keys; a ``model_state`` wrapper with our
            keys means pycls. "pycls" weights expect BGR input (see ``regnet.interop.pycls``).
        to_rgb: for pycls weights, flip the stem conv so the model takes RGB (an error for
            other sources, whose weights take RGB already).

    Raises:
        ValueError: unknown source, keys of no known layout, to_rgb with non-pycls weights,
            or a checkpoint that does not match `model` (listing its missing and unexpected
            keys and shape mismatches).
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: expected one of {SOURCES}")
    is_file = isinstance(weights, (str, os.PathLike))
    state, wrapper = _unwrap(safe_load(weights) if is_file else weights)
    if source == "auto":
        source = detect_source(state)
        if source == "regnet" and wrapper == "model_state":
            source = "pycls"
    if source == "pycls":
        return load_pycls(model, state, to_rgb=to_rgb)
    if to_rgb:
        raise ValueError(f"to_rgb=True applies to pycls weights (BGR); {source} weights already take RGB")
    where = f" {os.fspath(weights)!r}" if is_file else ""
    layout: Layout = _LAYOUTS[source]
    load_state_dict_strict(model, convert_state_dict(state, layout), source=f"{source} weights{where}")
    return model

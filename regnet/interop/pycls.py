"""pycls checkpoints (``.pyth``): our keys already, but the first conv expects BGR input.

pycls saves ``{"epoch", "model_state", "optimizer_state", "cfg", ...}``; ``model_state``
uses exactly our module names. Files are read with ``torch.load(weights_only=True)``
(:func:`regnet.checkpoint.safe_load`), so a file with pickled objects other than tensors
and plain containers is refused instead of executed.

**Channel order.** pycls decodes images with OpenCV and trains on BGR input (its
normalisation mean/std are listed in BGR order too). A pycls model fed RGB images runs
but is silently less accurate. Either feed BGR, or call :func:`bgr_to_rgb_first_conv`
(``load_pycls(..., to_rgb=True)``), which reverses the input-channel axis of the stem
conv so the model takes RGB normalised with the usual RGB mean/std. timm's and
torchvision's copies of the pycls weights have already been flipped.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Mapping, Union

import torch
from torch import nn

from ..checkpoint import load_state_dict_strict, safe_load

__all__ = ["BGR_WARNING", "pycls_state_dict", "load_pycls", "bgr_to_rgb_first_conv"]

BGR_WARNING = (
    "pycls weights expect BGR input (OpenCV channel order). Feed BGR images, or call "
    "regnet.interop.bgr_to_rgb_first_conv(model) / load with to_rgb=True to take RGB input."
)
_warned = False

PathOrState = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def _warn_bgr_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(BGR_WARNING, UserWarning, stacklevel=3)


def bgr_to_rgb_first_conv(model: nn.Module) -> nn.Module:
    """Reverse the input channels of ``model.stem.conv`` in place, so a model trained on
    BGR takes RGB (and the other way round: the flip is its own inverse). Returns `model`."""
    conv = getattr(getattr(model, "stem", None), "conv", None)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{type(model).__name__} has no stem.conv Conv2d to flip")
    if conv.in_channels != 3:
        raise ValueError(f"stem.conv has {conv.in_channels} input channels: expected 3 (BGR/RGB)")
    with torch.no_grad():
        conv.weight.copy_(conv.weight.flip(1))
    return model


def pycls_state_dict(checkpoint: PathOrState) -> Dict[str, torch.Tensor]:
    """The model state of a pycls checkpoint: a ``.pyth`` path (read with weights_only=True)
    or an already loaded dict, with or without the ``{"model_state": ...}`` wrapper."""
    obj = safe_load(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if not isinstance(obj, Mapping):
        raise TypeError(f"pycls checkpoint: expected a dict, got {type(obj).__name__}")
    state = obj.get("model_state", obj)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"pycls checkpoint: entries {bad[:5]} are not tensors; expected a dict with 'model_state'")
    return dict(state)


def load_pycls(model: nn.Module, checkpoint: PathOrState, to_rgb: bool = False) -> nn.Module:
    """Load a pycls checkpoint into `model` (strict: mismatches raise ValueError listing the
    missing and unexpected keys). With ``to_rgb`` the stem conv is flipped to take RGB;
    otherwise a warning (once per process) reminds that the model expects BGR."""
    source = f"pycls checkpoint {os.fspath(checkpoint)!r}" if isinstance(checkpoint, (str, os.PathLike)) else "pycls checkpoint"
    load_state_dict_strict(model, pycls_state_dict(checkpoint), source=source)
    if to_rgb:
        bgr_to_rgb_first_conv(model)
    else:
        _warn_bgr_once()
    return model

"""optimize(model): any RegNet we know (ours, torchvision's, timm's) -> a FusedRegNet.

Foreign models are first read into our layout (their state dict converted by regnet.interop,
the stage specs read off the weights' shapes), so one fusion path serves all three.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

import torch
from torch import nn

from . import dispatch
from .modules import FusedRegNet

__all__ = ["optimize", "stages_from_state_dict", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _model_kind(model: nn.Module) -> str:
    from regnet.model import AnyNet

    if isinstance(model, AnyNet):
        return "regnet"
    cls = type(model)
    if cls.__name__ == "RegNet" and cls.__module__.startswith("torchvision."):
        return "torchvision"
    if cls.__name__ == "RegNet" and cls.__module__.startswith("timm."):
        return "timm"
    raise TypeError(
        f"model: expected a RegNet this converter knows (regnet.AnyNet/RegNet, torchvision.models.RegNet or "
        f"timm.models.RegNet), got {cls.__module__}.{cls.__name__}"
    )


def stages_from_state_dict(state: Dict[str, torch.Tensor]):
    """(stage specs, stem width, num_classes, in_chans) read off an our-layout state dict's shapes."""
    from regnet.widths import StageSpec

    blocks: Dict[int, List[int]] = {}
    for key in state:
        m = re.match(r"s(\d+)\.b(\d+)\.f\.a\.weight$", key)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    stem = state["stem.conv.weight"]
    w_in, specs = stem.shape[0], []
    for s in sorted(blocks):
        p = f"s{s}.b1."
        w_b, group_w = state[p + "f.b.weight"].shape[0], state[p + "f.b.weight"].shape[1]
        w_out = state[p + "f.c.weight"].shape[0]
        se = state.get(p + "f.se.f_ex.0.weight")
        se_r = se.shape[0] / w_in if se is not None else 0.0
        # pycls, torchvision and timm RegNets put stride 2 on every stage's first block.
        specs.append(StageSpec(len(blocks[s]), w_out, 2, w_b / w_out, group_w, se_r))
        w_in = w_out
    num_classes = state["head.fc.weight"].shape[0] if "head.fc.weight" in state else 0
    return specs, stem.shape[0], num_classes, stem.shape[1]


def _as_our_model(model: nn.Module, kind: str) -> nn.Module:
    if kind == "regnet":
        return model
    from regnet.interop import convert_timm_state_dict, convert_torchvision_state_dict
    from regnet.checkpoint import load_state_dict_strict
    from regnet.model import AnyNet

    convert = convert_torchvision_state_dict if kind == "torchvision" else convert_timm_state_dict
    state = convert(model.state_dict())
    stages, stem_w, num_classes, in_chans = stages_from_state_dict(state)
    ours = AnyNet(stages, in_chans=in_chans, stem_w=stem_w, num_classes=num_classes)
    load_state_dict_strict(ours, state, source=f"{kind} model")
    return ours.eval()


def optimize(model: nn.Module, backend: str = "auto", dtype: Optional[torch.dtype] = None,
             memory_format: torch.memory_format = torch.channels_last) -> FusedRegNet:
    """A new inference module with the same outputs as `model` (an eval-mode RegNet), faster.

    BN is folded once (in float64) into the convs and weights are cast to `dtype` after folding
    (default: the model's parameter dtype). Activations run in `memory_format` (channels_last is
    the fused kernels' native layout). `backend` ('auto' or one of regnet_kernels.BACKENDS) is
    passed to every op. The original model is not modified.
    """
    kind = _model_kind(model)
    if model.training:
        raise ValueError("model: expected an eval-mode model (call model.eval() first): optimize() folds "
                         "BatchNorm running statistics, which train mode would not use")
    dispatch.forced_backend(None if backend == "auto" else backend)  # validates the name
    if dtype is None:
        dtype = next(model.parameters()).dtype
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype: expected one of {[str(d) for d in SUPPORTED_DTYPES]}, got {dtype}")
    if memory_format not in (torch.channels_last, torch.contiguous_format):
        raise ValueError(f"memory_format: expected torch.channels_last or torch.contiguous_format, got {memory_format}")
    device = next(model.parameters()).device
    ours = _as_our_model(model, kind)
    # inference_mode(False): under torch.inference_mode() the folded weights would be inference
    # tensors, which track no version counter, so the kernels' weight caches could not see an
    # in-place update. Built as normal tensors they can (reading the model's inference tensors
    # is allowed here).
    with torch.inference_mode(False), torch.no_grad():
        fused = FusedRegNet(ours, dtype=dtype, memory_format=memory_format,
                            backend=None if backend == "auto" else backend)
        return fused.to(device)

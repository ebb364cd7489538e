"""Fold an eval-mode BatchNorm into the conv before it.

    bn(conv(x)) = conv(x; w * s) + (b - mean) * s + beta,   s = gamma / sqrt(var + eps)

computed in float64 (default) or float32, then cast to the requested dtype, so a low-precision
model is folded once at full precision and rounded once.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["fold_bn", "fold_bn_params"]


def fold_bn_params(
    weight: Tensor,
    bias: Optional[Tensor],
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    *,
    dtype: Optional[torch.dtype] = None,
    compute_dtype: torch.dtype = torch.float64,
) -> Tuple[Tensor, Tensor]:
    """(folded weight, folded bias) in `dtype` (default: the conv weight's dtype)."""
    if compute_dtype not in (torch.float64, torch.float32):
        raise ValueError(f"compute_dtype: expected torch.float64 or torch.float32, got {compute_dtype}")
    c_out = weight.shape[0]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("bn_weight", bn_weight),
                    ("bn_bias", bn_bias), ("bias", bias)):
        if t is not None and list(t.shape) != [c_out]:
            raise ValueError(f"{name}: expected shape [{c_out}] (the conv's output channels), got {list(t.shape)}")
    if eps < 0:
        raise ValueError(f"eps: expected >= 0, got {eps}")
    dtype = dtype or weight.dtype
    cd = compute_dtype
    scale = torch.rsqrt(running_var.to(cd) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(cd)
    shift = -running_mean.to(cd) * scale
    if bias is not None:
        shift = shift + bias.to(cd) * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(cd)
    w = weight.to(cd) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return w.to(dtype).detach(), shift.to(dtype).detach()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, *, dtype: Optional[torch.dtype] = None,
            compute_dtype: torch.dtype = torch.float64) -> Tuple[Tensor, Tensor]:
    """Folded (weight, bias) of conv followed by bn in eval mode (bn's running statistics)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv: expected nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"bn: expected nn.BatchNorm2d, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn: expected running statistics (track_running_stats=True) to fold")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"bn: expected {conv.out_channels} features (conv.out_channels), got {bn.num_features}")
    return fold_bn_params(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps,
                          dtype=dtype, compute_dtype=compute_dtype)

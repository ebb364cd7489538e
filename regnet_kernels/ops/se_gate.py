"""Squeeze-excitation.

se_excite (K3): gate[n, c] = sigmoid(W2 relu(W1 (sums[n] / HW) + b1) + b2), fp32, on [N, C].
se_gate: y = x * gate [+ residual] [+ ReLU], in one pass over x when a kernel backend runs it.
The mean comes from `sums` (fp32 per-(n, c) sums, e.g. from conv_bn_act(channel_sums=True))
when given, else from x. Accumulation is fp32 whatever the dtype of x.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import dispatch
from ._eager import eager_supports, epilogue
from .checks import check_se, check_se_excite, fc_matrix

OP = "se_gate"
EXCITE_OP = "se_excite"


def se_excite(sums: Tensor, hw: int, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, *,
              backend: Optional[str] = None) -> Tensor:
    """K3, the SE MLP on fp32 [N, C] sums of a map of hw pixels: fp32 gate [N, C] (float64 for
    float64 sums). w1: [C_se, C], w2: [C, C_se] (FC weights, or 1x1 conv weights)."""
    key = dispatch.call_key((sums, w1, b1, w2, b2), (hw,), backend)
    run = dispatch.resolve_once(EXCITE_OP, key, resolve_excite, sums, hw, w1, b1, w2, b2, backend)
    return run(sums, hw, w1, b1, w2, b2)


def resolve_excite(sums, hw, w1, b1, w2, b2, backend):
    """Check se_excite's arguments and pick the backend (dispatch's `x` is the sums): its
    implementation."""
    check_se_excite(sums, hw, w1, b1, w2, b2)
    _, run = dispatch.select(EXCITE_OP, backend, x=sums, hw=hw, w1=w1, b1=b1, w2=w2, b2=b2)
    return run


def se_excite_eager(sums, hw, w1, b1, w2, b2):
    acc = torch.float64 if sums.dtype == torch.float64 else torch.float32
    mean = sums.to(acc) / hw
    hidden = torch.relu(F.linear(mean, fc_matrix(w1).to(acc), b1.to(acc)))
    return torch.sigmoid(F.linear(hidden, fc_matrix(w2).to(acc), b2.to(acc)))


def se_gate(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    *,
    residual: Optional[Tensor] = None,
    relu: bool = False,
    sums: Optional[Tensor] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """y = act(x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2) + residual).

    Args:
        x: [N, C, H, W]. w1: [C_se, C] (or a 1x1 conv weight [C_se, C, 1, 1]); b1: [C_se];
        w2: [C, C_se] (or [C, C_se, 1, 1]); b2: [C].
        residual: [N, C, H, W] added after gating (the block's shortcut); relu: ReLU last.
        sums: fp32 [N, C] sums of x over H, W, used instead of re-reading x for the mean.
    """
    key = dispatch.call_key((x, w1, b1, w2, b2, residual, sums), (relu,), backend)
    run = dispatch.resolve_once(OP, key, resolve, x, w1, b1, w2, b2, residual, relu, sums, backend)
    return run(x, w1, b1, w2, b2, residual, relu, sums)


def resolve(x, w1, b1, w2, b2, residual, relu, sums, backend):
    """Check the arguments and pick the backend: its implementation, which takes w1 and w2 as
    given (FC or 1x1 conv weights)."""
    check_se(x, w1, b1, w2, b2, residual, sums)
    _, run = dispatch.select(OP, backend, x=x, w1=w1, b1=b1, w2=w2, b2=b2, residual=residual, relu=relu, sums=sums)
    return run


def se_gate_eager(x, w1, b1, w2, b2, residual, relu, sums):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if sums is None:
        sums = x.sum((2, 3), dtype=acc)
    gate = se_excite_eager(sums, x.shape[2] * x.shape[3], w1, b1, w2, b2)
    y = x * gate.to(x.dtype)[:, :, None, None]
    return epilogue(y, residual, relu)


dispatch.register(OP, "eager", eager_supports, se_gate_eager)
dispatch.register(EXCITE_OP, "eager", eager_supports, se_excite_eager)

"""gated_conv1x1 (K4): y = act(conv1x1(x * gate[n, c], weight) + bias + residual).

The SE gate is applied as x is loaded (prologue), so the gated activation is never written.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .. import dispatch
from ._eager import eager_supports, epilogue
from .checks import check_gated_conv1x1, fc_matrix

OP = "gated_conv1x1"


def gated_conv1x1(
    x: Tensor,
    gate: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    residual: Optional[Tensor] = None,
    relu: bool = True,
    backend: Optional[str] = None,
) -> Tensor:
    """Args: x [N, C, H, W]; gate [N, C] (fp32, from se_excite, or x's dtype); weight [C_out, C]
    or [C_out, C, 1, 1]; bias [C_out]; residual [N, C_out, H, W]; relu: ReLU last."""
    key = dispatch.call_key((x, gate, weight, bias, residual), (relu,), backend)
    run = dispatch.resolve_once(OP, key, _resolve_run, x, gate, weight, bias, residual, relu, backend)
    return run(x, gate, fc_matrix(weight), bias, residual, relu)


def resolve(x, gate, weight, bias, residual, relu, backend):
    """Check the arguments and pick the backend: (weight as [C_out, C], backend name, implementation)."""
    weight, _ = check_gated_conv1x1(x, gate, weight, bias, residual)
    name, run = dispatch.select(OP, backend, x=x, gate=gate, weight=weight, bias=bias, residual=residual, relu=relu)
    return weight, name, run


def _resolve_run(x, gate, weight, bias, residual, relu, backend):
    """resolve() for the public op: the implementation only (the weight's [C_out, C] view is made
    per call, as it is a view of that call's weight)."""
    return resolve(x, gate, weight, bias, residual, relu, backend)[2]


def gated_conv1x1_eager(x, gate, weight, bias, residual, relu):
    xg = x * gate.to(x.dtype)[:, :, None, None]
    y = F.conv2d(xg, weight[:, :, None, None], bias)
    return epilogue(y, residual, relu)


dispatch.register(OP, "eager", eager_supports, gated_conv1x1_eager)

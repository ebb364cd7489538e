"""Triton gated_conv1x1 (K4): y = act(conv1x1(x * gate[n, c], weight) + bias [+ residual]).

It is conv_bn_act_kernel with GATED=True: the gate scales each x tile as it is loaded (in fp32,
rounded once to x's dtype before tl.dot), so the gated activation is never written. Bytes: one
read of x, one write of y, the residual when given, the [C_out, C_in] weight from L2 and the
[N, C_in] gate. See conv_bn_act.py for the tiling.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op

from ..ops.checks import empty_like_layout
from .conv_bn_act import launch_conv


@triton_op("regnet_kernels::triton_gated_conv1x1", mutates_args={})
def triton_gated_conv1x1(x: Tensor, gate: Tensor, weight: Tensor, bias: Optional[Tensor],
                         residual: Optional[Tensor], relu: bool) -> Tensor:
    n, _, h, w = x.shape
    y = empty_like_layout(x, (n, weight.shape[0], h, w))
    # The kernel reads the gate as fp32 (one compiled variant); a [N, C] cast is negligible.
    launch_conv(x, weight, bias, 1, 0, 1, residual, relu, y, None, gate=gate.to(torch.float32))
    return y

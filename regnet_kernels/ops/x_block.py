"""x_block: a whole RegNet X block (its three convs, the residual add and the last ReLU) in one op.

    y = relu(conv2d(relu(conv2d(relu(conv2d(x, w1) + b1), w2, b2, stride, padding, groups)), w3)
             + b3 + residual)

BN is already folded into each (w, b). w1 and w3 are 1x1 convs; `residual` is the block's
shortcut (x, or the projection's output). On the cpu backend neither intermediate is stored: each
output row computes its K1 rows (as conv1x1_conv_bn_act does), its K2 row for all channels into a
row buffer, and K4 on that row with the residual (a RegNetX-400MF block at batch 16: 1.05-1.13x
faster than conv1x1_conv_bn_act then K4; bench/NOTES.md, Step 12). Rows are then the only work
items, so a map of few rows splits unevenly between threads: fused blocks time it against their ops.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .. import dispatch
from ._eager import eager_supports
from .checks import check_x_block
from .conv1x1_conv_bn_act import conv1x1_conv_bn_act_eager
from .conv_bn_act import conv_bn_act_eager

OP = "x_block"


def x_block(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], w3: Tensor,
            b3: Optional[Tensor], residual: Tensor, *, stride: int = 1, padding: Optional[int] = None,
            groups: int = 1, backend: Optional[str] = None) -> Tensor:
    """Args: x [N, C_in, H, W]; w1 [C_mid, C_in, 1, 1]; w2 [C_mid, C_mid/groups, k, k] (stride,
    padding (k-1)//2, groups); w3 [C_out, C_mid, 1, 1]; biases [C] or None; residual
    [N, C_out, H_out, W_out] (same dtype and device as x). Returns y [N, C_out, H_out, W_out] in
    x's layout."""
    padding, _, run = resolve(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, backend)
    return run(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups)


def resolve(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, backend):
    """Check the arguments and pick the backend: (padding, backend name, implementation)."""
    padding, _ = check_x_block(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups)
    name, run = dispatch.select(OP, backend, x=x, w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3, residual=residual,
                                stride=stride, padding=padding, groups=groups)
    return padding, name, run


def x_block_eager(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups):
    """The reference: conv1x1_conv_bn_act's, then conv_bn_act's 1x1 with the residual and ReLU."""
    mid = conv1x1_conv_bn_act_eager(x, w1, b1, w2, b2, stride, padding, groups, True, False)
    return conv_bn_act_eager(mid, w3, b3, 1, 0, 1, residual, True, False)


dispatch.register(OP, "eager", eager_supports, x_block_eager)

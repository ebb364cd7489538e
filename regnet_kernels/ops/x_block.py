"""x_block: a whole RegNet X block (its three convs, the residual add and the last ReLU) in one op.

    y = relu(conv2d(relu(conv2d(relu(conv2d(x, w1) + b1), w2, b2, stride, padding, groups)), w3)
             + b3 + residual)

BN is already folded into each (w, b). w1 and w3 are 1x1 convs; the shortcut is `residual` (x,
or a projection's output), or the projection itself: conv2d(x, proj_weight, stride) + proj_bias.
On the cpu backend neither intermediate is stored: each output row computes its K1 rows (as
conv1x1_conv_bn_act does), its K2 row for all channels into a row buffer, and K4 on that row with
the residual (a RegNetX-400MF block at batch 16: 1.05-1.13x faster than conv1x1_conv_bn_act then
K4; bench/NOTES.md, Step 12), or with the projection of x's row computed there, while K1's read of
it left it in cache (Step 17). Rows are then the only work items, so a map of few rows splits
unevenly between threads: fused blocks time it against their ops.
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
            b3: Optional[Tensor], residual: Optional[Tensor] = None, *, proj_weight: Optional[Tensor] = None,
            proj_bias: Optional[Tensor] = None, stride: int = 1, padding: Optional[int] = None, groups: int = 1,
            backend: Optional[str] = None) -> Tensor:
    """Args: x [N, C_in, H, W]; w1 [C_mid, C_in, 1, 1]; w2 [C_mid, C_mid/groups, k, k] (stride,
    padding (k-1)//2, groups); w3 [C_out, C_mid, 1, 1]; biases [C] or None; one shortcut: residual
    [N, C_out, H_out, W_out] (same dtype and device as x), or proj_weight [C_out, C_in, 1, 1] (and
    proj_bias [C_out] or None), the projection conv1x1(x, proj_weight, stride) + proj_bias, which
    the cpu backend computes row by row inside the op instead of reading a stored shortcut.
    Returns y [N, C_out, H_out, W_out] in x's layout."""
    key = dispatch.call_key((x, w1, b1, w2, b2, w3, b3, residual, proj_weight, proj_bias), (stride, padding, groups),
                            backend)
    padding, _, run = dispatch.resolve_once(OP, key, resolve, x, w1, b1, w2, b2, w3, b3, residual, stride, padding,
                                            groups, backend, proj_weight, proj_bias)
    return run(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, proj_weight, proj_bias)


def resolve(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, backend, wp=None, bp=None):
    """Check the arguments and pick the backend: (padding, backend name, implementation)."""
    padding, _ = check_x_block(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, wp, bp)
    name, run = dispatch.select(OP, backend, x=x, w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3, residual=residual,
                                stride=stride, padding=padding, groups=groups, wp=wp, bp=bp)
    return padding, name, run


def x_block_eager(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, wp=None, bp=None):
    """The reference: conv1x1_conv_bn_act's, then conv_bn_act's 1x1 with the shortcut and ReLU."""
    if wp is not None:
        residual = conv_bn_act_eager(x, wp, bp, stride, 0, 1, None, False, False)
    mid = conv1x1_conv_bn_act_eager(x, w1, b1, w2, b2, stride, padding, groups, True, False)
    return conv_bn_act_eager(mid, w3, b3, 1, 0, 1, residual, True, False)


dispatch.register(OP, "eager", eager_supports, x_block_eager)

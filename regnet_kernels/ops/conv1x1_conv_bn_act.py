"""conv1x1_conv_bn_act: a block's first two convs in one op (K1 fused into K2).

    y = act(conv2d(relu(conv2d(x, w1) + b1), w2, b2, stride, padding, groups))   [, sums of y]

BN is already folded into (w1, b1) and (w2, b2). The 1x1's output (K1's) is never stored: the
cpu backend computes each of its rows in fp32 where K2 packs its input rows, so the block saves
a write and a read of that activation and one op's hand-off between threads (a RegNetX-400MF
stage-1 block at batch 16: 25.7 MB each way; bench/NOTES.md, Step 12). The fp32 intermediate is
not rounded to x's dtype, so bf16 results differ from the two-op sequence by that rounding.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import dispatch
from ._eager import eager_supports
from .checks import check_conv1x1_conv
from .conv_bn_act import conv_bn_act_eager

OP = "conv1x1_conv_bn_act"


def conv1x1_conv_bn_act(
    x: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    *,
    stride: int = 1,
    padding: Optional[int] = None,
    groups: int = 1,
    relu: bool = True,
    channel_sums: bool = False,
    backend: Optional[str] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """y = act(conv2d(relu(conv2d(x, w1, b1)), w2, b2, stride, padding, groups)).

    Args:
        x: [N, C_in, H, W]; channels_last is the fused kernels' native layout and is kept.
        w1: [C_mid, C_in, 1, 1], b1: [C_mid] or None: the first conv (stride 1, ReLU always).
        w2: [C_out, C_mid/groups, k, k] with k in {1, 3}, b2: [C_out] or None: the second.
        stride, padding, groups: of the second conv (padding (k-1)//2, the default).
        relu: ReLU after the second conv. channel_sums: also return the fp32 [N, C_out] sums
        of y over H, W (for SE).
        backend: 'auto' (default) or one of dispatch.BACKENDS.
    Returns y, or (y, sums) when channel_sums.
    """
    key = dispatch.call_key((x, w1, b1, w2, b2), (stride, padding, groups, relu, channel_sums), backend)
    padding, _, run = dispatch.resolve_once(OP, key, resolve, x, w1, b1, w2, b2, stride, padding, groups, relu,
                                            channel_sums, backend)
    return run(x, w1, b1, w2, b2, stride, padding, groups, relu, channel_sums)


def resolve(x, w1, b1, w2, b2, stride, padding, groups, relu, channel_sums, backend):
    """Check the arguments and pick the backend: (padding, backend name, implementation)."""
    padding, _ = check_conv1x1_conv(x, w1, b1, w2, b2, stride, padding, groups)
    name, run = dispatch.select(OP, backend, x=x, w1=w1, b1=b1, w2=w2, b2=b2, stride=stride, padding=padding,
                                groups=groups, relu=relu, channel_sums=channel_sums)
    return padding, name, run


def conv1x1_conv_bn_act_eager(x, w1, b1, w2, b2, stride, padding, groups, relu, channel_sums):
    """The reference: the two convs of conv_bn_act's reference in turn."""
    mid = conv_bn_act_eager(x, w1, b1, 1, 0, 1, None, True, False)
    return conv_bn_act_eager(mid, w2, b2, stride, padding, groups, None, relu, channel_sums)


dispatch.register(OP, "eager", eager_supports, conv1x1_conv_bn_act_eager)

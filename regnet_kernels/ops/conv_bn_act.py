"""conv_bn_act: conv with BN folded into (weight, bias), [+ residual], [+ ReLU], and optionally
the fp32 per-(n, c) sums of the output (K2: the SE squeeze computed in the conv's epilogue).

Covers every conv of the zoo: the stem 3x3 (3 -> 32, stride 2), 1x1 convs (stride 1 or 2 for
projections) and grouped 3x3 convs (group widths 8..232, stride 1 or 2, padding 1).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import dispatch
from ._eager import eager_supports, epilogue
from .checks import check_conv

OP = "conv_bn_act"


def conv_bn_act(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    stride: int = 1,
    padding: Optional[int] = None,
    groups: int = 1,
    residual: Optional[Tensor] = None,
    relu: bool = True,
    channel_sums: bool = False,
    backend: Optional[str] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """y = act(conv2d(x, weight, bias, stride, padding, groups) + residual).

    Args:
        x: [N, C_in, H, W]; channels_last is the fused kernels' native layout and is kept.
        weight: [C_out, C_in/groups, k, k] with k in {1, 3}, BN already folded (see fold_bn).
        bias: [C_out] or None.
        stride: 1 or 2. padding: (k-1)//2 (the default; the only one supported).
        residual: [N, C_out, H_out, W_out] added before the activation.
        relu: apply ReLU last.
        channel_sums: also return the fp32 [N, C_out] sums over H, W of y (for SE).
        backend: 'auto' (default) or one of dispatch.BACKENDS; see regnet_kernels.dispatch.
    Returns y, or (y, sums) when channel_sums.
    """
    key = dispatch.call_key((x, weight, bias, residual), (stride, padding, groups, relu, channel_sums), backend)
    padding, run = dispatch.resolve_once(OP, key, _resolve_call, x, weight, bias, stride, padding, groups, residual,
                                         relu, channel_sums, backend, key is not None)
    return run(x, weight, bias, stride, padding, groups, residual, relu, channel_sums)


def resolve(x, weight, bias, stride, padding, groups, residual, relu, channel_sums, backend):
    """Check the arguments and pick the backend: (padding, backend name, implementation). Fused
    modules call this once per input signature and then the implementation directly."""
    padding, _ = check_conv(x, weight, bias, stride, padding, groups, residual)
    name, run = dispatch.select(OP, backend, x=x, weight=weight, bias=bias, stride=stride, padding=padding,
                                groups=groups, residual=residual, relu=relu, channel_sums=channel_sums)
    return padding, name, run


def _resolve_call(x, weight, bias, stride, padding, groups, residual, relu, channel_sums, backend, kept):
    """resolve() for the public op: (padding, run), run being the backend's run for every call of
    this signature when the result is kept (dispatch.resolve_once)."""
    padding, name, run = resolve(x, weight, bias, stride, padding, groups, residual, relu, channel_sums, backend)
    if kept:
        run = dispatch.for_signature(OP, name, run, x, weight, bias, stride, padding, groups, residual, relu,
                                     channel_sums)
    return padding, run


def conv_bn_act_eager(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    """The reference: PyTorch's conv2d, then the epilogue. Called in float64 by the tests."""
    y = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    y = epilogue(y, residual, relu)
    if channel_sums:
        return y, y.sum((2, 3), dtype=torch.float32 if y.dtype != torch.float64 else torch.float64)
    return y


dispatch.register(OP, "eager", eager_supports, conv_bn_act_eager)

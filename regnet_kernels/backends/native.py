"""Fake (meta) implementations of the native ops of regnet_kernels._C, shared by the cpu and
cuda backends, so torch.compile can trace them without running them. Shapes and layouts come
from the same checks the public ops use."""

from __future__ import annotations

import torch

from .. import _ext
from ..ops.checks import (check_conv, check_conv1x1_conv, check_gated_conv1x1, check_se_excite, check_x_block,
                          empty_like_layout)

EXT = _ext.load()
NAMESPACE = "regnet_kernels"


_OPS = {}


def native_op(name: str):
    """torch.ops.regnet_kernels.<name>, or None when the extension is not built. Looked up once:
    the torch.ops attribute chain costs ~0.3 us, on every op call at batch 1."""
    op = _OPS.get(name)
    if op is None and EXT is not None:
        op = _OPS[name] = getattr(getattr(torch.ops, NAMESPACE), name)
    return op


_CALLS = {}


def native_call(name: str):
    """The op's dispatcher entry (its default overload's C++ callable), for calls bound outside
    torch.compile: it skips the two Python frames of torch.ops' packet and overload, ~2 us of a
    ~5 us call at batch 1 (NOTES.md, Step 11). Under torch.compile, native_op(name), which dynamo
    traces. Goes through the dispatcher like native_op: profiler records, fake kernels and
    checks are the same."""
    if torch.compiler.is_compiling():
        return native_op(name)
    call = _CALLS.get(name)
    if call is None and EXT is not None:
        overload = native_op(name).default
        call = _CALLS[name] = getattr(overload, "_op", overload)  # torch-private: fall back to the overload
    return call


if EXT is not None:

    @torch.library.register_fake(f"{NAMESPACE}::channel_sums")
    def _channel_sums_fake(x):
        return x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32)

    @torch.library.register_fake(f"{NAMESPACE}::conv_bn_act")
    def _conv_bn_act_fake(x, weight, bias, stride, padding, groups, residual, relu):
        _, shape = check_conv(x, weight, bias, stride, padding, groups, residual)
        return empty_like_layout(x, shape)

    @torch.library.register_fake(f"{NAMESPACE}::conv_bn_act_sums")
    def _conv_bn_act_sums_fake(x, weight, bias, stride, padding, groups, relu):
        _, shape = check_conv(x, weight, bias, stride, padding, groups, None)
        return empty_like_layout(x, shape), x.new_empty((shape[0], shape[1]), dtype=torch.float32)

    @torch.library.register_fake(f"{NAMESPACE}::conv1x1_conv_bn_act")
    def _conv1x1_conv_bn_act_fake(x, w1, b1, w2, b2, stride, padding, groups, relu):
        _, shape = check_conv1x1_conv(x, w1, b1, w2, b2, stride, padding, groups)
        return empty_like_layout(x, shape)

    @torch.library.register_fake(f"{NAMESPACE}::conv1x1_conv_bn_act_sums")
    def _conv1x1_conv_bn_act_sums_fake(x, w1, b1, w2, b2, stride, padding, groups, relu):
        _, shape = check_conv1x1_conv(x, w1, b1, w2, b2, stride, padding, groups)
        return empty_like_layout(x, shape), x.new_empty((shape[0], shape[1]), dtype=torch.float32)

    @torch.library.register_fake(f"{NAMESPACE}::x_block")
    def _x_block_fake(x, w1, b1, w2, b2, stride, padding, groups, w3, b3, residual, wp=None, bp=None):
        _, shape = check_x_block(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, wp, bp)
        return empty_like_layout(x, shape)

    @torch.library.register_fake(f"{NAMESPACE}::se_gate")
    def _se_gate_fake(x, w1, b1, w2, b2, residual, relu, sums):
        return empty_like_layout(x, x.shape)

    @torch.library.register_fake(f"{NAMESPACE}::se_excite")
    def _se_excite_fake(sums, hw, w1, b1, w2, b2):
        check_se_excite(sums, hw, w1, b1, w2, b2)
        return sums.new_empty(sums.shape, dtype=torch.float32)

    @torch.library.register_fake(f"{NAMESPACE}::gated_conv1x1")
    def _gated_conv1x1_fake(x, gate, weight, bias, residual, relu):
        _, shape = check_gated_conv1x1(x, gate, weight, bias, residual)
        return empty_like_layout(x, shape)

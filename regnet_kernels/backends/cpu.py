"""The cpu backend: C++ kernels of regnet_kernels._C (csrc/cpu/), channels-last, fp32/bf16/fp16.

Each op registers supports(**args) -> reasons and run(*eager_signature). The native ops check
their arguments again (a direct torch.ops call with bad input raises, never reads out of
bounds); supports() only decides whether this backend should take the call, and says why not.
"""

from __future__ import annotations

from typing import List

import torch

from .. import dispatch
from ..ops.checks import SUPPORTED_KERNEL_SIZES, SUPPORTED_STRIDES
from .native import EXT, native_op

NAME = "cpu"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _common_reasons(x, others=()) -> List[str]:
    """Reasons shared by every op: extension, device, dtype, layout of x and of the activations in `others`."""
    if EXT is None:
        return ["cpu: regnet_kernels._C is not built"]
    reasons = []
    if x.device.type != "cpu":
        reasons.append(f"cpu: x is on {x.device}, not the CPU")
    if x.dtype not in DTYPES:
        reasons.append(f"cpu: dtype {x.dtype} not supported (float32, bfloat16, float16)")
    for name, t in (("x", x),) + tuple(others):
        # Channels-last means the channel stride is 1; a copy to get there would cost a full pass.
        if t is not None and t.dim() == 4 and t.shape[1] > 1 and t.stride(1) != 1:
            reasons.append(f"cpu: {name} is not channels-last (channel stride {t.stride(1)} != 1); "
                           "the kernels do not copy activations to change layout")
    return reasons


def conv_supports(*, x, weight, bias=None, stride=1, padding=None, groups=1, residual=None, relu=True,
                  channel_sums=False, forced=False) -> List[str]:
    reasons = _common_reasons(x, (("residual", residual),))
    k = weight.shape[-1]
    if k not in SUPPORTED_KERNEL_SIZES or weight.shape[-2] != k:
        reasons.append(f"cpu: kernel {weight.shape[-2]}x{weight.shape[-1]} not supported (1x1, 3x3)")
    if stride not in SUPPORTED_STRIDES:
        reasons.append(f"cpu: stride {stride} not supported (1, 2)")
    if channel_sums and residual is not None:
        reasons.append("cpu: channel_sums with a residual is not implemented (conv_bn_act_sums takes no residual)")
    return reasons


# A measured per-shape choice (bench/NOTES.md): with 16-lane AVX-512 vectors our micro-kernel
# fills only half of each vector for group width 8 (RegNetY-400MF's), and oneDNN's fused conv +
# bias + ReLU was ~1.3-1.8x faster there at batch 16. It serves exactly that case: fp32,
# grouped 3x3, group width 8, no residual, no channel sums (those epilogues are ours alone).
# Every other shape (group width >= 16, 1x1, the stem, bf16/fp16, K2 sums) runs our kernel.
ONEDNN_GROUP_WIDTHS = (8,)


def _use_onednn(x, weight, groups, residual, channel_sums) -> bool:
    return (x.dtype == torch.float32 and groups > 1 and weight.shape[-1] == 3 and residual is None
            and not channel_sums and weight.shape[1] in ONEDNN_GROUP_WIDTHS and weight.shape[0] // groups in
            ONEDNN_GROUP_WIDTHS and _AVX512 and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


_AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"

# A second measured choice (bench/NOTES.md, "1x1 convs"): for fp32 1x1 convs at batch >= 4,
# oneDNN's fused conv (+ bias, + residual add, + ReLU in its post-ops) ran 1.25-1.5x faster than
# our at::vec GEMM on the RegNetY-400MF stage shapes at batch 16; at batch 1 ours is as fast or
# faster. Our kernel keeps batch < 4, bf16/fp16 and every epilogue oneDNN lacks (channel sums).
ONEDNN_1X1_MIN_BATCH = 4


def _use_onednn_1x1(x, weight, groups, channel_sums) -> bool:
    # Dense channels_last only: oneDNN would copy a strided view, our kernel reads it in place.
    return (x.dtype == torch.float32 and groups == 1 and weight.shape[-1] == 1 and not channel_sums
            and x.shape[0] >= ONEDNN_1X1_MIN_BATCH and x.is_contiguous(memory_format=torch.channels_last)
            and _AVX512 and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


def _onednn_conv(x, weight, bias, stride, padding, groups, residual, relu):
    unary = "relu" if relu else "none"
    args = ([padding] * 2, [stride] * 2, [1, 1], groups)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, unary, [None], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, *args, "add", None, unary, [], "")


def conv_run(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    if _use_onednn(x, weight, groups, residual, channel_sums) or (
            _use_onednn_1x1(x, weight, groups, channel_sums)
            and (residual is None or residual.is_contiguous(memory_format=torch.channels_last))):
        return _onednn_conv(x, weight, bias, stride, padding, groups, residual, relu)
    if channel_sums:
        return native_op("conv_bn_act_sums")(x, weight, bias, stride, padding, groups, relu)
    return native_op("conv_bn_act")(x, weight, bias, stride, padding, groups, residual, relu)


def se_supports(*, x, w1, b1, w2, b2, residual=None, relu=False, sums=None, forced=False) -> List[str]:
    reasons = _common_reasons(x, (("residual", residual),))
    if sums is not None and sums.dtype != torch.float32:
        reasons.append(f"cpu: sums dtype {sums.dtype} not supported (float32)")
    return reasons


def se_run(x, w1, b1, w2, b2, residual, relu, sums):
    return native_op("se_gate")(x, w1, b1, w2, b2, residual, relu, sums)


def gated_supports(*, x, gate, weight, bias=None, residual=None, relu=True, forced=False) -> List[str]:
    return _common_reasons(x, (("residual", residual),))


def gated_run(x, gate, weight, bias, residual, relu):
    w4 = weight[:, :, None, None]
    if _use_onednn_1x1(x, w4, 1, False) and (residual is None or residual.is_contiguous(memory_format=torch.channels_last)):
        # Gating costs one extra pass over x here, still faster than our GEMM at batch >= 4 (NOTES.md).
        return _onednn_conv(x * gate.to(x.dtype)[:, :, None, None], w4, bias, 1, 0, 1, residual, relu)
    return native_op("gated_conv1x1")(x, gate, weight, bias, residual, relu)


dispatch.register("conv_bn_act", NAME, conv_supports, conv_run)
dispatch.register("se_gate", NAME, se_supports, se_run)
dispatch.register("gated_conv1x1", NAME, gated_supports, gated_run)

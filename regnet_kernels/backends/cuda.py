"""cuda backend: the CUDA C++ kernels of regnet_kernels._C (csrc/cuda/), for sm_80 and sm_90.

Serves
- conv_bn_act: grouped (or dense) 3x3 convs, padding 1, stride 1 or 2, + bias [+ residual] [+ ReLU],
  and with channel_sums=True the K2 kernel (conv_bn_act_sums: sums of y from the epilogue,
  without a residual, which the K2 schema does not take). 1x1 convs and the rest go elsewhere.
- se_gate: sums (or the given ones), the fp32 excite MLP, then x * gate + residual + ReLU in one pass.
Tensors: CUDA, float32/float16/bfloat16, channels-last (channel stride 1) x and residual.
Every refusal is a reason string, so a forced backend explains itself.
"""

from __future__ import annotations

from typing import List

import torch

from .. import _ext, dispatch
from ..ops.checks import KERNEL_DTYPES
from .native import NAMESPACE, native_op

# The excite kernel keeps mean[C] and hidden[C_se] in 48 KiB of shared memory.
SE_MAX_FLOATS = 48 * 1024 // 4


def _build_reasons_now(op: str) -> List[str]:
    """Why the extension cannot run `op` on a GPU at all (independent of the arguments)."""
    if _ext.load() is None:
        return [f"cuda: regnet_kernels._C is not built ({_ext.error()})"]
    if _ext.build_info().get("cuda") != "yes":
        return ["cuda: regnet_kernels._C was built without CUDA (torch without CUDA, no nvcc, or REGNET_KERNELS_CUDA=0)"]
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", "CUDA"):
        return [f"cuda: regnet_kernels._C has no CUDA kernel for {op}"]
    if not torch.cuda.is_available():
        return ["cuda: no CUDA GPU is available (torch.cuda.is_available() is False)"]
    return []


# Fixed for the process, so computed once: supports() runs inside torch.compile'd code, where dynamo
# cannot trace the dispatcher query (a torch.* call returning a bool) under fullgraph=True.
_BUILD_REASONS = {op: _build_reasons_now(op) for op in ("conv_bn_act", "conv_bn_act_sums", "se_gate")}


def _build_reasons(op: str) -> List[str]:
    return list(_BUILD_REASONS[op])


def _channel_stride_one(t: torch.Tensor) -> bool:
    return t.shape[1] == 1 or t.stride(1) == 1


def _tensor_reasons(x: torch.Tensor, residual) -> List[str]:
    reasons = []
    if x.device.type != "cuda":
        reasons.append(f"cuda: x is on {x.device}, not a CUDA device")
    if x.dtype not in KERNEL_DTYPES:
        reasons.append(f"cuda: dtype {x.dtype} not supported (float32, float16, bfloat16)")
    if x.dim() == 4 and not _channel_stride_one(x):
        reasons.append("cuda: x must be channels_last (channel stride 1), got strides " + str(tuple(x.stride())))
    if residual is not None and residual.dim() == 4 and not _channel_stride_one(residual):
        reasons.append("cuda: residual must be channels_last (channel stride 1)")
    return reasons


def conv_bn_act_supports(*, x, weight, bias=None, stride=1, padding=1, groups=1, residual=None, relu=True,
                         channel_sums=False, forced=False, **_) -> List[str]:
    op = "conv_bn_act_sums" if channel_sums else "conv_bn_act"
    reasons = _build_reasons(op) + _tensor_reasons(x, residual)
    if tuple(weight.shape[2:]) != (3, 3):
        reasons.append(f"cuda: only 3x3 convs are implemented, got {weight.shape[2]}x{weight.shape[3]}")
    if padding != 1:
        reasons.append(f"cuda: padding must be 1, got {padding}")
    if stride not in (1, 2):
        reasons.append(f"cuda: stride must be 1 or 2, got {stride}")
    if channel_sums and residual is not None:
        reasons.append("cuda: channel_sums with a residual is not implemented (the K2 kernel takes no residual)")
    return reasons


def conv_bn_act_run(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    if channel_sums:
        return native_op("conv_bn_act_sums")(x, weight, bias, stride, padding, groups, relu)
    return native_op("conv_bn_act")(x, weight, bias, stride, padding, groups, residual, relu)


def se_gate_supports(*, x, w1, b1=None, w2=None, b2=None, residual=None, relu=False, sums=None, forced=False,
                     **_) -> List[str]:
    reasons = _build_reasons("se_gate") + _tensor_reasons(x, residual)
    c_se = w1.shape[0]
    if x.dim() == 4 and x.shape[1] + c_se > SE_MAX_FLOATS:
        reasons.append(f"cuda: C + C_se = {x.shape[1] + c_se} exceeds the excite kernel's {SE_MAX_FLOATS}")
    if x.dim() == 4 and x.shape[0] * x.shape[2] >= 65536:
        reasons.append(f"cuda: N * H = {x.shape[0] * x.shape[2]} must be < 65536 (grid limit)")
    return reasons


def se_gate_run(x, w1, b1, w2, b2, residual, relu, sums):
    return native_op("se_gate")(x, w1, b1, w2, b2, residual, relu, sums)


dispatch.register("conv_bn_act", "cuda", conv_bn_act_supports, conv_bn_act_run)
dispatch.register("se_gate", "cuda", se_gate_supports, se_gate_run)

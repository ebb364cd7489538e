"""The triton backend: registers conv_bn_act, se_gate and gated_conv1x1 with the dispatcher.

The kernels (regnet_kernels/triton/) run on CUDA tensors, and on CPU tensors only when the
backend is forced and TRITON_INTERPRET=1 was set before triton was imported (the tests).
Every call goes through a torch.library.triton_op (torch.ops.regnet_kernels.triton_*), so
torch.compile(fullgraph=True) traces the kernels instead of breaking the graph. Under the
interpreter the ops run eagerly on CPU tensors as usual, but torch.compile cannot trace them:
wrap_triton hands back the raw InterpretedFunction, which cannot run on FakeTensors. There the
op is called through torch.compiler.disable instead, so torch.compile breaks the graph around it
and runs it eagerly (fullgraph=True is impossible under the interpreter). The tests check
compile tracing without the interpreter (graph capture only, no launch).
"""

from __future__ import annotations

import os
from typing import List, Optional

import torch
from torch import Tensor

from .. import dispatch
from ..ops.checks import KERNEL_DTYPES

try:
    from ..triton import conv_bn_act as conv_mod
    from ..triton import gated_conv1x1 as gated_mod  # noqa: F401  registers the triton_op
    from ..triton import interpreter_fixes
    from ..triton import se_gate as se_mod  # noqa: F401  registers the triton_op

    IMPORT_ERROR: Optional[str] = None
except ImportError as e:  # no triton, or a torch without torch.library.triton_op
    IMPORT_ERROR = f"{type(e).__name__}: {e}"

# Kernels index with int32 offsets.
MAX_OFFSET = 2**31 - 1
# Compiled and checked (tools/gpu_compile_report.py) for these architectures and newer.
MIN_CAPABILITY = (8, 0)


def interpreting() -> bool:
    """True when the kernels were built by triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return IMPORT_ERROR is None and interpreter_fixes.interpreting()


def _max_offset(t: Tensor) -> int:
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def common_reasons(forced: bool, x: Tensor, tensors: List[Optional[Tensor]], same_dtype: List[Optional[Tensor]]
                   ) -> List[str]:
    """Reasons shared by the three ops: import, device, dtype, index range, autograd."""
    if IMPORT_ERROR is not None:
        return [f"triton: triton not importable ({IMPORT_ERROR})"]
    reasons = []
    if x.device.type == "cpu":
        if not forced:
            reasons.append("triton: CPU tensors run only when the triton backend is forced (under TRITON_INTERPRET=1)")
        elif os.environ.get("TRITON_INTERPRET") != "1":
            reasons.append("triton: CPU tensors need TRITON_INTERPRET=1 (triton's interpreter)")
        elif not interpreting():
            reasons.append("triton: TRITON_INTERPRET=1 was set after triton was imported; "
                           "the kernels are not interpreted")
    elif x.device.type == "cuda":
        if interpreting():
            reasons.append("triton: kernels are interpreted (TRITON_INTERPRET=1), CUDA tensors cannot run")
        elif torch.cuda.get_device_capability(x.device) < MIN_CAPABILITY:
            reasons.append(f"triton: needs compute capability >= {MIN_CAPABILITY} (checked for sm_80/sm_90)")
    else:
        reasons.append(f"triton: device {x.device.type} not supported (cuda, or cpu under the interpreter)")
    if x.dtype not in KERNEL_DTYPES:
        reasons.append(f"triton: dtype {x.dtype} not supported (expected one of {[str(d) for d in KERNEL_DTYPES]})")
    for t in same_dtype:
        if t is not None and t.dtype != x.dtype:
            reasons.append(f"triton: parameter dtype {t.dtype} differs from x's {x.dtype}")
            break
    present = [t for t in [x, *tensors] if t is not None]
    if any(_max_offset(t) > MAX_OFFSET for t in present):
        reasons.append("triton: a tensor spans more than 2**31 elements (kernels index with int32)")
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        reasons.append("triton: no backward; inputs require grad (use the eager backend for training)")
    return reasons


def _out_too_large(n: int, c: int, h: int, w: int) -> bool:
    # Outputs are allocated dense, so their largest offset is numel - 1.
    return n * c * h * w - 1 > MAX_OFFSET


def conv_bn_act_supports(*, x, weight, bias=None, stride=1, padding=None, groups=1, residual=None, relu=True,
                         channel_sums=False, forced=False, **_) -> List[str]:
    reasons = common_reasons(forced, x, [weight, bias, residual], [weight, bias, residual])
    padding = (weight.shape[2] - 1) // 2 if padding is None else padding  # the op's default
    if not reasons and _out_too_large(*conv_mod.conv_out_shape(x, weight, stride, padding)):
        reasons.append("triton: the output spans more than 2**31 elements (kernels index with int32)")
    return reasons


def triton_op(name: str):
    """torch.ops.regnet_kernels.<name>; under the interpreter, hidden from torch.compile (see top)."""
    op = getattr(torch.ops.regnet_kernels, name)
    return torch.compiler.disable(op) if interpreting() else op


def conv_bn_act_run(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    op = triton_op("triton_conv_bn_act_sums" if channel_sums else "triton_conv_bn_act")
    return op(x, weight, bias, stride, padding, groups, residual, relu)


def se_gate_supports(*, x, w1, b1, w2, b2, residual=None, relu=False, sums=None, forced=False, **_) -> List[str]:
    reasons = common_reasons(forced, x, [w1, b1, w2, b2, residual, sums], [w1, b1, w2, b2, residual])
    if sums is not None and sums.dtype != torch.float32:
        reasons.append(f"triton: sums must be float32, got {sums.dtype}")
    return reasons


def se_gate_run(x, w1, b1, w2, b2, residual, relu, sums):
    return triton_op("triton_se_gate")(x, w1, b1, w2, b2, residual, relu, sums)


def gated_conv1x1_supports(*, x, gate, weight, bias=None, residual=None, relu=True, forced=False, **_) -> List[str]:
    # The gate may be fp32 or x's dtype: the launcher reads it as fp32.
    reasons = common_reasons(forced, x, [gate, weight, bias, residual], [weight, bias, residual])
    if not reasons and _out_too_large(x.shape[0], weight.shape[0], x.shape[2], x.shape[3]):
        reasons.append("triton: the output spans more than 2**31 elements (kernels index with int32)")
    return reasons


def gated_conv1x1_run(x, gate, weight, bias, residual, relu):
    return triton_op("triton_gated_conv1x1")(x, gate, weight, bias, residual, relu)


dispatch.register("conv_bn_act", "triton", conv_bn_act_supports, conv_bn_act_run)
dispatch.register("se_gate", "triton", se_gate_supports, se_gate_run)
dispatch.register("gated_conv1x1", "triton", gated_conv1x1_supports, gated_conv1x1_run)

"""Workarounds for two bfloat16 gaps of triton's CPU interpreter (TRITON_INTERPRET=1), which keeps
bf16 as raw uint16 bits:
  - tl.dot multiplies the bit patterns (triton-lang/triton#11584, "not supported yet");
  - fp32 -> bf16 casts truncate (round toward zero) instead of rounding to nearest even as the
    GPU's cvt.rn.bf16.f32 does, doubling the rounding error of every bf16 output.
Kernels take a constexpr EMULATE_BF16 = interpreting() and dtype is bf16. With it they upcast
tl.dot operands to fp32 (exact: a bf16 product fits in fp32) and round through to_bf16_rtne.
GPU launches and the compile report always use EMULATE_BF16=False, the native paths.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def to_dtype(v, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """v (fp32) rounded to dtype, to nearest even; under EMULATE_BF16, by integer arithmetic on
    the fp32 bits (add half an ulp of bf16 plus the tie-breaking bit, keep the top 16 bits)."""
    if EMULATE_BF16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(dtype)


def interpreting() -> bool:
    """True when the kernels are built by triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return isinstance(to_dtype, InterpretedFunction)


def emulate_bf16(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and interpreting()

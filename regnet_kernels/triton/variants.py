"""The compiled variants each launcher can produce, for ahead-of-time compilation without a GPU
(tools/gpu_compile_report.py). Each op module lists its variants in compile_variants(), next to
the heuristic that picks among them, so a new config cannot be launched without being compiled.

Triton compiles one binary per (constexprs, argument dtypes, specialization of integer and
pointer arguments). The kernels mark shapes and flags do_not_specialize, so what remains is the
stride specialization; two layouts bracket it:
  nhwc     channels_last, as a real launch sees it: channel strides == 1 (triton turns them into
           constants), other strides and pointers 16-divisible (vectorized loads);
  generic  no stride or pointer specialization at all (NCHW, strided views, odd widths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Sequence, Tuple

import torch

TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
LAYOUTS = ("nhwc", "generic")
DIVISIBILITY = [["tt.divisibility", 16]]


@dataclass(frozen=True)
class KernelVariant:
    kernel: Any  # a triton JITFunction
    config: str  # the block config's name and sizes
    dtype: str
    layout: str
    num_warps: int
    signature: Dict[str, str] = field(hash=False)
    constexprs: Dict[str, Any] = field(hash=False)
    attrs: Dict[Tuple[int], list] = field(hash=False)

    @property
    def name(self) -> str:
        return self.kernel.__name__


def make_variant(kernel, config: str, dtype: str, layout: str, num_warps: int, pointer_types: Dict[str, str],
                 constexprs: Dict[str, Any], unit_strides: Sequence[str] = (), strides: Sequence[str] = (),
                 float_args: Sequence[str] = ()) -> KernelVariant:
    """The signature, constants and attributes a launch in `layout` would compile with.

    pointer_types: argument -> element type ("fp16", ...); float_args: fp32 scalars; other
    non-constexpr arguments are i32. unit_strides are 1 and strides 16-divisible under nhwc."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    signature, consts, attrs = {}, dict(constexprs), {}
    for index, param in enumerate(kernel.params):
        name = param.name
        if param.is_constexpr:
            if name not in consts:
                raise ValueError(f"{kernel.__name__}: no value for constexpr {name}")
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = "*" + pointer_types[name]
            if layout == "nhwc":
                attrs[(index,)] = DIVISIBILITY
        elif layout == "nhwc" and name in unit_strides:
            signature[name], consts[name] = "constexpr", 1  # what triton does with an int == 1
        else:
            signature[name] = "fp32" if name in float_args else "i32"
            if layout == "nhwc" and name in strides:
                attrs[(index,)] = DIVISIBILITY
    return KernelVariant(kernel, config, dtype, layout, num_warps, signature, consts, attrs)

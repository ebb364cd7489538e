"""Triton conv_bn_act: conv (BN folded) + bias [+ residual] [+ ReLU] [+ fp32 channel sums, K2].

One kernel serves every conv of the zoo (stem 3x3 3->32 s2, 1x1 s1/s2, grouped 3x3 with group
widths 8..232) and, with GATED=True, K4's gated 1x1 conv (gated_conv1x1.py launches it).

Design: implicit GEMM on tensor cores, NHWC-native, fp32 accumulation.
  A program computes a [BLOCK_P output pixels of one image] x [BLOCK_CO output channels] tile:
  for each of the k*k taps and each BLOCK_CI chunk of the tile's input channels it loads an
  x tile [BLOCK_P, BLOCK_CI] (channels contiguous under channels_last, so each pixel row is one
  coalesced load) and a weight tile [BLOCK_CI, BLOCK_CO], and accumulates tl.dot into fp32.
  Channel tiles are aligned to group boundaries: a tile covers `groups_per_tile` whole groups
  (small group widths) or one `BLOCK_CO` slice of one group (wide groups), so it needs only its
  own groups' input channels. Within a multi-group tile the weight tile is block diagonal
  (cross-group entries masked to zero): for group width 8 and BLOCK_CO=32 the tensor cores do 4x
  the useful MACs (see below for why that is affordable).
Bytes moved: DRAM traffic is one read of x (the 9 taps of a tile re-read neighbouring rows, which
  sit in L1/L2 because a tile is BLOCK_P consecutive pixels of one image), one write of y, one
  read of the residual when given, and the weights (C_out * C_in/groups * k*k elements, read per
  tile but L2 resident). Example, fp16 [16, 224, 28, 28], grouped 3x3 stride 1, g=8: x 5.6 MB
  read + y 5.6 MB written = 11.2 MB against 32 kB of weights and 0.40 GFLOP, i.e. 36 flop/byte
  (4.5*g). Why tensor cores although the conv is "memory bound": H100 CUDA-core fp32 FMA needs
  only ~20 flop/byte to keep up with 3.35 TB/s, so a direct FMA kernel would already be compute
  bound at g=8 and hopeless at g=232 (~1000 flop/byte); on tensor cores (~295 flop/byte fp16 on
  H100, ~156 on A100) even the 4x block-diagonal waste at g=8 (144 flop/byte) stays at or under
  the balance point, and g=232 pads 232 channels to 256 in both C_out and C_in (1.2x).
  fp32 runs tl.dot with input_precision="ieee" (FMAs, no TF32) to keep the 1e-5 relative error
  the tests demand: correct, but compute bound; fp16/bf16 are the fast path.
Channel sums (K2): each tile reduces its fp32 epilogue values over its pixels and atomically
  adds [BLOCK_CO] partial sums into a zeroed [N, C_out] fp32 buffer: ceil(H*W / BLOCK_P) atomics
  per (n, c) (49 for 56x56), far too few to contend, and no second kernel or [tiles, N, C]
  scratch buffer as a two-stage reduction would need. The order of the fp32 adds varies from run
  to run (not bitwise deterministic); the SE gate does not need that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ..ops.checks import empty_like_layout
from .interpreter_fixes import emulate_bf16, to_dtype


@dataclass(frozen=True)
class ConvConfig:
    """Block sizes of one compiled variant; tl.dot needs every block dim >= 16."""
    name: str
    block_p: int
    block_co: int
    block_ci: int
    num_warps: int


# The only configs the dispatcher picks (gpu_compile_report.py compiles each of them). 8 warps:
# with 4, the fp16 64x64 tile needs 255 registers and spills on sm_80. fp32 runs tl.dot as IEEE
# FMAs (no TF32), which keep BLOCK_CI-deep operand fragments in registers: it gets a 64x32x16
# tile (64x64x32 needs 255 registers and spills 464 B on sm_80).
# No separate stem config: its 3 input channels waste most of a BLOCK_CI chunk, but it is one
# layer whose cost is writing its 32-channel output, and every config costs compile-report time.
NARROW = ConvConfig("narrow", block_p=64, block_co=32, block_ci=32, num_warps=8)  # group width <= 32
WIDE = ConvConfig("wide", block_p=64, block_co=64, block_ci=32, num_warps=8)  # wider groups, 1x1 convs, stem
FP32 = ConvConfig("fp32", block_p=64, block_co=32, block_ci=16, num_warps=8)  # every fp32 conv
CONV_CONFIGS = {torch.float32: (FP32,), torch.float16: (NARROW, WIDE), torch.bfloat16: (NARROW, WIDE)}


def pick_config(cout_per_group: int, groups: int, dtype: torch.dtype) -> ConvConfig:
    """Heuristic: the narrowest tile that still feeds tl.dot, so few MACs are masked away."""
    if dtype == torch.float32:
        return FP32
    if groups > 1 and cout_per_group <= NARROW.block_co:
        return NARROW
    return WIDE


# Integer arguments triton must not specialize on (== 1, divisible by 16): shapes, flags and the
# strides of the small weight and gate (gathered, L2 resident) vary per layer, and each
# specialization would be another compiled variant for the compile report to cover. The
# activation strides stay specializable: a channel stride of 1 (channels_last) and 16-divisible
# pixel strides let triton vectorize the NHWC loads; the report compiles both extremes.
CONV_RUNTIME_INTS = ("C_in", "H", "W", "C_out", "H_out", "W_out", "swo", "swi", "swh", "sww", "sgn", "sgc", "ksize",
                     "conv_stride", "padding", "cin_per_group", "cout_per_group", "groups_per_tile",
                     "co_blocks_per_group", "has_bias", "has_res", "relu", "want_sums")
ACTIVATION_STRIDES = ("sxn", "sxc", "sxh", "sxw", "srn", "src", "srh", "srw", "syn", "syc", "syh", "syw")


@triton.jit(do_not_specialize=CONV_RUNTIME_INTS)
def conv_bn_act_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, gate_ptr, y_ptr, sums_ptr,
    C_in, H, W, C_out, H_out, W_out,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    srn, src, srh, srw,
    syn, syc, syh, syw,
    sgn, sgc,
    ksize, conv_stride, padding,
    cin_per_group, cout_per_group, groups_per_tile, co_blocks_per_group,
    has_bias, has_res, relu, want_sums,
    GATED: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    # The kernel size (1 or 3) and the epilogue flags are runtime ints (a loop bound, uniform
    # branches), so one compiled variant per config and dtype serves every conv of the zoo.
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    hw_out = H_out * W_out
    tiles_per_image = tl.cdiv(hw_out, BLOCK_P)
    n = pid_p // tiles_per_image
    p = (pid_p % tiles_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < hw_out
    oh = p // W_out
    ow = p % W_out

    first_group = (pid_c // co_blocks_per_group) * groups_per_tile
    co_lo = first_group * cout_per_group + (pid_c % co_blocks_per_group) * BLOCK_CO
    co_hi = tl.minimum((first_group + groups_per_tile) * cout_per_group, C_out)
    co = co_lo + tl.arange(0, BLOCK_CO)
    co_ok = co < co_hi
    # First input channel of each output channel's group: weight column j = ci - this.
    co_group_ci0 = (co // cout_per_group) * cin_per_group
    ci_lo = first_group * cin_per_group
    ci_hi = tl.minimum(ci_lo + groups_per_tile * cin_per_group, C_in)

    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for kh in range(ksize):
        ih = oh * conv_stride - padding + kh
        for kw in range(ksize):
            iw = ow * conv_stride - padding + kw
            pix_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_pix = x_ptr + n * sxn + ih * sxh + iw * sxw
            for k0 in range(ci_lo, ci_hi, BLOCK_CI):
                ci = k0 + tl.arange(0, BLOCK_CI)
                ci_ok = ci < ci_hi
                xt = tl.load(x_pix[:, None] + ci[None, :] * sxc, mask=pix_ok[:, None] & ci_ok[None, :], other=0.0)
                if GATED:
                    # K4 prologue: scale the loaded tile by the fp32 SE gate, round once to x's dtype.
                    g = tl.load(gate_ptr + n * sgn + ci * sgc, mask=ci_ok, other=0.0)
                    xt = to_dtype(xt.to(tl.float32) * g[None, :], xt.dtype, EMULATE_BF16)
                j = ci[:, None] - co_group_ci0[None, :]
                w_ok = ci_ok[:, None] & co_ok[None, :] & (j >= 0) & (j < cin_per_group)
                wt = tl.load(w_ptr + co[None, :] * swo + j * swi + kh * swh + kw * sww, mask=w_ok, other=0.0)
                if EMULATE_BF16:  # interpreter only, see interpreter_fixes.py
                    acc = tl.dot(xt.to(tl.float32), wt.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(xt, wt, acc, input_precision="ieee")

    out = acc
    if has_bias:
        out += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    tile_ok = p_ok[:, None] & co_ok[None, :]
    if has_res:
        r_offs = (n * srn + oh * srh + ow * srw)[:, None] + co[None, :] * src
        out += tl.load(res_ptr + r_offs, mask=tile_ok, other=0.0).to(tl.float32)
    if relu:
        out = tl.maximum(out, 0.0)
    y_offs = (n * syn + oh * syh + ow * syw)[:, None] + co[None, :] * syc
    tl.store(y_ptr + y_offs, to_dtype(out, y_ptr.dtype.element_ty, EMULATE_BF16), mask=tile_ok)
    if want_sums:
        partial = tl.sum(tl.where(tile_ok, out, 0.0), axis=0)
        tl.atomic_add(sums_ptr + n * C_out + co, partial, mask=co_ok)


def launch_conv(x: Tensor, weight4: Tensor, bias: Optional[Tensor], stride: int, padding: int, groups: int,
                residual: Optional[Tensor], relu: bool, y: Tensor, sums: Optional[Tensor],
                gate: Optional[Tensor] = None) -> None:
    """Run conv_bn_act_kernel into y (and sums, zeroed by the caller). weight4 is [C_out, C_in/g, k, k]
    or, for the gated 1x1, a 2-D [C_out, C_in] matrix (its kh/kw strides are then 0)."""
    n, c_in, h, w = x.shape
    c_out = weight4.shape[0]
    ksize = weight4.shape[2] if weight4.dim() == 4 else 1
    w_strides = weight4.stride() if weight4.dim() == 4 else (*weight4.stride(), 0, 0)
    h_out, w_out = y.shape[2], y.shape[3]
    cin_pg, cout_pg = c_in // groups, c_out // groups
    cfg = pick_config(cout_pg, groups, x.dtype)
    if cout_pg <= cfg.block_co:
        groups_per_tile, co_blocks_per_group = max(1, cfg.block_co // cout_pg), 1
    else:
        groups_per_tile, co_blocks_per_group = 1, triton.cdiv(cout_pg, cfg.block_co)
    channel_tiles = triton.cdiv(groups, groups_per_tile) * co_blocks_per_group
    grid = (n * triton.cdiv(h_out * w_out, cfg.block_p), channel_tiles)
    # Absent optional tensors get a placeholder of the same dtype (so no extra compiled variant per
    # placeholder dtype); the runtime flag or GATED keeps it unread.
    res = residual if residual is not None else y
    fp32_placeholder = y.new_empty(0, dtype=torch.float32) if gate is None or sums is None else None
    gate_t = gate if gate is not None else fp32_placeholder
    wrap_triton(conv_bn_act_kernel)[grid](
        x, weight4, bias if bias is not None else y, res, gate_t, y, sums if sums is not None else fp32_placeholder,
        c_in, h, w, c_out, h_out, w_out,
        *x.stride(), *w_strides, *res.stride(), *y.stride(),
        *(gate.stride() if gate is not None else (0, 0)),
        ksize, stride, padding, cin_pg, cout_pg, groups_per_tile, co_blocks_per_group,
        int(bias is not None), int(residual is not None), int(relu), int(sums is not None),
        GATED=gate is not None, EMULATE_BF16=emulate_bf16(x.dtype),
        BLOCK_P=cfg.block_p, BLOCK_CO=cfg.block_co, BLOCK_CI=cfg.block_ci, num_warps=cfg.num_warps,
    )


def conv_out_shape(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tuple[int, int, int, int]:
    k = weight.shape[2]
    return (x.shape[0], weight.shape[0], (x.shape[2] + 2 * padding - k) // stride + 1,
            (x.shape[3] + 2 * padding - k) // stride + 1)


@triton_op("regnet_kernels::triton_conv_bn_act", mutates_args={})
def triton_conv_bn_act(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, padding: int, groups: int,
                       residual: Optional[Tensor], relu: bool) -> Tensor:
    y = empty_like_layout(x, conv_out_shape(x, weight, stride, padding))
    launch_conv(x, weight, bias, stride, padding, groups, residual, relu, y, None)
    return y


@triton_op("regnet_kernels::triton_conv_bn_act_sums", mutates_args={})
def triton_conv_bn_act_sums(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, padding: int,
                            groups: int, residual: Optional[Tensor], relu: bool) -> Tuple[Tensor, Tensor]:
    y = empty_like_layout(x, conv_out_shape(x, weight, stride, padding))
    # Zeroed, never poisoned: the kernel accumulates into it.
    sums = torch.zeros((y.shape[0], y.shape[1]), dtype=torch.float32, device=x.device)
    launch_conv(x, weight, bias, stride, padding, groups, residual, relu, y, sums)
    return y, sums


def compile_variants():
    """Every (config, GATED, dtype, layout) variant launch_conv can compile, for the compile report.
    pick_config reaches every config of a dtype without the gate; the gated 1x1 has groups == 1,
    so it gets WIDE (FP32 for fp32)."""
    from .variants import LAYOUTS, TRITON_TYPES, make_variant

    for dtype, configs in CONV_CONFIGS.items():
        t = TRITON_TYPES[dtype]
        pointers = dict(x_ptr=t, w_ptr=t, bias_ptr=t, res_ptr=t, gate_ptr="fp32", y_ptr=t, sums_ptr="fp32")
        gated_config = pick_config(1, 1, dtype)
        for gated, cfg in [(False, c) for c in configs] + [(True, gated_config)]:
            label = (f"{'gated ' if gated else ''}{cfg.name} P{cfg.block_p}xCO{cfg.block_co}xCI{cfg.block_ci}"
                     f" w{cfg.num_warps}")
            consts = dict(GATED=gated, EMULATE_BF16=False, BLOCK_P=cfg.block_p, BLOCK_CO=cfg.block_co,
                          BLOCK_CI=cfg.block_ci)
            for layout in LAYOUTS:
                yield make_variant(conv_bn_act_kernel, label, t, layout, cfg.num_warps, pointers, consts,
                                   unit_strides=("sxc", "src", "syc"), strides=ACTIVATION_STRIDES)

"""Triton se_gate: y = act(x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2) [+ residual]).

Three small kernels, all fp32 inside:
  channel_sums_kernel  only when the caller has no K2 sums: one read of x, [BLOCK_P, BLOCK_C]
                       tiles reduced over pixels and atomically added into a zeroed fp32 [N, C]
                       buffer (same reasoning as conv_bn_act's K2 sums: few atomics per (n, c)).
  se_fc_kernel         the MLP on [N, C], launched twice (FC1+ReLU into fp32 [N, C_se], then
                       FC2+sigmoid into the fp32 gate [N, C]); a matrix-vector product per
                       (n, BLOCK_O outputs). Bytes: the weights (2*C*C_se) per n from L2; tiny.
  gate_apply_kernel    the one pass over the activation: read x (+ residual), write y.
Memory traffic for fp16 x [N, C, H, W]: 2*N*C*H*W read + 2*N*C*H*W written (+ the residual),
plus one more read of x when sums are not given, against eager's ~6 full passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ..ops.checks import empty_like_layout, fc_matrix
from .interpreter_fixes import emulate_bf16, to_dtype


@dataclass(frozen=True)
class TileConfig:
    """Block sizes of a 2-D tile kernel; the only ones the launcher uses (compiled by the report)."""
    name: str
    block_rows: int
    block_cols: int
    num_warps: int


# [pixels, channels] tiles: channels innermost for coalesced NHWC access.
PIXEL_TILE = TileConfig("pixels32_channels128", block_rows=32, block_cols=128, num_warps=4)
# [outputs, inputs] tiles of an SE weight matrix.
FC_TILE = TileConfig("out64_in64", block_rows=64, block_cols=64, num_warps=4)


@triton.jit
def nhwc_tile(H, W, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's image n, pixel rows (h, w, in-range mask) and channels (c, in-range mask) of
    a [BLOCK_P, BLOCK_C] tile; the grid is (N * cdiv(H*W, BLOCK_P), cdiv(C, BLOCK_C))."""
    hw = H * W
    tiles_per_image = tl.cdiv(hw, BLOCK_P)
    n = tl.program_id(0) // tiles_per_image
    p = (tl.program_id(0) % tiles_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, p // W, p % W, p < hw, c, c < C


# Shapes and flags are not specialized on (one compiled variant per config and dtype); strides
# are, as in conv_bn_act.py (vectorized NHWC loads).
@triton.jit(do_not_specialize=("C", "H", "W"))
def channel_sums_kernel(x_ptr, sums_ptr, C, H, W, sxn, sxc, sxh, sxw,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """sums[n, c] += sum over this tile's pixels of x[n, c, :, :] (fp32; sums is [N, C] contiguous)."""
    n, h, w, p_ok, c, c_ok = nhwc_tile(H, W, C, BLOCK_P, BLOCK_C)
    offs = (n * sxn + h * sxh + w * sxw)[:, None] + c[None, :] * sxc
    xt = tl.load(x_ptr + offs, mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    tl.atomic_add(sums_ptr + n * C + c, tl.sum(xt, axis=0), mask=c_ok)


@triton.jit(do_not_specialize=("IN", "OUT", "sigmoid"))
def se_fc_kernel(v_ptr, w_ptr, b_ptr, out_ptr, IN, OUT, v_scale, svn, svi, swo, swi, sigmoid,
                 BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    """out[n, o] = act(sum_i w[o, i] * (v[n, i] * v_scale) + b[o]) in fp32; act = sigmoid if
    `sigmoid` else ReLU. out is [N, OUT] contiguous fp32."""
    n = tl.program_id(0)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < OUT
    acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for i0 in range(0, IN, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        i_ok = i < IN
        v = tl.load(v_ptr + n * svn + i * svi, mask=i_ok, other=0.0).to(tl.float32) * v_scale
        wt = tl.load(w_ptr + o[:, None] * swo + i[None, :] * swi, mask=o_ok[:, None] & i_ok[None, :], other=0.0)
        acc += tl.sum(wt.to(tl.float32) * v[None, :], axis=1)
    acc += tl.load(b_ptr + o, mask=o_ok, other=0.0).to(tl.float32)
    if sigmoid:
        acc = tl.sigmoid(acc)
    else:
        acc = tl.maximum(acc, 0.0)
    tl.store(out_ptr + n * OUT + o, acc, mask=o_ok)


@triton.jit(do_not_specialize=("C", "H", "W", "has_res", "relu"))
def gate_apply_kernel(x_ptr, gate_ptr, res_ptr, y_ptr, C, H, W,
                      sxn, sxc, sxh, sxw, srn, src, srh, srw, syn, syc, syh, syw,
                      has_res, relu, EMULATE_BF16: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = act(x * gate[n, c] + residual), fp32 math, one rounding to y's dtype."""
    n, h, w, p_ok, c, c_ok = nhwc_tile(H, W, C, BLOCK_P, BLOCK_C)
    ok = p_ok[:, None] & c_ok[None, :]
    xt = tl.load(x_ptr + (n * sxn + h * sxh + w * sxw)[:, None] + c[None, :] * sxc, mask=ok, other=0.0)
    g = tl.load(gate_ptr + n * C + c, mask=c_ok, other=0.0)
    out = xt.to(tl.float32) * g[None, :]
    if has_res:
        out += tl.load(res_ptr + (n * srn + h * srh + w * srw)[:, None] + c[None, :] * src, mask=ok,
                       other=0.0).to(tl.float32)
    if relu:
        out = tl.maximum(out, 0.0)
    y = to_dtype(out, y_ptr.dtype.element_ty, EMULATE_BF16)
    tl.store(y_ptr + (n * syn + h * syh + w * syw)[:, None] + c[None, :] * syc, y, mask=ok)


def pixel_grid(x: Tensor):
    n, c, h, w = x.shape
    return (n * triton.cdiv(h * w, PIXEL_TILE.block_rows), triton.cdiv(c, PIXEL_TILE.block_cols))


def launch_fc(v: Tensor, v_scale: float, weight: Tensor, bias: Tensor, out: Tensor, sigmoid: bool) -> None:
    n, out_features = out.shape
    weight = fc_matrix(weight)  # FC [out, in] or 1x1 conv [out, in, 1, 1] weights
    wrap_triton(se_fc_kernel)[(n, triton.cdiv(out_features, FC_TILE.block_rows))](
        v, weight, bias, out, weight.shape[1], out_features, v_scale, *v.stride(), *weight.stride(), int(sigmoid),
        BLOCK_O=FC_TILE.block_rows, BLOCK_I=FC_TILE.block_cols, num_warps=FC_TILE.num_warps)


@triton_op("regnet_kernels::triton_se_gate", mutates_args={})
def triton_se_gate(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, residual: Optional[Tensor],
                   relu: bool, sums: Optional[Tensor]) -> Tensor:
    n, c, h, w = x.shape
    tile = dict(BLOCK_P=PIXEL_TILE.block_rows, BLOCK_C=PIXEL_TILE.block_cols, num_warps=PIXEL_TILE.num_warps)
    if sums is None:
        sums = torch.zeros((n, c), dtype=torch.float32, device=x.device)
        wrap_triton(channel_sums_kernel)[pixel_grid(x)](x, sums, c, h, w, *x.stride(), **tile)
    hidden = torch.empty((n, w1.shape[0]), dtype=torch.float32, device=x.device)
    launch_fc(sums, 1.0 / (h * w), w1, b1, hidden, sigmoid=False)
    gate = torch.empty((n, c), dtype=torch.float32, device=x.device)
    launch_fc(hidden, 1.0, w2, b2, gate, sigmoid=True)
    y = empty_like_layout(x, x.shape)
    res = residual if residual is not None else y  # placeholder pointer, unread when has_res=0
    wrap_triton(gate_apply_kernel)[pixel_grid(x)](
        x, gate, res, y, c, h, w, *x.stride(), *res.stride(), *y.stride(),
        int(residual is not None), int(relu), EMULATE_BF16=emulate_bf16(x.dtype), **tile)
    return y


def compile_variants():
    """Every (kernel, config, dtype, layout) variant triton_se_gate can compile, for the compile report."""
    from ..ops.checks import KERNEL_DTYPES
    from .variants import LAYOUTS, TRITON_TYPES, make_variant

    pixel_label = f"{PIXEL_TILE.name} w{PIXEL_TILE.num_warps}"
    pixel_consts = dict(BLOCK_P=PIXEL_TILE.block_rows, BLOCK_C=PIXEL_TILE.block_cols)
    fc_label = f"{FC_TILE.name} w{FC_TILE.num_warps}"
    fc_consts = dict(BLOCK_O=FC_TILE.block_rows, BLOCK_I=FC_TILE.block_cols)
    for dtype in KERNEL_DTYPES:
        t = TRITON_TYPES[dtype]
        for layout in LAYOUTS:
            yield make_variant(channel_sums_kernel, pixel_label, t, layout, PIXEL_TILE.num_warps,
                               dict(x_ptr=t, sums_ptr="fp32"), pixel_consts,
                               unit_strides=("sxc",), strides=("sxn", "sxh", "sxw"))
            # The SE weights are x's dtype (the backend requires it); v is the fp32 sums or hidden.
            yield make_variant(se_fc_kernel, fc_label, t, layout, FC_TILE.num_warps,
                               dict(v_ptr="fp32", w_ptr=t, b_ptr=t, out_ptr="fp32"), fc_consts,
                               unit_strides=("svi", "swi"), strides=("svn", "swo"), float_args=("v_scale",))
            yield make_variant(gate_apply_kernel, pixel_label, t, layout, PIXEL_TILE.num_warps,
                               dict(x_ptr=t, gate_ptr="fp32", res_ptr=t, y_ptr=t),
                               dict(pixel_consts, EMULATE_BF16=False),
                               unit_strides=("sxc", "src", "syc"),
                               strides=("sxn", "sxh", "sxw", "srn", "srh", "srw", "syn", "syh", "syw"))

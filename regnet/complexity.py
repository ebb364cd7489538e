"""Analytic complexity in pycls's conventions.

flops: multiply-adds of convs and FCs, including their bias adds; BN, ReLU, pooling and
the residual add count nothing. params: conv/FC weights and biases, and 2*C per BN
(scale and shift; running stats are buffers). acts: output elements of every conv and FC.

A complexity record is a small dict {h, w, flops, params, acts}; each layer function takes
one and returns the next, so a block's complexity is the fold of its layers' (pycls's
``*_cx`` functions, which this mirrors so the counts agree to the integer).
"""

from __future__ import annotations

from typing import Dict

Cx = Dict[str, int]

__all__ = ["Cx", "new_cx", "conv2d_cx", "norm2d_cx", "gap2d_cx", "linear_cx"]


def new_cx(resolution: int | tuple = 224) -> Cx:
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    if h < 1 or w < 1:
        raise ValueError(f"resolution={resolution!r}: expected a positive size")
    return {"h": int(h), "w": int(w), "flops": 0, "params": 0, "acts": 0}


def conv2d_cx(cx: Cx, w_in: int, w_out: int, k: int, *, stride: int = 1, groups: int = 1, bias: bool = False) -> Cx:
    """A k x k conv with padding (k-1)//2."""
    h, w = (cx["h"] - 1) // stride + 1, (cx["w"] - 1) // stride + 1
    return {
        "h": h,
        "w": w,
        "flops": cx["flops"] + k * k * w_in * w_out * h * w // groups + (w_out * h * w if bias else 0),
        "params": cx["params"] + k * k * w_in * w_out // groups + (w_out if bias else 0),
        "acts": cx["acts"] + w_out * h * w,
    }


def norm2d_cx(cx: Cx, w_in: int) -> Cx:
    return {**cx, "params": cx["params"] + 2 * w_in}


def gap2d_cx(cx: Cx, w_in: int) -> Cx:
    return {**cx, "h": 1, "w": 1}


def linear_cx(cx: Cx, w_in: int, w_out: int, *, bias: bool = False) -> Cx:
    return {
        **cx,
        "flops": cx["flops"] + w_in * w_out + (w_out if bias else 0),
        "params": cx["params"] + w_in * w_out + (w_out if bias else 0),
        "acts": cx["acts"] + w_out,
    }

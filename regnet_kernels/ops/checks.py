"""Argument checks shared by every op and backend: bad input gets a clear exception that
names the argument and what was expected, before any kernel runs."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# float64 is accepted by the eager backend only (it is the reference).
ALL_DTYPES = KERNEL_DTYPES + (torch.float64,)
SUPPORTED_STRIDES = (1, 2)
SUPPORTED_KERNEL_SIZES = (1, 3)


def fail(arg: str, expected: str, got) -> None:
    raise ValueError(f"{arg}: expected {expected}, got {got}")


def check_tensor(name: str, t, *, dim: Optional[int] = None, shape: Optional[Tuple[int, ...]] = None,
                 like: Optional[Tensor] = None, dtypes: Sequence[torch.dtype] = ALL_DTYPES) -> None:
    """shape: a tuple or torch.Size, compared as is (a list is converted first)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        fail(name, f"a {dim}-D tensor", f"{t.dim()}-D with shape {list(t.shape)}")
    if shape is not None and t.shape != (tuple(shape) if type(shape) is list else shape):
        fail(name, f"shape {list(shape)}", list(t.shape))
    if t.dtype not in dtypes:
        fail(name, f"dtype in {[str(d) for d in dtypes]}", t.dtype)
    # Two CPU tensors skip building device objects (0.3 us a check, on every public op call).
    if like is not None and not (t.is_cpu and like.is_cpu) and t.device != like.device:
        fail(name, f"a tensor on {like.device} (the device of x)", t.device)


def check_same_dtype(name: str, t: Tensor, x: Tensor) -> None:
    if t.dtype != x.dtype:
        fail(name, f"dtype {x.dtype} (the dtype of x)", t.dtype)


def conv_out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


def check_conv(x, weight, bias, stride, padding, groups, residual) -> Tuple[int, Tuple[int, int, int, int]]:
    """Validate conv_bn_act's arguments; return (padding, output shape)."""
    check_tensor("x", x, dim=4)
    padding, out_shape = check_conv_weights(x, tuple(x.shape), "x", weight, bias, stride, padding, groups)
    if residual is not None:
        check_tensor("residual", residual, shape=out_shape, like=x)
        check_same_dtype("residual", residual, x)
    return padding, out_shape


def check_conv_weights(x, in_shape, in_name, weight, bias, stride, padding, groups, names=("weight", "bias")
                       ) -> Tuple[int, Tuple[int, int, int, int]]:
    """Validate one conv's weight, bias, stride, padding and groups for an input of in_shape (x
    itself, or an intermediate of x's dtype and device, named in_name in messages); return
    (padding, output shape). `names`: the weight's and bias's argument names."""
    w_name, b_name = names
    check_tensor(w_name, weight, dim=4, like=x)
    check_same_dtype(w_name, weight, x)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        fail("groups", "an integer >= 1", groups)
    n, c_in, h, w = in_shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_in < 1:
        fail(in_name, "at least one channel", list(in_shape))
    if kh != kw or kh not in SUPPORTED_KERNEL_SIZES:
        fail(w_name, f"a square kernel of size in {SUPPORTED_KERNEL_SIZES}", f"{kh}x{kw}")
    if c_in % groups != 0:
        fail("groups", f"a divisor of the {c_in} input channels of {in_name}", groups)
    if c_out % groups != 0:
        fail("groups", f"a divisor of the {c_out} output channels of {w_name}", groups)
    if c_per_group != c_in // groups:
        fail(w_name, f"shape [C_out, C_in/groups={c_in // groups}, {kh}, {kw}] for {in_name} with {c_in} channels",
             list(weight.shape))
    if isinstance(stride, bool) or stride not in SUPPORTED_STRIDES:
        fail("stride", f"one of {SUPPORTED_STRIDES}", stride)
    same = (kh - 1) // 2
    if padding is None:
        padding = same
    if isinstance(padding, bool) or padding != same:
        fail("padding", f"{same} ('same' padding for a {kh}x{kh} kernel, the only one supported)", padding)
    if bias is not None:
        check_tensor(b_name, bias, shape=(c_out,), like=x)
        check_same_dtype(b_name, bias, x)
    out_shape = (n, c_out, conv_out_size(h, kh, stride, padding), conv_out_size(w, kw, stride, padding))
    if out_shape[2] < 1 or out_shape[3] < 1:
        fail(in_name, "a spatial size that gives a non-empty output", list(in_shape))
    return padding, out_shape


def check_conv1x1_conv(x, w1, b1, w2, b2, stride, padding, groups) -> Tuple[int, Tuple[int, int, int, int]]:
    """Validate conv1x1_conv_bn_act's arguments (w1 a 1x1 conv over all of x's channels, w2 a
    conv of its output); return (padding of the second conv, output shape)."""
    check_tensor("x", x, dim=4)
    _, mid_shape = check_conv_weights(x, tuple(x.shape), "x", w1, b1, 1, None, 1, names=("w1", "b1"))
    if w1.shape[2] != 1:
        fail("w1", "a 1x1 kernel [C_mid, C_in, 1, 1]", list(w1.shape))
    return check_conv_weights(x, mid_shape, "w1's output", w2, b2, stride, padding, groups, names=("w2", "b2"))


def check_x_block(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, wp=None, bp=None
                  ) -> Tuple[int, Tuple[int, int, int, int]]:
    """Validate x_block's arguments (conv1x1_conv_bn_act's, then w3 a 1x1 conv of its output, and
    one shortcut: the residual of the output's shape, or wp (+ bp) a 1x1 conv of x with the middle
    conv's stride giving that shape); return (padding of the middle conv, output shape)."""
    padding, mid_shape = check_conv1x1_conv(x, w1, b1, w2, b2, stride, padding, groups)
    _, out_shape = check_conv_weights(x, mid_shape, "w2's output", w3, b3, 1, None, 1, names=("w3", "b3"))
    if w3.shape[2] != 1:
        fail("w3", "a 1x1 kernel [C_out, C_mid, 1, 1]", list(w3.shape))
    if (residual is None) == (wp is None):
        fail("residual", "exactly one shortcut: residual, or wp (the projection's weight)",
             "both" if residual is not None else "neither")
    if wp is None:
        if bp is not None:
            fail("bp", "None without wp (it is the projection's bias)", "a tensor")
        check_tensor("residual", residual, shape=out_shape, like=x)
        check_same_dtype("residual", residual, x)
        return padding, out_shape
    _, proj_shape = check_conv_weights(x, tuple(x.shape), "x", wp, bp, stride, None, 1, names=("wp", "bp"))
    if wp.shape[2] != 1:
        fail("wp", "a 1x1 kernel [C_out, C_in, 1, 1]", list(wp.shape))
    if proj_shape != out_shape:
        fail("wp", f"a projection to the block's output shape {list(out_shape)}", list(proj_shape))
    return padding, out_shape


def check_fc_weight(name: str, w, rows: Optional[int], cols: Optional[int], like: Optional[Tensor] = None
                    ) -> Tuple[int, int]:
    """Validate an FC weight [rows, cols] or a 1x1 conv weight [rows, cols, 1, 1]; return (rows, cols).
    Makes no view (a view costs ~1 us, a lot for a batch-1 SE op): fc_matrix() does, where needed."""
    check_tensor(name, w, like=like)
    shape = w.shape
    if not (len(shape) == 2 or (len(shape) == 4 and shape[2] == 1 and shape[3] == 1)):
        fail(name, "a 2-D [out, in] or 1x1 conv [out, in, 1, 1] weight", list(shape))
    out, in_ = shape[0], shape[1]
    if (rows is not None and out != rows) or (cols is not None and in_ != cols):
        fail(name, f"shape [{rows if rows is not None else 'any'}, {cols if cols is not None else 'any'}]", [out, in_])
    return out, in_


def fc_matrix(w: Tensor) -> Tensor:
    """A checked FC weight as [out, in]: dropping 1x1 dims is always a view, whatever the strides."""
    return w if w.dim() == 2 else w.reshape(w.shape[0], w.shape[1])


def as_matrix(name: str, w, rows: Optional[int], cols: Optional[int], like: Optional[Tensor] = None) -> Tensor:
    """check_fc_weight, then the weight as [out, in] (a view, no copy)."""
    check_fc_weight(name, w, rows, cols, like)
    return fc_matrix(w)


def _check_se_weights(c: int, w1, b1, w2, b2, like: Tensor) -> None:
    """The SE MLP's weights for C channels (w1, w2 as FC or 1x1 conv weights)."""
    c_se, _ = check_fc_weight("w1", w1, None, c, like=like)
    check_fc_weight("w2", w2, c, c_se, like=like)
    check_tensor("b1", b1, shape=(c_se,), like=like)
    check_tensor("b2", b2, shape=(c,), like=like)


def check_se_excite(sums, hw, w1, b1, w2, b2) -> None:
    """Validate se_excite's arguments: fp32 (or float64) sums [N, C] over hw >= 1 pixels."""
    check_tensor("sums", sums, dim=2, dtypes=(torch.float32, torch.float64))
    if isinstance(hw, bool) or not isinstance(hw, int) or hw < 1:
        fail("hw", "an integer >= 1 (the pixels the sums are over)", hw)
    _check_se_weights(sums.shape[1], w1, b1, w2, b2, sums)


def check_se(x, w1, b1, w2, b2, residual, sums) -> None:
    """Validate se_gate's arguments (w1, w2 as FC or 1x1 conv weights). Runs on every public
    se_gate call, which takes ~20 us in all at batch 1: kept lean."""
    check_tensor("x", x, dim=4)
    n, c = x.shape[0], x.shape[1]
    _check_se_weights(c, w1, b1, w2, b2, x)
    if residual is not None:
        check_tensor("residual", residual, shape=x.shape, like=x)
        check_same_dtype("residual", residual, x)
    if sums is not None:
        check_tensor("sums", sums, shape=(n, c), like=x, dtypes=(torch.float32, torch.float64))


def check_gated_conv1x1(x, gate, weight, bias, residual):
    """Validate gated_conv1x1's arguments; return (weight as [C_out, C_in], output shape)."""
    check_tensor("x", x, dim=4)
    n, c, h, w = x.shape
    weight = as_matrix("weight", weight, None, c, like=x)
    check_same_dtype("weight", weight, x)
    check_tensor("gate", gate, shape=(n, c), like=x)
    out_shape = (n, weight.shape[0], h, w)
    if bias is not None:
        check_tensor("bias", bias, shape=(weight.shape[0],), like=x)
        check_same_dtype("bias", bias, x)
    if residual is not None:
        check_tensor("residual", residual, shape=out_shape, like=x)
        check_same_dtype("residual", residual, x)
    return weight, out_shape


def is_channels_last(x: Tensor) -> bool:
    """True when the channel dim is the innermost (stride 1), the layout of the fused kernels."""
    return x.dim() == 4 and (x.stride(1) == 1 or x.shape[1] == 1) and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The layout an op's output takes: channels_last in, channels_last out."""
    return torch.channels_last if x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format


# Set by regnet_kernels.testing.poison_outputs(): outputs start as NaN so unwritten elements show.
POISON_OUTPUTS = False


def empty_like_layout(x: Tensor, shape, dtype=None) -> Tensor:
    """An output of `shape` in x's layout (channels_last in, channels_last out), uninitialised
    (NaN under regnet_kernels.testing.poison_outputs)."""
    out = torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format_of(x))
    return out.fill_(float("nan")) if POISON_OUTPUTS else out

"""The cpu backend: C++ kernels of regnet_kernels._C (csrc/cpu/), channels-last, fp32/bf16/fp16.

Each op registers supports(**args) -> reasons and run(*eager_signature). The native ops check
their arguments again (a direct torch.ops call with bad input raises, never reads out of
bounds); supports() only decides whether this backend should take the call, and says why not.
"""

from __future__ import annotations

import os
import weakref
from typing import List

import torch

from .. import dispatch
from ..memory import unpooled
from ..ops.checks import SUPPORTED_KERNEL_SIZES, SUPPORTED_STRIDES, fc_matrix
from ..trials import Trials
from .native import EXT, native_call

NAME = "cpu"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _common_reasons(x, others=()) -> List[str]:
    """Reasons shared by every op: extension, device, dtype, layout of x and of the activations in `others`."""
    if EXT is None:
        return ["cpu: regnet_kernels._C is not built"]
    reasons = []
    if not x.is_cpu:  # (x.device.type costs 0.4 us: this runs on every public op call)
        reasons.append(f"cpu: x is on {x.device}, not the CPU")
    if x.dtype not in DTYPES:
        reasons.append(f"cpu: dtype {x.dtype} not supported (float32, bfloat16, float16)")
    for name, t in (("x", x), *others):
        # Channels-last means the channel stride is 1; a copy to get there would cost a full pass.
        if t is not None and t.dim() == 4 and t.stride(1) != 1 and t.shape[1] > 1:
            reasons.append(f"cpu: {name} is not channels-last (channel stride {t.stride(1)} != 1); "
                           "the kernels do not copy activations to change layout")
    return reasons


def spatial_sums(x):
    """The fp32 [N, C] sums of x over H and W by the extension's channel_sums kernel, or None where
    it does not serve x (not built; not a channels-last CPU activation of a kernel dtype)."""
    if x.dim() != 4 or _common_reasons(x):
        return None
    return spatial_sums_call()(x)


def spatial_sums_call():
    """spatial_sums without its checks, for calls bound to a signature it served."""
    return native_call("channel_sums")


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


# Measured per-shape choices (bench/NOTES.md, "oneDNN with prepacked weights"): for fp32 (and bf16,
# below) on an AVX-512 CPU, oneDNN's conv with bias, ReLU and the residual add in its post-ops, fed weights
# reordered once into its blocked layout, beat our at::vec kernels on the RegNetY/X-400MF convs:
# grouped 3x3 1.2-1.9x and 1x1 1.1-1.4x at batch 16, most shapes at batch 1, the stem 1.7-2.5x.
# On AVX2 (oneDNN's AVX2 code, NOTES.md Step 18) only the groups-1 convs: 1x1 and the stem 1.02-1.83x
# at batch 16, about even at batch 1; its grouped 3x3 was slower than ours at 27 of the 28 stage
# shapes (up to 4x; 4% faster at the other). On a real AVX2 CPU (Zen 3, NOTES.md Step 19): grouped
# 1.13-4.1x slower at all 28; the groups-1 routes 1.12x and 1.25x per regnetx/y_004 forward at batch 16.
# Our kernels keep fp16, the grouped convs on AVX2, CPUs with neither, strided (non-dense)
# activations, which they read in place where oneDNN would copy, and torch.compile (which traces
# our custom ops; Inductor does its own oneDNN packing when freezing). K2's SE sums are then a
# separate pass of our channel_sums kernel (oneDNN cannot emit them): still faster than our fused
# conv + sums kernel.
# The gated 1x1 (K4) stays ours below ONEDNN_GATED_MIN_WEIGHTS weights (C_out x C_in < 128 x 128):
# there the extra pass x * gate that oneDNN needs costs more than it saves (batch 1, C=48..104:
# ours 0.145-0.159 ms vs 0.179-0.189 ms; C=440: ours 0.38 ms vs 0.17 ms). Measured on AVX-512
# only: on AVX2 a fused Y block times the two schedules at every size (measure_gate_in_se).
ONEDNN_GATED_MIN_WEIGHTS = 128 * 128
# REGNET_KERNELS_CPU_ONEDNN=0 turns these routes off: every call then runs our kernels.
ONEDNN_ENABLED = os.environ.get("REGNET_KERNELS_CPU_ONEDNN", "1") != "0"
# ATen's choice (cpuinfo, or ATEN_CPU_CAPABILITY), the one our kernels' ISA copy follows too.
_CAPABILITY = torch.backends.cpu.get_cpu_capability()
_AVX512 = _CAPABILITY == "AVX512"
_AVX2 = _CAPABILITY == "AVX2"
_HAS_ONEDNN = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and hasattr(
    torch.ops.mkldnn, "_reorder_convolution_weight")
# bf16 where oneDNN has native bf16 (AVX512-BF16 / AMX): 2-5x its fp32 speed here, 3-8x our bf16
# kernel at batch 16 (NOTES.md). fp16 stays ours (not measured faster).
ONEDNN_DTYPES = (torch.float32,) + ((torch.bfloat16,) if _AVX512 and torch.backends.mkldnn.is_available()
                                    and torch.ops.mkldnn._is_mkldnn_bf16_supported() else ())


def onednn_routes() -> str:
    """One line for `python -m regnet_kernels.info`: whether the oneDNN routes are on, and why not."""
    why_not = [why for ok, why in ((ONEDNN_ENABLED, "REGNET_KERNELS_CPU_ONEDNN=0"),
                                   (_AVX512 or _AVX2, f"ATen CPU capability {_CAPABILITY}, neither AVX-512 nor AVX2"),
                                   (_HAS_ONEDNN, "torch lacks mkldnn._convolution_pointwise")) if not ok]
    if why_not:
        return "cpu backend oneDNN routes: off (" + ", ".join(why_not) + "): our kernels serve every conv"
    if _AVX2:
        return ("cpu backend oneDNN routes (AVX2): on for fp32 dense channels-last groups-1 convs (1x1, the stem; "
                "prepacked weights), timed against ours; grouped convs stay ours (oneDNN's AVX2 grouped conv measured slower); "
                "REGNET_KERNELS_CPU_ONEDNN=0 turns them off")
    dtypes = "/".join(str(d).replace("torch.", "") for d in ONEDNN_DTYPES)
    return (f"cpu backend oneDNN routes: on for {dtypes} dense channels-last convs (prepacked weights), "
            f"gated 1x1 from {ONEDNN_GATED_MIN_WEIGHTS} weights; REGNET_KERNELS_CPU_ONEDNN=0 turns them off")


def _dense_cl(t) -> bool:
    return t is None or t.is_contiguous(memory_format=torch.channels_last)


def _use_onednn(x, weight, groups, residual) -> bool:
    k = weight.shape[-1]
    return (ONEDNN_ENABLED and x.dtype in ONEDNN_DTYPES and (_AVX512 or (_AVX2 and groups == 1))
            and _HAS_ONEDNN and _dense_cl(x) and _dense_cl(residual)
            and k in (1, 3)
            and not torch.compiler.is_compiling())


class DerivedWeights:
    """Weights in the layout a kernel wants, made once per weight tensor instead of on every call.

    Keyed on the tensor object (by id, with a weak reference that drops the entry when the
    weight goes) and checked against the weight's version counter (an in-place update remakes
    it). Up to `per_weight` entries per weight under different keys (oneDNN's layout depends on
    the input shape). A lookup is ~0.2 us: torch's WeakIdKeyDictionary took ~1.1 us, which
    counts at batch 1 where a whole SE op is ~20 us."""

    def __init__(self, per_weight: int = 8):
        self.per_weight = per_weight
        self._entries = {}  # id(weight) -> (weakref to weight, version, {key: derived})

    def get(self, weight, key, make):
        """make(weight.detach()) under no_grad, cached per (weight, key).

        A view (K4's [C_out, C] of a [C_out, C, 1, 1] weight, made anew on each call) is cached on
        the tensor it views, keyed also by its geometry: keyed on itself it missed on every call
        (a oneDNN weight reorder per call, ~57 us on a 208x208 1x1; bench/NOTES.md, Step 12).
        Inference tensors (made under torch.inference_mode) have no version counter: their entries
        are not remade after an in-place update, which only inference mode itself allows
        (optimize() builds its weights as normal tensors for that reason)."""
        owner = weight._base
        if owner is None:
            owner = weight
        else:  # (a view shares its base's version counter)
            key = (key, tuple(weight.shape), weight.stride(), weight.storage_offset())
        hit = self._entries.get(id(owner))
        version = None if owner.is_inference() else owner._version
        if hit is None or hit[0]() is not owner or hit[1] != version:
            wid = id(owner)
            # The callback runs when the weight is freed, before its id can be reused.
            hit = self._entries[wid] = (weakref.ref(owner, lambda _, wid=wid: self._entries.pop(wid, None)),
                                        version, {})
        derived = hit[2].get(key)
        if derived is None:
            if len(hit[2]) >= self.per_weight:
                hit[2].clear()
            with torch.no_grad(), unpooled():  # lives as long as the weight, not the forward
                derived = hit[2][key] = make(weight.detach())
        return derived


_DERIVED = DerivedWeights()


def _packing(padding, stride, groups, x_shape):
    """(cache key, reorder function) of the oneDNN weight layout for this problem. Keyed without
    the batch size: a server sees many, and a weight packed for another batch is as fast
    (measured at batch 16 with weights packed for batch 1: 0.85-1.04x the time; oneDNN reorders
    at run time if a layout ever does not fit, so a mismatch costs time, not accuracy)."""
    def reorder(w):
        w = w[:, :, None, None] if w.dim() == 2 else w  # K4 passes its 1x1 weight as [C_out, C]
        return torch.ops.mkldnn._reorder_convolution_weight(w, [padding] * 2, [stride] * 2, [1, 1], groups,
                                                            list(x_shape))
    return (padding, stride, groups, tuple(x_shape[1:])), reorder


def packed_weight(weight, padding, stride, groups, x_shape):
    """The weight reordered into oneDNN's blocked layout for this problem (cached per weight).
    oneDNN would otherwise reorder a plain weight on every call (a pass over the weights, 17 MB
    per RegNetY-400MF forward)."""
    return _DERIVED.get(weight, *_packing(padding, stride, groups, x_shape))


def fc_by_input(w2):
    """SE's second FC weight [C, C_se] as fp32 with strides (1, C): the layout in which the native
    se_gate computes the gate on whole vectors of channels instead of one dot per channel."""
    return _DERIVED.get(w2, "fc_by_input", lambda w: fc_matrix(w).float().t().contiguous().t())


# Binders: bind_*(x, weight, bias, stride, padding, groups, residual, relu, ...) -> run(x, weight,
# bias, residual), the call for every argument list of the same signature (shapes, strides,
# dtypes, flags) with its route, geometry lists and packed-weight key decided once. A fused conv
# binds once per input signature: at batch 1 the per-call Python it saves (~10 us a conv) is ~9%
# of a RegNetX-400MF forward (NOTES.md, Step 8). The one-shot functions below bind per call.

def _bind_onednn_conv(x, stride, padding, groups, residual, relu, into_residual=False):
    key, reorder = _packing(padding, stride, groups, x.shape)
    geometry = ([padding] * 2, [stride] * 2, [1, 1], groups)
    post = "relu" if relu else None
    if residual is None:
        op = torch.ops.mkldnn._convolution_pointwise.default
        unary = post or "none"
        return lambda x, w, b, r: op(x, _DERIVED.get(w, key, reorder), b, *geometry, unary, [None], "")
    if into_residual:  # (conv_into_residual): the in-place sum post-op writes into residual
        op_ = torch.ops.mkldnn._convolution_pointwise_.binary
        return lambda x, w, b, r: op_(r, x, _DERIVED.get(w, key, reorder), b, *geometry, "add", 1.0, post, [], "")
    if x.dtype == torch.bfloat16 and groups != 1:
        # For grouped convs torch's binary post-op falls back to ATen's add_relu, which asserts on
        # bf16: add and ReLU in place on the fresh output instead, two passes at 2 bytes per element.
        # (groups 1 takes the post-op below, and the in-place sum takes bf16 at any groups.)
        op = torch.ops.mkldnn._convolution_pointwise.default

        def run_bf16(x, w, b, r):
            y = op(x, _DERIVED.get(w, key, reorder), b, *geometry, "none", [None], "").add_(r)
            return y.relu_() if relu else y
        return run_bf16
    # The binary form takes no unary post-op as None ("none" is rejected there).
    op = torch.ops.mkldnn._convolution_pointwise.binary
    return lambda x, w, b, r: op(x, r, _DERIVED.get(w, key, reorder), b, *geometry, "add", None, post, [], "")


def bind_onednn(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    run = _bind_onednn_conv(x, stride, padding, groups, residual, relu)
    if not channel_sums:
        return run
    sums = native_call("channel_sums")

    def run_with_sums(x, w, b, r):
        y = run(x, w, b, r)
        return y, sums(y)
    return run_with_sums


def bind_native(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    if channel_sums:
        op = native_call("conv_bn_act_sums")
        return lambda x, w, b, r: op(x, w, b, stride, padding, groups, relu)
    op = native_call("conv_bn_act")
    return lambda x, w, b, r: op(x, w, b, stride, padding, groups, r, relu)


def conv_bind(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    """The backend's route for this signature, bound (the `bind` extra)."""
    bind = bind_onednn if _use_onednn(x, weight, groups, residual) else bind_native
    return bind(x, weight, bias, stride, padding, groups, residual, relu, channel_sums)


# The public op's routes per argument signature, and their timing (conv_run). Bounded: a caller
# sweeping shapes must not grow them without limit.
_PUBLIC_ROUTES = {}
_PUBLIC_TRIALS = Trials()
_PUBLIC_ROUTES_MAX = 4096
# REGNET_KERNELS_CPU_TIMED_ROUTES=0: the public op takes the default route (conv_bind) without timing.
TIMED_ROUTES = os.environ.get("REGNET_KERNELS_CPU_TIMED_ROUTES", "1") != "0"


def conv_run(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    """The public op on this backend. Where both routes serve (conv_routes), the first calls of
    each argument signature time them, 1 + Trials.TRIALS runs each, and the faster is kept, as
    fused convs do and as cudnn.benchmark does for cuDNN: an AMD EPYC at RegNetX-400MF stage 1
    batch 16 ran our kernel in 3.9 ms and oneDNN in 5.8 ms, while oneDNN wins most other shapes
    (bench/NOTES.md). The routes agree to fp32 rounding, not bit for bit."""
    args = (x, weight, bias, stride, padding, groups, residual, relu, channel_sums)
    if not TIMED_ROUTES or torch.compiler.is_compiling():
        return conv_bind(*args)(x, weight, bias, residual)
    key, runs = _public_routes(args)
    return _PUBLIC_TRIALS.run(key, runs, x, weight, bias, residual)[0]


def _public_routes(args):
    """(signature key, bound routes) of the public op for run's arguments `args`."""
    x, weight, bias, stride, padding, groups, residual, relu, channel_sums = args
    key = dispatch.signature(x, weight, bias, residual, flags=(stride, padding, groups, relu, channel_sums))
    runs = _PUBLIC_ROUTES.get(key)
    if runs is None:
        if len(_PUBLIC_ROUTES) >= _PUBLIC_ROUTES_MAX:
            _PUBLIC_ROUTES.clear()
            _PUBLIC_TRIALS.clear()
        binders = conv_routes(*args)
        runs = _PUBLIC_ROUTES[key] = [bind(*args) for bind in binders] if binders else [conv_bind(*args)]
    return key, runs


def conv_for_signature(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    """conv_run for every call with this argument signature (the `for_signature` extra, which the
    public op's resolve cache holds): the signature's routes found once, and once their timing has
    chosen, the chosen route called with no lookup (~4 us a call less at batch 1)."""
    args = (x, weight, bias, stride, padding, groups, residual, relu, channel_sums)
    if not TIMED_ROUTES:
        bound = conv_bind(*args)
        return lambda x, weight, bias, stride, padding, groups, residual, relu, channel_sums: bound(
            x, weight, bias, residual)
    key, runs = _public_routes(args)
    settled = None

    def run(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
        nonlocal settled
        if settled is not None:
            return settled(x, weight, bias, residual)
        out, settled = _PUBLIC_TRIALS.run(key, runs, x, weight, bias, residual)
        return out
    return run


def conv_into_residual(x, weight, bias, stride, padding, groups, residual, relu):
    """Routes for conv(x) + bias + residual [+ ReLU] where the caller owns `residual` and no longer
    needs it (a fused block's shortcut), bound as run(x, weight, bias, residual): oneDNN's in-place
    sum post-op, writing into `residual` (it saves the output allocation: 7-17% per call at batch
    16, 7-9% at batch 1, NOTES.md), and our kernel into a new tensor, to be timed: oneDNN spends
    ~30 us per call before it computes, which is a third of a stage-4 1x1 conv at batch 1
    (NOTES.md, Step 11). Empty where oneDNN does not serve (_use_onednn: fp32, and bf16 where
    oneDNN has it; dense channels-last); the caller then runs the op as usual."""
    if not _use_onednn(x, weight, groups, residual):
        return []
    args = (x, weight, bias, stride, padding, groups, residual, relu, False)
    return [bind_onednn_into_residual(*args), bind_native(*args)]


def bind_onednn_into_residual(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    return _bind_onednn_conv(x, stride, padding, groups, residual, relu, into_residual=True)


def conv_routes(x, weight, bias, stride, padding, groups, residual, relu, channel_sums):
    """Both routes, as binders, where oneDNN takes these arguments by default: which is faster
    depends on the machine and the shape (an AMD EPYC, RegNetX-400MF at batch 16: our kernel
    1.4-2x faster on the first convs of stages 1 and 3, oneDNN on most others; bench/NOTES.md),
    so a fused conv times them. Empty where only our kernel applies."""
    return (bind_onednn, bind_native) if _use_onednn(x, weight, groups, residual) else ()


def _middle_conv_reasons(w2, stride) -> List[str]:
    """The grouped conv's limits, for the ops that run it between 1x1s."""
    reasons = []
    k = w2.shape[-1]
    if k not in SUPPORTED_KERNEL_SIZES or w2.shape[-2] != k:
        reasons.append(f"cpu: kernel {w2.shape[-2]}x{w2.shape[-1]} not supported (1x1, 3x3)")
    if stride not in SUPPORTED_STRIDES:
        reasons.append(f"cpu: stride {stride} not supported (1, 2)")
    return reasons


def pair_supports(*, x, w1, b1, w2, b2, stride=1, padding=None, groups=1, relu=True, channel_sums=False,
                  forced=False) -> List[str]:
    return _common_reasons(x) + _middle_conv_reasons(w2, stride)


def pair_bind(x, w1, b1, w2, b2, stride, padding, groups, relu, channel_sums):
    """conv1x1_conv_bn_act bound for this signature, as run(x, w1, b1, w2, b2) (the `bind` extra)."""
    op = native_call("conv1x1_conv_bn_act_sums" if channel_sums else "conv1x1_conv_bn_act")
    return lambda x, w1, b1, w2, b2: op(x, w1, b1, w2, b2, stride, padding, groups, relu)


def pair_run(x, w1, b1, w2, b2, stride, padding, groups, relu, channel_sums):
    return pair_bind(x, w1, b1, w2, b2, stride, padding, groups, relu, channel_sums)(x, w1, b1, w2, b2)


def x_block_supports(*, x, w1, b1, w2, b2, w3, b3, residual, stride=1, padding=None, groups=1, wp=None, bp=None,
                     forced=False) -> List[str]:
    return _common_reasons(x, (("residual", residual),)) + _middle_conv_reasons(w2, stride)


def x_block_bind(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, wp=None, bp=None):
    """x_block bound for this signature, as run(x, w1, b1, w2, b2, w3, b3, residual, wp, bp)."""
    op = native_call("x_block")
    return lambda x, w1, b1, w2, b2, w3, b3, r, wp=None, bp=None: op(x, w1, b1, w2, b2, stride, padding, groups,
                                                                     w3, b3, r, wp, bp)


def x_block_run(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, wp=None, bp=None):
    return x_block_bind(x, w1, b1, w2, b2, w3, b3, residual, stride, padding, groups, wp, bp)(
        x, w1, b1, w2, b2, w3, b3, residual, wp, bp)


def se_supports(*, x, w1, b1, w2, b2, residual=None, relu=False, sums=None, forced=False) -> List[str]:
    reasons = _common_reasons(x, (("residual", residual),))
    if sums is not None and sums.dtype != torch.float32:
        reasons.append(f"cpu: sums dtype {sums.dtype} not supported (float32)")
    return reasons


def se_run(x, w1, b1, w2, b2, residual, relu, sums):
    if not torch.compiler.is_compiling():  # dynamo does not trace the cache; the op takes any layout
        w2 = fc_by_input(w2)
    return native_call("se_gate")(x, w1, b1, w2, b2, residual, relu, sums)


def excite_supports(*, x, hw, w1, b1, w2, b2, forced=False) -> List[str]:
    """x: the sums [N, C] (fp32; float64 is the eager reference's)."""
    reasons = _common_reasons(x)
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if t.dtype != torch.float32:
            reasons.append(f"cpu: {name} dtype {t.dtype} not supported (float32: the SE runs in fp32)")
    return reasons


def excite_run(sums, hw, w1, b1, w2, b2):
    if not torch.compiler.is_compiling():  # as se_run
        w2 = fc_by_input(w2)
    return native_call("se_excite")(sums, hw, w1, b1, w2, b2)


def gated_supports(*, x, gate, weight, bias=None, residual=None, relu=True, forced=False) -> List[str]:
    return _common_reasons(x, (("residual", residual),))


def separate_gate_pass(x, weight, residual) -> bool:
    """Whether gated_conv1x1 on these arguments gates x in a pass of its own (then the oneDNN
    1x1 conv) instead of on load in our kernel. A fused Y block then lets se_gate write x * gate
    in the SE op, which costs the same pass and saves the SE's small ops (FusedYBlock)."""
    return (weight.numel() >= ONEDNN_GATED_MIN_WEIGHTS and _AVX512
            and _use_onednn(x, weight[:, :, None, None], 1, residual))


def measure_gate_in_se(x, weight, residual) -> bool:
    """Whether a fused Y block should time gating in the SE op (then oneDNN's plain 1x1 conv)
    against our gated 1x1 on these arguments: below ONEDNN_GATED_MIN_WEIGHTS, where the winner
    depends on the machine (an Intel Xeon: ours by ~20% per K4 at batch 1; an AMD EPYC: the
    oneDNN schedule by 4-5% over a RegNetY-400MF forward at batch 1 and 16; bench/NOTES.md)."""
    return not separate_gate_pass(x, weight, residual) and _use_onednn(x, weight[:, :, None, None], 1, residual)


def gated_run(x, gate, weight, bias, residual, relu):
    if separate_gate_pass(x, weight, residual):
        # oneDNN has no per-(n, c) input scale: the gated input costs one extra pass over x.
        gated = x * gate.to(x.dtype)[:, :, None, None]
        return _bind_onednn_conv(gated, 1, 0, 1, residual, relu)(gated, weight, bias, residual)
    return native_call("gated_conv1x1")(x, gate, weight, bias, residual, relu)


dispatch.register("conv_bn_act", NAME, conv_supports, conv_run, into_residual=conv_into_residual, routes=conv_routes,
                  bind=conv_bind, for_signature=conv_for_signature)
dispatch.register("conv1x1_conv_bn_act", NAME, pair_supports, pair_run, bind=pair_bind)
dispatch.register("x_block", NAME, x_block_supports, x_block_run, bind=x_block_bind)
dispatch.register("se_gate", NAME, se_supports, se_run)
dispatch.register("se_excite", NAME, excite_supports, excite_run)
dispatch.register("gated_conv1x1", NAME, gated_supports, gated_run, separate_gate_pass=separate_gate_pass,
                  measure_gate_in_se=measure_gate_in_se)

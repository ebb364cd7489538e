"""The cpu backend (C++ kernels in csrc/cpu/) against the float64 eager reference.

Every call is forced (backend="cpu") and runs with NaN-poisoned outputs, on fresh random
inputs, over the shared shapes of tests/kernel_cases.py, channels_last and strided views.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import regnet_kernels as rk
from regnet_kernels import dispatch
from regnet_kernels.backends import cpu as cpu_backend
from regnet_kernels.backends import native
from regnet_kernels.testing import poison_outputs
from tests.kernel_cases import (ConvCase, assert_accurate, fake_timed_routes, grouped_cases, out_hw,
                                pointwise_cases, random_tensor, stem_cases)

pytestmark = pytest.mark.skipif(native.EXT is None, reason="regnet_kernels._C is not built")
OPS = torch.ops.regnet_kernels
GEN = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))  # fresh inputs every run
LOW_PRECISION = (torch.bfloat16, torch.float16)
# (channels_last, strided view): the layouts the cpu backend serves.
SERVED_LAYOUTS = ((True, False), (True, True))


def to64(t):
    return None if t is None else t.detach().to(torch.float64)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=GEN).to(dtype)


@pytest.fixture
def native_route(monkeypatch):
    """Our kernels for every call: the cpu backend otherwise hands fp32 dense channels-last convs
    to oneDNN on AVX-512 machines (a measured choice, backends/cpu.py)."""
    monkeypatch.setattr(cpu_backend, "ONEDNN_ENABLED", False)


def onednn_serves(case) -> bool:
    """Whether the cpu backend offers oneDNN for this conv on this machine: every conv on AVX-512,
    the groups-1 convs (1x1, the stem) on AVX2."""
    x = torch.zeros(1, case.c_in, 1, 1).to(memory_format=torch.channels_last)
    return cpu_backend._use_onednn(x, torch.zeros(case.c_out, case.c_in // case.groups, case.k, case.k),
                                   case.groups, None)


def _skip_without_onednn():
    if not onednn_serves(ConvCase(1, 8, 8, 1, 1, 1, 1, 1)):  # a 1x1 conv: served wherever any route is
        pytest.skip("the oneDNN route is not taken on this machine (needs AVX-512 or AVX2, oneDNN ops, fp32)")


def _skip_unless_onednn_serves(case):
    if not onednn_serves(case):
        pytest.skip(f"oneDNN is not offered for {case} here (CPU capability "
                    f"{torch.backends.cpu.get_cpu_capability()}: grouped convs stay ours on AVX2)")


@pytest.fixture
def onednn_route(monkeypatch):
    """oneDNN for every call it serves: the public op would otherwise time it against our kernel
    on each signature's first calls (test_public_conv_times_its_routes)."""
    _skip_without_onednn()
    monkeypatch.setattr(cpu_backend, "TIMED_ROUTES", False)


def check_against_reference(op, args, kwargs, dtype, what):
    """op(backend='cpu') vs op(backend='eager') on float64 copies (and at `dtype` for the bound)."""
    with poison_outputs():
        out = op(*args, backend="cpu", **kwargs)
    ref = op(*[to64(a) for a in args], backend="eager", **{k: to64(v) if isinstance(v, torch.Tensor) else v
                                                           for k, v in kwargs.items()})
    eager_same = op(*args, backend="eager", **kwargs) if dtype in LOW_PRECISION else None
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    eagers = (eager_same if isinstance(eager_same, tuple) else (eager_same,)) if eager_same is not None else (None,) * 2
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.dim() == 4:
            # The output keeps x's layout: channels-last in, channels-last out.
            assert o.stride(1) == 1, f"{what}: output is not channels-last, strides {o.stride()}"
        assert_accurate(o, r, eagers[i] if i < len(eagers) else None, what=f"{what} output {i}")


def conv_inputs(case: ConvCase, dtype, channels_last=True, noncontig=False, bias=True):
    x = random_tensor((case.n, case.c_in, case.h, case.w), dtype, channels_last, noncontig, GEN)
    w = randn(case.c_out, case.c_in // case.groups, case.k, case.k, dtype=dtype) * (case.c_in // case.groups * case.k ** 2) ** -0.5
    b = randn(case.c_out, dtype=dtype) if bias else None
    return x, w, b


# Each case gets one epilogue variant, rotating, so every variant meets every kind of shape.
VARIANTS = ("relu", "residual_relu", "sums_relu", "plain", "residual")


def conv_variant_kwargs(case, variant, dtype, channels_last, noncontig):
    kw = {"stride": case.stride, "groups": case.groups, "relu": "relu" in variant,
          "channel_sums": variant.startswith("sums")}
    if "residual" in variant:
        kw["residual"] = random_tensor((case.n, case.c_out) + out_hw(case), dtype, channels_last, noncontig, GEN)
    return kw


CONV_CASES = grouped_cases() + pointwise_cases() + stem_cases()


@pytest.mark.parametrize("layout", SERVED_LAYOUTS, ids=("channels_last", "strided"))
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_fp32(case, layout, native_route):
    idx = CONV_CASES.index(case) + SERVED_LAYOUTS.index(layout)
    variant = VARIANTS[idx % len(VARIANTS)]
    x, w, b = conv_inputs(case, torch.float32, *layout, bias=idx % 4 != 3)
    kw = conv_variant_kwargs(case, variant, torch.float32, *layout)
    check_against_reference(rk.conv_bn_act, (x, w, b), kw, torch.float32, f"{case} {variant}")


# Many samples of small maps: each thread's run of output rows crosses sample boundaries, where an
# input row kept packed from the last sample (same row index, other sample) must not be reused;
# and maps of 1-3 rows, where the row slots are not all rewritten within a sample.
SMALL_MAP_CASES = [ConvCase(n, c, c, h, h, 3, stride, c // gw) for n, c, h, stride, gw in
                   ((6, 48, 1, 1, 16), (7, 32, 2, 1, 8), (5, 64, 3, 1, 64), (6, 24, 3, 2, 24), (4, 40, 5, 1, 8),
                    (9, 16, 2, 2, 16))]


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("case", SMALL_MAP_CASES, ids=str)
def test_conv_many_samples_of_small_maps(case, dtype, native_route):
    x, w, b = conv_inputs(case, dtype)
    kw = conv_variant_kwargs(case, "residual_relu", dtype, True, False)
    check_against_reference(rk.conv_bn_act, (x, w, b), kw, dtype, f"{case} {dtype}")


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_fp32_onednn_route(case, onednn_route):
    """The same cases through the oneDNN route (prepacked weights, post-ops, our channel sums),
    with a different epilogue variant than test_conv_fp32 gave the case."""
    idx = CONV_CASES.index(case) + 2
    check_onednn_route(case, VARIANTS[idx % len(VARIANTS)], torch.float32, bias=idx % 4 != 3)


def check_onednn_route(case, variant, dtype, bias=True):
    _skip_unless_onednn_serves(case)
    x, w, b = conv_inputs(case, dtype, bias=bias)
    kw = conv_variant_kwargs(case, variant, dtype, True, False)
    assert cpu_backend._use_onednn(x, w, case.groups, kw.get("residual")), "the oneDNN route is not taken"
    check_against_reference(rk.conv_bn_act, (x, w, b), kw, dtype, f"{case} {variant} {dtype} oneDNN")
    # A second call reuses the packed weight; an in-place update of the weight must repack.
    w.mul_(-1)
    check_against_reference(rk.conv_bn_act, (x, w, b), kw, dtype, f"{case} {variant} {dtype} oneDNN, weight updated")
    # The packed weight is shared across batch sizes (packed for the first one seen).
    x2 = torch.cat([x, x[:1]]).contiguous(memory_format=torch.channels_last)
    kw2 = {k: (torch.cat([v, v[:1]]).contiguous(memory_format=torch.channels_last) if k == "residual" else v)
           for k, v in kw.items()}
    check_against_reference(rk.conv_bn_act, (x2, w, b), kw2, dtype, f"{case} {variant} {dtype} oneDNN, batch {x2.shape[0]}")


def test_derived_weights_cache_follows_the_weight():
    """A stale derived weight would be a silent wrong answer: an entry is remade after an
    in-place update, separate per key, bounded per weight, and dropped when the weight is freed
    (a new tensor that reuses the id must not see the old entry)."""
    cache = cpu_backend.DerivedWeights(per_weight=2)
    made = []

    def make(w):
        made.append(w.clone())
        return w * 2

    w = randn(4, 3)
    first = cache.get(w, "a", make)
    assert torch.equal(first, w * 2) and cache.get(w, "a", make) is first and len(made) == 1
    with torch.no_grad():
        w.add_(1)  # bumps the version counter
    assert torch.equal(cache.get(w, "a", make), w * 2) and len(made) == 2
    cache.get(w, "b", make), cache.get(w, "c", make)  # a third key clears the two kept
    assert len(cache._entries[id(w)][2]) <= 2
    wid = id(w)
    del w
    assert wid not in cache._entries, "the entry outlived its weight"
    with torch.inference_mode():  # inference tensors have no version counter
        frozen = randn(4, 3)
    assert torch.equal(cache.get(frozen, "a", make), frozen * 2) and cache.get(frozen, "a", make) is not None
    # Views made per call (K4's 2-D view of a 4-D weight) hit the entry of the tensor they view, per
    # view geometry (a transposed view is another entry, made from the view), and follow its updates.
    base = randn(4, 3, 1, 1)
    made.clear()
    flat = cache.get(base[:, :, 0, 0], "a", make)
    assert cache.get(base.reshape(4, 3), "a", make) is flat and len(made) == 1 and torch.equal(flat, base[:, :, 0, 0] * 2)
    transposed = cache.get(base[:, :, 0, 0].t(), "a", make)
    assert torch.equal(transposed, base[:, :, 0, 0].t() * 2) and len(made) == 2
    with torch.no_grad():
        base.mul_(3)
    assert torch.equal(cache.get(base[:, :, 0, 0], "a", make), base[:, :, 0, 0] * 2) and len(made) == 3


@pytest.mark.parametrize("case", grouped_cases(seed=5, per_width=1) + pointwise_cases()[:3] + stem_cases()[:1], ids=str)
def test_conv_bf16_onednn_route(case, onednn_route):
    if torch.bfloat16 not in cpu_backend.ONEDNN_DTYPES:
        pytest.skip("oneDNN has no native bf16 on this CPU: bf16 stays on our kernels")
    check_onednn_route(case, ("residual_relu", "sums_relu")[case.stride - 1], torch.bfloat16)


# Group widths 8 and 24 with AVX-512 (odd numbers of half vectors): pairs of groups share
# vectors, lanes interleaved (kernel_args.h, pair_groups). One group (no pair), even and odd group
# counts (the last pair's second group empty), stride 1 and 2, odd maps, batch > 1, and 7-row
# maps at batch 1 (rows split into chunks).
PAIRED_GROUP_CASES = [ConvCase(n, c, c, h, w, 3, stride, c // gw) for n, c, h, w, stride, gw in
                      ((2, 8, 9, 9, 1, 8), (1, 16, 15, 13, 2, 8), (3, 24, 7, 7, 1, 8), (1, 104, 7, 7, 1, 8),
                       (2, 104, 13, 15, 2, 8), (1, 40, 1, 1, 1, 8), (2, 56, 14, 14, 2, 8), (2, 24, 5, 6, 1, 24),
                       (1, 48, 11, 11, 2, 24), (2, 72, 9, 7, 1, 24), (1, 120, 7, 7, 1, 24), (1, 72, 14, 14, 2, 24))]


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("case", PAIRED_GROUP_CASES, ids=str)
def test_native_conv_paired_groups(case, dtype):
    """The native op called directly at group widths 8 and 24 (paired groups on AVX-512), with
    the residual and ReLU or the channel sums, vs float64."""
    variant = ("residual_relu", "sums_relu")[PAIRED_GROUP_CASES.index(case) % 2]
    x, w, b = conv_inputs(case, dtype)
    kw = conv_variant_kwargs(case, variant, dtype, True, False)
    with poison_outputs():
        out = (OPS.conv_bn_act_sums(x, w, b, case.stride, 1, case.groups, True) if kw["channel_sums"] else
               OPS.conv_bn_act(x, w, b, case.stride, 1, case.groups, kw.get("residual"), True))
    ref = rk.conv_bn_act(to64(x), to64(w), to64(b), **{k: to64(v) if isinstance(v, torch.Tensor) else v
                                                       for k, v in kw.items()}, backend="eager")
    eager = rk.conv_bn_act(x, w, b, **kw, backend="eager") if dtype != torch.float32 else None
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    eagers = eager if isinstance(eager, tuple) else (eager, None)
    for o, r, e in zip(outs, refs, eagers):
        assert_accurate(o, r, e, what=f"{case} {variant} {dtype}")


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", grouped_cases(seed=5, per_width=1) + pointwise_cases()[:3] + stem_cases()[2:4], ids=str)
def test_conv_low_precision(case, dtype, native_route):
    variant = ("residual_relu", "sums_relu")[case.stride - 1]
    x, w, b = conv_inputs(case, dtype)
    kw = conv_variant_kwargs(case, variant, dtype, True, False)
    check_against_reference(rk.conv_bn_act, (x, w, b), kw, dtype, f"{case} {variant} {dtype}")


# SE shapes: every zoo width family, C not a multiple of the vector width, 1x1 and odd maps.
# Both sides of se_gate's thresholds: maps split across threads or not (32K elements per task) and
# the MLP split across samples or not (64K FMAs per task: the last shape).
SE_SHAPES = ((1, 48, 7, 7), (2, 104, 13, 13), (2, 13, 8, 8), (1, 440, 1, 1), (3, 208, 15, 15), (2, 232, 7, 9), (4, 440, 3, 5))


# K1 fused into K2 (conv1x1_conv_bn_act): (n, c_in, c_mid, h, w, k of the second conv, its stride,
# its group width). Zoo group widths; odd, one-pixel and one-row maps; batch 1 (7-row maps at
# batch 1 split each row's channels between threads, so each thread computes only its chunk's
# channels of K1) and > 1; a C_in that is not a multiple of the vector width; a second 1x1.
PAIR_CASES = [(1, 32, 32, 15, 15, 3, 2, 16), (2, 24, 48, 13, 13, 3, 1, 24), (1, 64, 64, 7, 7, 3, 1, 16),
              (1, 208, 208, 7, 7, 3, 1, 8), (1, 13, 40, 8, 8, 3, 2, 8), (3, 48, 112, 5, 6, 3, 2, 56),
              (1, 64, 128, 1, 1, 3, 1, 64), (2, 96, 464, 7, 7, 3, 1, 232), (1, 32, 464, 7, 7, 3, 2, 232),
              (1, 112, 112, 15, 15, 3, 2, 112), (2, 40, 24, 9, 9, 1, 2, 24), (5, 16, 16, 2, 3, 3, 1, 8),
              (1, 48, 104, 7, 7, 3, 1, 8), (1, 40, 72, 7, 7, 3, 1, 24)]


def pair_inputs(case, dtype, channels_last=True, noncontig=False):
    n, c_in, c_mid, h, w, k, stride, gw = case
    x = random_tensor((n, c_in, h, w), dtype, channels_last, noncontig, GEN)
    w1 = randn(c_mid, c_in, 1, 1, dtype=dtype) * c_in ** -0.5
    w2 = randn(c_mid, gw if k == 3 else c_mid, k, k, dtype=dtype) * (gw * k * k) ** -0.5
    groups = c_mid // gw if k == 3 else 1
    return (x, w1, randn(c_mid, dtype=dtype), w2, randn(c_mid, dtype=dtype)), dict(stride=stride, groups=groups)


# (layout, dtype): fp32 in both served layouts, low precision channels-last (the same code).
PAIR_VARIANTS = [(SERVED_LAYOUTS[0], torch.float32), (SERVED_LAYOUTS[1], torch.float32),
                 (SERVED_LAYOUTS[0], torch.bfloat16), (SERVED_LAYOUTS[0], torch.float16)]


@pytest.mark.parametrize("layout,dtype", PAIR_VARIANTS, ids=("fp32", "fp32_strided", "bf16", "fp16"))
@pytest.mark.parametrize("case", PAIR_CASES, ids=str)
def test_conv1x1_conv_pair(case, layout, dtype):
    """K1's rows computed where K2 reads them, with and without K2's ReLU and channel sums, vs
    float64 (the two convs of the eager reference); bf16/fp16 no worse than 2x eager's own error
    (eager rounds K1's output to that dtype, the kernel keeps it in fp32)."""
    args, kw = pair_inputs(case, dtype, *layout)
    i = PAIR_CASES.index(case)
    kw.update(relu=i % 3 != 2, channel_sums=i % 2 == 0)
    check_against_reference(rk.conv1x1_conv_bn_act, args, kw, dtype, f"{case} {kw}")


@pytest.mark.parametrize("threads,case", [(3, (1, 32, 96, 5, 5, 3, 1, 48)), (3, (2, 32, 96, 5, 7, 3, 1, 48)),
                                          (4, (1, 24, 192, 7, 7, 3, 1, 64)), (3, (1, 24, 40, 5, 5, 3, 1, 8)),
                                          (3, (1, 24, 72, 5, 5, 3, 1, 24))], ids=str)
def test_conv1x1_conv_pair_chunks_split_between_threads(threads, case):
    """Rows split into channel chunks that a thread's run of work items crosses, each chunk
    computing only its own channels of K1: a 5-row map with 2 groups of 48 (one block each, and
    one of K1's blocks each) on 3 threads makes 10 items, 4 a thread, so the second thread
    computes K1's row 3 for chunk 0, then needs it for chunk 1, whose channels it lacks (the row
    slots are tagged with the chunk; without that the first case fails)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args, kw = pair_inputs(case, torch.float32)
        check_against_reference(rk.conv1x1_conv_bn_act, args, kw, torch.float32, f"{case} on {threads} threads")
    finally:
        torch.set_num_threads(before)


def x_block_inputs(case, dtype, channels_last=True, noncontig=False, c_out=None, proj=False, proj_bias=True):
    """pair_inputs plus K4 (a 1x1 to c_out channels, default C_mid) and the shortcut: the
    residual, or with `proj` the projection's weight (and bias) as keyword arguments."""
    (x, w1, b1, w2, b2), kw = pair_inputs(case, dtype, channels_last, noncontig)
    n, c_in, c_mid, h, w, k, stride, _ = case
    c_out = c_out or c_mid
    pad = (k - 1) // 2
    out = (n, c_out, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
    w3 = randn(c_out, c_mid, 1, 1, dtype=dtype) * c_mid ** -0.5
    if proj:
        kw.update(proj_weight=randn(c_out, c_in, 1, 1, dtype=dtype) * c_in ** -0.5,
                  proj_bias=randn(c_out, dtype=dtype) if proj_bias else None)
        return (x, w1, b1, w2, b2, w3, randn(c_out, dtype=dtype)), kw
    residual = random_tensor(out, dtype, channels_last, noncontig, GEN)
    return (x, w1, b1, w2, b2, w3, randn(c_out, dtype=dtype), residual), kw


@pytest.mark.parametrize("layout,dtype", PAIR_VARIANTS, ids=("fp32", "fp32_strided", "bf16", "fp16"))
@pytest.mark.parametrize("case", PAIR_CASES, ids=str)
def test_x_block(case, layout, dtype):
    """A whole X block in one op (K1 rows, K2 rows of all channels, K4 with the residual) vs
    float64; every other case maps to a different output width."""
    i = PAIR_CASES.index(case)
    args, kw = x_block_inputs(case, dtype, *layout, c_out=case[2] + 8 * (i % 2))
    check_against_reference(rk.x_block, args, kw, dtype, f"{case} {dtype}")


@pytest.mark.parametrize("layout,dtype", PAIR_VARIANTS, ids=("fp32", "fp32_strided", "bf16", "fp16"))
@pytest.mark.parametrize("case", PAIR_CASES, ids=str)
def test_x_block_with_projection(case, layout, dtype):
    """x_block computing its projection shortcut (a 1x1 of x at the middle conv's stride) row by
    row inside the op, vs float64: output widths other than the input's, stride 1 and 2, odd maps,
    strided x (the projection then reads x's pixels at their own stride), a projection without
    bias on every third case."""
    i = PAIR_CASES.index(case)
    args, kw = x_block_inputs(case, dtype, *layout, c_out=case[2] + 8 * (i % 2), proj=True, proj_bias=i % 3 != 2)
    check_against_reference(rk.x_block, args, kw, dtype, f"{case} {dtype} with projection")


@pytest.mark.parametrize("threads", (3, 4))
def test_x_block_rows_split_between_threads(threads):
    """Rows are x_block's only work items: maps of a few rows on more threads than rows fit evenly
    (each thread with its own projection rows)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for case in ((1, 32, 96, 5, 5, 3, 1, 48), (2, 24, 64, 7, 3, 3, 2, 16)):
            for proj in (False, True):
                args, kw = x_block_inputs(case, torch.float32, proj=proj)
                check_against_reference(rk.x_block, args, kw, torch.float32, f"{case} on {threads} threads")
    finally:
        torch.set_num_threads(before)


def test_conv1x1_conv_pair_refuses_nchw():
    args, kw = pair_inputs(PAIR_CASES[0], torch.float32, channels_last=False)
    full = dict(x=args[0], w1=args[1], b1=args[2], w2=args[3], b2=args[4], padding=1, relu=True,
                channel_sums=False, **kw)
    assert any("channels-last" in r for r in dict(dispatch.explain("conv1x1_conv_bn_act", **full))["cpu"])
    assert dispatch.select("conv1x1_conv_bn_act", "auto", **full)[0] == "eager"
    with pytest.raises(dispatch.BackendUnavailable, match="channels-last"):
        rk.conv1x1_conv_bn_act(*args, backend="cpu", **kw)


def se_inputs(shape, dtype, channels_last=True, noncontig=False, from_sums=False, residual=False):
    n, c = shape[:2]
    c_se = max(1, c // 4)
    x = random_tensor(shape, dtype, channels_last, noncontig, GEN)
    params = (randn(c_se, c, 1, 1) * c ** -0.5, randn(c_se), randn(c, c_se) * c_se ** -0.5, randn(c))
    kw = {"residual": random_tensor(shape, dtype, channels_last, noncontig, GEN) if residual else None,
          "relu": residual, "sums": x.float().sum((2, 3)) if from_sums else None}
    return (x,) + params, kw


@pytest.mark.parametrize("layout", SERVED_LAYOUTS, ids=("channels_last", "strided"))
@pytest.mark.parametrize("from_sums", (False, True), ids=("mean_from_x", "mean_from_sums"))
@pytest.mark.parametrize("shape", SE_SHAPES, ids=str)
def test_se_gate_fp32(shape, from_sums, layout):
    args, kw = se_inputs(shape, torch.float32, *layout, from_sums=from_sums, residual=SE_SHAPES.index(shape) % 2 == 0)
    check_against_reference(rk.se_gate, args, kw, torch.float32, f"se {shape}")


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("shape", SE_SHAPES[:3], ids=str)
def test_se_gate_low_precision(shape, dtype):
    args, kw = se_inputs(shape, dtype, residual=True)
    check_against_reference(rk.se_gate, args, kw, dtype, f"se {shape} {dtype}")


def fc_layouts(w):
    """An FC weight [out, in] in every layout the native se_gate accepts: 2-D contiguous, 1x1 conv
    [out, in, 1, 1] (read in place), and 4-D views whose [out, in] part is not dense (copied)."""
    m = w.reshape(w.shape[0], w.shape[1]).contiguous()
    transposed = m.t().contiguous().t()  # strides (1, out)
    # Every other element of a wider tensor whose skipped elements are NaN: reading one shows.
    every_other = torch.stack([m, torch.full_like(m, float("nan"))], 2).flatten(1)[:, ::2]
    return {"2d": m, "4d": m[:, :, None, None], "4d_transposed": transposed[:, :, None, None],
            "4d_every_other": every_other[:, :, None, None]}


@pytest.mark.parametrize("shape", SE_SHAPES, ids=str)
def test_se_gate_native_reads_fc_weights_in_every_layout(shape):
    """The native op takes W1 and W2 as [out, in] or [out, in, 1, 1], dense or not, and W2 also
    with strides (1, C), the copy the cpu backend caches (whole vectors of channels); all against
    float64."""
    args, kw = se_inputs(shape, torch.float32, residual=True)
    x, w1, b1, w2, b2 = args
    ref = rk.se_gate(*[to64(a) for a in args], residual=to64(kw["residual"]), relu=True, backend="eager")
    by_input = cpu_backend.fc_by_input(w2)
    assert by_input.stride() == (1, w2.shape[0]) and torch.equal(by_input, w2.reshape(w2.shape[:2]))
    w2_layouts = dict(fc_layouts(w2), by_input=by_input)
    w1_layouts = fc_layouts(w1)
    for w, layouts in ((w1, w1_layouts), (w2, w2_layouts)):
        assert all(torch.equal(t.reshape(w.shape[:2]), w.reshape(w.shape[:2])) for t in layouts.values())
    for w1_name, w1_layout in w1_layouts.items():
        for w2_name, w2_layout in w2_layouts.items():
            with poison_outputs():
                out = OPS.se_gate(x, w1_layout, b1, w2_layout, b2, kw["residual"], True, None)
            assert_accurate(out, ref, what=f"se {shape} w1 {w1_name} w2 {w2_name}")


@pytest.mark.parametrize("shape", SE_SHAPES, ids=str)
def test_se_excite(shape):
    """K3 alone (sums -> fp32 gate) against float64, through the backend (W2 cached input-major)
    and the native op with W1 and W2 in every layout it takes; sums of a real map, hw its pixels."""
    args, _ = se_inputs(shape, torch.float32)
    x, w1, b1, w2, b2 = args
    sums, hw = x.float().sum((2, 3)), shape[2] * shape[3]
    ref = rk.se_excite(sums.double(), hw, *[to64(a) for a in (w1, b1, w2, b2)], backend="eager")
    with poison_outputs():
        gate = rk.se_excite(sums, hw, w1, b1, w2, b2, backend="cpu")
    assert gate.dtype == torch.float32
    assert_accurate(gate, ref, what=f"se_excite {shape}")
    w2_layouts = dict(fc_layouts(w2), by_input=cpu_backend.fc_by_input(w2))
    for w1_name, w1_layout in fc_layouts(w1).items():
        for w2_name, w2_layout in w2_layouts.items():
            with poison_outputs():
                gate = OPS.se_excite(sums, hw, w1_layout, b1, w2_layout, b2)
            assert_accurate(gate, ref, what=f"se_excite {shape} w1 {w1_name} w2 {w2_name}")


def test_se_excite_refuses_other_weight_dtypes():
    args, _ = se_inputs((1, 16, 3, 3), torch.float32)
    sums, w1, b1, w2, b2 = args[0].sum((2, 3)), *args[1:]
    reasons = dict(dispatch.explain("se_excite", x=sums, hw=9, w1=w1.bfloat16(), b1=b1, w2=w2, b2=b2))["cpu"]
    assert any("w1 dtype" in r for r in reasons), reasons
    with pytest.raises(dispatch.BackendUnavailable, match="w1 dtype"):
        rk.se_excite(sums, 9, w1.bfloat16(), b1, w2, b2, backend="cpu")


def test_se_gate_cached_w2_follows_in_place_updates():
    args, kw = se_inputs((2, 104, 13, 13), torch.float32)
    x, w1, b1, w2, b2 = args
    first = rk.se_gate(*args, backend="cpu")
    with torch.no_grad():
        w2.mul_(-1.5)
    second = rk.se_gate(*args, backend="cpu")
    ref = rk.se_gate(*[to64(a) for a in args], backend="eager")
    assert_accurate(second, ref, what="se after an in-place update of w2")
    assert not torch.allclose(first, second)


GATED_CASES = [c for c in pointwise_cases() if c.stride == 1]


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("layout", SERVED_LAYOUTS, ids=("channels_last", "strided"))
@pytest.mark.parametrize("case", GATED_CASES, ids=str)
def test_gated_conv1x1(case, layout, dtype, native_route):
    x = random_tensor((case.n, case.c_in, case.h, case.w), dtype, *layout, GEN)
    gate = torch.rand(case.n, case.c_in, generator=GEN)  # fp32, in (0, 1) like a sigmoid
    w = randn(case.c_out, case.c_in, dtype=dtype) * case.c_in ** -0.5
    res = random_tensor((case.n, case.c_out, case.h, case.w), dtype, *layout, GEN)
    check_against_reference(rk.gated_conv1x1, (x, gate, w, randn(case.c_out, dtype=dtype)), {"residual": res},
                            dtype, f"gated {case}")


def test_nchw_is_refused_and_auto_falls_back():
    case = grouped_cases()[0]
    x, w, b = conv_inputs(case, torch.float32, channels_last=False)
    args = dict(x=x, weight=w, bias=b, stride=case.stride, padding=1, groups=case.groups, residual=None, relu=True,
                channel_sums=False)
    reasons = dict(dispatch.explain("conv_bn_act", **args))["cpu"]
    assert any("channels-last" in r for r in reasons), reasons
    assert dispatch.select("conv_bn_act", "auto", **args)[0] == "eager"
    with pytest.raises(dispatch.BackendUnavailable, match="channels-last"):
        rk.conv_bn_act(x, w, b, stride=case.stride, groups=case.groups, backend="cpu")
    # A channels-last x is served, and auto picks the cpu backend for it.
    args["x"] = x.to(memory_format=torch.channels_last)
    assert dispatch.select("conv_bn_act", "auto", **args)[0] == "cpu"
    se_args, _ = se_inputs((1, 16, 4, 4), torch.float32, channels_last=False)
    with pytest.raises(dispatch.BackendUnavailable, match="channels-last"):
        rk.se_gate(*se_args, backend="cpu")


def test_float64_is_refused():
    x, w, b = conv_inputs(ConvCase(1, 8, 8, 5, 5, 3, 1, 1), torch.float64)
    with pytest.raises(dispatch.BackendUnavailable, match="dtype"):
        rk.conv_bn_act(x, w, b, backend="cpu")


def _cl(*shape, dtype=torch.float32):
    return randn(*shape, dtype=dtype).to(memory_format=torch.channels_last)


BAD_RAW_CALLS = {
    "x 3-D": lambda: OPS.conv_bn_act(randn(8, 5, 5), randn(8, 8, 3, 3), None, 1, 1, 1, None, True),
    "x NCHW": lambda: OPS.conv_bn_act(randn(1, 8, 5, 5), randn(8, 8, 3, 3), None, 1, 1, 1, None, True),
    "x float64": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5, dtype=torch.float64), randn(8, 8, 3, 3, dtype=torch.float64),
                                         None, 1, 1, 1, None, True),
    "weight dtype": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 3, 3, dtype=torch.bfloat16), None, 1, 1, 1,
                                            None, True),
    "weight channels": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 4, 3, 3), None, 1, 1, 1, None, True),
    "groups": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 3, 3), None, 1, 1, 3, None, True),
    # No input channels: the kernels assume every group has some (the micro-kernels' assume_channels).
    "x no channels 3x3": lambda: OPS.conv_bn_act(_cl(1, 0, 5, 5), randn(8, 0, 3, 3), randn(8), 1, 1, 1, None, True),
    "x no channels 1x1": lambda: OPS.conv_bn_act(_cl(1, 0, 5, 5), randn(8, 0, 1, 1), randn(8), 1, 0, 1, None, True),
    "pair x no channels": lambda: OPS.conv1x1_conv_bn_act(_cl(1, 0, 5, 5), randn(8, 0, 1, 1), None, randn(8, 4, 3, 3),
                                                          None, 1, 1, 2, True),
    "kernel 5x5": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 5, 5), None, 1, 2, 1, None, True),
    "stride 3": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 3, 3), None, 3, 1, 1, None, True),
    "padding": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 3, 3), None, 1, 0, 1, None, True),
    "bias shape": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 3, 3), randn(7), 1, 1, 1, None, True),
    "residual shape": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 3, 3), None, 2, 1, 1, _cl(1, 8, 5, 5), True),
    "residual NCHW": lambda: OPS.conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 3, 3), None, 1, 1, 1, randn(1, 8, 5, 5), True),
    "sums conv weight": lambda: OPS.conv_bn_act_sums(_cl(1, 8, 5, 5), randn(8, 8), None, 1, 1, 1, True),
    "se w1 shape": lambda: OPS.se_gate(_cl(1, 8, 4, 4), randn(2, 7), randn(2), randn(8, 2), randn(8), None, False, None),
    "se sums shape": lambda: OPS.se_gate(_cl(1, 8, 4, 4), randn(2, 8), randn(2), randn(8, 2), randn(8), None, False,
                                         randn(1, 7)),
    "se sums dtype": lambda: OPS.se_gate(_cl(1, 8, 4, 4), randn(2, 8), randn(2), randn(8, 2), randn(8), None, False,
                                         randn(1, 8, dtype=torch.bfloat16)),
    "pair w1 3x3": lambda: OPS.conv1x1_conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 3, 3), None, randn(8, 4, 3, 3), None,
                                                   1, 1, 2, True),
    "pair w1 channels": lambda: OPS.conv1x1_conv_bn_act(_cl(1, 8, 5, 5), randn(8, 7, 1, 1), None, randn(8, 4, 3, 3),
                                                        None, 1, 1, 2, True),
    "pair w2 channels": lambda: OPS.conv1x1_conv_bn_act(_cl(1, 8, 5, 5), randn(16, 8, 1, 1), None, randn(8, 4, 3, 3),
                                                        None, 1, 1, 2, True),
    "pair groups": lambda: OPS.conv1x1_conv_bn_act_sums(_cl(1, 8, 5, 5), randn(12, 8, 1, 1), None,
                                                        randn(12, 3, 3, 3), None, 1, 1, 5, True),
    "pair b1 shape": lambda: OPS.conv1x1_conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), randn(7), randn(8, 4, 3, 3),
                                                     None, 1, 1, 2, True),
    "pair w2 dtype": lambda: OPS.conv1x1_conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None,
                                                     randn(8, 4, 3, 3, dtype=torch.bfloat16), None, 1, 1, 2, True),
    "pair stride 3": lambda: OPS.conv1x1_conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3),
                                                     None, 3, 1, 2, True),
    "pair padding": lambda: OPS.conv1x1_conv_bn_act(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3),
                                                    None, 1, 0, 2, True),
    "pair x NCHW": lambda: OPS.conv1x1_conv_bn_act(randn(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3),
                                                   None, 1, 1, 2, True),
    "excite sums 3-D": lambda: OPS.se_excite(randn(1, 8, 1), 4, randn(2, 8), randn(2), randn(8, 2), randn(8)),
    "excite sums dtype": lambda: OPS.se_excite(randn(1, 8, dtype=torch.bfloat16), 4, randn(2, 8), randn(2),
                                               randn(8, 2), randn(8)),
    "excite hw": lambda: OPS.se_excite(randn(1, 8), 0, randn(2, 8), randn(2), randn(8, 2), randn(8)),
    "excite w1 shape": lambda: OPS.se_excite(randn(1, 8), 4, randn(2, 7), randn(2), randn(8, 2), randn(8)),
    "excite w2 shape": lambda: OPS.se_excite(randn(1, 8), 4, randn(2, 8), randn(2), randn(8, 3), randn(8)),
    "excite b2 shape": lambda: OPS.se_excite(randn(1, 8), 4, randn(2, 8), randn(2), randn(8, 2), randn(7)),
    "x_block w3 3x3": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 1, 1, 2,
                                          randn(8, 8, 3, 3), None, _cl(1, 8, 5, 5)),
    "x_block w3 channels": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 1,
                                               1, 2, randn(8, 6, 1, 1), None, _cl(1, 8, 5, 5)),
    "x_block residual shape": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None,
                                                  2, 1, 2, randn(8, 8, 1, 1), None, _cl(1, 8, 5, 5)),
    "x_block residual NCHW": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None,
                                                 1, 1, 2, randn(8, 8, 1, 1), None, randn(1, 8, 5, 5)),
    "x_block b3 shape": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 1, 1,
                                            2, randn(8, 8, 1, 1), randn(7), _cl(1, 8, 5, 5)),
    "x_block two shortcuts": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 1,
                                                 1, 2, randn(8, 8, 1, 1), None, _cl(1, 8, 5, 5), randn(8, 8, 1, 1)),
    "x_block no shortcut": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 1,
                                               1, 2, randn(8, 8, 1, 1), None, None),
    "x_block bp without wp": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None,
                                                 1, 1, 2, randn(8, 8, 1, 1), None, _cl(1, 8, 5, 5), None, randn(8)),
    "x_block wp 3x3": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 2, 1, 2,
                                          randn(16, 8, 1, 1), None, None, randn(16, 8, 3, 3)),
    "x_block wp outputs": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 2, 1,
                                              2, randn(16, 8, 1, 1), None, None, randn(12, 8, 1, 1)),
    "x_block wp inputs": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 2, 1,
                                             2, randn(16, 8, 1, 1), None, None, randn(16, 6, 1, 1)),
    "x_block bp shape": lambda: OPS.x_block(_cl(1, 8, 5, 5), randn(8, 8, 1, 1), None, randn(8, 4, 3, 3), None, 2, 1,
                                            2, randn(16, 8, 1, 1), None, None, randn(16, 8, 1, 1), randn(15)),
    "gated gate shape": lambda: OPS.gated_conv1x1(_cl(1, 8, 4, 4), randn(1, 7), randn(4, 8), None, None, True),
    "gated weight shape": lambda: OPS.gated_conv1x1(_cl(1, 8, 4, 4), randn(1, 8), randn(4, 7), None, None, True),
}


@pytest.mark.parametrize("name", sorted(BAD_RAW_CALLS))
def test_raw_op_rejects_bad_input(name):
    with pytest.raises((RuntimeError, ValueError), match=r"(must|expected)"):
        BAD_RAW_CALLS[name]()


def test_opcheck():
    x = _cl(2, 16, 5, 6)
    w, b = randn(16, 8, 3, 3), randn(16)
    samples = {
        "channel_sums": (x,),
        "conv_bn_act": (x, w, b, 2, 1, 2, None, True),
        "conv_bn_act_sums": (x, w, b, 1, 1, 2, True),
        "se_gate": (x, randn(4, 16), randn(4), randn(16, 4), randn(16), _cl(2, 16, 5, 6), True, None),
        "gated_conv1x1": (x, torch.rand(2, 16), randn(24, 16), b[:8].repeat(3), None, False),
        "se_excite": (randn(2, 16).abs() * 30, 30, randn(4, 16), randn(4), randn(16, 4), randn(16)),
        "x_block": (x, randn(24, 16, 1, 1), randn(24), randn(24, 8, 3, 3), randn(24), 2, 1, 3, randn(16, 24, 1, 1),
                    None, _cl(2, 16, 3, 3)),
        "conv1x1_conv_bn_act": (x, randn(24, 16, 1, 1), randn(24), randn(24, 8, 3, 3), randn(24), 2, 1, 3, True),
        "conv1x1_conv_bn_act_sums": (x, randn(24, 16, 1, 1), None, randn(24, 8, 3, 3), randn(24), 1, 1, 3, False),
    }
    for name, args in samples.items():
        torch.library.opcheck(getattr(OPS, name), args)
    # x_block with its projection shortcut (stride 2: 5x6 -> 3x3)
    torch.library.opcheck(OPS.x_block, samples["x_block"][:10] + (None, randn(16, 16, 1, 1), randn(16)))


# The AVX2 and portable kernels are separate compilations of the same source; run each on a
# few shapes (ATen's ATEN_CPU_CAPABILITY override picks the variant at start-up).
ISA_SCRIPT = textwrap.dedent("""
    import torch, regnet_kernels as rk
    from tests.kernel_cases import (ConvCase, grouped_cases, pointwise_cases, stem_cases, random_tensor,
                                    assert_accurate, out_hw)
    from regnet_kernels.testing import poison_outputs
    # + group widths 4 and 12: paired groups where a vector has 8 lanes (odd and even group counts)
    paired = [ConvCase(2, 12, 12, 7, 9, 3, 1, 3), ConvCase(1, 16, 16, 6, 5, 3, 2, 4), ConvCase(1, 36, 36, 7, 7, 3, 1, 3)]
    for case in grouped_cases(seed=7, per_width=1)[::2] + pointwise_cases()[:2] + paired + stem_cases():
        x = random_tensor((case.n, case.c_in, case.h, case.w))
        w = torch.randn(case.c_out, case.c_in // case.groups, case.k, case.k) / 8
        b = torch.randn(case.c_out)
        with poison_outputs():
            y, s = rk.conv_bn_act(x, w, b, stride=case.stride, groups=case.groups, channel_sums=True, backend="cpu")
        ry, rs = rk.conv_bn_act(x.double(), w.double(), b.double(), stride=case.stride, groups=case.groups,
                                channel_sums=True, backend="eager")
        assert_accurate(y, ry, what=str(case)); assert_accurate(s, rs, what=str(case))
    # bf16/fp16 outputs: whole vectors and tails of the rounding stores
    for dtype in (torch.bfloat16, torch.float16):
        for case in pointwise_cases()[:2] + grouped_cases(seed=7, per_width=1)[:2] + stem_cases()[:1]:
            x = random_tensor((case.n, case.c_in, case.h, case.w), dtype)
            w = (torch.randn(case.c_out, case.c_in // case.groups, case.k, case.k) / 8).to(dtype)
            b = torch.randn(case.c_out).to(dtype)
            r = random_tensor((case.n, case.c_out) + out_hw(case), dtype)
            kw = dict(stride=case.stride, groups=case.groups, residual=r, relu=True)
            with poison_outputs():
                y = rk.conv_bn_act(x, w, b, backend="cpu", **kw)
            ref = rk.conv_bn_act(x.double(), w.double(), b.double(), **dict(kw, residual=r.double()), backend="eager")
            assert_accurate(y, ref, rk.conv_bn_act(x, w, b, backend="eager", **kw), what=f"{case} {dtype}")
        x = random_tensor((2, 104, 7, 7), dtype)
        p = (torch.randn(26, 104) / 10, torch.randn(26), torch.randn(104, 26) / 5, torch.randn(104))
        with poison_outputs():
            y = rk.se_gate(x, *p, residual=x, relu=True, backend="cpu")
        assert_accurate(y, rk.se_gate(x.double(), *[t.double() for t in p], residual=x.double(), relu=True,
                                      backend="eager"), rk.se_gate(x, *p, residual=x, relu=True, backend="eager"),
                        what=f"se {dtype}")
    x = random_tensor((2, 104, 7, 7))
    p = (torch.randn(26, 104) / 10, torch.randn(26), torch.randn(104, 26) / 5, torch.randn(104))
    with poison_outputs():
        y = rk.se_gate(x, *p, residual=x, relu=True, backend="cpu")
    assert_accurate(y, rk.se_gate(x.double(), *[t.double() for t in p], residual=x.double(), relu=True,
                                  backend="eager"), what="se")
    for shape in ((2, 104, 7, 7), (1, 40, 3, 5)):
        x = random_tensor(shape)
        with poison_outputs():
            s = torch.ops.regnet_kernels.channel_sums(x)
        assert_accurate(s, x.double().sum((2, 3)), what=f"channel_sums {shape}")
    print("ok")
""")


@pytest.mark.parametrize("isa", ("avx2", "default"))
def test_other_isa_variants(isa):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, PYTHONPATH=os.getcwd())
    run = subprocess.run([sys.executable, "-c", ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]


@pytest.mark.parametrize("n,c_in,c_out,hw", [(1, 208, 208, 7), (4, 440, 440, 5), (2, 48, 104, 9)])
def test_gated_conv1x1_onednn_route(n, c_in, c_out, hw, onednn_route):
    """K4 with at least ONEDNN_GATED_MIN_WEIGHTS weights goes to oneDNN (x * gate, then the conv with
    residual and ReLU as post-ops); smaller ones stay ours. Both against float64."""
    x = random_tensor((n, c_in, hw, hw), torch.float32, True, False, GEN)
    gate = torch.rand(n, c_in, generator=GEN)
    w = randn(c_out, c_in) * c_in ** -0.5
    res = random_tensor((n, c_out, hw, hw), torch.float32, True, False, GEN)
    takes_onednn = w.numel() >= cpu_backend.ONEDNN_GATED_MIN_WEIGHTS
    assert takes_onednn == (c_in >= 208), "the test shapes no longer straddle the threshold"
    check_against_reference(rk.gated_conv1x1, (x, gate, w, randn(c_out)), {"residual": res}, torch.float32,
                            f"gated {n}x{c_in}->{c_out} {hw}x{hw} ({'oneDNN' if takes_onednn else 'ours'})")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("fp32", "bf16"))
@pytest.mark.parametrize("relu", (True, False))
@pytest.mark.parametrize("case", pointwise_cases()[:2] + grouped_cases(seed=7, per_width=1)[:2], ids=str)
def test_conv_into_residual(case, relu, dtype, onednn_route):
    """The fused blocks' K4 routes when they own the shortcut: oneDNN into the shortcut's buffer
    and our kernel into a new tensor (timed by the fused conv), both right, each bound once and
    serving the signature's next calls; none (the caller then runs the op as usual) for strided
    residuals and where oneDNN has no native bf16."""
    _skip_unless_onednn_serves(case)
    x, w, b = conv_inputs(case, dtype)
    padding = (case.k - 1) // 2

    def residual(noncontig=False):
        return random_tensor((case.n, case.c_out) + out_hw(case), dtype, True, noncontig, GEN)
    routes = cpu_backend.conv_into_residual(x, w, b, case.stride, padding, case.groups, residual(), relu)
    if dtype not in cpu_backend.ONEDNN_DTYPES:
        assert routes == []
        pytest.skip("oneDNN has no native bf16 on this CPU: no in-place route")
    assert len(routes) == 2
    for route, (run, in_place) in enumerate(zip(routes, (True, False))):
        for call in range(2):
            xi = x if call == 0 else torch.randn_like(x)
            res = residual()
            ref = rk.conv_bn_act(to64(xi), to64(w), to64(b), stride=case.stride, groups=case.groups,
                                 residual=to64(res), relu=relu, backend="eager")
            eager_same = rk.conv_bn_act(xi, w, b, stride=case.stride, groups=case.groups, residual=res, relu=relu,
                                        backend="eager") if dtype != torch.float32 else None
            res_ptr = res.data_ptr()
            y = run(xi, w, b, res)
            assert (y.data_ptr() == res_ptr) == in_place, f"route {route}: output buffer"
            assert_accurate(y, ref, eager_same, what=f"{case} {dtype} into residual, route {route}, call {call}")
    assert cpu_backend.conv_into_residual(x, w, b, case.stride, padding, case.groups, residual(noncontig=True),
                                          relu) == []


@pytest.mark.parametrize("faster", (0, 1), ids=("onednn_faster", "native_faster"))
def test_public_conv_times_its_routes(faster, monkeypatch):
    """Where both routes serve, the public op runs each 1 + TRIALS times on a signature's first
    calls and keeps the faster (a fake clock decides which); every output along the way, and after,
    matches the float64 reference; another signature is timed on its own."""
    _skip_without_onednn()
    trials = cpu_backend.Trials()
    monkeypatch.setattr(cpu_backend, "_PUBLIC_TRIALS", trials)
    monkeypatch.setattr(cpu_backend, "_PUBLIC_ROUTES", {})
    clock, runs = fake_timed_routes(monkeypatch, cpu_backend, faster)
    trials.clock = clock
    case = next(c for c in grouped_cases(seed=11, per_width=1) + pointwise_cases() if onednn_serves(c))
    trial_runs = 2 * (1 + trials.TRIALS)
    for n in (1, 2):  # two signatures
        x, w, b = conv_inputs(dataclasses.replace(case, n=n), torch.float32)
        runs.clear()
        for call in range(trial_runs + 2):
            kw = {"stride": case.stride, "groups": case.groups}
            check_against_reference(rk.conv_bn_act, (x, w, b), kw, torch.float32, f"{case} call {call}")
        assert sorted(runs[:trial_runs]) == ["native"] * (trial_runs // 2) + ["onednn"] * (trial_runs // 2), runs
        assert set(runs[trial_runs:]) == {("onednn", "native")[faster]}, runs
    assert not trials.samples and list(trials.chosen.values()) == [faster, faster]


def test_native_conv_packed_weights_follow_the_weight():
    """Our conv kernels cache packed weights per weight storage: a repeated call hits the cache;
    in-place updates of the weight (directly or through a view) or of the bias repack; a new
    weight where a freed one was is not mistaken for it, and the freed one's copy is dropped;
    inference tensors (no version counter) are packed on every call; gated_conv1x1's per-call
    4-D view of a 2-D weight hits too."""
    ext = native.EXT
    op = torch.ops.regnet_kernels.conv_bn_act
    x = random_tensor((2, 32, 9, 9), torch.float32, True, False, GEN)

    def check(w, b, what):
        with poison_outputs():
            y = op(x, w, b, 1, 1, 4, None, True)
        ref = torch.relu(torch.nn.functional.conv2d(to64(x), to64(w), to64(b), 1, 1, 1, 4))
        assert_accurate(y, ref, what=what)

    w, b = randn(32, 8, 3, 3) * 0.3, randn(32)
    check(w, b, "first call")
    hits = ext.cpu_packed_weight_stats()["hits"]
    check(w, b, "second call")
    assert ext.cpu_packed_weight_stats()["hits"] == hits + 1, "the packed weight was not reused"
    w.mul_(-1)
    check(w, b, "weight updated in place")
    w.view(-1)[:40].add_(1.0)
    check(w, b, "weight updated through a view")
    b.add_(0.5)
    check(w, b, "bias updated in place")
    entries = ext.cpu_packed_weight_stats()["entries"]
    for i in range(8):  # new weights, likely at a freed one's address
        del w
        w = randn(32, 8, 3, 3) * 0.3
        check(w, b, f"new weight {i}")
    # Freed weights' packed copies go at the next miss, not when the cache is full.
    assert ext.cpu_packed_weight_stats()["entries"] <= entries + 1
    with torch.inference_mode():
        wi, bi = randn(32, 8, 3, 3), randn(32)
        check(wi, bi, "inference weight")
        wi.mul_(-1)
        check(wi, bi, "inference weight updated in place")

    xg = random_tensor((2, 24, 5, 5), torch.float32, True, False, GEN)
    gate, wg, bg = torch.rand(2, 24, generator=GEN), randn(40, 24) * 0.2, randn(40)
    gated = torch.ops.regnet_kernels.gated_conv1x1

    def check_gated(what):
        y = gated(xg, gate, wg, bg, None, True)
        ref = torch.relu(torch.einsum("nchw,oc->nohw", to64(xg) * to64(gate)[:, :, None, None], to64(wg))
                         + to64(bg)[None, :, None, None])
        assert_accurate(y, ref, what=what)

    check_gated("gated, first call")
    hits = ext.cpu_packed_weight_stats()["hits"]
    check_gated("gated, second call")
    assert ext.cpu_packed_weight_stats()["hits"] == hits + 1, "a per-call view of the weight missed the cache"
    wg.add_(0.25)
    check_gated("gated, weight updated in place")

"""Triton kernels on CPU tensors under triton's interpreter, against the float64 eager reference.

Run by tests/test_triton_backend.py in a subprocess (TRITON_INTERPRET must be set before triton
is imported, and must not leak into other test modules); runnable directly too:
    TRITON_INTERPRET=1 python -m pytest tests/triton_interp_cases.py
The interpreter costs ~10 ms per 64x32x64 tl.dot step, so shapes are the zoo's layer families at
small spatial sizes; the block sizes are the real ones (the dispatcher's configs, unchanged).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import random  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import regnet_kernels as rk  # noqa: E402
from regnet_kernels import dispatch  # noqa: E402
from regnet_kernels.backends import triton as triton_backend  # noqa: E402
from regnet_kernels.ops.conv_bn_act import conv_bn_act_eager  # noqa: E402
from regnet_kernels.ops.gated_conv1x1 import gated_conv1x1_eager  # noqa: E402
from regnet_kernels.ops.se_gate import se_gate_eager  # noqa: E402
from regnet_kernels.testing import poison_outputs  # noqa: E402
from regnet_kernels.triton.interpreter_fixes import to_dtype  # noqa: E402
from kernel_cases import (  # noqa: E402
    GROUP_WIDTHS, SPATIAL, ConvCase, assert_accurate, iter_layouts, pointwise_cases, random_tensor, stem_cases,
)

LAYOUTS = list(iter_layouts())  # (channels_last, noncontig)
LOW_PRECISION = (torch.float16, torch.bfloat16)
# (residual, relu, channel_sums, bias) cycled over the cases so every combination appears.
EPILOGUES = [(False, True, True, True), (True, True, False, True), (True, False, True, True),
             (False, False, False, False), (True, True, True, False)]


def as64(t):
    return None if t is None else t.to(torch.float64)


def setup_module():
    assert triton_backend.interpreting(), (
        "triton was imported before TRITON_INTERPRET=1 was set; run this file in its own process")


def grouped_cases():
    """Every zoo group width at stride 1 and 2; two groups for the narrow widths (tiles spanning
    several groups) and one for 112/232 (several tiles per group), whose spatial sizes stay small
    because each tile costs 9 taps x up to 8 channel chunks of interpreted tl.dot."""
    rng = random.Random(1234)
    cases = []
    for gw in GROUP_WIDTHS:
        for stride in (1, 2):
            groups = 2 if gw <= 64 else 1
            hw = rng.choice(SPATIAL if gw <= 64 else (1, 7, 8))
            cases.append(ConvCase(rng.choice((1, 2)), gw * groups, gw * groups, hw, rng.choice((hw, hw + 2)), 3,
                                  stride, groups))
    return cases


def run_conv_case(case: ConvCase, dtype, layout, epilogue):
    channels_last, noncontig = layout
    with_res, relu, sums, with_bias = epilogue
    x = random_tensor((case.n, case.c_in, case.h, case.w), dtype, channels_last, noncontig)
    fan_in = case.c_in // case.groups * case.k ** 2
    weight = torch.randn(case.c_out, case.c_in // case.groups, case.k, case.k).to(dtype) / fan_in ** 0.5
    bias = torch.randn(case.c_out).to(dtype) if with_bias else None
    pad = (case.k - 1) // 2
    out_hw = [(s + 2 * pad - case.k) // case.stride + 1 for s in (case.h, case.w)]
    residual = random_tensor((case.n, case.c_out, *out_hw), dtype, channels_last) if with_res else None
    args = dict(bias=bias, stride=case.stride, groups=case.groups, residual=residual, relu=relu, channel_sums=sums)
    with poison_outputs():
        out = rk.conv_bn_act(x, weight, backend="triton", **args)
    ref = conv_bn_act_eager(x.double(), weight.double(), as64(bias), case.stride, pad, case.groups, as64(residual),
                            relu, sums)
    eager = None if dtype == torch.float32 else conv_bn_act_eager(x, weight, bias, case.stride, pad, case.groups,
                                                                  residual, relu, sums)
    what = f"{case} {dtype} layout={layout} epilogue={epilogue}"
    as_pair = lambda r: (r if sums else (r,)) if r is not None else (None, None)  # noqa: E731
    y = as_pair(out)[0]
    assert not channels_last or y.stride(1) == 1 or case.c_out == 1, f"{what}: channels_last input, output not"
    if sums:
        assert out[1].dtype == torch.float32, f"{what}: sums dtype {out[1].dtype}"
    for got, want, own, name in zip(as_pair(out), as_pair(ref), as_pair(eager), ("y", "sums")):
        assert_accurate(got, want, own, what=f"{what} {name}")


@pytest.mark.parametrize("i,case", list(enumerate(grouped_cases())), ids=lambda v: str(v))
def test_grouped_conv_fp32(i, case):
    run_conv_case(case, torch.float32, LAYOUTS[i % len(LAYOUTS)], EPILOGUES[i % len(EPILOGUES)])


@pytest.mark.parametrize("i,case", list(enumerate(grouped_cases()[::2] + grouped_cases()[1::4])), ids=lambda v: str(v))
def test_grouped_conv_low_precision(i, case):
    # Every width at stride 1 plus half of them at stride 2, alternating fp16 and bf16.
    run_conv_case(case, LOW_PRECISION[i % 2], LAYOUTS[i % len(LAYOUTS)], EPILOGUES[(i + 1) % len(EPILOGUES)])


def pointwise_and_stem_cases():
    """Every 1x1 and stem case in fp32, and every other one in fp16 / bf16 as well."""
    cases = pointwise_cases() + stem_cases()
    return [(c, torch.float32) for c in cases] + [(c, LOW_PRECISION[i % 2]) for i, c in enumerate(cases[::2])]


@pytest.mark.parametrize("i,case,dtype", [(i, *cd) for i, cd in enumerate(pointwise_and_stem_cases())],
                         ids=lambda v: str(v))
def test_pointwise_and_stem_conv(i, case, dtype):
    run_conv_case(case, dtype, LAYOUTS[i % len(LAYOUTS)], EPILOGUES[i % len(EPILOGUES)])


def se_params(c: int, c_se: int, dtype, conv_shaped: bool = False):
    """FC weights, or (conv_shaped) the 1x1 conv weights [out, in, 1, 1] the op also takes."""
    tail = (1, 1) if conv_shaped else ()
    return (torch.randn(c_se, c, *tail).to(dtype) / c ** 0.5, torch.randn(c_se).to(dtype),
            torch.randn(c, c_se, *tail).to(dtype) / c_se ** 0.5, torch.randn(c).to(dtype))


# (n, c, c_se, h, w): the zoo's SE widths are a quarter of the block input width (any integer).
SE_SHAPES = [(2, 48, 12, 7, 7), (1, 232, 58, 13, 15), (2, 104, 26, 1, 1), (1, 8, 2, 15, 13), (2, 200, 50, 8, 8)]


@pytest.mark.parametrize("i,shape,dtype", [(i, s, d) for i, s in enumerate(SE_SHAPES)
                                           for d in (torch.float32, LOW_PRECISION[i % 2])], ids=lambda v: str(v))
@pytest.mark.parametrize("given_sums", [False, True], ids=["mean_from_x", "sums_given"])
def test_se_gate(i, shape, dtype, given_sums):
    n, c, c_se, h, w = shape
    channels_last, noncontig = LAYOUTS[i % len(LAYOUTS)]
    with_res, relu = EPILOGUES[i % len(EPILOGUES)][:2]
    x = random_tensor((n, c, h, w), dtype, channels_last, noncontig)
    params = se_params(c, c_se, dtype, conv_shaped=i % 2 == 1)
    residual = random_tensor((n, c, h, w), dtype, not channels_last) if with_res else None
    # Given sums are what K2 produces: fp32 sums of x (the triton conv's are checked above).
    sums = x.sum((2, 3), dtype=torch.float32) if given_sums else None
    with poison_outputs():
        out = rk.se_gate(x, *params, residual=residual, relu=relu, sums=sums, backend="triton")
    ref = se_gate_eager(x.double(), *map(as64, params), as64(residual), relu, as64(sums))
    eager = se_gate_eager(x, *params, residual, relu, sums)
    assert out.stride(1) == 1 or not channels_last or c == 1
    assert_accurate(out, ref, eager, what=f"se_gate {shape} {dtype} layout={(channels_last, noncontig)}")


# (n, c_in, c_out, h, w)
GATED_SHAPES = [(2, 48, 24, 7, 7), (1, 232, 104, 8, 8), (2, 13, 40, 1, 1), (1, 56, 152, 13, 15), (2, 24, 24, 15, 13)]


@pytest.mark.parametrize("i,shape,dtype", [(i, s, d) for i, s in enumerate(GATED_SHAPES)
                                           for d in (torch.float32, LOW_PRECISION[i % 2])], ids=lambda v: str(v))
def test_gated_conv1x1(i, shape, dtype):
    n, c_in, c_out, h, w = shape
    channels_last, noncontig = LAYOUTS[i % len(LAYOUTS)]
    with_res, relu, _, with_bias = EPILOGUES[i % len(EPILOGUES)]
    x = random_tensor((n, c_in, h, w), dtype, channels_last, noncontig)
    # fp32 gate as se_excite gives it, or one in x's dtype (both accepted).
    gate = torch.rand(n, c_in, dtype=torch.float32 if i % 2 == 0 else dtype)
    weight = torch.randn(c_out, c_in).to(dtype) / c_in ** 0.5
    bias = torch.randn(c_out).to(dtype) if with_bias else None
    residual = random_tensor((n, c_out, h, w), dtype, channels_last) if with_res else None
    with poison_outputs():
        out = rk.gated_conv1x1(x, gate, weight, bias, residual=residual, relu=relu, backend="triton")
    ref = gated_conv1x1_eager(x.double(), gate.double(), weight.double(), as64(bias), as64(residual), relu)
    eager = gated_conv1x1_eager(x, gate, weight, bias, residual, relu)
    assert_accurate(out, ref, eager, what=f"gated_conv1x1 {shape} {dtype} layout={(channels_last, noncontig)}")


def test_poisoned_outputs_are_fully_written():
    """The NaN poison is really applied here (so the NaN checks above can fail), and every
    kernel output overwrites it."""
    x = random_tensor((1, 16, 7, 7), torch.float32)
    with poison_outputs():
        from regnet_kernels.ops.checks import empty_like_layout
        assert torch.isnan(empty_like_layout(x, x.shape)).all()
        y, sums = rk.conv_bn_act(x, torch.randn(16, 8, 3, 3), groups=2, channel_sums=True, backend="triton")
    assert not torch.isnan(y).any() and not torch.isnan(sums).any()


def test_auto_never_picks_interpreted_triton():
    """The interpreter serves only when forced; auto on CPU tensors goes to cpu or eager."""
    x = random_tensor((1, 16, 7, 7), torch.float32)
    name, _ = dispatch.select("conv_bn_act", None, x=x, weight=torch.randn(16, 8, 3, 3), bias=None, stride=1,
                              padding=1, groups=2, residual=None, relu=True, channel_sums=False)
    assert name in ("cpu", "eager")


@triton.jit
def round_kernel(x_ptr, y_ptr, n, EMULATE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    v = tl.load(x_ptr + i, mask=i < n)
    tl.store(y_ptr + i, to_dtype(v, tl.bfloat16, EMULATE), mask=i < n)


def test_interpreter_bf16_rounding_workaround_matches_torch():
    """to_dtype(EMULATE_BF16=True) rounds fp32 to bf16 exactly as torch (and the GPU) do, while the
    interpreter's own cast truncates: the reason interpreter_fixes exists."""
    x = torch.randn(4096) * torch.logspace(-20, 20, 4096)
    want = x.to(torch.bfloat16)
    for emulate, should_match in ((True, True), (False, False)):
        y = torch.empty(4096, dtype=torch.bfloat16)
        round_kernel[(1,)](x, y, x.numel(), EMULATE=emulate, BLOCK=4096)
        assert torch.equal(y.view(torch.int16), want.view(torch.int16)) == should_match, f"EMULATE={emulate}"


def test_torch_compile_runs_interpreted_ops_behind_a_graph_break():
    """Under the interpreter the backend hides its ops from torch.compile (they cannot run on
    FakeTensors), so a compiled function still gets the kernels' results, through a graph break."""
    x = random_tensor((1, 16, 7, 7), torch.float32)
    weight, gate, w_proj = torch.randn(16, 8, 3, 3), torch.rand(1, 16), torch.randn(8, 16)

    def block(x):
        y = rk.conv_bn_act(x, weight, groups=2, backend="triton") * 0.5
        return rk.gated_conv1x1(y, gate, w_proj, backend="triton") + 1

    torch._dynamo.reset()
    got = torch.compile(block, backend="aot_eager")(x)
    y = conv_bn_act_eager(x.double(), weight.double(), None, 1, 1, 2, None, True, False) * 0.5
    want = gated_conv1x1_eager(y, gate.double(), w_proj.double(), None, None, True) + 1
    assert_accurate(got, want, what="torch.compile over interpreted triton ops")


@pytest.mark.parametrize("op,args", [
    ("triton_conv_bn_act", lambda: (random_tensor((1, 16, 5, 5)), torch.randn(16, 8, 3, 3), torch.randn(16), 2, 1, 2,
                                    None, True)),
    ("triton_conv_bn_act_sums", lambda: (random_tensor((1, 16, 5, 5)), torch.randn(16, 16, 1, 1), None, 1, 0, 1,
                                         random_tensor((1, 16, 5, 5)), False)),
    ("triton_se_gate", lambda: (random_tensor((1, 16, 5, 5)), torch.randn(4, 16), torch.randn(4), torch.randn(16, 4),
                                torch.randn(16), None, True, None)),
    ("triton_gated_conv1x1", lambda: (random_tensor((1, 16, 5, 5)), torch.rand(1, 16), torch.randn(8, 16), None, None,
                                      True)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck_schema_and_autograd_registration(op, args):
    """torch.library.opcheck's checks that can run here. test_faketensor and the aot_dispatch
    checks run the op on FakeTensors, which the interpreter cannot (see backends/triton.py); the
    fake path is covered by test_triton_backend's compile capture outside the interpreter."""
    torch.library.opcheck(getattr(torch.ops.regnet_kernels, op).default, args(),
                          test_utils=("test_schema", "test_autograd_registration"))

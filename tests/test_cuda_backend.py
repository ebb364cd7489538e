"""The cuda backend (csrc/cuda/, regnet_kernels/backends/cuda.py), checked three ways (DESIGN.md §3):

(a) compile evidence: every kernel compiles for sm_80 and sm_90 with no spills (needs nvcc);
(b) the built extension has CUDA kernels registered for the ops when it was built with CUDA;
(c) without a GPU, the backend refuses with a clear reason, and a forced backend says why;
(d) a CPU twin of the kernels' shared index/epilogue math (csrc/shared/) against float64 eager;
(e) on a GPU, the kernels against the float64 eager reference (skipped, with the reason, without one).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import zlib

import pytest
import torch

from kernel_cases import assert_accurate, grouped_cases, random_tensor, rel_err
from regnet_kernels import _ext, dispatch
from regnet_kernels.ops.conv_bn_act import conv_bn_act, conv_bn_act_eager
from regnet_kernels.ops.se_gate import se_gate, se_gate_eager
from regnet_kernels.testing import poison_outputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

BUILT_WITH_CUDA = _ext.build_info().get("cuda") == "yes"
HAS_GPU = torch.cuda.is_available()
NATIVE_OPS = ("conv_bn_act", "conv_bn_act_sums", "se_gate")


# (a) compile evidence --------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: cannot compile the CUDA kernels here")
def test_compile_report_every_kernel_for_both_archs_without_spills():
    import cuda_compile_report as report

    rows = report.cuda_report()
    print("\n" + report.format_table(rows))
    assert report.problems(rows) == []
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    kernels = {r["kernel"].split("<")[0] for r in rows}
    assert {"grouped_conv3x3_nhwc_kernel", "channel_sums_nhwc_kernel", "se_excite_kernel",
            "se_apply_nhwc_kernel"} <= kernels
    # fp32, fp16 and bf16, with and without the K2 sums, per arch.
    conv_rows = [r for r in rows if r["kernel"].startswith("grouped_conv3x3_nhwc_kernel")]
    assert len(conv_rows) == 3 * 2 * 2


def test_report_parser_reads_ptxas_output():
    import cuda_compile_report as report

    text = """ptxas info    : Compiling entry function '_Z6kernelILb1EEvv' for 'sm_90'
ptxas info    : Function properties for _Z6kernelILb1EEvv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 9344 bytes smem, 536 bytes cmem[0]"""
    (row,) = report.parse_ptxas(text, "x.cu")
    assert (row["arch"], row["registers"], row["spill_stores"], row["spill_loads"], row["smem"]) == \
        ("sm_90", 40, 4, 4, 9344)
    assert row["kernel"].startswith("kernel<true>")
    assert report.problems([row])  # a spill is a problem


# (b) registration --------------------------------------------------------------------------------

def _cuda_build_expected() -> bool:
    """What setup.py decides for this environment (REGNET_KERNELS_CUDA: 1 on, 0 off, auto)."""
    flag = os.environ.get("REGNET_KERNELS_CUDA", "auto").lower()
    if flag in ("0", "1"):
        return flag == "1"
    return torch.version.cuda is not None and bool(os.environ.get("CUDA_HOME") or shutil.which("nvcc"))


@pytest.mark.skipif(_ext.load() is None, reason="regnet_kernels._C is not built")
def test_extension_built_with_cuda_when_expected_and_ops_registered():
    if not BUILT_WITH_CUDA:
        # CI builds and tests in one environment, so there a missing CUDA build is a build bug; a
        # developer may have built with REGNET_KERNELS_CUDA=0 to save minutes.
        assert not (os.environ.get("CI") and _cuda_build_expected()), "setup.py should have built the CUDA kernels"
        pytest.skip("extension built without CUDA (REGNET_KERNELS_CUDA=0, or no nvcc / CPU-only torch)")
    for op in NATIVE_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"regnet_kernels::{op}", "CUDA"), op


# (c) refusal with reasons -------------------------------------------------------------------------

def _conv_args(device="cpu", k=3, channels_last=True, dtype=torch.float32):
    x = random_tensor((1, 16, 7, 7), dtype, channels_last=channels_last).to(device)
    w = torch.randn(16, 8 if k == 3 else 16, k, k, dtype=dtype, device=device)
    return dict(x=x, weight=w, bias=torch.randn(16, dtype=dtype, device=device), stride=1, padding=(k - 1) // 2,
                groups=2 if k == 3 else 1, residual=None, relu=True, channel_sums=False)


def _cuda_reasons(op, **args):
    return dict(dispatch.explain(op, **args))["cuda"]


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU refusal")
def test_supports_names_why_it_cannot_run_here():
    reasons = _cuda_reasons("conv_bn_act", **_conv_args())
    text = "; ".join(reasons)
    if BUILT_WITH_CUDA:
        assert "no CUDA GPU is available" in text
    else:
        assert "without CUDA" in text or "not built" in text
    assert "x is on cpu" in text
    with pytest.raises(dispatch.BackendUnavailable, match="backend 'cuda' cannot serve"):
        conv_bn_act(torch.randn(1, 16, 7, 7), torch.randn(16, 8, 3, 3), groups=2, backend="cuda")
    se = _cuda_reasons("se_gate", x=torch.randn(1, 16, 4, 4), w1=torch.randn(4, 16), b1=torch.randn(4),
                       w2=torch.randn(16, 4), b2=torch.randn(16))
    assert any("no CUDA GPU" in r or "CUDA" in r for r in se)


def test_supports_refuses_shapes_and_layouts_it_does_not_implement():
    assert any("only 3x3" in r for r in _cuda_reasons("conv_bn_act", **_conv_args(k=1)))
    assert any("channels_last" in r for r in _cuda_reasons("conv_bn_act", **_conv_args(channels_last=False)))
    args = _conv_args()
    args.update(channel_sums=True, residual=torch.randn(1, 16, 7, 7))
    assert any("K2 kernel takes no residual" in r for r in _cuda_reasons("conv_bn_act", **args))


@pytest.mark.skipif(not BUILT_WITH_CUDA, reason="extension built without CUDA")
@pytest.mark.parametrize("op", NATIVE_OPS)
def test_cuda_kernels_reject_cpu_tensors_with_a_clear_error(op):
    # Call our CUDA kernel itself (not whatever the CPU key holds) with CPU tensors: its first check
    # must stop it before anything touches device memory.
    from regnet_kernels.backends.native import native_op

    a = _conv_args()
    args = {"conv_bn_act": (a["x"], a["weight"], a["bias"], 1, 1, 2, None, True),
            "conv_bn_act_sums": (a["x"], a["weight"], a["bias"], 1, 1, 2, True),
            "se_gate": (a["x"], torch.randn(4, 16), torch.randn(4), torch.randn(16, 4), torch.randn(16), None, True,
                        None)}[op]
    cuda_only = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    with pytest.raises(RuntimeError, match=rf"{op} \(CUDA\): x must be a CUDA tensor"):
        native_op(op).default.redispatch(cuda_only, *args)


# (d) CPU twin of the shared math -------------------------------------------------------------------

@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler for the CPU twin")
    lib = tmp_path_factory.mktemp("twin") / "cpu_twin.so"
    subprocess.run([cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror", f"-I{REPO}/csrc",
                    f"{REPO}/csrc/shared/cpu_twin.cpp", "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(None)


def _nhwc(t):
    """Dense channels-last fp32 copy, whose memory is [N, H, W, C]."""
    return t.to(torch.float32).contiguous(memory_format=torch.channels_last)


def test_twin_helper_selftest(twin):
    assert twin.regnet_twin_helper_selftest() == 0


@pytest.mark.parametrize("case", grouped_cases(seed=3), ids=str)
@pytest.mark.parametrize("with_residual,with_sums", [(True, False), (False, True)])
def test_twin_grouped_conv_matches_float64_eager(twin, case, with_residual, with_sums):
    g = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    x = random_tensor((case.n, case.c_in, case.h, case.w), generator=g)
    w = torch.randn(case.c_out, case.c_in // case.groups, 3, 3, generator=g)
    b = torch.randn(case.c_out, generator=g)
    oh, ow = (case.h - 1) // case.stride + 1, (case.w - 1) // case.stride + 1
    res = random_tensor((case.n, case.c_out, oh, ow), generator=g) if with_residual else None
    ref = conv_bn_act_eager(x.double(), w.double(), b.double(), case.stride, 1, case.groups,
                            res.double() if res is not None else None, True, with_sums)
    y = torch.full((case.n, case.c_out, oh, ow), float("nan")).contiguous(memory_format=torch.channels_last)
    sums = torch.zeros(case.n, case.c_out) if with_sums else None
    xd, wd, rd = _nhwc(x), w.contiguous(), _nhwc(res) if res is not None else None
    rc = twin.regnet_twin_grouped_conv3x3(_ptr(xd), case.n, case.c_in, case.h, case.w, _ptr(wd), _ptr(b), _ptr(rd),
                                          case.c_out, case.groups, case.stride, 1, _ptr(y), _ptr(sums))
    assert rc == 0
    if with_sums:
        assert_accurate(y, ref[0], what=f"twin conv {case}")
        assert rel_err(sums, ref[1]) <= 1e-5, "twin K2 sums"
    else:
        assert_accurate(y, ref, what=f"twin conv {case}")


@pytest.mark.parametrize("n,c,c_se,h,w", [(1, 24, 8, 7, 7), (2, 56, 14, 5, 3), (3, 232, 58, 1, 1)])
@pytest.mark.parametrize("given_sums", [False, True])
def test_twin_se_gate_matches_float64_eager(twin, n, c, c_se, h, w, given_sums):
    g = torch.Generator().manual_seed(n * 1000 + c)
    x = random_tensor((n, c, h, w), generator=g)
    res = random_tensor((n, c, h, w), generator=g)
    w1, b1 = torch.randn(c_se, c, generator=g), torch.randn(c_se, generator=g)
    w2, b2 = torch.randn(c, c_se, generator=g), torch.randn(c, generator=g)
    sums = x.sum((2, 3), dtype=torch.float64).float() if given_sums else None
    ref = se_gate_eager(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), res.double(), True,
                        sums.double() if sums is not None else None)
    xd, rd = _nhwc(x), _nhwc(res)
    y = torch.full_like(xd, float("nan"))
    rc = twin.regnet_twin_se_gate(_ptr(xd), n, c, h, w, _ptr(w1), _ptr(b1), _ptr(w2), _ptr(b2), c_se, _ptr(rd), 1,
                                  _ptr(sums.contiguous() if sums is not None else None), _ptr(y))
    assert rc == 0
    assert_accurate(y, ref, what="twin se_gate")


# (e) GPU equivalence -----------------------------------------------------------------------------

gpu = pytest.mark.skipif(not (HAS_GPU and BUILT_WITH_CUDA),
                         reason="needs a CUDA GPU and regnet_kernels._C built with CUDA"
                                f" (GPU: {HAS_GPU}, built with CUDA: {BUILT_WITH_CUDA})")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", grouped_cases(seed=0), ids=str)
@pytest.mark.parametrize("noncontig", [False, True])
def test_gpu_conv_bn_act_matches_float64_eager(case, dtype, noncontig):
    g = torch.Generator().manual_seed(zlib.crc32(f"{case}{dtype}".encode()))
    x = random_tensor((case.n, case.c_in, case.h, case.w), dtype, noncontig=noncontig, generator=g).cuda()
    w = (torch.randn(case.c_out, case.c_in // case.groups, 3, 3, generator=g) * 0.2).to(dtype).cuda()
    b = torch.randn(case.c_out, generator=g).to(dtype).cuda()
    oh, ow = (case.h - 1) // case.stride + 1, (case.w - 1) // case.stride + 1
    res = random_tensor((case.n, case.c_out, oh, ow), dtype, generator=g).cuda()
    with poison_outputs():
        out = conv_bn_act(x, w, b, stride=case.stride, groups=case.groups, residual=res, backend="cuda")
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = conv_bn_act_eager(x.double(), w.double(), b.double(), case.stride, 1, case.groups, res.double(), True, False)
    eager = conv_bn_act_eager(x, w, b, case.stride, 1, case.groups, res, True, False)
    assert_accurate(out, ref, eager, what=f"conv {case} {dtype}")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", grouped_cases(seed=1, per_width=1), ids=str)
def test_gpu_conv_bn_act_sums_matches_float64_eager(case, dtype):
    x = random_tensor((case.n, case.c_in, case.h, case.w), dtype).cuda()
    w = (torch.randn(case.c_out, case.c_in // case.groups, 3, 3) * 0.2).to(dtype).cuda()
    b = torch.randn(case.c_out).to(dtype).cuda()
    with poison_outputs():
        y, sums = conv_bn_act(x, w, b, stride=case.stride, groups=case.groups, channel_sums=True, backend="cuda")
    y_ref, _ = conv_bn_act_eager(x.double(), w.double(), b.double(), case.stride, 1, case.groups, None, True, True)
    y_eager = conv_bn_act_eager(x, w, b, case.stride, 1, case.groups, None, True, False)
    assert_accurate(y, y_ref, y_eager, what=f"K2 y {case} {dtype}")
    # The sums are of the stored (rounded) y, so compare them with sums of y itself.
    assert rel_err(sums, y.double().sum((2, 3))) <= 1e-5


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,c,c_se,h,w", [(1, 48, 12, 7, 7), (2, 232, 58, 15, 13), (2, 440, 110, 1, 1)])
@pytest.mark.parametrize("given_sums", [False, True])
def test_gpu_se_gate_matches_float64_eager(dtype, n, c, c_se, h, w, given_sums):
    x = random_tensor((n, c, h, w), dtype).cuda()
    res = random_tensor((n, c, h, w), dtype).cuda()
    w1, b1 = (torch.randn(c_se, c) * 0.1).to(dtype).cuda(), torch.randn(c_se).to(dtype).cuda()
    w2, b2 = (torch.randn(c, c_se) * 0.1).to(dtype).cuda(), torch.randn(c).to(dtype).cuda()
    sums = x.float().sum((2, 3)) if given_sums else None
    with poison_outputs():
        out = se_gate(x, w1, b1, w2, b2, residual=res, relu=True, sums=sums, backend="cuda")
    ref = se_gate_eager(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), res.double(), True,
                        sums.double() if sums is not None else None)
    eager = se_gate_eager(x, w1, b1, w2, b2, res, True, sums)
    assert_accurate(out, ref, eager, what=f"se_gate {dtype}")


@gpu
def test_gpu_native_ops_pass_opcheck_and_reject_bad_input():
    from regnet_kernels.backends.native import native_op

    x = random_tensor((2, 32, 9, 9)).cuda()
    w, b = torch.randn(32, 8, 3, 3).cuda(), torch.randn(32).cuda()
    torch.library.opcheck(native_op("conv_bn_act"), (x, w, b, 2, 1, 4, None, True))
    torch.library.opcheck(native_op("conv_bn_act_sums"), (x, w, b, 1, 1, 4, True))
    with pytest.raises(RuntimeError, match="only 3x3"):
        native_op("conv_bn_act")(x, torch.randn(32, 32, 1, 1).cuda(), None, 1, 0, 1, None, True)
    with pytest.raises(RuntimeError, match="channels-last"):
        native_op("conv_bn_act")(x.contiguous(), w, b, 1, 1, 4, None, True)
    with pytest.raises(RuntimeError, match="dtype"):
        native_op("conv_bn_act")(x, w.half(), b, 1, 1, 4, None, True)
    with pytest.raises(RuntimeError, match="weight must be"):
        native_op("conv_bn_act")(x, torch.randn(32, 4, 3, 3).cuda(), b, 1, 1, 4, None, True)

"""The triton backend: kernel equivalence under triton's CPU interpreter, the dispatcher's
reasons, and torch.compile tracing.

The equivalence cases live in tests/triton_interp_cases.py and run in a subprocess with
TRITON_INTERPRET=1: the variable must be set before triton is first imported, and setting it in
this process would turn triton into the interpreter for every later test module (and for
torch.compile), so it stays out of this process. The other tests here run in-process without it.
"""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(__file__))

import regnet_kernels as rk  # noqa: E402
from regnet_kernels.backends import triton as triton_backend  # noqa: E402
from kernel_cases import random_tensor  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_match_float64_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/triton_interp_cases.py"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"interpreted triton cases failed:\n{res.stdout[-8000:]}\n{res.stderr[-3000:]}"
    assert " passed" in res.stdout and "no tests ran" not in res.stdout, res.stdout[-2000:]


def conv_args(x=None, **over):
    x = random_tensor((2, 16, 7, 7)) if x is None else x
    args = dict(x=x, weight=torch.randn(16, 8, 3, 3, dtype=x.dtype, device=x.device), bias=None, stride=1,
                padding=1, groups=2, residual=None, relu=True, channel_sums=False)
    args.update(over)
    return args


def se_args(dtype=torch.float32, **over):
    x = random_tensor((2, 16, 5, 5), dtype)
    args = dict(x=x, w1=torch.randn(4, 16, dtype=dtype), b1=torch.randn(4, dtype=dtype),
                w2=torch.randn(16, 4, dtype=dtype), b2=torch.randn(16, dtype=dtype), residual=None, relu=False,
                sums=None)
    args.update(over)
    return args


def test_cpu_tensors_need_forcing_and_the_interpreter(monkeypatch):
    args = conv_args()
    assert any("forced" in r for r in triton_backend.conv_bn_act_supports(**args))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert any("TRITON_INTERPRET=1" in r for r in triton_backend.conv_bn_act_supports(forced=True, **args))
    with pytest.raises(rk.BackendUnavailable, match="TRITON_INTERPRET=1"):
        rk.conv_bn_act(args["x"], args["weight"], groups=2, backend="triton")
    # auto never lands on triton for CPU tensors
    assert dict(rk.explain("conv_bn_act", **args))["triton"]


def test_reasons_for_arguments_the_kernels_do_not_take(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    only = lambda reasons, text: [r for r in reasons if text in r]  # noqa: E731
    x64 = random_tensor((2, 16, 7, 7), torch.float64)
    assert only(triton_backend.conv_bn_act_supports(forced=True, **conv_args(x64)), "dtype torch.float64")
    sums64 = torch.zeros(2, 16, dtype=torch.float64)
    assert only(triton_backend.se_gate_supports(forced=True, **se_args(sums=sums64)), "sums must be float32")
    mixed = se_args(torch.float16, w1=torch.randn(4, 16))
    assert only(triton_backend.se_gate_supports(forced=True, **mixed), "differs from x's")
    grad = conv_args(weight=torch.randn(16, 8, 3, 3, requires_grad=True))
    assert only(triton_backend.conv_bn_act_supports(forced=True, **grad), "no backward")
    # 2**32 elements on the meta device: no memory, but past int32 indexing
    huge = conv_args(torch.empty((2**12, 16, 256, 256), device="meta"))
    assert only(triton_backend.conv_bn_act_supports(forced=True, **huge), "2**31")
    gated = dict(x=random_tensor((1, 8, 3, 3)), gate=torch.rand(1, 8), weight=torch.randn(4, 8), bias=None,
                 residual=None, relu=True)
    if triton_backend.interpreting():
        assert triton_backend.gated_conv1x1_supports(forced=True, **gated) == []
    monkeypatch.setattr(triton_backend, "IMPORT_ERROR", "ImportError: No module named 'triton'")
    reasons = triton_backend.gated_conv1x1_supports(forced=True, **gated)
    assert len(reasons) == 1 and "triton not importable" in reasons[0]


def test_torch_compile_fullgraph_traces_every_kernel():
    """torch.compile(fullgraph=True) over the backend's run functions: dynamo keeps the ops in one
    graph and AOT decomposes each triton_op into its kernel launches. Graph capture only (no GPU
    to run on). Under the interpreter this cannot work: wrap_triton returns the raw
    InterpretedFunction, which cannot run on FakeTensors."""
    if triton_backend.interpreting():
        pytest.skip("triton was imported under TRITON_INTERPRET=1 in this process")
    from torch._dynamo.backends.common import aot_autograd
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from triton.runtime.autotuner import Autotuner

    graphs = []

    class Captured(Exception):
        pass

    def capture(gm, example_inputs):
        graphs.append(gm)
        raise Captured

    def block(x, w, w1, b1, w2, b2, gate, w_proj):
        y, sums = triton_backend.conv_bn_act_run(x, w, None, 1, 1, 2, None, True, True)
        y = triton_backend.se_gate_run(y, w1, b1, w2, b2, None, False, sums)
        return triton_backend.gated_conv1x1_run(y, gate, w_proj, None, x, True)

    x = random_tensor((2, 16, 7, 7))
    inputs = (x, torch.randn(16, 8, 3, 3), torch.randn(4, 16), torch.randn(4), torch.randn(16, 4), torch.randn(16),
              torch.rand(2, 16), torch.randn(16, 16))
    torch._dynamo.reset()
    with pytest.raises(Exception) as err:
        torch.compile(block, fullgraph=True, backend=aot_autograd(fw_compiler=capture))(*inputs)
    assert "Captured" in repr(err.value) or isinstance(err.value, Captured), err.value
    assert len(graphs) == 1
    launches = [n for n in graphs[0].graph.nodes if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in launches]
    # torch wraps a kernel launched with num_warps in a one-config Autotuner; .fn is the kernel
    names = [(k.fn if isinstance(k, Autotuner) else k).__name__ for k in kernels]
    assert names == ["conv_bn_act_kernel", "se_fc_kernel", "se_fc_kernel", "gate_apply_kernel", "conv_bn_act_kernel"]

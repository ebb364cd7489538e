"""The native extension end to end: it builds, reports how, runs a small CPU op; and when it is
missing, one clear warning and the pure-PyTorch paths keep working."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from regnet_kernels import _ext
from regnet_kernels.backends.native import native_op
from regnet_kernels.testing import poison_outputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info_reports_the_build():
    info = _ext.build_info()
    assert info, f"regnet_kernels._C did not load: {_ext.error()}"
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["cuda"] in ("yes", "no")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("shape", [(2, 24, 7, 9), (1, 5, 1, 1), (3, 40, 13, 13), (2, 104, 5, 6), (1, 440, 7, 7),
                                   (2, 136, 3, 3, "strided")], ids=str)
def test_channel_sums_cpu_op(shape, dtype):
    # Channel counts cover the 4-vector register blocks, single vectors and a masked tail.
    strided = shape[-1] == "strided"
    shape = shape[:4]
    x = (torch.randn(shape) + 0.5).to(dtype).to(memory_format=torch.channels_last)
    if strided:  # a view with a pixel stride larger than C, as a channel slice of a wider map
        x = torch.randn(shape[0], shape[1] + 24, shape[2], 2 * shape[3]).to(dtype).to(
            memory_format=torch.channels_last)[:, 8:8 + shape[1], :, ::2]
    with poison_outputs():
        out = native_op("channel_sums")(x)
    ref = x.double().sum((2, 3))
    assert out.dtype == torch.float32 and out.shape == shape[:2]
    tol = 1e-5  # fp32 accumulation; bf16 inputs are exact in fp32, so the same bound holds
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() <= tol
    with pytest.raises(RuntimeError, match="channels-last"):
        native_op("channel_sums")(torch.randn(2, 8, 3, 3))


def test_missing_extension_warns_once_and_eager_works():
    script = textwrap.dedent("""
        import sys, warnings, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "regnet_kernels._C":
                    raise ImportError("simulated: extension not built")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, regnet_kernels as rk
            x = torch.randn(2, 16, 5, 5).to(memory_format=torch.channels_last)
            y = rk.conv_bn_act(x, torch.randn(16, 8, 3, 3), torch.randn(16), groups=2)
            y = rk.conv_bn_act(y, torch.randn(16, 8, 3, 3), torch.randn(16), groups=2)
        ours = [w for w in caught if "regnet_kernels._C is not available" in str(w.message)]
        print(len(ours), tuple(y.shape), rk.explain("conv_bn_act", x=x, weight=torch.randn(16, 8, 3, 3),
              bias=None, stride=1, padding=1, groups=2, residual=None, relu=True, channel_sums=False)[2])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    count, rest = out.stdout.strip().split(" ", 1)
    assert count == "1", out.stdout
    assert "(2, 16, 5, 5)" in rest and "cpu" in rest and "not" in rest.lower(), rest

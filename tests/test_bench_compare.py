"""bench/compare.py's machinery (not its timings): the cuDNN baseline's wiring (checked on the CPU
with eager twins of the cuDNN functions), the peak-memory measurement, and a whole row."""

import copy
import os
import sys

import pytest
import torch

import regnet

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import compare  # noqa: E402
from test_optimize import _randomize_bn  # noqa: E402


@pytest.mark.parametrize("name", ["regnetx_002", "regnety_002"])
def test_cudnn_baseline_wiring_matches_the_model(name):
    torch.manual_seed(0)
    model = _randomize_bn(regnet.create_model(name))
    before = copy.deepcopy(model.state_dict())
    fused = compare.CudnnFusedRegNet(model, *compare.CudnnFusedRegNet.eager_twins()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (out - ref).abs().max().item() <= 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the source model was changed"


def test_peak_memory_sees_live_tensors():
    mib = 2 ** 20

    def fn(x):
        a = torch.empty(24 * mib // 4)  # 24 MiB live until b is made
        b = torch.empty(8 * mib // 4) + a[: 8 * mib // 4]
        del a
        return b.sum() + x.sum()

    peak = compare.peak_memory_mb(fn, torch.randn(4))
    assert 24 <= peak <= 40, peak


def test_row_is_checked_timed_and_measured():
    rows = [compare.run_row("regnetx_002", 1, cfg, min_time=0.05, resolution=64)
            for cfg in ("eager_nchw", "optimize")]
    compare.add_ratios(rows)
    for r in rows:
        assert r.skipped is None, r.skipped
        assert r.images_per_s > 0 and r.rel_err_vs_eager <= 1e-3 and r.peak_mb > 0
    table = compare.markdown(rows)
    assert "| regnetx_002 | 1 | optimize |" in table and "peak MB" in table


def test_compile_rows_do_not_share_a_graph():
    """Two compile rows of copies of one model must each get their own graph (dynamo caches per
    code object; a shared graph would time the first row's configuration twice)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    before = counters["stats"]["unique_graphs"]
    plain, xin = compare._compile(model, x, freezing=False)
    frozen, _ = compare._compile(model, x, freezing=True)
    assert counters["stats"]["unique_graphs"] - before == 2
    with torch.no_grad():
        ref = model(x)
        for _ in range(2):  # interleaved calls: no recompilation, both still right
            for fn in (plain, frozen):
                assert (fn(xin) - ref).abs().max().item() <= 1e-5
    assert counters["stats"]["unique_graphs"] - before == 2

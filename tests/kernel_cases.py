"""Shapes and accuracy rules shared by every backend's kernel tests.

Shapes come from the zoo's layer families: group widths 8..232, stride 1 and 2, odd and 1x1
spatial sizes, batch 1 and >1, plus the stem and 1x1 convs. Accuracy is judged against a
float64 eager reference: fp32 relative error <= 1e-5; fp16/bf16 no worse than 2x eager
PyTorch's own error at that dtype.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch

GROUP_WIDTHS = (8, 16, 24, 48, 56, 64, 112, 232)
SPATIAL = (1, 7, 13, 15, 8)
FP32_RTOL = 1e-5


@dataclass(frozen=True)
class ConvCase:
    n: int
    c_in: int
    c_out: int
    h: int
    w: int
    k: int
    stride: int
    groups: int

    def __str__(self):
        return f"n{self.n}_c{self.c_in}to{self.c_out}_{self.h}x{self.w}_k{self.k}_s{self.stride}_g{self.groups}"


def grouped_cases(seed: int = 0, per_width: int = 2, max_groups: int = 3) -> List[ConvCase]:
    """Grouped 3x3 convs for every zoo group width, random spatial size, stride and batch."""
    rng = random.Random(seed)
    cases = []
    for gw in GROUP_WIDTHS:
        for i in range(per_width):
            groups = rng.randint(1, max_groups)
            c = gw * groups
            hw = rng.choice(SPATIAL)
            cases.append(ConvCase(rng.choice((1, 2)), c, c, hw, rng.choice((hw, hw + 2)), 3, (1, 2)[i % 2], groups))
    return cases


def pointwise_cases(seed: int = 1) -> List[ConvCase]:
    """1x1 convs (stride 1, and stride 2 for projections), including widths not multiple of 8."""
    rng = random.Random(seed)
    out = []
    for c_in, c_out, stride in ((24, 48, 1), (32, 24, 2), (56, 152, 2), (104, 104, 1), (13, 40, 1), (232, 8, 1)):
        hw = rng.choice(SPATIAL)
        out.append(ConvCase(rng.choice((1, 2)), c_in, c_out, hw, hw, 1, stride, 1))
    return out


def stem_cases() -> List[ConvCase]:
    # 3 input channels, groups 1: the RGB micro-kernel (csrc/cpu/kernels_impl.h) at the zoo's
    # stride 2 and 32 outputs, and at stride 1, other output widths (1 to 3 vectors, a partial
    # last one) and rows of 1 to 29 output pixels (several pixel tiles, a short last one).
    return [ConvCase(2, 3, 32, 15, 15, 3, 2, 1), ConvCase(1, 3, 32, 16, 9, 3, 2, 1),
            ConvCase(1, 3, 24, 9, 29, 3, 1, 1), ConvCase(2, 3, 48, 5, 57, 3, 2, 1), ConvCase(1, 3, 8, 1, 1, 3, 1, 1)]


def out_hw(case: ConvCase):
    """(H_out, W_out) of a case's conv with 'same' padding."""
    pad = (case.k - 1) // 2
    return ((case.h + 2 * pad - case.k) // case.stride + 1, (case.w + 2 * pad - case.k) // case.stride + 1)


def random_tensor(shape, dtype=torch.float32, channels_last: bool = True, noncontig: bool = False,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fresh normal values (never zeros/ones only); optionally channels_last or a strided view."""
    if noncontig:
        # A view with a gap in W: neither contiguous layout, but channel stride still 1 when channels_last.
        n, c, h, w = shape
        big = torch.randn((n, c, h, 2 * w), generator=generator).to(dtype)
        if channels_last:
            big = big.to(memory_format=torch.channels_last)
        return big[:, :, :, ::2]
    t = torch.randn(shape, generator=generator).to(dtype)
    return t.to(memory_format=torch.channels_last) if channels_last else t


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (normwise, so values near zero do not dominate)."""
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if torch.isnan(out64).any():
        return float("inf")
    scale = ref64.abs().max().item() or 1.0
    return (out64 - ref64).abs().max().item() / scale


def assert_accurate(out: torch.Tensor, ref64: torch.Tensor, eager_same_dtype: Optional[torch.Tensor] = None,
                    what: str = "") -> None:
    """fp32: rel err <= 1e-5. fp16/bf16: rel err <= 2x eager's own (floored at half an ulp). An fp32
    output of a low-precision op (K2's channel sums of a bf16 conv) may also take the low-precision
    bound when eager's output at that dtype is given (eager's own sums are of its rounded output);
    an fp32 output is never held tighter than 1e-5, since eager fp32 can be exact to an ulp by luck."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(out).any(), f"{what}: NaN in output (unwritten element?)"
    err = rel_err(out, ref64)
    if out.dtype in (torch.float32, torch.float64):
        bound = FP32_RTOL if eager_same_dtype is None else max(FP32_RTOL, 2 * rel_err(eager_same_dtype, ref64))
        assert err <= bound, f"{what}: relative error {err:.3g} > {bound:.3g}"
    else:
        assert eager_same_dtype is not None, "low-precision checks need eager's output at that dtype"
        floor = torch.finfo(out.dtype).eps / 2
        bound = 2 * max(rel_err(eager_same_dtype, ref64), floor)
        assert err <= bound, f"{what}: relative error {err:.3g} > 2x eager's ({bound / 2:.3g})"


def iter_layouts() -> Iterator[tuple]:
    """(channels_last, noncontig) combinations every backend is tested on."""
    yield True, False
    yield False, False
    yield True, True


def fake_timed_routes(monkeypatch, cpu_backend, faster: int):
    """Make the cpu backend's two conv routes (and oneDNN's into-residual one) log their runs and
    cost 1 (the `faster`: 0 oneDNN, 1 ours) or 10 units on a fake clock. Returns (clock, runs): set a Trials' clock to `clock`;
    `runs` lists the route of each run ("onednn" or "native")."""
    now, runs = [0.0], []

    def timed(name, bind, cost):
        def binder(*args):
            run = bind(*args)

            def timed_run(*call_args):
                now[0] += cost
                runs.append(name)
                return run(*call_args)
            return timed_run
        return binder

    onednn_cost, native_cost = (1.0, 10.0) if faster == 0 else (10.0, 1.0)
    monkeypatch.setattr(cpu_backend, "bind_onednn", timed("onednn", cpu_backend.bind_onednn, onednn_cost))
    monkeypatch.setattr(cpu_backend, "bind_onednn_into_residual",
                        timed("onednn", cpu_backend.bind_onednn_into_residual, onednn_cost))
    monkeypatch.setattr(cpu_backend, "bind_native", timed("native", cpu_backend.bind_native, native_cost))
    return (lambda: now[0]), runs

"""The RegNet width rule and stage specs, exactly as pycls computes them.

A RegNet is six numbers (depth d, w0, wa, wm, group width, bottleneck ratio) plus the
SE ratio. The linear rule u_j = w0 + wa * j (0 <= j < d) is quantized to
w_j = w0 * wm ** round(log(u_j / w0) / log(wm)), then to a multiple of q (8). Blocks of
equal width form a stage. Finally widths are adjusted so that the bottleneck width is a
multiple of the group width (pycls's ``adjust_block_compatibility``).

pycls rounds with numpy's ``np.round`` (round half to even) for the quantization and
Python's ``round`` (also half to even) for the compatibility adjustment; we do the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

__all__ = [
    "RegNetParams",
    "StageSpec",
    "quantized_linear_widths",
    "adjust_block_compatibility",
    "stage_specs",
    "check_design",
]


def _fail(name: str, value, allowed: str) -> None:
    raise ValueError(f"RegNet parameter {name}={value!r} is out of range: expected {allowed}")


def check_design(depth, w0, wa, wm, group_w=1, bot_mul=1.0, se_r=0.0, q=8) -> None:
    """Raise ValueError naming the parameter, its value and the allowed range."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        _fail("depth", depth, "an integer >= 1")
    if not isinstance(q, (int, np.integer)) or q < 1:
        _fail("q", q, "an integer >= 1")
    if not (isinstance(w0, (int, np.integer)) or float(w0).is_integer()) or w0 <= 0 or int(w0) % q != 0:
        _fail("w0", w0, f"a positive multiple of q={q}")
    if not math.isfinite(wa) or wa < 0:
        _fail("wa", wa, "a finite number >= 0")
    if not math.isfinite(wm) or wm <= 1:
        _fail("wm", wm, "a finite number > 1")
    if isinstance(group_w, bool) or not isinstance(group_w, (int, np.integer)) or group_w < 1:
        _fail("group_w", group_w, "an integer >= 1")
    if not math.isfinite(bot_mul) or bot_mul <= 0:
        _fail("bot_mul", bot_mul, "a finite number > 0")
    if not math.isfinite(se_r) or not 0 <= se_r <= 1:
        _fail("se_r", se_r, "a number in [0, 1]")


def _quantize(depth, w0, wa, wm, q):
    """pycls's ``generate_regnet``: (stage exponents k, quantized widths, continuous widths)."""
    check_design(depth, w0, wa, wm, q=q)
    ws_cont = np.arange(depth) * wa + w0
    ks = np.round(np.log(ws_cont / w0) / np.log(wm))
    ws_all = w0 * np.power(wm, ks)
    ws_all = np.round(np.divide(ws_all, q)).astype(int) * q
    return ks.astype(int), ws_all, ws_cont


def quantized_linear_widths(depth: int, w0: int, wa: float, wm: float, q: int = 8) -> Tuple[List[int], List[float]]:
    """Per-block widths (quantized, before the group adjustment) and the continuous linear widths."""
    _, ws_all, ws_cont = _quantize(depth, w0, wa, wm, q)
    return [int(w) for w in ws_all], ws_cont.tolist()


def adjust_block_compatibility(ws: Sequence[int], bs: Sequence[float], gs: Sequence[int]):
    """Make every bottleneck width w*b a multiple of its group width g (pycls's rule).

    The group width is capped at the bottleneck width, then the bottleneck width is
    rounded to a multiple of lcm(g, b) (of g when b == 1), never below it.
    """
    if not len(ws) == len(bs) == len(gs):
        raise ValueError(f"widths, bot_muls and group_ws must have equal lengths, got {len(ws)}, {len(bs)}, {len(gs)}")
    for name, seq in (("width", ws), ("bot_mul", bs), ("group_w", gs)):
        for v in seq:
            if not v > 0:
                _fail(name, v, "> 0")
    vs = [int(max(1, w * b)) for w, b in zip(ws, bs)]
    gs = [int(min(g, v)) for g, v in zip(gs, vs)]
    ms = [int(np.lcm(g, int(b))) if b > 1 else g for g, b in zip(gs, bs)]
    vs = [max(m, int(round(v / m) * m)) for v, m in zip(vs, ms)]
    ws = [int(v / b) for v, b in zip(vs, bs)]
    assert all(w * b % g == 0 for w, b, g in zip(ws, bs, gs))
    return ws, list(bs), gs


@dataclass(frozen=True)
class StageSpec:
    """One stage of an AnyNet: `depth` blocks of output width `width`.

    The first block carries `stride`; `se_r` > 0 makes the blocks Y blocks, with SE width
    round(se_r * block input width) as in pycls.
    """

    depth: int
    width: int
    stride: int = 2
    bot_mul: float = 1.0
    group_w: int = 1
    se_r: float = 0.0

    @property
    def bottleneck_width(self) -> int:
        return int(round(self.width * self.bot_mul))

    @property
    def groups(self) -> int:
        return self.bottleneck_width // self.group_w

    def se_width(self, w_in: int) -> int:
        return int(round(w_in * self.se_r))


@dataclass(frozen=True)
class RegNetParams:
    """The six numbers of a RegNet plus the SE ratio and the fixed stem/stride choices."""

    depth: int
    w0: int
    wa: float
    wm: float
    group_w: int
    bot_mul: float = 1.0
    se_r: float = 0.0
    stride: int = 2
    stem_w: int = 32
    q: int = 8

    def __post_init__(self):
        check_design(self.depth, self.w0, self.wa, self.wm, self.group_w, self.bot_mul, self.se_r, self.q)
        if self.stride not in (1, 2):
            _fail("stride", self.stride, "1 or 2")
        if self.stem_w < 1:
            _fail("stem_w", self.stem_w, "an integer >= 1")

    def stages(self) -> List[StageSpec]:
        return stage_specs(self)

    def block_widths(self) -> List[int]:
        """Per-block output widths after the compatibility adjustment."""
        return [s.width for s in self.stages() for _ in range(s.depth)]

    def with_(self, **changes) -> "RegNetParams":
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d.update(changes)
        return RegNetParams(**d)


def stage_specs(p: RegNetParams) -> List[StageSpec]:
    """pycls's ``RegNet.get_params``: quantize, group equal widths into stages, adjust."""
    ks, ws_all, _ = _quantize(p.depth, p.w0, p.wa, p.wm, p.q)
    # Each distinct exponent k of wm is a stage; a skipped k is an empty stage.
    missing = sorted(set(range(int(ks.max()) + 1)) - set(ks.tolist()))
    if missing:
        raise ValueError(
            f"RegNet parameters (depth={p.depth}, w0={p.w0}, wa={p.wa}, wm={p.wm}) yield empty stage(s) "
            f"{missing}: expected wa large enough relative to w0*(wm-1) that every power of wm up to "
            f"the last is used"
        )
    # np.unique sorts; pycls relies on ws_all being non-decreasing, which wa >= 0 guarantees.
    ws, ds = np.unique(ws_all, return_counts=True)
    ws, ds = [int(w) for w in ws], [int(d) for d in ds]
    ws, bs, gs = adjust_block_compatibility(ws, [p.bot_mul] * len(ws), [p.group_w] * len(ws))
    return [StageSpec(d, w, p.stride, b, g, p.se_r) for d, w, b, g in zip(ds, ws, bs, gs)]

"""State-dict key layouts of the RegNet implementations we interoperate with.

Every RegNet implementation names the same parameters; only the names differ. A
:class:`Layout` says how one implementation spells

* the three top-level modules (stem conv, stem BN, classifier), and
* the block prefix (stage i, block j) and the ten modules inside a block
  (projection conv + BN, the a/b/c convs + BNs, the two SE convs).

Keys are converted by translating the *module path* (the key without its last
component, which is ``weight``, ``bias``, ``running_mean``...) through our own (pycls)
names. A key that a layout does not know is passed through unchanged, so a strict load
lists it as unexpected instead of it being silently dropped.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["Layout", "OURS", "convert_state_dict", "detect_layout", "recognised_keys"]

# Our (pycls) module names; every layout lists its names in this order (None: not present).
_TOP = ("stem.conv", "stem.bn", "head.fc")
_BLOCK = ("proj", "bn", "f.a", "f.a_bn", "f.b", "f.b_bn", "f.se.f_ex.0", "f.se.f_ex.2", "f.c", "f.c_bn")


@dataclass(frozen=True)
class Layout:
    """How one implementation names a RegNet's modules.

    Args:
        name: short name ("torchvision", "timm", ...).
        block_re: regex for a block's module prefix with named groups ``s`` (stage, 1-based)
            and ``b`` (block index).
        block_fmt: ``str.format`` pattern with ``{s}`` and ``{b}`` that rebuilds the prefix.
        first_block: index of the first block of a stage in this layout (0 or 1).
        top: names of (stem conv, stem BN, classifier).
        block: names of the in-block modules, in the order of ``_BLOCK``.
    """

    name: str
    block_re: str
    block_fmt: str
    first_block: int
    top: Tuple[Optional[str], ...]
    block: Tuple[Optional[str], ...]

    def __post_init__(self):
        if len(self.top) != len(_TOP) or len(self.block) != len(_BLOCK):
            raise ValueError(f"layout {self.name}: expected {len(_TOP)} top and {len(_BLOCK)} block names")
        pairs = {"top": (self.top, _TOP), "block": (self.block, _BLOCK)}
        for kind, (theirs, ours) in pairs.items():
            object.__setattr__(self, f"_{kind}_in", {t: o for t, o in zip(theirs, ours) if t is not None})
            object.__setattr__(self, f"_{kind}_out", {o: t for t, o in zip(theirs, ours) if t is not None})
        object.__setattr__(self, "_pat", re.compile(rf"(?:{self.block_re})\.(?P<rest>.+)"))

    def to_ours(self, key: str) -> Optional[str]:
        """Our key for one of this layout's keys; None if the layout does not know it."""
        return _rename(key, self, self._top_in, self._block_in, OURS)

    def from_ours(self, key: str) -> Optional[str]:
        """This layout's key for one of our keys; None if it has no counterpart."""
        return _rename(key, OURS, self._top_out, self._block_out, self)


def _rename(key: str, src: Layout, tops: Mapping[str, str], blocks: Mapping[str, str], dst: Layout) -> Optional[str]:
    """Parse `key` with `src`'s block pattern, rename its module with `tops`/`blocks`, and
    rebuild the block prefix with `dst`'s pattern."""
    path, dot, param = key.rpartition(".")
    if not dot:
        return None
    if path in tops:
        return f"{tops[path]}.{param}"
    m = src._pat.fullmatch(path)
    if m is None or m["rest"] not in blocks:
        return None
    prefix = dst.block_fmt.format(s=int(m["s"]), b=int(m["b"]) - src.first_block + dst.first_block)
    return f"{prefix}.{blocks[m['rest']]}.{param}"


OURS = Layout("regnet", r"s(?P<s>\d+)\.b(?P<b>\d+)", "s{s}.b{b}", 1, _TOP, _BLOCK)


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    src: Layout,
    dst: Layout = OURS,
    drop: Sequence[str] = (),
) -> "OrderedDict[str, torch.Tensor]":
    """Rename the keys of `state` from layout `src` to layout `dst` (tensors are shared).

    Keys either layout does not know are kept unchanged so that a strict load reports them.
    Our module names listed in `drop` (e.g. ``"head.fc"``) are left out. Two keys landing on
    the same name raise ValueError.
    """
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    origin: Dict[str, str] = {}
    for key, value in state.items():
        ours = src.to_ours(key)
        if ours is not None and ours.rpartition(".")[0] in drop:
            continue
        new = None if ours is None else dst.from_ours(ours)
        new = key if new is None else new
        if new in out:
            raise ValueError(f"keys {origin[new]!r} and {key!r} both convert to {new!r} ({src.name} -> {dst.name})")
        out[new], origin[new] = value, key
    return out


def recognised_keys(state: Mapping[str, object], layout: Layout) -> int:
    """How many keys of `state` the layout knows."""
    return sum(layout.to_ours(k) is not None for k in state)


def detect_layout(state: Mapping[str, object], layouts: Sequence[Layout]) -> Layout:
    """The layout that knows the most keys of `state` (the first listed wins ties)."""
    if not state:
        raise ValueError("cannot detect the key layout of an empty state dict")
    counts = [recognised_keys(state, lay) for lay in layouts]
    best = max(range(len(layouts)), key=lambda i: (counts[i], -i))
    if counts[best] == 0:
        sample = list(state)[:5]
        raise ValueError(
            f"state dict keys (e.g. {sample}) match no known RegNet layout: expected one of "
            f"{[lay.name for lay in layouts]}"
        )
    return layouts[best]

"""A settled forward replayed from C++: the op calls of one Python run, recorded, then called
again by the extension's CallList without Python between them.

After a forward, the caches hold the kernels' weights and the Python interpreter's state is out
of them: each Python attribute read costs ~1-6 us instead of ~0.1 (an AMD EPYC VM, regnetx_004
batch 1: ~5-10 us of Python between ops, ~60 us before the first and ~150 us before the head;
bench/NOTES.md, Step 16). A recorded call list pays none of it.

What is recorded: every dispatcher op the function calls on the input or on what earlier ops
returned (a TorchDispatchMode sees them all, our native ops, oneDNN's and ATen's). Their other
arguments (folded and packed weights, sizes, flags) become constants. So a recording is right
only for what does not change between calls of the same input signature: the caller records once
the function's timed choices are settled, and watches the tensors the constants were derived
from (`sources`): CallList.run returns None once one of them is updated in place. A recording is
checked against the run it was recorded from (bit for bit: the same ops on the same data) before
it is used.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from . import _ext

__all__ = ["record", "available", "REPLAY_ENABLED"]

# REGNET_KERNELS_REPLAY=0: settled forwards keep running their Python calls (for A/B and debugging).
REPLAY_ENABLED = os.environ.get("REGNET_KERNELS_REPLAY", "1") != "0"


def available() -> bool:
    """Whether replays are on and the extension has CallList (an older build may not)."""
    ext = _ext.load()
    return REPLAY_ENABLED and ext is not None and hasattr(ext, "CallList")


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


class Unsupported(Exception):
    """The recorded calls cannot be replayed (the reason is the message)."""


def _outputs(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _build(x: Tensor, y: Tensor, calls, sources: Iterable[Tensor]):
    ext = _ext.load()
    registers = {id(x): 0}  # tensor -> its latest register; ids stay unique: `calls` holds the tensors
    steps, last_read = [], {0: -1}
    count = 1
    for func, args, kwargs, out in calls:
        schema = func._schema
        spec = []
        for i, argument in enumerate(schema.arguments):
            if i < len(args) and not argument.kwarg_only:
                value = args[i]
            elif argument.name in kwargs:
                value = kwargs[argument.name]
            elif argument.has_default_value():
                value = argument.default_value
            else:
                raise Unsupported(f"{schema.name}: argument {argument.name} not given")
            if isinstance(value, Tensor) and id(value) in registers:
                reg = registers[id(value)]
                last_read[reg] = len(steps)
                spec.append((reg, None))
            elif isinstance(value, (tuple, list)) and any(
                    isinstance(v, Tensor) and id(v) in registers for v in value):
                raise Unsupported(f"{schema.name}: a list argument holds a computed tensor")
            else:
                spec.append((-1, value))
        outs = _outputs(out)
        if len(outs) != len(schema.returns) or not all(isinstance(o, Tensor) for o in outs):
            raise Unsupported(f"{schema.name}: returns other than tensors")
        for o in outs:
            registers[id(o)] = count
            last_read.setdefault(count, len(steps))  # read by nobody: dropped after its step
            count += 1
        steps.append((schema.name, schema.overload_name, spec))
    if id(y) not in registers or registers[id(y)] == 0:
        raise Unsupported("the output is not computed by the recorded ops")
    output = registers[id(y)]
    release = [[] for _ in steps]
    for reg, step in last_read.items():
        if reg != output and step >= 0:
            release[step].append(reg)
    plan = ext.CallList()
    for (name, overload, spec), drop in zip(steps, release):
        plan.add(name, overload, spec, drop)
    plan.set_output(output)
    plan.watch([t for t in sources if isinstance(t, Tensor)])
    return plan


def record(fn: Callable[[Tensor], Tensor], x: Tensor, sources: Iterable[Tensor]):
    """(fn(x), its op calls as a CallList or None). None where the calls cannot be replayed
    (an argument list holding a computed tensor, a non-tensor result, no extension) or the replay
    does not reproduce fn(x) exactly; fn's result is returned either way."""
    with _Recorder() as recorder:
        y = fn(x)
    if not available() or not isinstance(y, Tensor):
        return y, None
    try:
        plan = _build(x, y, recorder.calls, sources)
    except (Unsupported, RuntimeError, TypeError):  # (an argument CallList cannot convert): not replayed
        return y, None
    again: Optional[Tensor] = plan.run(x)
    if again is None or again.shape != y.shape or again.stride() != y.stride() or again.dtype != y.dtype or not (
            torch.equal(again, y) or torch.allclose(again, y, rtol=0, atol=0, equal_nan=True)):
        return y, None
    return y, plan

"""Backend selection for every op.

Each backend registers, per op, a ``supports(**args) -> list[str]`` (the reasons it cannot
serve these arguments; empty means it can) and an implementation taking the same arguments.
``auto`` tries backends in ``AUTO_ORDER`` and takes the first with no reasons:

    cuda    CUDA C++ in regnet_kernels._C     (CUDA tensors)
    triton  Triton kernels                    (CUDA tensors; CPU tensors only when forced,
                                               under TRITON_INTERPRET=1)
    cpu     C++ in regnet_kernels._C          (CPU tensors, channels-last)
    eager   plain PyTorch, the reference      (anything)

``REGNET_KERNELS_BACKEND=<name>`` (or an op's ``backend=`` argument) forces one backend; if it
cannot serve, the error lists its reasons. ``explain(op, **args)`` returns every backend's
verdict, which ``python -m regnet_kernels.info`` prints.

The public ops check their arguments and select a backend once per call signature
(``resolve_once``): what the checks and the choice read is the key (``call_key``), so a repeated
call skips 5-11 us of Python at batch 1 (bench/NOTES.md, Step 20).
``REGNET_KERNELS_RESOLVE_CACHE=0`` turns this off; ``clear_resolved()`` forgets the choices (after
changing a backend module's settings).

A backend may also register named extras with an op: options fused modules use when the chosen
backend has them (``extra(op, backend, name)``), so modules never name a backend:

    conv_bn_act    bind(*args of run) -> run(x, weight, bias, residual): the implementation for
                       every call whose arguments have the same signature, with its choices
                       made once (fused modules bind once per input signature)
                   into_residual(x, weight, bias, stride, padding, groups, residual, relu)
                       -> bound runs(x, weight, bias, residual) for a caller that no longer
                       needs `residual`, at least the first writing the output into its buffer,
                       timed like routes when several; empty where none can
                   routes(*args of run) -> binders (like bind) of implementations whose speed on
                       these arguments depends on the machine: a fused conv times them on its
                       first calls and keeps the fastest (empty: bind, or run); the cpu
                       backend's own run does the same per argument signature
                   for_signature(*args of run) -> the run for every call with the same
                       signature: the public op's resolve cache (below) holds it instead of run,
                       so the backend's per-signature choices are looked up once, not per call
    conv1x1_conv_bn_act  bind(*args of run) -> run(x, w1, b1, w2, b2): as conv_bn_act's; a fused
                   block offers the op (K1 and K2 in one) only on backends that have it, and
                   times it against its two convs
    x_block        bind(*args of run) -> run(x, w1, b1, w2, b2, w3, b3, residual): likewise, for a
                   whole X block, timed against the block's ops
    gated_conv1x1  separate_gate_pass(x, weight, residual) -> bool: whether the gating costs a
                       pass of its own on these arguments (then the SE op should gate instead)
                   measure_gate_in_se(x, weight, residual) -> bool: whether gating in the SE op
                       then a plain conv may still be faster here, which depends on the
                       machine: a fused Y block then times both schedules (FusedYBlock)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _ext

__all__ = ["AUTO_ORDER", "BACKENDS", "register", "extra", "load_backends", "select", "explain", "BackendUnavailable",
           "forced_backend", "signature", "call_key", "resolve_once", "for_signature", "clear_resolved"]

AUTO_ORDER = ("cuda", "triton", "cpu", "eager")
BACKENDS = AUTO_ORDER
# The device types auto-selection asks each backend about (None: any), as in the table above.
# The others are skipped without calling supports(): its device reason would be the answer, and
# the triton and cuda checks on a CPU tensor cost more than a batch-1 SE op (about 15 us).
# explain() and forced backends still ask supports() on every device.
AUTO_DEVICES = {"cuda": ("cuda",), "triton": ("cuda",), "cpu": ("cpu",), "eager": None}
ENV_VAR = "REGNET_KERNELS_BACKEND"


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run the given arguments; the message lists why."""


EXTRAS = {"conv_bn_act": ("bind", "into_residual", "routes", "for_signature"), "conv1x1_conv_bn_act": ("bind",),
          "x_block": ("bind",), "gated_conv1x1": ("separate_gate_pass", "measure_gate_in_se")}


@dataclass
class _Impl:
    supports: Callable[..., List[str]]
    run: Callable
    extras: Dict[str, Callable]


_REGISTRY: Dict[str, Dict[str, _Impl]] = {}
# (op, device type) -> [(name, impl)] in AUTO_ORDER, filtered by AUTO_DEVICES: auto-selection's
# candidates, made once (rebuilt when a backend registers).
_AUTO_CANDIDATES: Dict[Tuple[str, str], List[Tuple[str, _Impl]]] = {}
_loaded_backends = False


def register(op: str, backend: str, supports: Callable[..., List[str]], run: Callable, **extras: Callable) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    unknown = set(extras) - set(EXTRAS.get(op, ()))
    if unknown:
        raise ValueError(f"extras {sorted(unknown)}: expected names from {EXTRAS.get(op, ())} for {op}")
    _REGISTRY.setdefault(op, {})[backend] = _Impl(supports, run, extras)
    _AUTO_CANDIDATES.clear()
    clear_resolved()


def extra(op: str, backend: str, name: str) -> Optional[Callable]:
    """The named extra `backend` registered with `op` (see the module docstring), or None."""
    load_backends()
    impl = _REGISTRY.get(op, {}).get(backend)
    return impl.extras.get(name) if impl is not None else None


def load_backends() -> None:
    """Import the backend modules once; each registers what it implements."""
    global _loaded_backends
    if _loaded_backends:
        return
    _loaded_backends = True
    from .backends import load_all

    load_all()


def signature(*tensors, flags=()):
    """A hashable key of what argument checks, backend choices and timed route choices depend on:
    shape, strides, dtype and device of each tensor (None stays None), then `flags`. Callers that
    resolve once per signature (fused modules, the cpu backend's public conv) key on it."""
    return tuple((t.shape, t.stride(), t.dtype, t.device) if t is not None else None for t in tensors) + tuple(flags)


def forced_backend(backend: Optional[str]) -> Optional[str]:
    """The backend named by the argument, else by $REGNET_KERNELS_BACKEND, else None (auto)."""
    name = backend if backend is not None else os.environ.get(ENV_VAR) or None
    if name is None or name == "auto":
        return None
    if name not in BACKENDS:
        src = "backend" if backend is not None else f"${ENV_VAR}"
        raise ValueError(f"{src}={name!r}: expected 'auto' or one of {BACKENDS}")
    return name


def explain(op: str, **args) -> List[Tuple[str, List[str]]]:
    """(backend, reasons) for every backend in AUTO_ORDER; empty reasons = can serve."""
    load_backends()
    impls = _REGISTRY.get(op, {})
    out = []
    for name in AUTO_ORDER:
        impl = impls.get(name)
        out.append((name, [f"{name} does not implement {op}"] if impl is None else impl.supports(**args)))
    return out


def select(op: str, backend: Optional[str] = None, **args) -> Tuple[str, Callable]:
    """(backend name, implementation) for these arguments; see the module docstring."""
    load_backends()
    impls = _REGISTRY.get(op, {})
    forced = forced_backend(backend)
    if forced is not None:
        impl = impls.get(forced)
        reasons = [f"{forced} does not implement {op}"] if impl is None else impl.supports(forced=True, **args)
        if reasons:
            raise BackendUnavailable(f"{op}: backend {forced!r} cannot serve these arguments: " + "; ".join(reasons))
        return forced, impl.run
    x = args["x"]
    device = "cpu" if x.is_cpu else x.device.type  # is_cpu: 0.1 us, device.type: 0.4 us
    candidates = _AUTO_CANDIDATES.get((op, device))
    if candidates is None:
        candidates = _AUTO_CANDIDATES[(op, device)] = [
            (name, impls[name]) for name in AUTO_ORDER
            if name in impls and (AUTO_DEVICES[name] is None or device in AUTO_DEVICES[name])]
    for name, impl in candidates:
        if not impl.supports(**args):
            return name, impl.run
    verdicts = "; ".join(f"{n}: {', '.join(r)}" for n, r in explain(op, **args))
    raise BackendUnavailable(f"{op}: no backend can serve these arguments ({verdicts})")


# The public ops' resolved calls: op -> call_key -> what the op's resolve returned. Bounded: a
# caller sweeping shapes must not grow it without limit.
_RESOLVED: Dict[str, dict] = {}
_RESOLVED_MAX = 4096
RESOLVE_CACHE = os.environ.get("REGNET_KERNELS_RESOLVE_CACHE", "1") != "0"


def call_key(tensors: Sequence[Optional[Tensor]], scalars: tuple, backend: Optional[str]) -> Optional[tuple]:
    """The key of a public op call for resolve_once: everything its argument checks and backend
    choice read. The extension's call_signature packs the tensors' part (per tensor its Python
    type, shape, strides, dtype, device and requires_grad), grad mode (the triton backend refuses
    inputs that need grad), $REGNET_KERNELS_BACKEND and $TRITON_INTERPRET: ~1 us for an SE op's
    seven tensors, where the same tuples built in Python cost ~3.5. Then the scalars' values and
    Python types (stride=True and stride=1.0 equal 1 but fail the checks) and `backend`. None
    (resolve this call anew): under torch.compile (dynamo traces the op, not this Python state),
    with the cache off or the extension not built, or for an argument call_signature does not key
    (not a tensor where one is expected: the checks then name it)."""
    if not RESOLVE_CACHE or torch.compiler.is_compiling():
        return None
    ext = _ext.load()
    if ext is None:
        return None
    sig = ext.call_signature(*tensors)
    if sig is None:
        return None
    return sig, scalars, tuple(map(type, scalars)), backend


def resolve_once(op: str, key: Optional[tuple], resolve: Callable, *args):
    """resolve(*args) (an op's checks and backend choice), once per key (call_key; None: every
    call). A call that fails its checks raises every time: nothing is kept for it."""
    if key is None:
        return resolve(*args)
    cache = _RESOLVED.get(op)
    if cache is None:
        cache = _RESOLVED[op] = {}
    try:
        hit = cache.get(key)
    except TypeError:  # an unhashable scalar (a list for stride): the checks name it
        return resolve(*args)
    if hit is None:
        hit = resolve(*args)
        if len(cache) >= _RESOLVED_MAX:
            cache.clear()
        cache[key] = hit
    return hit


def for_signature(op: str, name: str, run: Callable, *args) -> Callable:
    """The run of backend `name` for every call with the signature of `args` (run's arguments): its
    `for_signature` extra's, where it registered one, else `run` itself."""
    make = extra(op, name, "for_signature")
    return run if make is None else make(*args)


def clear_resolved() -> None:
    """Forget every public op's resolved calls (resolve_once)."""
    _RESOLVED.clear()

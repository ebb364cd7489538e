"""Fused inference modules: a RegNet block as 3 (X) or 4 (Y) op calls, BN folded.

Schedule (../shared/DESIGN.md section 1), each line one op of regnet_kernels:
    K1  a = conv_bn_act(x, 1x1) + ReLU
    K2  b, sums = conv_bn_act(a, 3x3 grouped, stride s) + ReLU, with per-(n, c) sums (Y only)
    K3  gate = se_excite(sums)                                  (Y only, on [N, C])
    K4  y = gated_conv1x1(b, gate) + bias + shortcut + ReLU    (X: conv_bn_act 1x1 + residual)
The projection shortcut (1x1 stride s) is one more conv_bn_act whose output K4 adds. Where the
backend has it (cpu), K1 and K2 may run as one op, conv1x1_conv_bn_act, which computes K1's
rows where K2 reads them and never stores K1's output; blocks time it against the two ops. An X
block may also run whole as one op, x_block (K2's output is not stored either, and a projection
shortcut is computed inside it), timed against its ops once those have settled.

On the cpu backend with fp32/bf16 channels-last activations each conv runs oneDNN (prepacked
weights, fused bias/ReLU/residual; K2's sums then a separate channel_sums pass) or our kernel,
whichever its first calls time faster (backends/cpu.py), K3 is a native op, and Y blocks whose K4
oneDNN would serve gate in the SE op instead (FusedYBlock): K1, K2, se_gate, K4 as a plain 1x1
conv + residual + ReLU; where the gated K4 could be ours, the block times the two schedules.

The modules hold folded weights as buffers (inference only) and run whichever backend the
dispatcher picks, or the one given. Activations stay in the layout they arrive in
(channels_last is the kernels' native layout; FusedRegNet converts its input once).
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as nn_module

from . import dispatch, replay
from .backends import cpu as cpu_backend
from .dispatch import signature
from .ops import conv1x1_conv_bn_act as pair_op
from .ops import conv_bn_act as conv_op
from .ops import gated_conv1x1 as gated_op
from .ops import x_block as x_block_op
from .ops import se_gate as se_gate_op
from .ops.fold_bn import fold_bn
from .ops.checks import fc_matrix
from .memory import pooled_cpu_memory
from .trials import Trials

__all__ = ["FusedConv", "FusedXBlock", "FusedYBlock", "FusedStem", "FusedHead", "FusedRegNet", "TRAINING_ERROR"]

TRAINING_ERROR = (
    "{name} is an inference module: its BatchNorms are folded into the convs and its ops have no "
    "backward pass. Train the original model (regnet_kernels.optimize returns a new module and leaves "
    "the original untouched), then call optimize() on it again; or call .eval() on this module."
)


TRACE_ERROR = (
    "torch.jit.trace cannot capture an optimized RegNet: its kernels are torch.library custom ops "
    "chosen per call by the dispatcher. Use torch.compile(model, fullgraph=True) or torch.export.export, "
    "or trace the original (unoptimized) model."
)


_REPLACED = [0]  # children or buffers of fused modules replaced or removed so far (any model)


class _Cached(nn.Module):
    """A module whose per-signature caches (bound calls, plans) and stashes hold closures over its
    own tensors and its children's. A deepcopy would share those closures, and so run the
    original's weights, whatever the copy's are; pickle cannot hold them. A copy or a pickle
    therefore starts without them (the timed choices, plain indices, are kept) and binds its own
    calls on its first calls. `_caches`: attribute -> factory of its empty value, per class.

    For the same reason, replacing or removing a child or a buffer (`block.a = conv`,
    `conv.weight = t`, `del stage[1]`, load_state_dict(assign=True)) counts in _REPLACED: the
    modules that hold plans (FusedRegNet, blocks) then drop their caches before their next call
    (`_drop_caches_if_replaced`). In-place updates of tensors need no such step: bound calls read
    the buffers (or watch their versions, replay.py). Adding new children does not count (another
    model's construction must not reset this one)."""

    _caches: Dict[str, Callable[[], object]] = {}

    def register_buffer(self, name, tensor, persistent=True):
        # Also how nn.Module assigns a buffer (`conv.weight = t`, load_state_dict(assign=True)).
        if name in self.__dict__.get("_buffers", ()):
            _REPLACED[0] += 1
        super().register_buffer(name, tensor, persistent)

    def add_module(self, name, module):  # (register_module calls it)
        if name in self.__dict__.get("_modules", ()):
            _REPLACED[0] += 1
        super().add_module(name, module)

    def __setattr__(self, name, value):
        if name in self.__dict__.get("_modules", ()):
            _REPLACED[0] += 1
        super().__setattr__(name, value)

    def __delattr__(self, name):
        if name in self.__dict__.get("_modules", ()) or name in self.__dict__.get("_buffers", ()):
            _REPLACED[0] += 1
        super().__delattr__(name)

    def __getstate__(self):
        return _without_caches(type(self), super().__getstate__())

    def _drop_caches_if_replaced(self) -> None:
        """If a fused module's child or buffer was replaced since this module's last call: drop
        the caches of this module and every fused module below it (they bind again, keeping their
        timed choices)."""
        if self.__dict__.get("_replaced_seen") != _REPLACED[0]:
            for module in self.modules():
                if isinstance(module, _Cached):
                    _without_caches(type(module), module.__dict__)
                    module.__dict__["_replaced_seen"] = _REPLACED[0]


def _without_caches(cls, state: dict) -> dict:
    """`state` (a module's __dict__ or a copy of it) without its stashes and caches, in place."""
    for name in [name for name in state if name.startswith("last_")]:  # _stash's entries
        del state[name]
    for name, value in list(state.items()):
        if isinstance(value, _ResolvedOps):
            state[name] = _ResolvedOps()
    for klass in cls.__mro__:
        for name, empty in vars(klass).get("_caches", {}).items():
            if name in state:
                state[name] = empty()
    return state


class _FusedStage(_Cached, nn.Sequential):
    """A FusedRegNet stage: nn.Sequential whose changes after construction (a block appended,
    inserted, replaced or removed) count as replacements (_Cached)."""

    def __init__(self, *blocks):
        super().__init__(*blocks)
        self.__dict__["_built"] = True

    def add_module(self, name, module):
        if self.__dict__.get("_built"):
            _REPLACED[0] += 1
        super().add_module(name, module)

    def insert(self, index, module):
        _REPLACED[0] += 1
        return super().insert(index, module)


class _InferenceModule(_Cached):
    backend: Optional[str] = None

    def _check_eval(self) -> None:
        if self.training:
            raise RuntimeError(TRAINING_ERROR.format(name=type(self).__name__))
        if torch.jit.is_tracing():
            raise RuntimeError(TRACE_ERROR)


def _stash(module: nn.Module, name: str, value) -> None:
    """Note what an op call bound, for the block's plan (plain dict write: nn.Module.__setattr__
    costs ~1 us). Tagged with the thread: a model shared by server threads must not build one
    thread's plan from another's call. Names start with "last_": copies and pickles drop those
    entries (_Cached)."""
    module.__dict__[name] = (threading.get_ident(), value)


def _stashed(module: nn.Module, name: str):
    """What this thread's last call stashed under `name`, else None."""
    tagged = module.__dict__.get(name)
    return tagged[1] if tagged is not None and tagged[0] == threading.get_ident() else None


def _bound(conv: "FusedConv", run):
    """run(x, residual=None) of a conv's bound call (run(x, weight, bias, residual)), its weights
    read from the module on every call (from its buffer dict: nn.Module.__getattr__ costs ~0.7 us
    a read, on every op of a batch-1 forward)."""
    buffers = conv._buffers
    return lambda x, residual=None: run(x, buffers["weight"], buffers["bias"], residual)


def _global_hooks() -> bool:
    """Forward hooks registered for every module (nn.modules.module.register_module_forward_hook)."""
    return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks)


def _has_hooks(module: nn.Module) -> bool:
    return _global_hooks() or any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _hooked_or_training(modules) -> bool:
    """Whether a global forward hook is registered, or one of `modules` (not their children) has a
    forward hook or is in train mode."""
    return _global_hooks() or any(m._forward_hooks or m._forward_pre_hooks or m.training for m in modules)


class _Planned(_InferenceModule):
    """A block that, once every choice for an input signature is made (backend, routes, schedule),
    runs that signature as a plan: one closure calling the bound implementations in order, without
    the per-op module calls, signatures and cache lookups (~10 us an op at batch 1 in a real
    forward, where the Python state is out of cache: regnetx_004 batch 1 10.7 -> 9.3 ms,
    bench/NOTES.md Step 8). Weights are read from the modules on every call. Not under
    torch.compile (it traces the ops), not while global module hooks are registered, and not for
    a block with forward hooks on it or its modules when the plan is made (they would not be
    called); hooks added to inner modules after that are not called for planned signatures."""

    _caches = {"plans": dict}

    def __init__(self):
        super().__init__()
        self.plans = {}  # input signature -> plan(x)

    def forward(self, x: Tensor) -> Tensor:
        self._check_eval()
        if torch.compiler.is_compiling():
            return self._run_ops(x)
        self._drop_caches_if_replaced()
        key = signature(x)
        plan = self.plans.get(key)
        if plan is not None and not _global_hooks():
            _stash(self, "last_plan", plan)  # for FusedRegNet's flat forward
            return plan(x)
        _stash(self, "last_plan", None)
        y = self._run_ops(x)
        plan = self._make_plan()
        if plan is not None and not _has_hooks(self):
            self.plans[key] = plan
        return y

    def _apply(self, fn, recurse=True):
        self.plans.clear()  # .to(), .float(), ...: the bound calls were made for the old tensors
        return super()._apply(fn, recurse)


class _ResolvedOps:
    """Argument checks and backend selection cost ~50 us of Python per op call, as much as a small
    kernel at batch 1. A fused module runs the same shapes again and again, so it resolves once
    per input signature and then calls the chosen implementation directly. (Under torch.compile
    the full path is traced instead: the cache is a Python side effect.) The choice therefore
    follows $REGNET_KERNELS_BACKEND as it was at the first call with that signature."""

    def __init__(self):
        self.cache = {}

    def get(self, key, resolve):
        if torch.compiler.is_compiling():
            return resolve()
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = resolve()
        return hit


# Calls of one input signature after which every timed choice of a fused model is made and its
# blocks run their plans: a Y block's first call, its two schedules (1 + TRIALS runs each); the
# convs of the schedule it keeps have had half their route trials by then (2 * (1 + TRIALS) runs
# in all); then K1 and K2 as two ops or one (1 + TRIALS runs each); the plan is made on the call
# after and used from the next (an X block then times itself whole against those ops: 2 * (1 +
# TRIALS) more calls).
SETTLE_CALLS = 1 + 2 * (1 + Trials.TRIALS) + (1 + Trials.TRIALS) + 2 * (1 + Trials.TRIALS) + 2 * (1 + Trials.TRIALS) + 1


class FusedConv(_Cached):
    """Folded (weight, bias) of a conv + eval BN, with its stride and groups."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype):
        super().__init__()
        self._hold(*fold_bn(conv, bn, dtype=dtype), conv.stride[0], conv.groups)

    @classmethod
    def from_linear(cls, fc: nn.Linear, dtype: torch.dtype) -> "FusedConv":
        """An FC layer (no BN to fold) as a 1x1 conv, for pooled [N, C, 1, 1] activations."""
        bias = fc.bias if fc.bias is not None else torch.zeros(fc.out_features)
        return cls.holding(fc.weight.detach()[:, :, None, None].to(dtype).clone(), bias.detach().to(dtype).clone())

    @classmethod
    def holding(cls, weight: Tensor, bias: Tensor, stride: int = 1, groups: int = 1) -> "FusedConv":
        """A conv of these (already folded) weight and bias."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._hold(weight, bias, stride, groups)
        return self

    def _hold(self, weight: Tensor, bias: Tensor, stride: int, groups: int) -> None:
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.groups = stride, groups
        self.resolved = _ResolvedOps()
        self.route_trials = Trials()  # where the backend offers several routes (its `routes` extra)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None, relu: bool = True, channel_sums: bool = False,
                backend: Optional[str] = None):
        key = signature(x, residual, self.weight, flags=(relu, channel_sums, backend))
        runs = self.resolved.get(key, lambda: self._bind(x, residual, relu, channel_sums, backend))
        return self._run(key, runs, x, residual)

    def _run(self, key, runs, x, residual):
        """One of the bound calls `runs` of this signature, timed while the choice is open."""
        w, b = self.weight, self.bias
        if torch.compiler.is_compiling():
            return runs[0](x, w, b, residual)
        out, settled = self.route_trials.run(key, runs, x, w, b, residual)
        # The bound call of this signature once its route is settled, for the block's plan.
        _stash(self, "last_run", settled)
        return out

    def _bind(self, x, residual, relu, channel_sums, backend, into_residual=False):
        """Check the arguments, pick the backend, and bind its implementation for this input
        signature: [run(x, weight, bias, residual)], or one per route where the backend offers
        several (its `routes` extra, or its `into_residual` extra for into_residual(); timed on the
        first calls). Backends without a `bind` extra get their plain implementation wrapped."""
        w, b, stride, groups = self.weight, self.bias, self.stride, self.groups
        padding, name, run = conv_op.resolve(x, w, b, stride, None, groups, residual, relu, channel_sums, backend)
        if into_residual:
            into = dispatch.extra("conv_bn_act", name, "into_residual")
            runs = into(x, w, b, stride, padding, groups, residual, relu) if into is not None else []
            if runs:
                return runs
        args = (x, w, b, stride, padding, groups, residual, relu, channel_sums)
        routes = dispatch.extra("conv_bn_act", name, "routes")
        binders = routes(*args) if routes is not None and not torch.compiler.is_compiling() else ()
        if binders:
            return [bind(*args) for bind in binders]
        bind = dispatch.extra("conv_bn_act", name, "bind")
        if bind is not None:
            return [bind(*args)]
        return [lambda x, w, b, r: run(x, w, b, stride, padding, groups, r, relu, channel_sums)]

    def into_residual(self, x: Tensor, residual: Tensor, backend: Optional[str] = None) -> Tensor:
        """This conv of x + bias + residual, ReLU, written into `residual` where the chosen backend
        can and that is fastest (the caller owns `residual` and no longer needs it), else into a
        new tensor. The backend's routes for this (its `into_residual` extra) are timed as in
        forward()."""
        key = signature(x, residual, self.weight, flags=("into_residual", backend))
        runs = self.resolved.get(key, lambda: self._bind(x, residual, True, False, backend, into_residual=True))
        return self._run(key, runs, x, residual)

    def gated(self, x: Tensor, gate: Tensor, residual: Optional[Tensor], backend: Optional[str] = None) -> Tensor:
        """K4: this 1x1 conv of x * gate[n, c], + bias + residual, ReLU."""
        w, b = self.weight, self.bias
        w2d, _, run = self.resolved.get(
            signature(x, gate, residual, w, flags=("gated", backend)),
            lambda: gated_op.resolve(x, gate, w, b, residual, True, backend))
        if not torch.compiler.is_compiling():
            _stash(self, "last_gated", run)
        return run(x, gate, w2d, b, residual, True)

    def gate_pass_choice(self, x: Tensor, gate: Tensor, residual: Optional[Tensor],
                         backend: Optional[str] = None) -> Tuple[bool, bool]:
        """(separate, measure) for gated() on these arguments with the backend chosen for it:
        whether it would gate x in a pass of its own, and whether that is left to measurement
        (the backend's extras separate_gate_pass and measure_gate_in_se; False without them)."""
        w2d, name, _ = gated_op.resolve(x, gate, self.weight, self.bias, residual, True, backend)
        separate = dispatch.extra("gated_conv1x1", name, "separate_gate_pass")
        measure = dispatch.extra("gated_conv1x1", name, "measure_gate_in_se")
        if separate is not None and separate(x, w2d, residual):
            return True, False
        return False, measure is not None and measure(x, w2d, residual)


class FusedXBlock(_Planned):
    """X block: K1, K2, [projection], K4 (1x1 + bias + shortcut + ReLU).

    K4 writes its output into the shortcut's buffer where the backend can (oneDNN's in-place sum
    on the cpu backend) when the block owns that buffer: always for a projection shortcut (a fresh
    tensor), and for the identity shortcut only when `input_is_scratch` is set, i.e. nobody else
    holds the block's input. FusedRegNet sets it on its blocks (their inputs are its own
    intermediates, as with the original blocks' in-place ReLU); a standalone block leaves its
    input untouched.
    """

    input_is_scratch: bool = False
    _caches = {"front_timed": dict, "ops_timed": dict}

    def __init__(self, block: nn.Module, dtype: torch.dtype, backend: Optional[str] = None):
        super().__init__()
        f = block.f
        self.a = FusedConv(f.a, f.a_bn, dtype)
        self.b = FusedConv(f.b, f.b_bn, dtype)
        self.c = FusedConv(f.c, f.c_bn, dtype)
        self.proj = FusedConv(block.proj, block.bn, dtype) if block.proj is not None else None
        self.backend = backend
        self.front_resolved = _ResolvedOps()  # input signature -> [bound conv1x1_conv_bn_act] or []
        self.front_trials = Trials()  # options: 0 K1 and K2 as two ops, 1 as one
        self.whole_resolved = _ResolvedOps()  # input signature -> [bound x_block] or []
        self.whole_trials = Trials()  # options: 0 the block's ops, 1 x_block
        # Input signature -> the settled bound calls that a trial times as the ops option: as
        # module calls the ops cost ~20-35 us more Python at batch 1 than in a plan, which made
        # x_block win where its plan is 1.2x faster (regnetx_004 stage 4, bench/NOTES.md Step 15).
        self.front_timed = {}  # -> K1 then K2 as two bound calls
        self.ops_timed = {}  # -> the block's ops as a plan

    def _apply(self, fn, recurse=True):
        self.front_timed.clear()
        self.ops_timed.clear()
        return super()._apply(fn, recurse)

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.proj is None else self.proj(x, relu=False, backend=self.backend)

    def front(self, x: Tensor, channel_sums: bool = False):
        """K1 then K2 (with K2's channel sums if asked): as two ops, or as one where the backend
        has conv1x1_conv_bn_act. Which is faster depends on the shape and the machine (an AMD
        EPYC: the one op 1.0-1.4x faster at RegNetX-400MF, 0.9x at some RegNetY-400MF shapes at
        batch 16 where oneDNN runs K2; bench/NOTES.md, Step 12), so the block times them, once
        the two convs have settled their own routes (their trials would blur the comparison)."""
        be = self.backend

        def separate(t):
            return self.b(self.a(t, backend=be), channel_sums=channel_sums, backend=be)
        if torch.compiler.is_compiling():
            return separate(x)
        _stash(self, "last_front", None)
        if _has_hooks(self.a) or _has_hooks(self.b):  # hooks on K1's or K2's module see their calls
            return separate(x)
        key = signature(x, flags=(channel_sums, be))
        fused = self.front_resolved.get(key, lambda: self._bind_front(x, channel_sums))
        trials = self.front_trials
        if not fused or (key not in trials.chosen and key not in trials.samples):
            out = separate(x)
            k1, k2 = _stashed(self.a, "last_run"), _stashed(self.b, "last_run")
            if not fused:
                _stash(self, "last_front", "separate" if k1 is not None and k2 is not None else None)
            elif k1 is not None and k2 is not None:
                k1, k2 = _bound(self.a, k1), _bound(self.b, k2)
                self.front_timed[key] = lambda t: k2(k1(t))
                trials.begin(key, 2)
            return out
        options = (self.front_timed.get(key, separate), fused[0])
        out, settled = trials.run(key, options, x)
        if settled is not None:
            _stash(self, "last_front", settled)
        return out

    def _bind_front(self, x: Tensor, channel_sums: bool):
        """[run(x)]: conv1x1_conv_bn_act of K1 and K2 bound for this signature, weights read from
        the convs on every call; [] where the chosen backend has no bound form of it (then the
        two ops are all there is)."""
        a, b = self.a, self.b
        try:
            padding, name, _ = pair_op.resolve(x, a.weight, a.bias, b.weight, b.bias, b.stride, None, b.groups, True,
                                               channel_sums, self.backend)
        except dispatch.BackendUnavailable:  # a forced backend without the op
            return []
        bind = dispatch.extra(pair_op.OP, name, "bind")
        if bind is None:
            return []
        run = bind(x, a.weight, a.bias, b.weight, b.bias, b.stride, padding, b.groups, True, channel_sums)
        a_buffers, b_buffers = a._buffers, b._buffers
        return [lambda x: run(x, a_buffers["weight"], a_buffers["bias"], b_buffers["weight"], b_buffers["bias"])]

    # Each block writes its op order once, as a static schedule over op callables: _run_ops passes
    # the modules (which check, resolve, time and stash their bound calls), a plan passes those
    # bound calls. Intermediates are dropped as soon as they are consumed (the shortcut first, as in
    # the original block): holding K1's output through K4 raised the peak and made glibc hand the
    # big freed chunks back to the OS and page-fault them in again on the next forward
    # (regnetx_002 batch 16: 70 vs 57 ms per batch, bench/NOTES.md).
    @staticmethod
    def _schedule(x, shortcut, front, k4):
        s = shortcut(x)
        return k4(front(x), s)

    def _run_ops(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return self._ops(x)
        _stash(self, "last_whole", None)
        key = signature(x, flags=(self.backend,))
        whole = self.whole_resolved.get(key, lambda: self._bind_whole(x))
        trials = self.whole_trials
        if not whole or _has_hooks(self.a) or _has_hooks(self.b) or _has_hooks(self.c) or (
                key not in trials.chosen and key not in trials.samples):
            y = self._ops(x)
            plan = self._ops_plan()
            if not whole:
                _stash(self, "last_whole", "ops" if plan is not None else None)
            elif plan is not None:  # time the block whole against its ops once their own choices are made
                self.ops_timed[key] = plan
                trials.begin(key, 2)
            return y
        options = (self.ops_timed.get(key, self._ops), whole[0])
        y, settled = trials.run(key, options, x)
        if settled is not None:  # a plan(x) either way
            _stash(self, "last_whole", settled)
        return y

    def _ops(self, x: Tensor) -> Tensor:
        return self._schedule(x, self.shortcut, self.front, self.k4)

    def _bind_whole(self, x: Tensor):
        """[run(x)]: x_block of this block bound for this signature, weights read from the convs on
        every call, the projection (if any) computed inside it; [] where the chosen backend has no
        bound form of it."""
        a, b, c, proj = self.a, self.b, self.c, self.proj
        wp, bp = (proj.weight, proj.bias) if proj is not None else (None, None)
        residual = x if proj is None else None
        try:
            padding, name, _ = x_block_op.resolve(x, a.weight, a.bias, b.weight, b.bias, c.weight, c.bias, residual,
                                                  b.stride, None, b.groups, self.backend, wp, bp)
        except dispatch.BackendUnavailable:  # a forced backend without the op
            return []
        bind = dispatch.extra(x_block_op.OP, name, "bind")
        if bind is None:
            return []
        run = bind(x, a.weight, a.bias, b.weight, b.bias, c.weight, c.bias, residual, b.stride, padding, b.groups,
                   wp, bp)
        ab, bb, cb = a._buffers, b._buffers, c._buffers
        if proj is None:
            return [lambda x: run(x, ab["weight"], ab["bias"], bb["weight"], bb["bias"], cb["weight"], cb["bias"], x)]
        pb = proj._buffers
        return [lambda x: run(x, ab["weight"], ab["bias"], bb["weight"], bb["bias"], cb["weight"], cb["bias"], None,
                              pb["weight"], pb["bias"])]

    def _bound_shortcut_front(self):
        """(shortcut, front): the settled calls of this thread's last call, as run(x), or None if
        one was not settled."""
        front = _stashed(self, "last_front")
        kp = _stashed(self.proj, "last_run") if self.proj is not None else None
        if front is None or (self.proj is not None and kp is None):
            return None
        if isinstance(front, str):  # "separate": K1 and K2 as their own settled calls
            k1, k2 = _stashed(self.a, "last_run"), _stashed(self.b, "last_run")
            if k1 is None or k2 is None:
                return None
            k1, k2 = _bound(self.a, k1), _bound(self.b, k2)
            front = lambda x: k2(k1(x))  # noqa: E731
        shortcut = (lambda x: x) if self.proj is None else _bound(self.proj, kp)
        return shortcut, front

    def _make_plan(self):
        """The last call as a plan: the option its trial kept (the block whole or its ops), else its
        ops if each ran a settled bound call."""
        whole = _stashed(self, "last_whole")
        if whole == "ops":
            return self._ops_plan()
        return whole

    def _ops_plan(self):
        """The block's ops as a plan, if each ran a settled bound call on this thread's last call."""
        bound = self._bound_shortcut_front()
        kc = _stashed(self.c, "last_run")
        if bound is None or kc is None:
            return None
        shortcut, front = bound
        k4, schedule = _bound(self.c, kc), self._schedule
        return lambda x: schedule(x, shortcut, front, k4)

    def k4(self, x: Tensor, shortcut: Tensor) -> Tensor:
        """The last 1x1 conv + bias + shortcut + ReLU, into the shortcut's buffer when it is ours."""
        if self.proj is not None or self.input_is_scratch:
            return self.c.into_residual(x, shortcut, backend=self.backend)
        return self.c(x, residual=shortcut, relu=True, backend=self.backend)


class FusedYBlock(FusedXBlock):
    """Y block: K1, K2 with SE sums, K3 (SE MLP on [N, C]), [projection], K4 with the gate.

    Two schedules for the SE and K4, chosen per input signature:
    - gate on load (the design's): K2 with sums, K3 on [N, C], K4 scaling its input as it loads it;
    - gate in the SE op: K2 without sums, se_gate (mean, MLP and x * gate in one op), K4 as a
      plain 1x1 conv + residual + ReLU.
    When the backend would gate K4's input in a pass of its own anyway (the cpu backend handing a
    large 1x1 to oneDNN, which has no input scale), gating in the SE op costs the same passes with
    one op instead of the SE's ~8 small ones: it is taken at once. When the backend says the
    choice depends on the machine (`measure_gate_in_se`: our gated 1x1 against oneDNN's plain 1x1
    after a gating pass), the block times both schedules on its next calls (Trials: 1 + TRIALS
    runs each, the first not counted) and keeps the faster. Otherwise it gates on load.
    """

    def __init__(self, block: nn.Module, dtype: torch.dtype, backend: Optional[str] = None):
        super().__init__(block, dtype, backend)
        fc1, fc2 = block.f.se.f_ex[0], block.f.se.f_ex[2]
        # The SE MLP runs in fp32 whatever the activation dtype (K3 accumulates in fp32).
        self.register_buffer("se_w1", fc1.weight.detach()[:, :, 0, 0].float().clone())
        self.register_buffer("se_b1", fc1.bias.detach().float().clone())
        self.register_buffer("se_w2", fc2.weight.detach()[:, :, 0, 0].float().clone())
        self.register_buffer("se_b2", fc2.bias.detach().float().clone())
        self.gate_in_se = {}  # input signature -> bool: the schedule chosen (see the class docstring)
        self.schedule_trials = Trials()  # options: 0 gate on load, 1 gate in the SE op
        self.resolved_se = _ResolvedOps()

    @staticmethod
    def _schedule_gate_in_se(x, shortcut, front, se_gate, k4):
        s = shortcut(x)
        return k4(se_gate(front(x)), s)

    @staticmethod
    def _schedule_gate_on_load(x, shortcut, front_sums, excite, k4_gated):
        s = shortcut(x)
        y, sums = front_sums(x)
        return k4_gated(y, excite(sums, y), s)

    def _excite(self, sums: Tensor, y: Tensor) -> Tensor:
        """K3: the gate from K2's sums of y, resolved per signature."""
        hw, se = y.shape[2] * y.shape[3], self._se_params()
        run = self.resolved_se.get(signature(sums, flags=("excite", hw, self.backend)),
                                   lambda: se_gate_op.resolve_excite(sums, hw, *se, self.backend))
        if not torch.compiler.is_compiling():
            _stash(self, "last_excite", run)
        return run(sums, hw, *se)

    def _se_params(self):
        buffers = self._buffers  # not nn.Module.__getattr__: this runs in every Y block's plan call
        return buffers["se_w1"], buffers["se_b1"], buffers["se_w2"], buffers["se_b2"]

    def _se_gate(self, y: Tensor) -> Tensor:
        """se_gate(y) without residual or ReLU (the gate-in-SE schedule), resolved per signature."""
        se = self._se_params()
        run = self.resolved_se.get(signature(y, flags=(self.backend,)),
                                   lambda: se_gate_op.resolve(y, *se, None, False, None, self.backend))
        if not torch.compiler.is_compiling():
            _stash(self, "last_se_run", run)
        return run(y, *se, None, False, None)

    def _k4_gated(self, y: Tensor, gate: Tensor, shortcut: Tensor) -> Tensor:
        return self.c.gated(y, gate, shortcut, backend=self.backend)

    def _schedule_choice(self, key):
        """(gate in the SE op?, trial): trial is None once the schedule is fixed (or when
        compiling), "first" on a signature's first call, else the samples being collected."""
        if key is None:
            return False, None
        in_se = self.gate_in_se.get(key)
        if in_se is not None:
            return in_se, None
        if key not in self.schedule_trials.samples:
            return False, "first"
        option, samples = self.schedule_trials.pick(key)
        return bool(option), samples

    def _run_ops(self, x: Tensor) -> Tensor:
        be = self.backend
        key = None if torch.compiler.is_compiling() else signature(x, flags=(be,))
        if key is not None:
            _stash(self, "last_schedule", None)
        in_se, trial = self._schedule_choice(key)
        clock = self.schedule_trials.clock
        start = clock() if trial is not None else 0.0
        if in_se:
            y = self._schedule_gate_in_se(x, self.shortcut, self.front, self._se_gate, self.k4)
        else:
            k4_gated = self._k4_gated
            if trial == "first":
                def k4_gated(y, gate, shortcut):
                    # The backend says, on K4's real arguments, whether the schedule is fixed or timed.
                    separate, measure = self.c.gate_pass_choice(y, gate, shortcut, backend=be)
                    if measure:
                        self.schedule_trials.begin(key, 2)
                    else:
                        self.gate_in_se[key] = separate
                    return self._k4_gated(y, gate, shortcut)
            y = self._schedule_gate_on_load(x, self.shortcut, lambda t: self.front(t, channel_sums=True),
                                            self._excite, k4_gated)
        if trial is None:
            if key is not None:
                _stash(self, "last_schedule", in_se)  # fixed before this call: a plan may follow it
        elif trial != "first":  # a signature's first call is not timed
            chosen = self.schedule_trials.record(key, trial, int(in_se), clock() - start)
            if chosen is not None:
                self.gate_in_se[key] = bool(chosen)
        return y

    def _make_plan(self):
        """The last call as a plan, if its schedule and each op's choice were settled."""
        in_se = _stashed(self, "last_schedule")
        bound = self._bound_shortcut_front()
        if in_se is None or bound is None:
            return None
        shortcut, front = bound
        c = self.c
        if in_se:
            kse, kc = _stashed(self, "last_se_run"), _stashed(c, "last_run")
            if kse is None or kc is None:
                return None
            params, k4, schedule = self._se_params, _bound(c, kc), self._schedule_gate_in_se

            def se_gate(y):
                return kse(y, *params(), None, False, None)
            return lambda x: schedule(x, shortcut, front, se_gate, k4)
        kg, kx = _stashed(c, "last_gated"), _stashed(self, "last_excite")
        if kg is None or kx is None:
            return None
        params, schedule, c_buffers = self._se_params, self._schedule_gate_on_load, c._buffers

        def excite(sums, y):
            return kx(sums, y.shape[2] * y.shape[3], *params())

        def k4_gated(y, gate, shortcut):
            return kg(y, gate, fc_matrix(c_buffers["weight"]), c_buffers["bias"], shortcut, True)
        return lambda x: schedule(x, shortcut, front, excite, k4_gated)


class FusedStem(_InferenceModule):
    def __init__(self, stem: nn.Module, dtype: torch.dtype, backend: Optional[str] = None):
        super().__init__()
        self.conv = FusedConv(stem.conv, stem.bn, dtype)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        self._check_eval()
        return self.conv(x, backend=self.backend)


class FusedHead(_Cached):
    """Global average pool (fp32 accumulation) and FC. The FC runs as a 1x1 conv of the pooled
    [N, C, 1, 1] through the op API, so its route is chosen (and timed) like the blocks' convs:
    after a forward its weight comes from L3 or memory, which our kernel streams on every thread
    (regnetx_004 batch 1 on an AMD EPYC: 177 us for pool and FC against 312 with F.linear;
    bench/NOTES.md, Step 11).

    For fp32 channels-last CPU activations on the cpu backend (auto or forced), the pool is the
    extension's channel_sums (sums over H, W) and the FC a copy of `fc` whose weight is scaled by
    1 / (H W), made once per map size and remade when `fc`'s weight or bias changes: after a
    forward, ATen's mean pays ~85 us for code the forward evicted where channel_sums pays ~18, and
    scaling the sums instead would be another such op (~60 us). Once the FC's route is settled the
    two run as bound calls (the module path's Python is ~60 us cold). Head after a forward, AMD
    EPYC: regnetx_004 batch 1 253 -> 183 us, batch 16 459 -> 360, regnety_016 batch 1 396 -> 286
    (bench/NOTES.md, Step 15). Not for bf16/fp16 (the scaled weight would be rounded a second
    time), and not when `fc` has forward hooks (they would not be called).
    """

    _caches = {"_fc_of_sums": dict, "_plans": dict}
    # Scaled FC copies kept, one per map size: a server alternating input sizes keeps each size's
    # copy, its timed route and its plan instead of remaking them on every switch.
    MAP_SIZES_KEPT = 8

    def __init__(self, head: nn.Module, dtype: torch.dtype, backend: Optional[str] = None):
        super().__init__()
        self.fc = FusedConv.from_linear(head.fc, dtype) if isinstance(head.fc, nn.Linear) else None
        self.backend = backend
        self._fc_of_sums = {}  # map size H W -> (fc's weight and bias stamps, FusedConv of weight / (H W))
        self._plans = {}  # input signature -> sums and the scaled FC as bound calls, once its route is settled

    def _apply(self, fn, recurse=True):
        self._fc_of_sums = {}  # remade for the moved or cast fc on the next call
        self._plans.clear()
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor) -> Tensor:
        """The head; stashes "last_settled" (whether this call ran only settled choices: FusedRegNet
        records a forward's calls for replay only then)."""
        if self.fc is not None and self._pool_as_sums(x):
            fc = self._fc_of_map(x.shape[2] * x.shape[3])
            key = signature(x)
            plan = self._plans.get(key)
            if plan is not None:  # the module path's Python costs ~60 us here after a forward
                _stash(self, "last_settled", True)
                return plan(x)
            sums = cpu_backend.spatial_sums(x)
            if sums is not None:
                y = fc(sums[:, :, None, None], relu=False, backend=self.backend).flatten(1)
                run = _stashed(fc, "last_run")  # this call's bound FC, once its route is settled
                if run is not None:
                    sums_of, fc_of = cpu_backend.spatial_sums_call(), _bound(fc, run)
                    self._plans[key] = lambda x: fc_of(sums_of(x)[:, :, None, None]).flatten(1)
                _stash(self, "last_settled", run is not None)
                return y
        pooled = x.mean((2, 3), keepdim=True, dtype=torch.float32).to(x.dtype)
        y = pooled.flatten(1) if self.fc is None else self.fc(pooled, relu=False, backend=self.backend).flatten(1)
        if not torch.compiler.is_compiling():  # (dynamo does not trace the stash's thread id)
            _stash(self, "last_settled", self.fc is None or _stashed(self.fc, "last_run") is not None)
        return y

    def _pool_as_sums(self, x: Tensor) -> bool:
        return (x.dtype == torch.float32 and self.backend in (None, cpu_backend.NAME) and x.is_cpu
                and x.stride(1) == 1 and cpu_backend.EXT is not None and not torch.compiler.is_compiling()
                and not _has_hooks(self.fc))

    def _fc_of_map(self, hw: int) -> "FusedConv":
        """The FC of a sum over `hw` pixels: fc with its weight / hw (scaled in float64)."""
        w, b = self.fc.weight, self.fc.bias
        stamp = (w.data_ptr(), w._version, b.data_ptr(), b._version)
        held = self._fc_of_sums.get(hw)
        if held is None or held[0] != stamp:
            if len(self._fc_of_sums) >= self.MAP_SIZES_KEPT:
                self._fc_of_sums.clear()
            # Normal tensors even under inference_mode: the packed-weight caches key on versions.
            with torch.inference_mode(False), torch.no_grad():
                held = self._fc_of_sums[hw] = (stamp, FusedConv.holding((w.double() / hw).to(w.dtype), b))
            self._plans.clear()  # plans of every map size: their copies are checked on their next calls
        return held[1]


class FusedRegNet(_InferenceModule):
    """An optimized RegNet: fused stem, stages of fused blocks, head.

    Input is converted once to `memory_format` and `dtype`; every activation after that stays
    in that layout. Child names follow the source model (stem, s1..sN, head). Inside a stage a
    block may write its output into its input's buffer (FusedXBlock.input_is_scratch), so a
    forward hook that keeps a block's input sees it overwritten, as with the original model's
    in-place ReLUs; the model's input and each stage's output are never overwritten.
    On the CPU the stem and stages run with the extension's memory pool as torch's CPU allocator
    (regnet_kernels/memory.py): each forward reuses the last one's large blocks.

    Once the stem's conv and every block run a settled call for an input signature, the stem and
    stages run it as a flat list of those calls, without the ~10 us of module calls and checks a
    block costs in a forward whose Python state is out of cache (regnetx_004 batch 1 on an AMD
    EPYC: ~0.3 ms of 5.4; bench/NOTES.md, Step 15). Not under torch.compile, and not while any of
    the skipped modules (stem, its conv, stages, blocks) has a forward hook or is in train mode,
    or a global hook is registered: those forwards go through the modules. The call after that
    records the list's op calls (and, for forward(), the head's, once its FC is settled) and
    replays them from C++ on later calls (replay.py; 0.1-0.4 ms of a ~5-7 ms regnetx_004 batch-1
    forward, bench/NOTES.md Step 16); hooks on the head's modules and train mode bypass that too.
    Replacing or deleting a block, a conv, the head or a buffer makes the model bind again on its
    next call (_Cached).
    """

    _caches = {"_flat": dict}

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.channels_last, backend: Optional[str] = None):
        super().__init__()
        from regnet.blocks import Xblock  # the source model is ours (optimize() converts others to it)

        self.dtype, self.memory_format, self.backend = dtype, memory_format, backend
        self.in_chans = model.in_chans
        self.stem = FusedStem(model.stem, dtype, backend)
        self.stage_names = []
        for name, stage in model.named_children():
            if name.startswith("s") and name[1:].isdigit():
                blocks = []
                for i, blk in enumerate(stage.children()):
                    assert isinstance(blk, Xblock)
                    cls = FusedYBlock if blk.f.se is not None else FusedXBlock
                    fused = cls(blk, dtype, backend)
                    # Inside a stage the inputs are this model's own intermediates; a stage's
                    # input (the previous stage's output) is left alone.
                    fused.input_is_scratch = i > 0
                    blocks.append(fused)
                self.add_module(name, _FusedStage(*blocks))
                self.stage_names.append(name)
        self.head = FusedHead(model.head, dtype, backend)
        self._flat = {}  # input signature -> (the stem's and blocks' settled calls, the modules they skip)
        self.eval()

    def _apply(self, fn, recurse=True):
        self._flat.clear()  # the calls were bound for the old tensors
        return super()._apply(fn, recurse)

    def _check_input(self, x: Tensor) -> None:
        self._check_eval()
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"input x: expected [N, {self.in_chans}, H, W], got shape {list(x.shape)}")

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if torch.compiler.is_compiling() or not x.is_cpu:
            return self._features(x)
        # The big activations reuse the previous forward's blocks instead of being page-faulted
        # in again (memory.py; regnety_004 batch 16: ~20% of a forward on an AMD EPYC VM).
        with pooled_cpu_memory():
            return self._features(x)

    def _features(self, x: Tensor) -> Tensor:
        x = x.to(dtype=self.dtype, memory_format=self.memory_format)
        if torch.compiler.is_compiling():
            return self._modules_features(x)
        self._drop_caches_if_replaced()
        key = signature(x)
        flat = self._flat.get(key)
        if flat is not None and not _hooked_or_training(flat.skipped):
            return self._replayed(flat, "features", x, flat.run)
        y = self._modules_features(x)
        calls = self._last_calls()
        if calls is not None and not _hooked_or_training(calls[1]):
            self._flat[key] = _Flat(*calls, head=tuple(self.head.modules()))
        return y

    def _modules_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def _last_calls(self):
        """(the settled calls of this thread's last forward through the modules, the modules whose
        calls they skip), or None if the stem's conv or a block did not run a settled call."""
        stem_run = _stashed(self.stem.conv, "last_run")
        stages = [getattr(self, name) for name in self.stage_names]
        blocks = [block for stage in stages for block in stage]
        plans = [_stashed(block, "last_plan") for block in blocks]
        if stem_run is None or any(plan is None for plan in plans):
            return None
        stem_conv = _bound(self.stem.conv, stem_run)
        return [stem_conv, *plans], (self.stem, self.stem.conv, *stages, *blocks)

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling() or not x.is_cpu:
            return self.head(self.forward_features(x))
        self._check_input(x)
        with pooled_cpu_memory():
            x = x.to(dtype=self.dtype, memory_format=self.memory_format)
            self._drop_caches_if_replaced()
            flat = self._flat.get(signature(x))
            if flat is not None and not _hooked_or_training(flat.skipped_with_head):
                return self._replayed(flat, "whole", x, lambda t: self.head(flat.run(t)),
                                      settled=lambda: _stashed(self.head, "last_settled"))
        return self.head(self.forward_features(x))  # settling: the head's small tensors are not pooled

    def _replayed(self, flat: "_Flat", part: str, x: Tensor, run: Callable[[Tensor], Tensor],
                  settled: Callable[[], bool] = lambda: True) -> Tensor:
        """run(x) (a settled signature's calls), from a C++ replay of them once recorded
        (replay.py: 0.1-0.4 ms of a ~5-7 ms regnetx_004 batch-1 forward is Python between the ops
        on an AMD EPYC, bench/NOTES.md Step 16). The first call records; a recording whose weights
        changed in place (CallList.run returns None) is dropped, the next call runs the Python
        calls (which repack the weights) and the one after records again (replaced weights or
        modules drop the whole _Flat: _drop_caches_if_replaced). `settled()`, before and after
        the recorded call: whether every choice in it was settled (else no recording yet)."""
        held = flat.replays.get(part)
        if held is None:
            if not settled():  # on the last call: not yet worth recording
                return run(x)
            if not replay.available():
                flat.replays[part] = _NOT_REPLAYED
                return run(x)
            y, plan = replay.record(run, x, self.buffers())
            if settled():
                flat.replays[part] = plan if plan is not None else _NOT_REPLAYED
            return y
        if held is _NOT_REPLAYED:
            return run(x)
        if held is _REPLAY_STALE:
            del flat.replays[part]
            return run(x)
        y = held.run(x)
        if y is not None:
            return y
        flat.replays[part] = _REPLAY_STALE  # a watched tensor changed in place
        return run(x)


_NOT_REPLAYED = "not replayed"  # _Flat.replays: the calls cannot be replayed (or no CallList): Python
_REPLAY_STALE = "stale"  # its weights changed: one call through Python, then record again


class _Flat:
    """FusedRegNet's settled calls of one input signature: the stem's conv and each block's plan,
    the modules they skip (whose hooks and train mode send a forward through the modules; for the
    whole forward's replay also the head's modules), and their replays from C++ ("features": stem
    and stages; "whole": and the head)."""

    __slots__ = ("calls", "skipped", "skipped_with_head", "replays")

    def __init__(self, calls, skipped, head):
        self.calls, self.skipped, self.skipped_with_head = calls, skipped, skipped + head
        self.replays = {}  # part -> CallList, or a marker above

    def run(self, x: Tensor) -> Tensor:
        for call in self.calls:
            x = call(x)
        return x

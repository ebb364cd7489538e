"""optimize(): same outputs as the original model (ours, torchvision's, timm's), the original
untouched, inference-only with a clear error otherwise, torch.compile-able, bad input rejected."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regnet
import regnet_kernels as rk
from regnet_kernels.modules import SETTLE_CALLS, FusedConv, FusedXBlock, FusedYBlock
from kernel_cases import fake_timed_routes, rel_err


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Realistic, non-trivial BN: random affine parameters, running statistics calibrated on a
    random batch (so activations keep a sane scale through the network and a wrong fold shows)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.momentum = 1.0
        model.train()(torch.randn(8, 3, 64, 64, generator=g))
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def _models():
    import timm
    import torchvision

    torch.manual_seed(0)
    yield "regnety_002 (ours)", regnet.create_model("regnety_002")
    yield "regnetx_004 (ours)", regnet.create_model("regnetx_004")
    yield "regnet_x_400mf (torchvision)", torchvision.models.regnet_x_400mf()
    yield "regnet_y_400mf (torchvision)", torchvision.models.regnet_y_400mf()
    yield "regnety_006 (timm)", timm.create_model("regnety_006")


@pytest.mark.parametrize("cpu_route", ("auto", "native"))
@pytest.mark.parametrize("label,model", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_fp32_outputs_match_the_original(label, model, cpu_route, monkeypatch):
    """cpu_route 'native' turns the cpu backend's oneDNN routes off, so our kernels serve every op."""
    from regnet_kernels.backends import cpu as cpu_backend

    if cpu_route == "native":
        monkeypatch.setattr(cpu_backend, "ONEDNN_ENABLED", False)
    model = _randomize_bn(copy.deepcopy(model))
    before = copy.deepcopy(model.state_dict())
    fused = rk.optimize(model)
    # The second call runs the schedules fixed on the first (FusedYBlock.gate_in_se).
    for x in (torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)):
        with torch.no_grad():
            ref, out = model(x), fused(x)
        assert (out - ref).abs().max().item() <= 1e-4, label
    schedules = {v for m in fused.modules() for v in getattr(m, "gate_in_se", {}).values()}
    if cpu_route == "native":
        assert schedules <= {False}, "gating in the SE op without the oneDNN route"
    # the original is untouched: same weights, still a plain module with BN
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _slow_down(block, schedule_in_se: bool):
    """Make one of a Y block's two schedules look 10x slower to its trial clock: the clock is a
    counter that the wrapped last op of each schedule advances (by 10 or 1)."""
    now = [0.0]
    block.schedule_trials.clock = lambda: now[0]
    gated, k4 = block.c.gated, block.k4

    def timed(fn, cost):
        def run(*args, **kwargs):
            now[0] += cost
            return fn(*args, **kwargs)
        return run

    block.c.gated = timed(gated, 1.0 if schedule_in_se else 10.0)  # the gate-on-load schedule's K4
    block.k4 = timed(k4, 10.0 if schedule_in_se else 1.0)  # the gate-in-SE schedule's K4


@pytest.mark.parametrize("faster", ("gate_on_load", "gate_in_se"))
def test_y_blocks_choose_their_schedule_and_agree(faster):
    """On the oneDNN route, Y blocks with large K4 weights gate in the SE op at once (se_gate, then
    a plain 1x1 conv); the others time both schedules on their first calls and keep the faster.
    Every call, during the trials too, must match the original."""
    from regnet_kernels.backends import cpu as cpu_backend

    if not cpu_backend.ONEDNN_ENABLED or not cpu_backend._use_onednn(
            torch.zeros(1, 8, 1, 1).to(memory_format=torch.channels_last), torch.zeros(8, 8, 1, 1), 1, None):
        pytest.skip("no oneDNN route on this machine: every Y block gates on load")
    model = _randomize_bn(regnet.create_model("regnety_004"))
    fused = rk.optimize(model)
    blocks = [m for m in fused.modules() if isinstance(m, FusedYBlock)]
    for block in blocks:
        _slow_down(block, schedule_in_se=faster == "gate_on_load")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for _ in range(SETTLE_CALLS):
            assert (fused(x) - ref).abs().max().item() <= 1e-4
    assert all(len(b.gate_in_se) == 1 and not b.schedule_trials.samples for b in blocks), "a schedule left undecided"
    large = [b.c.weight.numel() >= cpu_backend.ONEDNN_GATED_MIN_WEIGHTS for b in blocks]
    assert any(large) and not all(large), "the model no longer has both kinds of Y block"
    for block, is_large in zip(blocks, large):
        # The threshold was measured on AVX-512; on AVX2 every Y block times the two schedules.
        at_once = is_large and torch.backends.cpu.get_cpu_capability() == "AVX512"
        expected = True if at_once else faster == "gate_in_se"
        assert list(block.gate_in_se.values()) == [expected], (block.c.weight.shape, faster)


@pytest.mark.parametrize("faster", (0, 1), ids=("onednn_faster", "native_faster"))
def test_fused_conv_times_the_backend_routes_and_keeps_the_faster(faster, monkeypatch):
    """Where the cpu backend offers two routes (oneDNN, our kernel), a fused conv times both on its
    first calls (a fake clock here makes one 10x slower) and then runs only the faster; every
    output matches float64."""
    from regnet_kernels.backends import cpu as cpu_backend

    x = torch.randn(2, 32, 9, 9).to(memory_format=torch.channels_last)
    # A grouped conv where oneDNN serves those (AVX-512), else a groups-1 one (AVX2 CPUs).
    for groups in (4, 1):
        conv, bn = nn.Conv2d(32, 32, 3, 1, 1, groups=groups, bias=False), nn.BatchNorm2d(32).eval()
        with torch.no_grad():
            for t in (bn.weight, bn.bias, bn.running_mean):
                t.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        fused = FusedConv(conv, bn, torch.float32)
        if cpu_backend.conv_routes(x, fused.weight, fused.bias, 1, 1, groups, None, True, False):
            break
    else:
        pytest.skip("no oneDNN route on this machine: one route, nothing to time")
    clock, runs = fake_timed_routes(monkeypatch, cpu_backend, faster)
    fused.route_trials.clock = clock
    with torch.no_grad():
        ref = torch.relu(bn.double()(F.conv2d(x.double(), conv.weight.double(), None, 1, 1, 1, groups)))
        for _ in range(SETTLE_CALLS + 2):
            assert rel_err(fused(x), ref) <= 1e-5
    trial_runs = 2 * (1 + fused.route_trials.TRIALS)
    assert sorted(runs[:trial_runs]) == ["native"] * (trial_runs // 2) + ["onednn"] * (trial_runs // 2), runs
    assert set(runs[trial_runs:]) == {("onednn", "native")[faster]}, runs
    assert not fused.route_trials.samples and list(fused.route_trials.chosen.values()) == [faster]


@pytest.mark.parametrize("faster", (0, 1), ids=("onednn_faster", "native_faster"))
def test_block_times_k4_into_the_shortcut_and_keeps_the_faster(faster, monkeypatch):
    """An X block with a projection owns its shortcut: K4 may be oneDNN writing into it or our kernel
    into a new tensor. The block times both (a fake clock makes one 10x slower), keeps the faster,
    and plans with it; every output matches the float64 block."""
    from regnet_kernels.backends import cpu as cpu_backend

    model = _randomize_bn(regnet.create_model("regnetx_002"))
    block = next(model.s3.children())
    assert block.proj is not None
    fused = FusedXBlock(block, torch.float32).eval()
    x = torch.randn(1, block.f.a.in_channels, 14, 14).to(memory_format=torch.channels_last)
    k4_in = torch.randn(1, block.f.c.in_channels, 7, 7).to(memory_format=torch.channels_last)
    shortcut = torch.randn(1, block.f.c.out_channels, 7, 7).to(memory_format=torch.channels_last)
    if not cpu_backend.conv_into_residual(k4_in, fused.c.weight, fused.c.bias, 1, 0, 1, shortcut, True):
        pytest.skip("no oneDNN route on this machine: one route, nothing to time")
    clock, runs = fake_timed_routes(monkeypatch, cpu_backend, faster)
    for conv in (fused.a, fused.b, fused.c, fused.proj):
        conv.route_trials.clock = clock
    with torch.no_grad():
        ref = copy.deepcopy(block).double()(x.double())
        for _ in range(SETTLE_CALLS + 2):
            assert rel_err(fused(x), ref) <= 1e-5
    assert fused.plans, "the block made no plan once settled"
    key, chosen = next((k, v) for k, v in fused.c.route_trials.chosen.items() if "into_residual" in str(k))
    assert chosen == faster and not fused.c.route_trials.samples, (key, chosen)
    # Every conv of the block with two routes settled on the faster one, K4 included (on AVX2 the
    # grouped conv has one route: nothing timed).
    timed = [conv for conv in (fused.a, fused.b, fused.c, fused.proj) if conv.route_trials.chosen]
    assert fused.a in timed and fused.c in timed and fused.proj in timed
    assert (fused.b in timed) == (torch.backends.cpu.get_cpu_capability() == "AVX512")
    assert all(set(conv.route_trials.chosen.values()) == {faster} for conv in timed)


def _timed_extra(monkeypatch, op, name, cost, runs, now):
    """Wrap the cpu backend's `bind` extra of `op` so each run logs `name` and costs `cost` on the
    fake clock (its `now` list)."""
    from regnet_kernels import dispatch

    extras = dispatch._REGISTRY[op]["cpu"].extras
    bind = extras["bind"]

    def timed_bind(*args):
        run = bind(*args)

        def timed_run(*call_args):
            runs.append(name)
            now.append(cost)
            return run(*call_args)
        return timed_run
    monkeypatch.setitem(extras, "bind", timed_bind)


def _settle_on_fake_clock(monkeypatch, pair_cost, whole_cost, module_call_cost=0.0):
    """A fake clock for every timed choice of a block: conv routes cost 1 (ours) or 10, the one-op
    K1 + K2 `pair_cost`, the whole X block `whole_cost`, and each call of a conv module (its
    Python: signature, lookups, trial) `module_call_cost`. Returns (runs, set_clocks(block))."""
    from regnet_kernels.backends import cpu as cpu_backend

    clock, runs = fake_timed_routes(monkeypatch, cpu_backend, 1)
    now = []
    _timed_extra(monkeypatch, "conv1x1_conv_bn_act", "pair", pair_cost, runs, now)
    _timed_extra(monkeypatch, "x_block", "whole", whole_cost, runs, now)
    for method in ("forward", "into_residual"):
        def charged(self, *args, _method=getattr(FusedConv, method), **kwargs):
            now.append(module_call_cost)
            return _method(self, *args, **kwargs)
        monkeypatch.setattr(FusedConv, method, charged)
    fake_now = lambda: clock() + sum(now)  # noqa: E731

    def set_clocks(fused):
        fused.front_trials.clock = fused.whole_trials.clock = fake_now
        if isinstance(fused, FusedYBlock):
            fused.schedule_trials.clock = fake_now
        for conv in (fused.a, fused.b, fused.c, fused.proj):
            conv.route_trials.clock = fake_now
    return runs, set_clocks


def _settled_block(name, set_clocks, runs):
    """The first block of stage 2 of `name`, fused, settled on the fake clock with every output
    checked against float64; then `runs` holds only the 3 settled calls' runs."""
    block = next(_randomize_bn(regnet.create_model(name)).s2.children())
    cls = FusedYBlock if block.f.se is not None else FusedXBlock
    fused = cls(block, torch.float32).eval()
    set_clocks(fused)
    x = torch.randn(2, block.f.a.in_channels, 12, 12).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = copy.deepcopy(block).double()(x.double())
        for _ in range(SETTLE_CALLS + 2):
            assert rel_err(fused(x), ref) <= 1e-5, name
        assert fused.plans, f"{name}: no plan once settled"
        runs.clear()
        for _ in range(3):
            assert rel_err(fused(x), ref) <= 1e-5, name
    return fused


@pytest.mark.parametrize("one_op_faster", (False, True), ids=("two_ops_faster", "one_op_faster"))
def test_blocks_time_k1_and_k2_as_one_op_and_keep_the_faster(one_op_faster, monkeypatch):
    """Where the backend has conv1x1_conv_bn_act, a block (X and Y) times K1 and K2 as two ops
    against one, once the two convs have settled their routes (a fake clock: each conv route
    costs 1 or 10, the one op 0.5 or 100; the whole X block 1000), keeps the faster, and plans
    with it: settled calls run the one op exactly when it was kept. Outputs match the float64
    block on every call."""
    runs, set_clocks = _settle_on_fake_clock(monkeypatch, 0.5 if one_op_faster else 100.0, 1000.0)
    for name in ("regnetx_002", "regnety_002"):
        fused = _settled_block(name, set_clocks, runs)
        assert list(fused.front_trials.chosen.values()) == [int(one_op_faster)], name
        assert runs.count("pair") == (3 if one_op_faster else 0) and "whole" not in runs, (name, runs)


@pytest.mark.parametrize("whole_faster", (False, True), ids=("ops_faster", "whole_faster"))
def test_x_blocks_time_themselves_whole_and_keep_the_faster(whole_faster, monkeypatch):
    """An X block times x_block (the whole block in one op) against its settled ops (fake clock:
    the ops cost at least 1.5, x_block 0.1 or 1000), keeps the faster and plans with it: settled
    calls run x_block and nothing else of the block's (the projection computed inside it) exactly
    when it was kept. Y blocks never offer it. Outputs match the float64 block on every call."""
    runs, set_clocks = _settle_on_fake_clock(monkeypatch, 0.5, 0.1 if whole_faster else 1000.0)
    fused = _settled_block("regnetx_002", set_clocks, runs)
    assert fused.proj is not None, "the test block has no projection"
    assert list(fused.whole_trials.chosen.values()) == [int(whole_faster)]
    if whole_faster:  # x_block alone, per call
        assert runs == ["whole"] * 3, runs
    else:
        assert "whole" not in runs and runs.count("pair") == 3, runs
    fused = _settled_block("regnety_002", set_clocks, runs)
    assert "whole" not in runs and not fused.whole_trials.chosen and not fused.whole_trials.samples


def test_blocks_time_their_ops_as_their_plan_runs_them(monkeypatch):
    """The ops option of a block's trials runs as a plan would (bound calls), not through the conv
    modules, whose Python costs ~20-35 us a call at batch 1 and made x_block win where it is 1.2x
    slower. Fake clock: each conv module call costs 100; K1 + K2 as one op 3 against 2 for the two
    bound convs; x_block 5 against 4 for the bound ops (projection included). Both trials keep
    the ops, and the settled calls run them."""
    runs, set_clocks = _settle_on_fake_clock(monkeypatch, 3.0, 5.0, module_call_cost=100.0)
    fused = _settled_block("regnetx_002", set_clocks, runs)
    assert list(fused.front_trials.chosen.values()) == [0]
    assert list(fused.whole_trials.chosen.values()) == [0]
    assert "pair" not in runs and "whole" not in runs and len(runs) == 3 * 4, runs


def test_blocks_run_plans_once_settled_and_drop_them_when_moved():
    """Once every choice for a signature is made, each block runs it as a plan (bound calls in
    order): the outputs stay those of the original on every call, before and after; .to() drops
    the plans; a block with a forward hook makes none (its hooks would not be called)."""
    for name in ("regnetx_002", "regnety_002"):
        model = _randomize_bn(regnet.create_model(name))
        fused = rk.optimize(model)
        blocks = [m for m in fused.modules() if isinstance(m, FusedXBlock)]
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            ref = model(x)
            for _ in range(SETTLE_CALLS + 2):
                assert (fused(x) - ref).abs().max().item() <= 1e-4, name
        assert all(len(b.plans) == 1 for b in blocks), (name, [len(b.plans) for b in blocks])
        fused.to(torch.float32)
        assert not any(b.plans for b in blocks)
    hooked = rk.optimize(_randomize_bn(regnet.create_model("regnetx_002")))
    calls = []
    blk = [m for m in hooked.modules() if isinstance(m, FusedXBlock)][1]
    blk.b.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        for _ in range(SETTLE_CALLS + 2):
            hooked(x)
    assert not blk.plans and len(calls) == SETTLE_CALLS + 2
    # A global module hook is honoured by planned blocks too: they fall back to their ops.
    planned = [m for m in hooked.modules() if isinstance(m, FusedXBlock)][2]
    assert planned.plans
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, *_: seen.append(mod) if mod is planned.b else None)
    try:
        with torch.no_grad():
            hooked(x)
    finally:
        handle.remove()
    assert seen, "a global forward hook was skipped by a planned block"


def _head_reference(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pool and FC of the original head in float64."""
    return F.linear(x.double().mean((2, 3)), head.fc.weight.double(), head.fc.bias.double())


def test_head_pools_by_channel_sums_into_a_scaled_fc(monkeypatch):
    """fp32 on the CPU: the head sums over H, W with the extension's channel_sums and runs the FC
    with its weight / (H W); settled, it runs that as a plan. Outputs match the float64 pool + FC
    on every call, at odd map sizes, after the map size changes, and after fc's weight and bias
    are updated in place (the scaled copy is remade). A forward hook on head.fc is called (the
    plain path); bf16 and a forced eager backend take the plain path too."""
    from regnet_kernels.backends import cpu as cpu_backend
    from regnet_kernels.modules import FusedHead

    if cpu_backend.EXT is None:
        pytest.skip("the extension is not built: no channel_sums")
    model = regnet.create_model("regnetx_002", num_classes=37).eval()
    head = FusedHead(model.head, torch.float32)
    sums_calls = []
    monkeypatch.setattr(cpu_backend, "spatial_sums_call",
                        lambda call=cpu_backend.spatial_sums_call: lambda x: sums_calls.append(1) or call()(x))
    fc = head.fc
    with torch.inference_mode():
        for h, w in ((7, 5), (7, 5), (1, 1), (13, 9)):
            x = torch.randn(3, fc.weight.shape[1], h, w).to(memory_format=torch.channels_last)
            for _ in range(SETTLE_CALLS):
                assert rel_err(head(x), _head_reference(model.head, x)) <= 1e-5, (h, w)
            assert head._plans and sums_calls, "no plan of channel sums once settled"
        with torch.inference_mode(False), torch.no_grad():
            fc.weight.mul_(-0.5)
            fc.bias.add_(1.0)
            model.head.fc.weight.mul_(-0.5)
            model.head.fc.bias.add_(1.0)
        assert rel_err(head(x), _head_reference(model.head, x)) <= 1e-5, "after an in-place update of fc"
        seen = []
        handle = fc.register_forward_hook(lambda *_: seen.append(1))
        assert rel_err(head(x), _head_reference(model.head, x)) <= 1e-5 and seen, "fc's hook was not called"
        handle.remove()
        sums_calls.clear()
        xb = x.bfloat16()
        bf16 = FusedHead(model.head, torch.bfloat16)
        eager_own = F.linear(xb.mean((2, 3)), model.head.fc.weight.bfloat16(), model.head.fc.bias.bfloat16())
        assert rel_err(bf16(xb), _head_reference(model.head, x)) <= 2 * max(
            rel_err(eager_own, _head_reference(model.head, x)), torch.finfo(torch.bfloat16).eps / 2)
        assert rel_err(FusedHead(model.head, torch.float32, backend="eager")(x), _head_reference(model.head, x)) <= 1e-5
        assert not sums_calls, "bf16 or the eager backend went through channel_sums"


def test_settled_forwards_run_as_a_flat_list_that_hooks_and_train_mode_bypass(monkeypatch):
    """Once the stem and every block are settled for a signature, the model runs them as a flat
    list of their settled calls, then from its C++ replay (tests/test_replay.py): no block module
    is called. A forward hook added afterwards to a block, a stage, the stem, the stem's conv, the
    head or its FC is still called (that forward goes through the modules), a block put in train
    mode still raises, and .to() drops the list. Outputs match the original on every call."""
    from regnet_kernels.modules import _Planned

    model = _randomize_bn(regnet.create_model("regnety_002"))
    fused = rk.optimize(model)
    x = torch.randn(1, 3, 64, 64)
    block_calls = []
    forward = _Planned.forward
    monkeypatch.setattr(_Planned, "forward", lambda self, t: block_calls.append(1) or forward(self, t))
    with torch.no_grad():
        ref = model(x)
        for _ in range(SETTLE_CALLS + 2):
            assert (fused(x) - ref).abs().max().item() <= 1e-4
        assert len(fused._flat) == 1
        block_calls.clear()
        assert (fused(x) - ref).abs().max().item() <= 1e-4 and not block_calls, "a settled forward called blocks"
        for target in (fused.s3[1], fused.s4, fused.stem, fused.stem.conv, fused.head, fused.head.fc):
            seen = []
            handle = target.register_forward_hook(lambda *_: seen.append(1))
            assert (fused(x) - ref).abs().max().item() <= 1e-4 and seen, f"hook on {type(target).__name__} not called"
            handle.remove()
        fused.s2[0].train()
        with pytest.raises(RuntimeError, match="inference module"):
            fused(x)
        fused.s2[0].eval()
        assert (fused(x) - ref).abs().max().item() <= 1e-4
        fused.to(torch.float32)
        assert not fused._flat


@pytest.mark.parametrize("name", ("regnetx_002", "regnety_002"))
def test_copies_and_pickles_of_a_settled_model_run_their_own_weights(name):
    """A settled model's bound calls are closures over its own tensors: a deepcopy must not share
    them. A copy given other weights (load_state_dict) computes with those, the original keeps its
    own, and a pickle round trip (torch.save of the module) gives the original's outputs."""
    import pickle

    torch.manual_seed(0)
    model_a = _randomize_bn(regnet.create_model(name), seed=0)
    model_b = _randomize_bn(regnet.create_model(name), seed=1)
    fused_a = rk.optimize(model_a)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref_a, ref_b = model_a(x), model_b(x)
        for _ in range(SETTLE_CALLS + 2):
            fused_a(x)
        copied = copy.deepcopy(fused_a)
        copied.load_state_dict(rk.optimize(model_b).state_dict())
        for _ in range(3):
            assert (copied(x) - ref_b).abs().max().item() <= 1e-4, "the copy ran the original's weights"
            assert (fused_a(x) - ref_a).abs().max().item() <= 1e-4, "the original changed with its copy"
        unpickled = pickle.loads(pickle.dumps(fused_a))
        assert (unpickled(x) - ref_a).abs().max().item() <= 1e-4


@pytest.mark.parametrize("change", ("block", "conv", "deleted block", "head"))
def test_settled_models_follow_replaced_children(change):
    """Plans, flat lists and replays are bound to the modules of their time: replacing a block, a
    conv inside a block or the head of a settled model, or deleting a block, must be followed on
    the next call (a replaced block or conv silently ran the old one before)."""
    model_a = _randomize_bn(regnet.create_model("regnetx_002"), seed=0)
    model_b = _randomize_bn(regnet.create_model("regnetx_002"), seed=1)
    fused, ref = rk.optimize(model_a), copy.deepcopy(model_a)
    src = list(model_b.s3.children())[1]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for _ in range(SETTLE_CALLS + 3):
            fused(x)
        if change == "block":
            fused.s3[1] = FusedXBlock(src, torch.float32).eval()
            ref.s3.b2 = copy.deepcopy(src)
        elif change == "conv":
            fused.s3[1].a = FusedConv(src.f.a, src.f.a_bn, torch.float32)
            target = list(ref.s3.children())[1].f
            target.a, target.a_bn = copy.deepcopy(src.f.a), copy.deepcopy(src.f.a_bn)
        elif change == "deleted block":
            last = len(fused.s4) - 1
            del fused.s4[last]
            delattr(ref.s4, list(dict(ref.s4.named_children()))[last])
        else:
            fused.head = nn.Identity()
            ref = lambda t: model_a.forward_features(t)  # noqa: E731
        for _ in range(3):
            x = torch.randn(1, 3, 64, 64)
            expected = ref(x)  # (logits, or features up to ~10 for the head: the tolerance scales)
            tol = 1e-4 * max(1.0, expected.abs().max().item())
            assert (fused(x) - expected).abs().max().item() <= tol, f"the settled model ran the old {change}"


def test_a_settled_block_follows_a_replaced_conv():
    src_a = list(_randomize_bn(regnet.create_model("regnety_002"), seed=0).s3.children())[1]
    src_b = list(_randomize_bn(regnet.create_model("regnety_002"), seed=1).s3.children())[1]
    block, ref = FusedYBlock(src_a, torch.float32).eval(), copy.deepcopy(src_a)
    x = torch.randn(1, src_a.f.a.in_channels, 8, 8).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(SETTLE_CALLS + 3):
            block(x)
        block.c = FusedConv(src_b.f.c, src_b.f.c_bn, torch.float32)
        ref.f.c, ref.f.c_bn = copy.deepcopy(src_b.f.c), copy.deepcopy(src_b.f.c_bn)
        for _ in range(3):
            assert (block(x) - ref(x)).abs().max().item() <= 1e-4, "the settled block ran the old conv"


def test_blocks_reuse_only_buffers_they_own():
    """K4 may write into the shortcut's buffer: a standalone block must leave its input alone
    (identity shortcut), and a FusedRegNet must leave the caller's input and stage outputs alone."""
    model = _randomize_bn(regnet.create_model("regnetx_002"))
    fused = rk.optimize(model)
    blk_src, blk = list(model.s3.children())[1], fused.s3[1]
    assert blk.proj is None, "needs an identity-shortcut block"
    standalone = rk.FusedXBlock(blk_src, torch.float32).eval()
    x = torch.randn(2, blk_src.f.a.in_channels, 9, 9).to(memory_format=torch.channels_last)
    kept = x.clone()
    with torch.no_grad():
        for _ in range(2):
            y = standalone(x)
            assert torch.equal(x, kept), "a standalone block overwrote its input"
            assert (y - blk_src(x)).abs().max().item() <= 1e-4
    inp = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    kept_inp, stage_outs = inp.clone(), []
    for name in fused.stage_names:
        getattr(fused, name).register_forward_hook(lambda m, i, o: stage_outs.append((o, o.clone())))
    with torch.no_grad():
        out = fused(inp)
    assert torch.equal(inp, kept_inp)
    assert all(torch.equal(o, c) for o, c in stage_outs) and len(stage_outs) == len(fused.stage_names)
    with torch.no_grad():
        assert (out - model(inp)).abs().max().item() <= 1e-4


def test_fused_conv_writes_into_the_residual_where_the_backend_can():
    """FusedConv.into_residual takes the chosen backend's into_residual extra when it has one
    (the cpu backend's oneDNN in-place sum), else returns a new tensor and leaves residual alone."""
    from regnet_kernels import dispatch
    from regnet_kernels.modules import FusedConv

    conv, bn = nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(24))
        bn.running_var.copy_(torch.rand(24) + 0.5)
    fc = FusedConv(conv, bn, torch.float32)
    x = torch.randn(2, 32, 7, 7).to(memory_format=torch.channels_last)
    res = torch.randn(2, 24, 7, 7).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = torch.relu(bn(conv(x)) + res)
        for backend in ("auto", "eager"):
            r = res.clone()
            y = fc.into_residual(x, r, backend=backend)
            assert (y - expected).abs().max().item() <= 1e-4, backend
            name, _ = dispatch.select("conv_bn_act", backend, x=x, weight=fc.weight, bias=fc.bias, stride=1, padding=0,
                                      groups=1, residual=r, relu=True, channel_sums=False)
            into = dispatch.extra("conv_bn_act", name, "into_residual")
            # The extra returns the routes to time, [] where none serves (no oneDNN route for these
            # arguments on this CPU); the first call runs the first route, the in-place one.
            in_place = into is not None and len(into(x, fc.weight, fc.bias, 1, 0, 1, res.clone(), True)) > 0
            assert (y.data_ptr() == r.data_ptr()) == in_place, (backend, name)
            if not in_place:
                assert torch.equal(r, res)


def test_optimize_and_run_under_inference_mode():
    """Models built and converted under torch.inference_mode() (a common serving setup): the fused
    weights are normal tensors (the weight caches need their version counters) and outputs match."""
    with torch.inference_mode():
        model = _randomize_bn(regnet.create_model("regnety_002"))
        fused = rk.optimize(model)
        assert not any(t.is_inference() for t in fused.buffers())
        x = torch.randn(2, 3, 64, 64)
        for _ in range(2):
            assert (fused(x) - model(x)).abs().max().item() <= 1e-4


def test_bf16_within_twice_eager_error():
    model = _randomize_bn(regnet.create_model("regnety_002"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref64 = copy.deepcopy(model).double()(x.double())
        eager_bf16 = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16))
        fused = rk.optimize(model, dtype=torch.bfloat16)
        first, out = fused(x), fused(x)  # the second call runs the schedules fixed on the first
    assert out.dtype == torch.bfloat16
    assert rel_err(first, ref64) <= 2 * rel_err(eager_bf16, ref64)
    assert rel_err(out, ref64) <= 2 * rel_err(eager_bf16, ref64)


def test_activations_stay_channels_last():
    fused = rk.optimize(_randomize_bn(regnet.create_model("regnetx_002")))
    seen = []
    for blk in fused.modules():
        if isinstance(blk, rk.FusedXBlock):
            blk.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        fused(torch.randn(1, 3, 64, 64))
    assert seen and all(seen)


def test_train_mode_raises_with_how_to_train():
    fused = rk.optimize(_randomize_bn(regnet.create_model("regnetx_002")))
    fused.train()
    with pytest.raises(RuntimeError, match="Train the original model"):
        fused(torch.randn(1, 3, 32, 32))


def test_bad_input():
    model = _randomize_bn(regnet.create_model("regnetx_002"))
    with pytest.raises(TypeError, match="expected a RegNet this converter knows"):
        rk.optimize(nn.Sequential(nn.Conv2d(3, 8, 3)).eval())
    with pytest.raises(ValueError, match="eval-mode"):
        rk.optimize(copy.deepcopy(model).train())
    with pytest.raises(ValueError, match="dtype: expected one of"):
        rk.optimize(model, dtype=torch.int8)
    with pytest.raises(ValueError, match="backend='gpu': expected"):
        rk.optimize(model, backend="gpu")
    with pytest.raises(ValueError, match="input x: expected"):
        rk.optimize(model)(torch.randn(1, 4, 32, 32))


def test_torch_compile_fullgraph():
    model = _randomize_bn(regnet.RegNet(regnet.RegNetParams(depth=4, w0=16, wa=16.0, wm=2.0, group_w=8, se_r=0.25),
                                        num_classes=5))
    fused = rk.optimize(model)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(fused, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_jit_trace_fails_with_a_clear_message():
    fused = rk.optimize(_randomize_bn(regnet.create_model("regnetx_002")))
    with pytest.raises(RuntimeError, match="torch.jit.trace cannot capture an optimized RegNet.*torch.compile"):
        torch.jit.trace(fused, torch.randn(1, 3, 32, 32))


def test_torch_export():
    model = _randomize_bn(regnet.create_model("regnety_002"))
    fused = rk.optimize(model)
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(fused, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-4)

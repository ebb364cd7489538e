"""regnet_kernels.replay (recorded op calls replayed by the extension's CallList) and its use in
FusedRegNet: replays compute what the Python calls compute, on new inputs; they are dropped when
their weights change (in place or replaced). (Hooks and train mode bypass them: tested with the
flat forward in test_optimize.py.)"""

from __future__ import annotations

import pytest
import torch

import regnet
import regnet_kernels as rk
from regnet_kernels import replay
from regnet_kernels.modules import _NOT_REPLAYED, SETTLE_CALLS, _Flat
from regnet_kernels.testing import poison_outputs
from test_optimize import _randomize_bn

pytestmark = pytest.mark.skipif(not replay.available(), reason="replays off (REGNET_KERNELS_REPLAY=0) or regnet_kernels._C without CallList")


def _cl(*shape):
    return torch.randn(*shape).to(memory_format=torch.channels_last)


def test_a_recording_replays_its_ops_on_new_inputs_and_frees_nothing_it_still_needs():
    """A function of our native ops and ATen ops (one result used twice, an in-place op, a tuple
    result, a view), recorded on one input, replayed on fresh ones: equal to the function run
    in Python on each, bit for bit. Constants (weights) are captured, not re-read."""
    w1, b1 = torch.randn(16, 8, 1, 1), torch.randn(16)
    w2, b2 = torch.randn(16, 4, 3, 3), torch.randn(16)

    def fn(x):
        a = torch.ops.regnet_kernels.conv_bn_act(x, w1, b1, 1, 0, 1, None, True)
        b, sums = torch.ops.regnet_kernels.conv_bn_act_sums(a, w2, b2, 2, 1, 4, True)
        gate = torch.sigmoid(sums)[:, :, None, None]
        return (b * gate).add_(a[:, :, ::2, ::2]).flatten(1)

    with torch.no_grad():
        y, plan = replay.record(fn, _cl(2, 8, 9, 9), [w1, b1, w2, b2])
        assert plan is not None and len(plan) >= 6
        for _ in range(3):
            x = _cl(2, 8, 9, 9)
            with poison_outputs():
                got = plan.run(x)
            assert torch.equal(got, fn(x))


def test_python_numbers_given_for_tensor_arguments_are_replayed():
    """`t * 3` reaches the dispatch mode with the number where the schema takes a Tensor."""
    y, plan = replay.record(lambda t: (t * 3 + 0.5) / 7, torch.randn(4, 5), [])
    assert plan is not None
    x = torch.randn(4, 5)
    assert torch.equal(plan.run(x), (x * 3 + 0.5) / 7)


def test_calls_it_cannot_replay_are_not_recorded():
    """A list argument holding a computed tensor (cat) and a result the ops did not compute (the
    input itself) give no recording; the function's result is returned either way."""
    x = torch.randn(2, 3)
    y, plan = replay.record(lambda t: torch.cat([t.relu(), t.neg()]), x, [])
    assert plan is None and torch.equal(y, torch.cat([x.relu(), x.neg()]))
    y, plan = replay.record(lambda t: t, x, [])
    assert plan is None and y is x


def test_a_replay_refuses_to_run_after_its_sources_change_in_place():
    w = torch.randn(4, 3)
    y, plan = replay.record(lambda t: torch.mm(t, w.t()), torch.randn(2, 3), [w])
    x = torch.randn(2, 3)
    assert torch.equal(plan.run(x), x @ w.t())
    w.mul_(2)
    assert plan.run(x) is None and not plan.current()


def test_call_list_rejects_malformed_steps():
    ext_list = replay._ext.load().CallList()
    with pytest.raises(RuntimeError, match="aten::relu.*1 arguments, got 2"):
        ext_list.add("aten::relu", "", [(0, None), (-1, 1)], [])
    with pytest.raises(RuntimeError, match="register 3 is not defined"):
        ext_list.add("aten::relu", "", [(3, None)], [])
    with pytest.raises(RuntimeError, match="no output register"):
        ext_list.run(torch.randn(2))
    with pytest.raises(RuntimeError, match="register 5 is not defined"):
        ext_list.set_output(5)


def _settled(name, seed=0, hw=64, **options):
    model = _randomize_bn(regnet.create_model(name), seed=seed)
    fused = rk.optimize(model, **options)
    x = torch.randn(1, 3, hw, hw)
    for _ in range(SETTLE_CALLS + 4):
        fused(x)
    return model, fused, x


@pytest.mark.parametrize("name, options, tol", [
    ("regnetx_002", {}, 1e-4), ("regnety_002", {}, 1e-4),
    ("regnety_002", {"dtype": torch.bfloat16}, None),  # bf16 (its error: test_optimize.py)
    ("regnety_002", {"backend": "eager"}, 1e-4),  # ATen ops, with Python numbers as tensor arguments
])
def test_settled_forwards_are_replayed_and_match_the_python_calls(name, options, tol, monkeypatch):
    """Once settled, forward and forward_features run from C++ replays (the Python calls are not
    made); on fresh inputs they equal the flat Python calls exactly and, in fp32, the original
    model to `tol`."""
    with torch.no_grad():
        model, fused, x = _settled(name, **options)
        fused.forward_features(x)
        fused.forward_features(x)
        (flat,) = fused._flat.values()
        assert {part: type(held).__name__ for part, held in flat.replays.items()} == {
            "whole": "CallList", "features": "CallList"}
        python_runs = []
        run = _Flat.run
        monkeypatch.setattr(_Flat, "run", lambda self, t: python_runs.append(1) or run(self, t))
        for _ in range(3):
            x = torch.randn(1, 3, 64, 64)
            y, features = fused(x), fused.forward_features(x)
            assert not python_runs, "a settled forward ran the Python calls"
            xin = x.to(dtype=fused.dtype, memory_format=torch.channels_last)
            assert torch.equal(features, run(flat, xin))
            assert torch.equal(y, fused.head(run(flat, xin)))
            assert tol is None or (y - model(x)).abs().max().item() <= tol


def test_replays_follow_weights_updated_in_place_or_replaced():
    """load_state_dict (in-place copies) and a buffer assigned another tensor: every later call
    computes with the new weights (the replay is dropped, the Python calls rebind, a new one is
    recorded)."""
    with torch.no_grad():
        model_a, fused, x = _settled("regnetx_002", seed=0)
        model_b = _randomize_bn(regnet.create_model("regnetx_002"), seed=1)
        fused.load_state_dict(rk.optimize(model_b).state_dict())
        ref_b = model_b(x)
        for i in range(SETTLE_CALLS):  # the head's scaled FC is remade and times its routes again
            assert (fused(x) - ref_b).abs().max().item() <= 1e-4, f"call {i} after load_state_dict ran old weights"
        (flat,) = fused._flat.values()
        assert type(flat.replays["whole"]).__name__ == "CallList", "no new recording after the update"

        conv = fused.s3[1].a
        conv.weight = conv.weight * 1.5  # a new tensor, not an in-place update
        hooked = fused.s3[1].register_forward_hook(lambda *_: None)  # forces the module path
        ref = fused(x)
        hooked.remove()
        assert (ref - ref_b).abs().max().item() > 1e-3, "the replaced weight should change the logits"
        for i in range(4):
            assert torch.equal(fused(x), ref), f"call {i} after the buffer was replaced ran the old tensor"


def test_a_recording_that_fails_leaves_the_forward_on_its_python_calls(monkeypatch):
    """CallList refusing a step (an argument it cannot convert) must not fail the forward."""
    def refuse(*_args):
        raise RuntimeError("Unable to cast")

    monkeypatch.setattr(replay, "_build", refuse)
    with torch.no_grad():
        model, fused, x = _settled("regnetx_002")
        (flat,) = fused._flat.values()
        assert flat.replays == {"whole": _NOT_REPLAYED}
        for _ in range(2):
            x = torch.randn(1, 3, 64, 64)
            assert (fused(x) - model(x)).abs().max().item() <= 1e-4


def test_alternating_input_sizes_keep_a_replay_each(monkeypatch):
    """A server alternating two input sizes: each size settles, records and then replays (the
    head keeps a scaled FC per map size; making one must not drop the other size's replay)."""
    model = _randomize_bn(regnet.create_model("regnetx_002"))
    fused = rk.optimize(model)
    sizes = (64, 96)
    with torch.no_grad():
        for _ in range(SETTLE_CALLS + 4):
            for hw in sizes:
                fused(torch.randn(1, 3, hw, hw))
        assert len(fused._flat) == 2
        assert all(type(flat.replays.get("whole")).__name__ == "CallList" for flat in fused._flat.values())
        python_runs = []
        run = _Flat.run
        monkeypatch.setattr(_Flat, "run", lambda self, t: python_runs.append(1) or run(self, t))
        for hw in sizes * 2:
            x = torch.randn(1, 3, hw, hw)
            assert (fused(x) - model(x)).abs().max().item() <= 1e-4
        assert not python_runs, "alternating sizes dropped the replays"


def test_optimizing_another_model_keeps_this_ones_replay(monkeypatch):
    """New fused modules register their own buffers: that must not drop other models' replays."""
    with torch.no_grad():
        model, fused, x = _settled("regnetx_002")
        rk.optimize(regnet.create_model("regnetx_002").eval())
        python_runs = []
        run = _Flat.run
        monkeypatch.setattr(_Flat, "run", lambda self, t: python_runs.append(1) or run(self, t))
        assert (fused(x) - model(x)).abs().max().item() <= 1e-4
        assert not python_runs, "optimizing another model dropped this model's replay"

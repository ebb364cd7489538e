"""The op API: argument checks (every op, every bad-input family), BN folding, dispatch
(auto choice, forced backends, the environment variable), and the eager reference itself."""

import pytest
import torch
from torch import nn

import regnet_kernels as rk
from regnet_kernels import dispatch
from kernel_cases import assert_accurate, grouped_cases, random_tensor
from regnet_kernels.testing import poison_outputs


def _conv_args(n=2, c=16, h=7, groups=2, k=3, dtype=torch.float32):
    x = random_tensor((n, c, h, h), dtype)
    w = torch.randn(c, c // groups, k, k, dtype=dtype)
    b = torch.randn(c, dtype=dtype)
    return x, w, b


# ---- bad input: every op names the argument and what it expected --------------------------

@pytest.mark.parametrize("mutate,match", [
    (lambda a: {**a, "x": a["x"][0]}, "x: expected a 4-D"),
    (lambda a: {**a, "groups": 3}, "groups: expected a divisor"),
    (lambda a: {**a, "groups": 0}, "groups: expected an integer >= 1"),
    (lambda a: {**a, "weight": a["weight"][:, :4]}, "weight: expected shape"),
    (lambda a: {**a, "weight": torch.randn(16, 8, 5, 5)}, "weight: expected a square kernel"),
    (lambda a: {**a, "bias": torch.randn(15)}, "bias: expected shape"),
    (lambda a: {**a, "bias": torch.randn(16, dtype=torch.float64)}, "bias: expected dtype"),
    (lambda a: {**a, "weight": a["weight"].double()}, "weight: expected dtype"),
    (lambda a: {**a, "x": a["x"].to(torch.int32)}, "x: expected dtype"),
    (lambda a: {**a, "stride": 3}, "stride: expected one of"),
    (lambda a: {**a, "padding": 0}, "padding: expected 1"),
    (lambda a: {**a, "residual": torch.randn(2, 16, 6, 6)}, "residual: expected shape"),
    (lambda a: {**a, "x": torch.randn(2, 16, 7, 7, device="meta")}, "weight: expected a tensor on meta"),
    (lambda a: {**a, "x": a["x"][:, :0], "weight": a["weight"][:, :0], "groups": 1}, "x: expected at least one channel"),
])
def test_conv_bn_act_bad_input(mutate, match):
    x, w, b = _conv_args()
    args = mutate(dict(x=x, weight=w, bias=b, stride=1, groups=2, residual=None, padding=None))
    with pytest.raises(ValueError, match=match):
        rk.conv_bn_act(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


def _se_args(n=2, c=16, c_se=4):
    x = random_tensor((n, c, 5, 5))
    return dict(x=x, w1=torch.randn(c_se, c), b1=torch.randn(c_se), w2=torch.randn(c, c_se), b2=torch.randn(c))


@pytest.mark.parametrize("mutate,match", [
    (lambda a: {**a, "x": a["x"][0]}, "x: expected a 4-D"),
    (lambda a: {**a, "w1": torch.randn(4, 15)}, "w1: expected shape"),
    (lambda a: {**a, "w2": torch.randn(16, 5)}, "w2: expected shape"),
    (lambda a: {**a, "b1": torch.randn(5)}, "b1: expected shape"),
    (lambda a: {**a, "b2": torch.randn(4)}, "b2: expected shape"),
    (lambda a: {**a, "w1": torch.randn(4, 16, 3, 3)}, "w1: expected a 2-D"),
    (lambda a: {**a, "residual": torch.randn(2, 16, 4, 4)}, "residual: expected shape"),
    (lambda a: {**a, "sums": torch.randn(2, 15)}, "sums: expected shape"),
    (lambda a: {**a, "sums": torch.randn(2, 16, dtype=torch.float16)}, "sums: expected dtype"),
])
def test_se_gate_bad_input(mutate, match):
    args = mutate(_se_args())
    with pytest.raises(ValueError, match=match):
        rk.se_gate(args.pop("x"), args.pop("w1"), args.pop("b1"), args.pop("w2"), args.pop("b2"), **args)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: {**a, "x": a["x"][0]}, "x: expected a 4-D"),
    (lambda a: {**a, "gate": torch.rand(2, 15)}, "gate: expected shape"),
    (lambda a: {**a, "weight": torch.randn(8, 15)}, "weight: expected shape"),
    (lambda a: {**a, "weight": torch.randn(8, 16).half()}, "weight: expected dtype"),
    (lambda a: {**a, "bias": torch.randn(9)}, "bias: expected shape"),
    (lambda a: {**a, "residual": torch.randn(2, 16, 5, 5)}, "residual: expected shape"),
])
def test_gated_conv1x1_bad_input(mutate, match):
    x = random_tensor((2, 16, 5, 5))
    args = mutate(dict(x=x, gate=torch.rand(2, 16), weight=torch.randn(8, 16), bias=torch.randn(8), residual=None))
    with pytest.raises(ValueError, match=match):
        rk.gated_conv1x1(args.pop("x"), args.pop("gate"), args.pop("weight"), args.pop("bias"), **args)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: {**a, "sums": a["sums"][0]}, "sums: expected a 2-D"),
    (lambda a: {**a, "sums": a["sums"].half()}, "sums: expected dtype"),
    (lambda a: {**a, "hw": 0}, "hw: expected an integer >= 1"),
    (lambda a: {**a, "hw": 2.5}, "hw: expected an integer >= 1"),
    (lambda a: {**a, "w1": torch.randn(4, 15)}, "w1: expected shape"),
    (lambda a: {**a, "w2": torch.randn(16, 5)}, "w2: expected shape"),
    (lambda a: {**a, "b1": torch.randn(5)}, "b1: expected shape"),
    (lambda a: {**a, "b2": torch.randn(4)}, "b2: expected shape"),
])
def test_se_excite_bad_input(mutate, match):
    a = _se_args()
    args = mutate(dict(sums=a["x"].sum((2, 3)), hw=25, w1=a["w1"], b1=a["b1"], w2=a["w2"], b2=a["b2"]))
    with pytest.raises(ValueError, match=match):
        rk.se_excite(args["sums"], args["hw"], args["w1"], args["b1"], args["w2"], args["b2"])


def _pair_args():
    x = random_tensor((2, 12, 7, 7))
    return dict(x=x, w1=torch.randn(16, 12, 1, 1), b1=torch.randn(16), w2=torch.randn(16, 8, 3, 3),
                b2=torch.randn(16), stride=1, groups=2)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: {**a, "x": a["x"][0]}, "x: expected a 4-D"),
    (lambda a: {**a, "w1": torch.randn(16, 12, 3, 3)}, "w1: expected a 1x1 kernel"),
    (lambda a: {**a, "w1": torch.randn(16, 11, 1, 1)}, "w1: expected shape"),
    (lambda a: {**a, "b1": torch.randn(15)}, "b1: expected shape"),
    (lambda a: {**a, "w2": torch.randn(16, 4, 3, 3)}, "w2: expected shape .* for w1's output with 16 channels"),
    (lambda a: {**a, "w2": torch.randn(16, 8, 3, 3, dtype=torch.float64)}, "w2: expected dtype"),
    (lambda a: {**a, "b2": torch.randn(8)}, "b2: expected shape"),
    (lambda a: {**a, "groups": 3}, "groups: expected a divisor of the 16 input channels of w1's output"),
    (lambda a: {**a, "stride": 3}, "stride: expected one of"),
])
def test_conv1x1_conv_bn_act_bad_input(mutate, match):
    args = mutate(_pair_args())
    with pytest.raises(ValueError, match=match):
        rk.conv1x1_conv_bn_act(args.pop("x"), args.pop("w1"), args.pop("b1"), args.pop("w2"), args.pop("b2"), **args)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: {**a, "w3": torch.randn(16, 16, 3, 3)}, "w3: expected a 1x1 kernel"),
    (lambda a: {**a, "w3": torch.randn(16, 15, 1, 1)}, "w3: expected shape .* for w2's output with 16 channels"),
    (lambda a: {**a, "b3": torch.randn(3)}, "b3: expected shape"),
    (lambda a: {**a, "residual": torch.randn(2, 16, 6, 6)}, "residual: expected shape"),
    (lambda a: {**a, "residual": torch.randn(2, 16, 7, 7, dtype=torch.float64)}, "residual: expected dtype"),
    (lambda a: {**a, "w2": torch.randn(16, 4, 3, 3)}, "w2: expected shape"),
])
def test_x_block_bad_input(mutate, match):
    a = _pair_args()
    a.update(w3=torch.randn(16, 16, 1, 1), b3=torch.randn(16), residual=random_tensor((2, 16, 7, 7)))
    a = mutate(a)
    with pytest.raises(ValueError, match=match):
        rk.x_block(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], a["w3"], a["b3"], a["residual"], stride=a["stride"],
                   groups=a["groups"])


@pytest.mark.parametrize("mutate,match", [
    (lambda a: {**a, "residual": random_tensor((2, 24, 4, 4))}, "residual: expected exactly one shortcut.*both"),
    (lambda a: {**a, "proj_weight": None}, "residual: expected exactly one shortcut.*neither"),
    (lambda a: {**a, "proj_weight": None, "residual": random_tensor((2, 24, 4, 4))}, "bp: expected None without wp"),
    (lambda a: {**a, "proj_weight": torch.randn(24, 12, 3, 3)}, "wp: expected a 1x1 kernel"),
    (lambda a: {**a, "proj_weight": torch.randn(20, 12, 1, 1), "proj_bias": torch.randn(20)},
     r"wp: expected a projection to the block's output shape \[2, 24, 4, 4\]"),
    (lambda a: {**a, "proj_weight": torch.randn(24, 16, 1, 1)}, "wp: expected shape"),
    (lambda a: {**a, "proj_weight": torch.randn(24, 12, 1, 1, dtype=torch.float64)}, "wp: expected dtype"),
    (lambda a: {**a, "proj_bias": torch.randn(23)}, "bp: expected shape"),
])
def test_x_block_projection_bad_input(mutate, match):
    """x_block takes one shortcut: the residual, or the projection's weight (and bias) of x's
    channels to the block's output at the middle conv's stride."""
    a = _pair_args()
    a.update(stride=2, w3=torch.randn(24, 16, 1, 1), b3=torch.randn(24), residual=None,
             proj_weight=torch.randn(24, 12, 1, 1), proj_bias=torch.randn(24))
    a = mutate(a)
    with pytest.raises(ValueError, match=match):
        rk.x_block(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], a["w3"], a["b3"], a["residual"],
                   proj_weight=a["proj_weight"], proj_bias=a["proj_bias"], stride=a["stride"], groups=a["groups"])


def test_conv1x1_conv_bn_act_eager_is_the_two_convs():
    """The pair's reference is conv_bn_act's twice (K1 with ReLU), in float64."""
    a = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in _pair_args().items()}
    y, sums = rk.conv1x1_conv_bn_act(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], stride=2, groups=2,
                                     channel_sums=True, backend="eager")
    mid = torch.relu(torch.nn.functional.conv2d(a["x"], a["w1"], a["b1"]))
    ref = torch.relu(torch.nn.functional.conv2d(mid, a["w2"], a["b2"], 2, 1, 1, 2))
    assert torch.allclose(y, ref, rtol=1e-12, atol=1e-12) and torch.allclose(sums, ref.sum((2, 3)))


def test_non_tensor_argument_is_a_type_error():
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        rk.conv_bn_act([[1.0]], torch.randn(1, 1, 1, 1))


# ---- fold_bn ----------------------------------------------------------------------------

@pytest.mark.parametrize("groups,bias", [(1, False), (4, True)])
def test_fold_bn_matches_conv_then_eval_bn(groups, bias):
    torch.manual_seed(groups)
    conv = nn.Conv2d(16, 32, 3, padding=1, groups=groups, bias=bias).double()
    bn = nn.BatchNorm2d(32).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3)
    bn.eval()
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    ref = bn(conv(x))
    w, b = rk.fold_bn(conv, bn)
    out = torch.nn.functional.conv2d(x, w, b, padding=1, groups=groups)
    assert (out - ref).abs().max().item() < 1e-12
    # float32 result: folded in float64 then rounded once -> fp32 accuracy
    conv32, bn32 = conv.float(), bn.float()
    w32, b32 = rk.fold_bn(conv32, bn32, dtype=torch.float32)
    assert w32.dtype == torch.float32
    out32 = torch.nn.functional.conv2d(x.float(), w32, b32, padding=1, groups=groups)
    assert_accurate(out32, ref, what="fold_bn fp32")


def test_fold_bn_bad_input():
    with pytest.raises(TypeError, match="conv"):
        rk.fold_bn(nn.Linear(2, 2), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match="bn: expected 4 features"):
        rk.fold_bn(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="running_mean: expected shape"):
        rk.fold_bn_params(torch.randn(4, 2, 1, 1), None, None, None, torch.zeros(3), torch.ones(4), 1e-5)


# ---- dispatch ---------------------------------------------------------------------------

def test_eager_is_always_available_and_auto_picks_a_backend():
    x, w, b = _conv_args()
    verdicts = dict(rk.explain("conv_bn_act", x=x, weight=w, bias=b, stride=1, padding=1, groups=2,
                               residual=None, relu=True, channel_sums=False))
    assert verdicts["eager"] == [] and set(verdicts) == set(dispatch.AUTO_ORDER)
    name, _ = dispatch.select("conv_bn_act", None, x=x, weight=w, bias=b, stride=1, padding=1, groups=2,
                              residual=None, relu=True, channel_sums=False)
    assert name == next(n for n in dispatch.AUTO_ORDER if not verdicts[n])


def _sample_args(op):
    """Arguments every backend could plausibly take: fp32 channels_last on the CPU."""
    x = random_tensor((2, 16, 7, 7), torch.float32).to(memory_format=torch.channels_last)
    if op == "conv_bn_act":
        return dict(x=x, weight=torch.randn(16, 8, 3, 3), bias=torch.randn(16), stride=1, padding=1, groups=2,
                    residual=None, relu=True, channel_sums=False)
    if op == "conv1x1_conv_bn_act":
        return dict(x=x, w1=torch.randn(16, 16, 1, 1), b1=torch.randn(16), w2=torch.randn(16, 8, 3, 3),
                    b2=torch.randn(16), stride=1, padding=1, groups=2, relu=True, channel_sums=False)
    if op == "x_block":
        return dict(x=x, w1=torch.randn(16, 16, 1, 1), b1=torch.randn(16), w2=torch.randn(16, 8, 3, 3),
                    b2=torch.randn(16), w3=torch.randn(16, 16, 1, 1), b3=torch.randn(16), residual=x, stride=1,
                    padding=1, groups=2)
    if op == "se_excite":
        return dict(x=x.sum((2, 3)), hw=49, w1=torch.randn(4, 16), b1=torch.randn(4), w2=torch.randn(16, 4),
                    b2=torch.randn(16))
    if op == "se_gate":
        return dict(x=x, w1=torch.randn(4, 16), b1=torch.randn(4), w2=torch.randn(16, 4), b2=torch.randn(16),
                    residual=None, relu=True, sums=None)
    return dict(x=x, gate=torch.rand(2, 16), weight=torch.randn(8, 16), bias=torch.randn(8), residual=None,
                relu=True)


@pytest.mark.parametrize("op", ["conv_bn_act", "conv1x1_conv_bn_act", "x_block", "se_excite", "se_gate",
                                "gated_conv1x1"])
def test_auto_device_prefilter_agrees_with_each_backends_own_verdict(op):
    """select() skips backends whose AUTO_DEVICES exclude x's device without asking them: that
    must be exactly what their supports() would say (else auto would miss a backend that can serve)."""
    assert set(dispatch.AUTO_DEVICES) == set(dispatch.AUTO_ORDER)
    args = _sample_args(op)
    for name, reasons in rk.explain(op, **args):
        devices = dispatch.AUTO_DEVICES[name]
        if devices is not None and "cpu" not in devices:
            assert reasons, f"{name} serves {op} on the CPU in auto mode, but AUTO_DEVICES skips it there"
    name, _ = dispatch.select(op, None, **args)
    assert name == next(n for n, r in rk.explain(op, **args) if not r)


def test_backend_extras_are_named_and_found():
    """Fused modules use a backend's extras only through dispatch.extra (they never name a backend)."""
    with pytest.raises(ValueError, match=r"extras \['in_place'\]: expected names from"):
        dispatch.register("conv_bn_act", "eager", lambda **_: [], lambda *a: None, in_place=lambda *a: None)
    assert dispatch.extra("conv_bn_act", "eager", "into_residual") is None
    assert dispatch.extra("gated_conv1x1", "no such backend", "separate_gate_pass") is None
    if dict(rk.explain("conv_bn_act", **_sample_args("conv_bn_act")))["cpu"] == []:  # the cpu backend is built
        from regnet_kernels.backends import cpu as cpu_backend
        assert dispatch.extra("conv_bn_act", "cpu", "into_residual") is cpu_backend.conv_into_residual
        assert dispatch.extra("gated_conv1x1", "cpu", "separate_gate_pass") is cpu_backend.separate_gate_pass


def test_info_report_states_order_devices_extras_and_choices():
    from regnet_kernels import info

    text = info.report()
    order = next(line for line in text.splitlines() if line.startswith("auto order: "))
    assert all(f"{name} (" in order for name in dispatch.AUTO_ORDER), order
    extras = next(line for line in text.splitlines()
                  if line.startswith("backend extras (for the fused modules and the public ops): "))
    for op, names in dispatch.EXTRAS.items():
        for e in names:
            for b in dispatch.AUTO_ORDER:
                assert (f"{b}: {op}.{e}" in extras) == (dispatch.extra(op, b, e) is not None), extras
    # Every sample op line names the backend auto picks for it.
    choices = [line for line in text.splitlines() if " -> " in line]
    assert choices and all(line.rsplit(" -> ", 1)[1] in dispatch.AUTO_ORDER for line in choices), choices


def test_forced_backend_that_cannot_serve_lists_its_reasons(monkeypatch):
    x, w, b = _conv_args()
    with pytest.raises(rk.BackendUnavailable, match="backend 'cuda' cannot serve.*not a CUDA device|cuda"):
        rk.conv_bn_act(x, w, b, groups=2, backend="cuda")
    monkeypatch.setenv("REGNET_KERNELS_BACKEND", "cuda")
    with pytest.raises(rk.BackendUnavailable, match="cuda"):
        rk.conv_bn_act(x, w, b, groups=2)
    monkeypatch.setenv("REGNET_KERNELS_BACKEND", "eager")
    assert rk.conv_bn_act(x, w, b, groups=2).shape == x.shape
    monkeypatch.setenv("REGNET_KERNELS_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"\$REGNET_KERNELS_BACKEND='fastest': expected"):
        rk.conv_bn_act(x, w, b, groups=2)
    with pytest.raises(ValueError, match="backend='nope': expected"):
        rk.conv_bn_act(x, w, b, groups=2, backend="nope")


# ---- the eager reference is itself right -------------------------------------------------

def test_eager_reference_composition_float64():
    """The eager ops equal the unfused module sequence they replace, in float64."""
    torch.manual_seed(0)
    x = torch.randn(2, 24, 7, 7, dtype=torch.float64)
    conv = nn.Conv2d(24, 24, 3, padding=1, groups=3).double()
    y, sums = rk.conv_bn_act(x, conv.weight, conv.bias, groups=3, channel_sums=True, backend="eager")
    ref = torch.relu(conv(x))
    assert torch.allclose(y, ref) and torch.allclose(sums, ref.sum((2, 3)))
    fc1, fc2 = nn.Conv2d(24, 6, 1).double(), nn.Conv2d(6, 24, 1).double()
    res = torch.randn_like(y)
    se = rk.se_gate(y, fc1.weight, fc1.bias, fc2.weight, fc2.bias, residual=res, relu=True, backend="eager")
    se_ref = torch.relu(y * torch.sigmoid(fc2(torch.relu(fc1(y.mean((2, 3), keepdim=True))))) + res)
    assert torch.allclose(se, se_ref)
    assert torch.allclose(rk.se_gate(y, fc1.weight, fc1.bias, fc2.weight, fc2.bias, sums=sums, backend="eager"),
                          y * torch.sigmoid(fc2(torch.relu(fc1(y.mean((2, 3), keepdim=True))))))
    gate = torch.rand(2, 24, dtype=torch.float64)
    c = nn.Conv2d(24, 16, 1).double()
    out = rk.gated_conv1x1(y, gate, c.weight, c.bias, relu=False, backend="eager")
    assert torch.allclose(out, c(y * gate[:, :, None, None]))


@pytest.mark.parametrize("case", grouped_cases(seed=7, per_width=1), ids=str)
def test_eager_fp32_within_tolerance_of_float64(case):
    x = random_tensor((case.n, case.c_in, case.h, case.w))
    w = torch.randn(case.c_out, case.c_in // case.groups, 3, 3) / (case.c_in // case.groups * 9) ** 0.5
    b = torch.randn(case.c_out)
    out = rk.conv_bn_act(x, w, b, stride=case.stride, groups=case.groups, backend="eager")
    ref = rk.conv_bn_act(x.double(), w.double(), b.double(), stride=case.stride, groups=case.groups, backend="eager")
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_accurate(out, ref, what=str(case))


def test_ops_trace_under_torch_compile_fullgraph():
    x, w, b = _conv_args()
    se = _se_args(c=16)

    def block(x):
        y, sums = rk.conv_bn_act(x, w, b, groups=2, channel_sums=True)
        return rk.se_gate(y, se["w1"], se["b1"], se["w2"], se["b2"], sums=sums, residual=x, relu=True)

    compiled = torch.compile(block, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), block(x))


# ---- the public ops resolve once per call signature (dispatch.resolve_once) ------------------

needs_ext = pytest.mark.skipif(rk._ext.load() is None, reason="the resolve cache keys with the extension's "
                               "call_signature; without the extension every call is resolved anew")


def _public(op, a, **kw):
    """The public op on _sample_args(op)'s arguments."""
    if op == "conv_bn_act":
        return rk.conv_bn_act(a["x"], a["weight"], a["bias"], stride=a["stride"], groups=a["groups"], **kw)
    if op == "conv1x1_conv_bn_act":
        return rk.conv1x1_conv_bn_act(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], stride=a["stride"],
                                      groups=a["groups"], **kw)
    if op == "x_block":
        return rk.x_block(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], a["w3"], a["b3"], a["residual"],
                          stride=a["stride"], groups=a["groups"], **kw)
    if op == "se_excite":
        return rk.se_excite(a["x"], a["hw"], a["w1"], a["b1"], a["w2"], a["b2"], **kw)
    if op == "se_gate":
        return rk.se_gate(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], relu=True, **kw)
    return rk.gated_conv1x1(a["x"], a["gate"], a["weight"], a["bias"], **kw)


def _count_selects(monkeypatch):
    chosen = []
    select = dispatch.select

    def counted(op, backend=None, **args):
        name, run = select(op, backend, **args)
        chosen.append(name)
        return name, run
    monkeypatch.setattr(dispatch, "select", counted)
    return chosen


@needs_ext
@pytest.mark.parametrize("op", ["conv_bn_act", "conv1x1_conv_bn_act", "x_block", "se_excite", "se_gate",
                                "gated_conv1x1"])
def test_public_op_resolves_a_signature_once_and_stays_accurate(op, monkeypatch):
    """Repeated calls with fresh values of one signature check and select once; every output
    matches the float64 eager reference; another signature (batch 3) is resolved on its own."""
    chosen = _count_selects(monkeypatch)
    for batch in (2, 3):
        before = len(chosen)
        for _ in range(4):
            a = _sample_args(op)
            if batch == 3:
                a = {k: (torch.cat([v, v[:1]]) if k in ("x", "gate") else v) for k, v in a.items()}
            a = {k: (torch.randn_like(v) if isinstance(v, torch.Tensor) and k != "x" else v) for k, v in a.items()}
            if op == "x_block":
                a["residual"] = torch.randn_like(a["x"])
            with poison_outputs():
                out = _public(op, a)
            ref = _public(op, {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in a.items()},
                          backend="eager")
            for o, r in zip(*((out, ref) if isinstance(out, tuple) else ((out,), (ref,)))):
                assert_accurate(o, r, what=f"{op} batch {batch}")
        # The eager reference calls resolve (float64 signature) once per batch too.
        assert len(chosen) - before == 2, chosen


@needs_ext
@pytest.mark.parametrize("mutate,error,match", [
    (lambda a: {**a, "stride": True}, ValueError, "stride: expected one of"),
    (lambda a: {**a, "groups": True}, ValueError, "groups: expected an integer"),
    (lambda a: {**a, "bias": a["bias"].double()}, ValueError, "bias: expected dtype"),
    (lambda a: {**a, "bias": a["bias"][:15]}, ValueError, "bias: expected shape"),
    (lambda a: {**a, "residual": torch.randn(2, 16, 6, 6)}, ValueError, "residual: expected shape"),
    (lambda a: {**a, "x": a["x"].to("meta")}, ValueError, "weight: expected a tensor on meta"),
    (lambda a: {**a, "weight": a["weight"].tolist()}, TypeError, "weight: expected a torch.Tensor"),
    (lambda a: {**a, "stride": [1]}, ValueError, "stride: expected one of"),
    (lambda a: {**a, "backend": "cuda"}, rk.BackendUnavailable, "backend 'cuda' cannot serve"),
])
def test_resolved_call_still_rejects_what_differs(mutate, error, match):
    """After a good call is resolved, a call differing in anything the checks or the choice read
    (a scalar's type, a dtype, a shape, a device, a non-tensor, an unhashable scalar, the backend)
    is checked anew and fails, every time; the good call still runs."""
    x, w, b = _conv_args()
    good = dict(x=x, weight=w, bias=b, stride=1, groups=2, residual=None)
    first = rk.conv_bn_act(**good)
    for _ in range(2):
        with pytest.raises(error, match=match):
            rk.conv_bn_act(**mutate(good))
    # (The cpu backend may time two routes on a signature's first calls: equal to fp32 rounding.)
    torch.testing.assert_close(rk.conv_bn_act(**good), first, rtol=1e-5, atol=1e-5)


@needs_ext
def test_resolved_call_follows_the_scalar_arguments():
    """The same tensors with another stride, ReLU or channel_sums are other signatures: each call
    matches the float64 reference (a cache keyed on the tensors alone would run the first one's
    stride and epilogue)."""
    x, w, b = _conv_args(c=16, h=9)
    variants = [dict(stride=1), dict(stride=2), dict(stride=1, relu=False), dict(stride=2, channel_sums=True),
                dict(stride=1)]
    for kw in variants * 2:
        with poison_outputs():
            out = rk.conv_bn_act(x, w, b, groups=2, **kw)
        ref = rk.conv_bn_act(x.double(), w.double(), b.double(), groups=2, backend="eager", **kw)
        for o, r in zip(*((out, ref) if isinstance(out, tuple) else ((out,), (ref,)))):
            assert o.shape == r.shape, kw
            assert_accurate(o, r, what=str(kw))


@needs_ext
def test_resolved_call_follows_the_environment_and_grad_mode(monkeypatch):
    """$REGNET_KERNELS_BACKEND and grad mode with inputs that need grad are part of the key: a
    resolved auto call does not hide a forced backend that cannot serve, nor skip re-selection."""
    chosen = _count_selects(monkeypatch)
    x, w, b = _conv_args()
    rk.conv_bn_act(x, w, b, groups=2)
    rk.conv_bn_act(x, w, b, groups=2)
    assert len(chosen) == 1
    monkeypatch.setenv("REGNET_KERNELS_BACKEND", "cuda")
    with pytest.raises(rk.BackendUnavailable, match="cuda"):
        rk.conv_bn_act(x, w, b, groups=2)
    monkeypatch.setenv("REGNET_KERNELS_BACKEND", "eager")
    rk.conv_bn_act(x, w, b, groups=2)
    assert chosen[-1] == "eager"
    monkeypatch.delenv("REGNET_KERNELS_BACKEND")
    rk.conv_bn_act(x, w, b, groups=2)
    assert len(chosen) == 2, chosen  # the auto call's resolution, kept
    xg = x.detach().clone().requires_grad_()
    rk.conv_bn_act(xg, w, b, groups=2)
    with torch.no_grad():
        rk.conv_bn_act(xg, w, b, groups=2)
    assert len(chosen) == 4, chosen


@needs_ext
def test_resolved_calls_are_bounded(monkeypatch):
    monkeypatch.setattr(dispatch, "_RESOLVED_MAX", 3)
    for h in range(5, 11):
        x, w, b = _conv_args(h=h)
        rk.conv_bn_act(x, w, b, groups=2)
    assert 1 <= len(dispatch._RESOLVED["conv_bn_act"]) <= 3


@needs_ext
def test_resolve_cache_off_resolves_every_call(monkeypatch):
    monkeypatch.setattr(dispatch, "RESOLVE_CACHE", False)
    chosen = _count_selects(monkeypatch)
    x, w, b = _conv_args()
    for _ in range(3):
        rk.conv_bn_act(x, w, b, groups=2)
    assert len(chosen) == 3 and "conv_bn_act" not in dispatch._RESOLVED


@needs_ext
def test_call_signature_tells_apart_every_field_it_keys(monkeypatch):
    """The extension's key differs for each field the checks or choices read, is equal for an
    equal tensor, and is None for what it must not key (not a tensor, a sparse tensor)."""
    sig = rk._ext.load().call_signature
    x = random_tensor((2, 8, 5, 5))
    variants = {
        "same": sig(torch.randn_like(x)),
        "shape": sig(random_tensor((2, 8, 5, 6))),
        "strides": sig(x.contiguous()),
        "dtype": sig(x.double()),
        "device": sig(torch.empty_like(x, device="meta")),
        "requires_grad": sig(x.detach().requires_grad_()),
        "type": sig(nn.Parameter(x, requires_grad=False)),
        "None": sig(None),
        "two": sig(x, None),
    }
    base = sig(x)
    assert variants.pop("same") == base and isinstance(base, bytes)
    keys = [base] + list(variants.values())
    assert len(set(keys)) == len(keys), variants
    with torch.no_grad():
        assert sig(x) != base
    monkeypatch.setenv("REGNET_KERNELS_BACKEND", "eager")
    assert sig(x) != base
    monkeypatch.delenv("REGNET_KERNELS_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert sig(x) != base
    monkeypatch.delenv("TRITON_INTERPRET")
    assert sig(x) == base
    assert sig([1.0]) is None and sig(x, 3) is None and sig(x.to_sparse()) is None

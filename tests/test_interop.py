"""regnet.interop against the real torchvision and timm models, pycls files, mmdet export.

Every reference model is built randomly initialised, its BN statistics, BN affine
parameters and biases are randomised (so that a wrong mapping changes the output), its
state dict is loaded into our model, and both are compared in eval mode in fp32. The max
abs differences are printed in a summary at the end of the module.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import warnings
from unittest import mock

import pytest
import torch
from torch import nn

import regnet
from regnet import Xblock, Yblock
from regnet.checkpoint import atomic_save, safe_load
from regnet.interop import (
    BGR_WARNING,
    TIMM_TO_REGNET,
    TORCHVISION_CONFIGS,
    TORCHVISION_TO_ZOO,
    bgr_to_rgb_first_conv,
    convert_timm_state_dict,
    detect_source,
    export_mmdet,
    load_pycls,
    load_weights,
    to_mmdet_state_dict,
    torchvision_stages,
)
from regnet.interop import pycls as pycls_interop
from regnet.zoo import ZOO

tvm = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")

TOL = 1e-5
SLOW = os.environ.get("REGNET_SLOW_TESTS") == "1"  # also run the 128 GF models numerically
TV_DIFFERING = ("regnet_x_400mf", "regnet_y_800mf", "regnet_y_8gf")
# 8 GF and up: compared at 32x32 to keep the file fast; the rest at 64x64.
LARGE = re.compile(r"(8gf|16gf|32gf|128gf|_080|_120|_160|_320|_1280)")
DIFFS = {}


class _DiffSummary:
    """Prints DIFFS in pytest's terminal summary (registered as a plugin by the fixture below)."""

    def pytest_terminal_summary(self, terminalreporter):
        if not DIFFS:
            return
        terminalreporter.section("regnet.interop: fp32 max abs diff, reference vs ours (eval, random weights)")
        terminalreporter.write_line(f"{'reference -> ours':<46} {'input':>7}  {'max|out|':>8}  max abs diff")
        for label, (diff, res, scale) in sorted(DIFFS.items()):
            terminalreporter.write_line(f"{label:<46} {res:>3}x{res:<3}  {scale:8.3g}  {diff:.3g}")


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_summary(request):
    """One intra-op thread: on a small shared CPU, thread hand-offs for these tiny inputs
    cost more than they gain (several times slower when other jobs compete for the cores).
    Registers the summary of the measured differences."""
    plugins = request.config.pluginmanager
    if not plugins.has_plugin("regnet-interop-diffs"):
        plugins.register(_DiffSummary(), "regnet-interop-diffs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_(model: nn.Module) -> nn.Module:
    """Fill every weight, bias and BN buffer with random values (in place).

    Convs get He (fan-out) normal weights, BN random running stats and affine params,
    every bias a random value, so that any mis-mapped tensor changes the output.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.num_batches_tracked.zero_()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
    return model


def on_meta(build, materialize: bool = True) -> nn.Module:
    """build() on the meta device; with `materialize`, then real but uninitialised CPU
    tensors. The models' own initialisation (seconds for the big ones) is skipped: every
    tensor is then filled by randomize_ or by loading."""
    with torch.device("meta"):
        model = build()
    return model.to_empty(device="cpu") if materialize else model


def resolution(name: str) -> int:
    return 32 if LARGE.search(name) else 64


def compare(label: str, ref: nn.Module, ours: nn.Module, res: int) -> float:
    """Randomise ref, load its weights into ours and return the max abs output difference."""
    randomize_(ref).eval()
    load_weights(ours, ref.state_dict())
    ours.eval()
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        expected = ref(x)
        diff = (ours(x) - expected).abs().max().item()
    scale = expected.abs().max().item()
    DIFFS[label] = (diff, res, scale)
    assert scale > 0.1
    assert diff <= TOL, f"{label}: max abs diff {diff:.3g} > {TOL}"
    return diff


def test_comparison_can_fail():
    """With randomised BN statistics a wrong mapping shows: swap the stats of two BNs of
    equal width and the outputs differ far beyond the tolerance."""
    torch.manual_seed(0)
    ref = randomize_(timm.create_model("regnety_002", pretrained=False)).eval()
    state = dict(convert_timm_state_dict(ref.state_dict()))
    a, b = "s3.b2.f.a_bn.running_var", "s3.b2.f.b_bn.running_var"
    state[a], state[b] = state[b], state[a]
    ours = regnet.regnety_002().eval()
    load_weights(ours, state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() > 1e-3


# ---------------------------------------------------------------- torchvision

def tv_stage_layout(model: nn.Module):
    """(depth, width, group width, SE) of each stage of a torchvision RegNet, from its modules."""
    out = []
    for stage in model.trunk_output.children():
        first = next(iter(stage.children()))
        conv_b = first.f.b[0]
        out.append((len(stage), first.f.c[0].out_channels, conv_b.out_channels // conv_b.groups, hasattr(first.f, "se")))
    return out


def our_stage_layout(stages):
    return [(s.depth, s.width, s.group_w, s.se_r > 0) for s in stages]


def tv_block_params(tv_name: str):
    """The BlockParams torchvision's own builder computes for `tv_name` (no model is built)."""
    captured = []
    with mock.patch.object(tvm.regnet, "RegNet", lambda params, **kwargs: captured.append(params)):
        getattr(tvm, tv_name)(weights=None)
    return captured[0]


def reference(source: str, name: str, materialize: bool = True) -> nn.Module:
    """A torchvision (weights=None) or timm (pretrained=False) model built by its own
    builder, on meta (see on_meta). torchvision's BlockParams need real tensors: they are
    computed beforehand on the CPU by torchvision itself."""
    if source == "timm":
        return on_meta(lambda: timm.create_model(name, pretrained=False), materialize)
    params = tv_block_params(name)
    with mock.patch.object(tvm.regnet.BlockParams, "from_init_params", lambda *a, **k: params):
        return on_meta(lambda: getattr(tvm, name)(weights=None), materialize)


@pytest.mark.parametrize("tv_name", list(TORCHVISION_CONFIGS))
def test_torchvision_width_rule_matches_torchvision(tv_name):
    bp = tv_block_params(tv_name)
    want = [(d, w, g, bool(bp.se_ratio)) for d, w, g in zip(bp.depths, bp.widths, bp.group_widths)]
    assert our_stage_layout(torchvision_stages(tv_name)) == want
    assert our_stage_layout(regnet.config_of(tv_name)) == want
    with torch.device("meta"):  # our width rule runs on the CPU whatever the default device
        assert our_stage_layout(regnet.create_model(tv_name).stage_specs) == want


@pytest.mark.parametrize("tv_name", list(TORCHVISION_TO_ZOO))
def test_torchvision_widths_vs_pycls(tv_name):
    """torchvision's rounding changes exactly three of the fourteen shared configs."""
    ours_tv = [(s.depth, s.width, s.group_w) for s in torchvision_stages(tv_name)]
    pycls = [(s.depth, s.width, s.group_w) for s in ZOO[TORCHVISION_TO_ZOO[tv_name]].stages()]
    if tv_name in TV_DIFFERING:
        assert ours_tv != pycls
    else:
        assert ours_tv == pycls


def test_torchvision_names_registered():
    names = regnet.list_models()
    assert all(n in names for n in TORCHVISION_CONFIGS)
    m = regnet.create_model("regnet_x_400mf")
    assert [s.width for s in m.stage_specs] == [32, 64, 160, 400]
    assert regnet.create_model("regnetx_004").stage_specs[-1].width == 384
    y = regnet.create_model("regnet_x_400mf", block=Yblock, num_classes=10)
    assert y.s1.b1.f.se is not None and y.head.fc.out_features == 10
    assert regnet.create_model("regnet_y_800mf", block=Xblock).s1.b1.f.se is None


def _tv_cases():
    """(torchvision name, our model name): zoo models where the widths agree, torchvision's
    own config where they differ."""
    return [(tv, tv if tv in TV_DIFFERING else zoo) for tv, zoo in TORCHVISION_TO_ZOO.items()]


@pytest.mark.parametrize("tv_name,our_name", _tv_cases())
def test_torchvision_numerics(tv_name, our_name):
    torch.manual_seed(0)
    ref = reference("torchvision", tv_name)
    ours = on_meta(lambda: regnet.create_model(our_name))
    assert our_stage_layout(ours.stage_specs) == tv_stage_layout(ref)  # torchvision's actual module widths
    assert detect_source(ref.state_dict()) == "torchvision"
    compare(f"torchvision {tv_name} -> {our_name}", ref, ours, resolution(tv_name))


# The 128 GF models (644M parameters) are loaded on meta (keys and shapes, strict) by
# default, and compared numerically with REGNET_SLOW_TESTS=1.
_HUGE = [("torchvision", "regnet_y_128gf"), ("timm", "regnety_1280")]


@pytest.mark.parametrize("source,name", _HUGE)
def test_128gf_structure(source, name):
    ref = reference(source, name, materialize=False)
    ours = on_meta(lambda: regnet.create_model("regnet_y_128gf"), materialize=False)
    assert detect_source(ref.state_dict()) == source
    load_weights(ours, ref.state_dict())


@pytest.mark.skipif(not SLOW, reason="644M parameters: set REGNET_SLOW_TESTS=1")
@pytest.mark.parametrize("source,name", _HUGE)
def test_128gf_numerics(source, name):
    torch.manual_seed(0)
    ours = on_meta(lambda: regnet.create_model("regnet_y_128gf"))
    compare(f"{source} {name} -> regnet_y_128gf", reference(source, name), ours, 32)


def test_torchvision_wrong_widths_rejected():
    """torchvision's regnet_x_400mf weights do not fit pycls's RegNetX-400MF."""
    ref = tvm.regnet_x_400mf(weights=None)
    with pytest.raises(ValueError, match=r"shape mismatches \([1-9]"):
        load_weights(regnet.create_model("regnetx_004"), ref.state_dict())


# ---------------------------------------------------------------- timm

@pytest.mark.parametrize("timm_name", [n for n in TIMM_TO_REGNET if n != "regnety_1280"])
def test_timm_numerics(timm_name):
    torch.manual_seed(0)
    ref = reference("timm", timm_name)
    ours = on_meta(lambda: regnet.create_model(TIMM_TO_REGNET[timm_name]))
    assert detect_source(ref.state_dict()) == "timm"
    compare(f"timm {timm_name} -> {TIMM_TO_REGNET[timm_name]}", ref, ours, resolution(timm_name))


def test_timm_covers_zoo():
    assert set(ZOO) <= set(TIMM_TO_REGNET)
    assert set(TIMM_TO_REGNET) <= set(timm.list_models("regnet*"))


# ---------------------------------------------------------------- pycls

@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return randomize_(regnet.regnety_002()).eval()


def _save_pycls(tmp_path, state, name="model.pyth"):
    path = tmp_path / name
    atomic_save({"epoch": 100, "model_state": state, "cfg": "MODEL:\n  TYPE: regnet\n"}, path)
    return path


def test_pycls_round_trip(tmp_path, small_model, monkeypatch):
    path = _save_pycls(tmp_path, small_model.state_dict())
    fresh = regnet.regnety_002().eval()
    monkeypatch.setattr(pycls_interop, "_warned", False)
    with pytest.warns(UserWarning, match="BGR"):
        load_weights(fresh, path)  # auto: a model_state wrapper with our keys is pycls
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), small_model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once already
        load_pycls(regnet.regnety_002(), path)


def test_pycls_missing_and_unexpected_keys(tmp_path, small_model):
    state = dict(small_model.state_dict())
    del state["s2.b1.f.b_bn.running_var"]
    state["s9.b1.f.z.weight"] = torch.zeros(1)
    path = _save_pycls(tmp_path, state)
    with pytest.raises(ValueError) as err:
        load_weights(regnet.regnety_002(), path, source="pycls")
    msg = str(err.value)
    assert "missing keys (1): ['s2.b1.f.b_bn.running_var']" in msg
    assert "unexpected keys (1): ['s9.b1.f.z.weight']" in msg


_EXECUTED = []


def _side_effect():
    _EXECUTED.append(True)
    return "payload"


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_pickled_object_refused(tmp_path, small_model):
    path = tmp_path / "evil.pyth"
    torch.save({"model_state": small_model.state_dict(), "extra": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_weights(regnet.regnety_002(), path)
    with pytest.raises(pickle.UnpicklingError):
        load_pycls(regnet.regnety_002(), path)
    assert not _EXECUTED


def test_bgr_to_rgb_first_conv(tmp_path, small_model):
    rgb = torch.randn(2, 3, 64, 64)
    bgr = rgb.flip(1)
    flipped = bgr_to_rgb_first_conv(copy.deepcopy(small_model))
    loaded = load_pycls(regnet.regnety_002().eval(), _save_pycls(tmp_path, small_model.state_dict()), to_rgb=True)
    with torch.no_grad():
        want = small_model(bgr)
        assert (flipped(rgb) - want).abs().max().item() <= TOL
        assert torch.equal(loaded(rgb), flipped(rgb))
        assert (small_model(rgb) - want).abs().max().item() > 1e-3  # the order matters
    assert "BGR" in BGR_WARNING


# ---------------------------------------------------------------- mmdet

# The mapping of mmdetection's regnet2mmdet.py, written out independently of regnet.interop.
_MMDET_BLOCK = {"proj": "downsample.0", "bn": "downsample.1", "f.a": "conv1", "f.a_bn": "bn1", "f.b": "conv2",
                "f.b_bn": "bn2", "f.c": "conv3", "f.c_bn": "bn3", "f.se.f_ex.0": "se.conv1.conv",
                "f.se.f_ex.2": "se.conv2.conv"}


def expected_mmdet_key(key: str):
    if key.startswith("head."):
        return None
    if key.startswith("stem."):
        return key.replace("stem.conv.", "conv1.").replace("stem.bn.", "bn1.")
    stage, block, module, param = re.fullmatch(r"s(\d+)\.b(\d+)\.(.+)\.(\w+)", key).groups()
    return f"layer{stage}.{int(block) - 1}.{_MMDET_BLOCK[module]}.{param}"


@pytest.mark.parametrize("name", ["regnetx_002", "regnety_002"])
def test_mmdet_export(tmp_path, name):
    torch.manual_seed(0)
    model = randomize_(regnet.create_model(name)).eval()
    own = model.state_dict()
    expected = {expected_mmdet_key(k): k for k in own if expected_mmdet_key(k) is not None}
    path = tmp_path / "mmdet.pth"
    exported = export_mmdet(model, path)
    assert list(exported) == list(expected)
    assert len(exported) == len(own) - 2  # head.fc.weight, head.fc.bias dropped
    assert all(torch.equal(exported[k], own[v]) for k, v in expected.items())
    assert ("layer1.0.se.conv1.conv.weight" in exported) == (name == "regnety_002")
    assert "layer1.0.downsample.0.weight" in exported and "conv1.weight" in exported
    on_disk = safe_load(path)["state_dict"]
    assert list(on_disk) == list(exported)
    assert "fc.weight" in to_mmdet_state_dict(model, keep_head=True)
    # back into a headless model of ours: the same features
    headless = regnet.create_model(name, num_classes=0).eval()
    load_weights(headless, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(headless(x), model.head.avg_pool(model.forward_features(x)).flatten(1))


# ---------------------------------------------------------------- load_weights

def test_load_weights_errors(small_model):
    with pytest.raises(ValueError, match="source="):
        load_weights(small_model, small_model.state_dict(), source="keras")
    with pytest.raises(ValueError, match="no known RegNet layout"):
        load_weights(small_model, {"encoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="to_rgb"):
        load_weights(small_model, small_model.state_dict(), to_rgb=True)  # our weights take RGB
    tv_state = tvm.regnet_y_400mf(weights=None).state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        load_weights(small_model, tv_state, source="timm")  # the wrong converter leaves keys unmatched


def test_load_weights_unwraps_and_strips_module_prefix(small_model):
    state = {"module." + k: v for k, v in small_model.state_dict().items()}
    fresh = regnet.regnety_002().eval()
    load_weights(fresh, {"state_dict": state})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), small_model(x))

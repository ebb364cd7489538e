"""The models: every zoo model runs forward and backward; the features users expect work;
bad input gets a clear error."""

import warnings

import pytest
import torch
from torch import nn

import regnet
from regnet import AnyNet, RegNet, RegNetBackbone, RegNetParams, StageSpec, Xblock, Yblock, ZOO
from zoo_cache import zoo_model


@pytest.mark.parametrize("name", sorted(ZOO))
def test_forward_backward_every_zoo_model(name):
    model = zoo_model(name).train()
    x = torch.randn(2, 3, 32, 32)
    try:
        out = model(x)
        assert out.shape == (2, 1000) and torch.isfinite(out).all()
        out.square().mean().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    finally:  # the model is shared: leave it as it was (running stats aside)
        model.zero_grad(set_to_none=True)
        model.eval()
    has_se = any(isinstance(m, regnet.SE) for m in model.modules())
    assert has_se == (ZOO[name].se_r > 0)


def test_legacy_api_block_switches_se():
    from regnet import regnetx_002, regnety_002

    y_from_x = regnetx_002(block=Yblock, num_classes=10).eval()
    assert y_from_x(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert any(isinstance(m, regnet.SE) for m in y_from_x.modules())
    # same widths as the X model, SE width round(0.25 * block input width) as in pycls
    x_model = regnetx_002()
    assert [s.width for s in y_from_x.stage_specs] == [s.width for s in x_model.stage_specs]
    first = y_from_x.s1.b1.f.se.f_ex[0]
    assert first.out_channels == round(0.25 * 32)  # stem width is the first block's input
    assert not any(isinstance(m, regnet.SE) for m in regnety_002(block=Xblock).modules())


def test_names_of_pycls_and_timm_resolve_to_same_config():
    for name in ("RegNetY-400MF", "regnety_004"):
        assert regnet.config_of(name) == ZOO["regnety_004"]
    with pytest.raises(ValueError, match="expected one of"):
        regnet.create_model("resnet50")


def test_channels_last_input_gives_same_output():
    model = zoo_model("regnety_002").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_forward_features_and_backbone_out_indices():
    model = zoo_model("regnetx_004").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 384, 2, 2)
        assert torch.allclose(model.forward_head(feats), model(x))
        backbone = RegNetBackbone(model, out_indices=(1, 3))
        outs = backbone(x)
    assert [o.shape[1] for o in outs] == backbone.out_channels == [64, 384]
    assert [o.shape[-1] for o in outs] == [8, 2]  # strides 8 and 32
    with pytest.raises(ValueError, match="out_indices"):
        RegNetBackbone(model, out_indices=(4,))


def test_zero_init_last_bn_makes_blocks_start_as_identity_paths():
    model = RegNet(ZOO["regnetx_002"], zero_init_last_bn=True)
    finals = [m.f.c_bn.weight for m in model.modules() if isinstance(m, Xblock)]
    assert finals and all((w == 0).all() for w in finals)
    other = RegNet(ZOO["regnetx_002"])
    assert all((m.f.c_bn.weight == 1).all() for m in other.modules() if isinstance(m, Xblock))


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = RegNet(ZOO["regnetx_002"], drop_path_rate=0.5, num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # stochastic (BN in train mode is deterministic given the input)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    rates = [m.drop_path_rate for m in model.modules() if isinstance(m, Xblock)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)


def test_torch_jit_script():
    model = zoo_model("regnety_002").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_torch_compile_fullgraph():
    model = RegNet(RegNetParams(depth=4, w0=16, wa=16.0, wm=2.0, group_w=8, se_r=0.25), num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_anynet_from_explicit_stages():
    stages = [StageSpec(1, 16, 2, 1.0, 8), StageSpec(2, 32, 2, 2.0, 8, 0.25)]
    model = AnyNet(stages, num_classes=3)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    assert model.s2.b1.f.b.groups == 64 // 8


@pytest.mark.parametrize("shape,match", [((3, 32, 32), "4-D"), ((1, 1, 32, 32), "3 channels"), ((1, 4, 32, 32), "3 channels")])
def test_bad_input_rank_and_channels(shape, match):
    model = zoo_model("regnetx_002")
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="stages"):
        AnyNet([])
    with pytest.raises(ValueError, match="depth"):
        AnyNet([StageSpec(0, 16)])
    with pytest.raises(TypeError, match="block"):
        AnyNet([StageSpec(1, 16, group_w=8)], block=nn.Conv2d)
    with pytest.raises(ValueError, match="group_w"):
        AnyNet([StageSpec(1, 20, group_w=8)])  # 20 is not a multiple of 8
    with pytest.raises(ValueError, match="drop_path_rate"):
        RegNet(ZOO["regnetx_002"], drop_path_rate=1.0)

"""Design spaces: constraints, rejection reasons, seeded sampling, complexity regimes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from regnet import ZOO
from regnet.design_space import (SPACES, AnyNetSpec, Regime, batch_complexity, get_space, spec_from_dict,
                                 spec_to_dict)
from regnet.model import complexity_of_stages
from regnet.widths import RegNetParams

ANYNET = ["AnyNetX_A", "AnyNetX_B", "AnyNetX_C", "AnyNetX_D", "AnyNetX_E"]
REGNET = ["RegNetX", "RegNetY"]


def anynet_rules(name, spec):
    """The paper's constraints, written out independently of regnet.design_space."""
    d, w, b, g = spec.depths, spec.widths, spec.bottleneck_ratios, spec.group_widths
    ok = len(d) == 4
    ok &= all(1 <= x <= 16 for x in d) and all(8 <= x <= 1024 and x % 8 == 0 for x in w)
    ok &= all(x in (1, 2, 4) for x in b) and all(x in (1, 2, 4, 8, 16, 32) for x in g)
    ok &= all(wi % bi == 0 and (wi // bi) % gi == 0 for wi, bi, gi in zip(w, b, g))
    level = ANYNET.index(name)
    ok &= level < 1 or len(set(b)) == 1
    ok &= level < 2 or len(set(g)) == 1
    ok &= level < 3 or list(w) == sorted(w)
    ok &= level < 4 or list(d) == sorted(d)
    return ok


def regnet_rules(name, p):
    ok = 12 <= p.depth <= 28 and 8 <= p.w0 <= 256 and 8 <= p.wa <= 256 and 2 <= p.wm <= 3
    ok &= 8 <= p.group_w <= 128 and p.group_w % 8 == 0 and p.bot_mul == 1
    ok &= p.se_r == (0.25 if name == "RegNetY" else 0.0)
    if ok:
        ks = np.round(np.log((np.arange(p.depth) * p.wa + p.w0) / p.w0) / np.log(p.wm))
        ok &= sorted(set(ks.tolist())) == [0, 1, 2, 3]
    return ok


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(ANYNET + REGNET), seed=st.integers(0, 2**32 - 1))
def test_every_sample_satisfies_the_space_constraints(name, seed):
    rules = anynet_rules if name in ANYNET else regnet_rules
    for spec in SPACES[name].sample(20, seed=seed):
        assert rules(name, spec), spec


anynet_specs = st.builds(
    AnyNetSpec,
    depths=st.lists(st.integers(0, 18), min_size=4, max_size=4),
    widths=st.lists(st.sampled_from([8, 16, 24, 48, 96, 100, 1024, 1032]), min_size=4, max_size=4),
    bottleneck_ratios=st.lists(st.sampled_from([1, 2, 3, 4]), min_size=4, max_size=4),
    group_widths=st.lists(st.sampled_from([1, 2, 8, 16, 32, 64]), min_size=4, max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(ANYNET), spec=anynet_specs)
def test_anynet_membership_matches_the_rules(name, spec):
    space = SPACES[name]
    assert space.contains(spec) == anynet_rules(name, spec)
    if not space.contains(spec):
        with pytest.raises(ValueError, match=f"not in {name}"):
            space.check(spec)


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(REGNET), depth=st.integers(8, 32), w0=st.sampled_from([8, 24, 96, 256, 264]),
       wa=st.floats(1, 300), wm=st.floats(1.5, 3.5), group_w=st.sampled_from([4, 8, 24, 128, 136]),
       se_r=st.sampled_from([0.0, 0.25]))
def test_regnet_membership_matches_the_rules(name, depth, w0, wa, wm, group_w, se_r):
    p = RegNetParams(depth=depth, w0=w0, wa=wa, wm=wm, group_w=group_w, se_r=se_r)
    assert SPACES[name].contains(p) == regnet_rules(name, p)


GOOD = AnyNetSpec([1, 2, 3, 4], [32, 64, 128, 256], [1, 1, 1, 1], [8, 8, 8, 8])


@pytest.mark.parametrize("name, change, reason", [
    ("AnyNetX_A", {"depths": [17, 2, 3, 4]}, "stage 1: depth d must be in 1..16, got 17"),
    ("AnyNetX_A", {"widths": [32, 64, 128, 1032]}, "stage 4: width w must be a multiple of 8"),
    ("AnyNetX_A", {"widths": [36, 64, 128, 256]}, "got 36"),
    ("AnyNetX_A", {"bottleneck_ratios": [1, 3, 1, 1]}, "stage 2: bottleneck ratio b must be in"),
    ("AnyNetX_A", {"group_widths": [8, 64, 8, 8]}, "stage 2: group width g must be in"),
    ("AnyNetX_A", {"widths": [8, 64, 128, 256], "group_widths": [32, 8, 8, 8]},
     "stage 1: group width g=32 must divide the bottleneck width w/b=8/1"),
    ("AnyNetX_B", {"bottleneck_ratios": [1, 2, 1, 1]}, "shares b across stages"),
    ("AnyNetX_C", {"group_widths": [8, 16, 8, 8]}, "shares g across stages"),
    ("AnyNetX_D", {"widths": [64, 32, 128, 256]}, "non-decreasing widths, got [64, 32, 128, 256]"),
    ("AnyNetX_E", {"depths": [4, 3, 2, 1]}, "non-decreasing depths, got [4, 3, 2, 1]"),
])
def test_a_violating_anynet_is_rejected_with_the_reason(name, change, reason):
    fields = {"depths": GOOD.depths, "widths": GOOD.widths, "bottleneck_ratios": GOOD.bottleneck_ratios,
              "group_widths": GOOD.group_widths, **change}
    spec = AnyNetSpec(**fields)
    assert SPACES[name].contains(GOOD)
    with pytest.raises(ValueError) as e:
        SPACES[name].check(spec)
    assert reason in str(e.value)


def test_a_three_stage_anynet_is_rejected():
    spec = AnyNetSpec([1, 2, 3], [32, 64, 128], [1, 1, 1], [8, 8, 8])
    assert "expected 4 stages, got 3" in SPACES["AnyNetX_A"].violations(spec)


@pytest.mark.parametrize("changes, reason", [
    ({"depth": 30}, "depth=30 must be in [12, 28]"),
    ({"w0": 264}, "w0=264 must be in [8, 256] (a multiple of 8)"),
    ({"wm": 3.5}, "wm=3.5 must be in [2.0, 3.0]"),
    ({"group_w": 136}, "group_w=136 must be in [8, 128]"),
    ({"se_r": 0.25}, "se_r=0.25 must be 0.0 in RegNetX"),
    ({"wa": 8.0, "w0": 256, "wm": 3.0}, "stages, expected 4"),
    ({"wa": 20.0, "w0": 8, "wm": 2.0}, "empty stage"),
])
def test_a_violating_regnet_is_rejected_with_the_reason(changes, reason):
    p = ZOO["regnetx_016"].with_(**changes)
    with pytest.raises(ValueError, match=r"not in RegNetX") as e:
        SPACES["RegNetX"].check(p)
    assert reason in str(e.value)


def test_zoo_models_are_in_their_regnet_space_except_the_largest():
    for name, p in ZOO.items():
        space = SPACES["RegNetY" if p.se_r else "RegNetX"]
        assert space.contains(p) == (name not in ("regnetx_320", "regnety_320")), name
    assert "w0=320 must be in [8, 256] (a multiple of 8)" in SPACES["RegNetX"].violations(ZOO["regnetx_320"])


def test_each_anynet_space_is_inside_the_previous_one():
    for inner, outer in zip(ANYNET[1:], ANYNET):
        assert all(SPACES[outer].contains(s) for s in SPACES[inner].sample(50, seed=3))


def test_sampling_is_reproducible():
    for name in ANYNET + REGNET:
        space = SPACES[name]
        first = space.sample(30, seed=7)
        assert space.sample(30, seed=7) == first
        assert space.sample(10, seed=7) == first[:10]
        assert space.sample(30, seed=8) != first


def test_sampling_within_a_regime():
    regime = Regime(flops=(360e6, 400e6), params=(0, 6e6))
    for name in ANYNET + REGNET:
        space = SPACES[name]
        specs = space.sample(25, seed=1, regime=regime)
        assert len(specs) == 25 and len(set(specs)) == 25
        for s in specs:
            cx = complexity_of_stages(s.stages(), 224)
            assert 360e6 <= cx["flops"] <= 400e6 and cx["params"] <= 6e6, (name, s, cx)


def test_a_thousand_samples_in_a_narrow_regime_take_seconds():
    import time

    start = time.perf_counter()
    specs = SPACES["AnyNetX_A"].sample(1000, seed=0, regime=Regime(flops=(360e6, 400e6)))
    assert len(specs) == 1000
    assert time.perf_counter() - start < 30


def test_an_impossible_regime_fails_clearly():
    with pytest.raises(ValueError, match="only 0 of 1 models found .* widen the regime"):
        SPACES["RegNetX"].sample(1, regime=Regime(flops=(1, 2)), max_draws=5000)
    with pytest.raises(ValueError, match=r"Regime.flops=\(5, 1\) is out of range"):
        Regime(flops=(5, 1))


@pytest.mark.parametrize("name", ANYNET + REGNET)
def test_batch_complexity_equals_the_per_model_count(name):
    space = SPACES[name]
    batch = space.draw_batch(np.random.default_rng(0), 512)
    for resolution, num_classes in ((224, 1000), (32, 10)):
        cx = batch_complexity(**space.stage_arrays(batch), resolution=resolution, num_classes=num_classes)
        checked = 0
        for i in range(512):
            spec = space.spec_at(batch, i)
            if space.contains(spec):
                exact = space.complexity(spec, resolution, num_classes)
                assert {k: int(cx[k][i]) for k in exact} == exact
                checked += 1
        assert checked > 50


def test_specs_round_trip_through_dicts_and_build():
    for name in ("AnyNetX_E", "RegNetY"):
        spec = SPACES[name].sample(1, seed=0, regime=Regime(flops=(0, 100e6)))[0]
        assert spec_from_dict(spec_to_dict(spec)) == spec
        model = SPACES[name].build(spec, num_classes=3)
        assert model.complexity(224)["flops"] == SPACES[name].complexity(spec, 224, 3)["flops"]
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_unknown_space_lists_the_choices():
    assert get_space("regnetx") is SPACES["RegNetX"]
    with pytest.raises(ValueError, match=r"design space 'foo' is unknown: expected one of \['AnyNetX_A'"):
        get_space("foo")

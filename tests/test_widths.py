"""The quantized linear width rule and stage specs, against pycls's published zoo parameters
and against an independent re-derivation of the rule."""

import csv
import math
import os

import numpy as np
import pytest

from regnet import ZOO, RegNetParams, adjust_block_compatibility, quantized_linear_widths
from regnet.zoo import PYCLS_NAMES

ZOO_CSV = os.path.join(os.path.dirname(__file__), "data", "pycls_zoo.csv")
ROWS = list(csv.DictReader(open(ZOO_CSV)))


def test_zoo_parameters_match_published_table():
    assert len(ROWS) == 24 and len(ZOO) == 24
    for r in ROWS:
        p = ZOO[PYCLS_NAMES[r["name"]]]
        assert (p.depth, p.w0, p.wa, p.wm, p.group_w, p.bot_mul, p.se_r) == (
            int(r["depth"]), int(r["w0"]), float(r["wa"]), float(r["wm"]), int(r["group_w"]),
            float(r["bot_mul"]), float(r["se_r"])), r["name"]


# Stage widths/depths of a few models as listed in the paper's and pycls's model zoo tables.
KNOWN_STAGES = {
    "regnetx_002": ([1, 1, 4, 7], [24, 56, 152, 368]),
    "regnetx_004": ([1, 2, 7, 12], [32, 64, 160, 384]),
    "regnety_004": ([1, 3, 6, 6], [48, 104, 208, 440]),
    "regnety_016": ([2, 6, 17, 2], [48, 120, 336, 888]),
    "regnetx_032": ([2, 6, 15, 2], [96, 192, 432, 1008]),
}


@pytest.mark.parametrize("name", sorted(KNOWN_STAGES))
def test_known_stage_specs(name):
    stages = ZOO[name].stages()
    assert ([s.depth for s in stages], [s.width for s in stages]) == KNOWN_STAGES[name]


def _rule_by_hand(d, w0, wa, wm, q=8):
    """The paper's equations 2-4 written out per block with Python floats (an independent twin)."""
    out = []
    for j in range(d):
        u = w0 + wa * j
        s = round(math.log(u / w0) / math.log(wm))  # Python round: half to even, like np.round
        out.append(int(round(w0 * wm ** s / q)) * q)
    return out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_width_rule_every_zoo_model(name):
    p = ZOO[name]
    ws, ws_cont = quantized_linear_widths(p.depth, p.w0, p.wa, p.wm)
    assert ws == _rule_by_hand(p.depth, p.w0, p.wa, p.wm)
    assert len(ws_cont) == p.depth and ws_cont[0] == p.w0
    stages = p.stages()
    assert sum(s.depth for s in stages) == p.depth
    assert len(stages) == 4  # every zoo model has 4 stages
    for s in stages:
        assert s.width % s.group_w == 0 and s.width * s.bot_mul % s.group_w == 0
        assert s.stride == 2 and s.se_r == p.se_r
    # widths only grow from stage to stage
    assert all(a.width < b.width for a, b in zip(stages, stages[1:]))


def test_adjust_block_compatibility_examples():
    # group width capped at the bottleneck width, widths rounded (half to even) to multiples of g
    assert adjust_block_compatibility([24], [1.0], [32]) == ([24], [1.0], [24])
    assert adjust_block_compatibility([100], [1.0], [24]) == ([96], [1.0], [24])
    assert adjust_block_compatibility([36], [1.0], [24]) == ([48], [1.0], [24])  # 1.5 -> 2 (even)
    assert adjust_block_compatibility([60], [1.0], [24]) == ([48], [1.0], [24])  # 2.5 -> 2 (even)
    # bottleneck 2: widths multiple of lcm(g, b) / b
    ws, bs, gs = adjust_block_compatibility([64], [2.0], [24])
    assert ws[0] * 2 % 24 == 0


def test_round_half_to_even_in_quantization():
    # w0=8, q=8, wm=2: block widths 8*2^k; with wa chosen so log2(u/w0)=0.5 exactly at j=1 ... the
    # exponent rounds half to even (0), as numpy does, not away from zero (1).
    w0, wm = 8, 4.0
    wa = w0 * (2.0 - 1.0)  # u_1 = 16 -> log4(2) = 0.5 exactly
    ws, _ = quantized_linear_widths(2, w0, wa, wm)
    assert ws == [8, 8]
    assert np.round(0.5) == 0.0


@pytest.mark.parametrize("field,value", [
    ("depth", 0), ("depth", -3), ("w0", 0), ("w0", 12), ("w0", -8), ("wa", -1.0), ("wm", 1.0),
    ("wm", 0.5), ("group_w", 0), ("bot_mul", 0.0), ("se_r", 1.5),
])
def test_bad_design_parameters_name_the_parameter(field, value):
    params = dict(depth=13, w0=24, wa=36.44, wm=2.49, group_w=8)
    params[field] = value
    with pytest.raises(ValueError) as e:
        RegNetParams(**params)
    assert field in str(e.value) and repr(value) in str(e.value)


def test_empty_stage_is_rejected():
    # w0=8, wa=100, wm=2: u_1 = 108 -> k = round(log2(13.5)) = 4, skipping k = 1, 2, 3.
    with pytest.raises(ValueError, match="empty stage"):
        RegNetParams(depth=3, w0=8, wa=100.0, wm=2.0, group_w=8).stages()

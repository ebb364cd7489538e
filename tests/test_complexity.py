"""Complexity: the analytic counter against pycls's published figures, and against counts taken
from the built model (parameters, and conv/FC multiply-adds and outputs seen by forward hooks)."""

import csv
import os

import pytest
import torch
from torch import nn

import regnet
from regnet import ZOO
from zoo_cache import zoo_model
from regnet.zoo import PYCLS_NAMES

ROWS = list(csv.DictReader(open(os.path.join(os.path.dirname(__file__), "data", "pycls_zoo.csv"))))


def _rounded_like_published(value: float, published: str) -> float:
    decimals = len(published.split(".")[1]) if "." in published else 0
    return round(value, decimals)


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_matches_published_figures(row):
    cx = regnet.complexity(PYCLS_NAMES[row["name"]])  # from the parameters, no model built
    assert _rounded_like_published(cx["flops"] / 1e9, row["flops_g"]) == float(row["flops_g"])
    assert _rounded_like_published(cx["params"] / 1e6, row["params_m"]) == float(row["params_m"])
    assert _rounded_like_published(cx["acts"] / 1e6, row["acts_m"]) == float(row["acts_m"])


def _measured(model: nn.Module, resolution: int):
    """flops/acts seen by hooks on every conv and linear of a forward pass; params counted."""
    counts = {"flops": 0, "acts": 0}

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            per_out = k * m.in_channels // m.groups + (1 if m.bias is not None else 0)
        else:
            per_out = m.in_features + (1 if m.bias is not None else 0)
        counts["flops"] += out.numel() * per_out
        counts["acts"] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, resolution, resolution))
    for h in handles:
        h.remove()
    counts["params"] = sum(p.numel() for p in model.parameters())
    return counts


# Small models at two resolutions (odd sizes exercise the stride rounding); every zoo model is
# checked for params and at a small resolution for flops/acts.
@pytest.mark.parametrize("name", sorted(ZOO))
def test_exact_counts_match_built_model(name):
    model = zoo_model(name)
    res = 64 if ZOO[name].w0 > 100 else 97
    assert _measured(model, res) == regnet.complexity(model, res)


def test_any_resolution_and_rectangular():
    m = zoo_model("regnetx_002")
    c224, c112 = m.complexity(224), m.complexity(112)
    assert c224["params"] == c112["params"] and c224["flops"] > 3 * c112["flops"]
    assert _measured(m, 45) == m.complexity(45)
    assert m.complexity((64, 32))["flops"] < m.complexity(64)["flops"]


def test_complexity_bad_input():
    with pytest.raises(TypeError, match="model_or_params"):
        regnet.complexity(3.5)
    with pytest.raises(ValueError, match="resolution"):
        regnet.complexity("regnetx_002", 0)
    with pytest.raises(ValueError, match="unknown"):
        regnet.complexity("regnetx_999")

"""EDFs, their plots, the bootstrap good range and the width fit."""

import numpy as np
import pytest

from regnet import ZOO
from regnet.analysis import bootstrap_good_range, complexity_weights, edf, fit_widths, plot_edfs, quantized_widths
from regnet.widths import quantized_linear_widths


def test_edf_against_a_hand_computed_case():
    errors = [30.0, 10.0, 20.0, 20.0]
    # F(e) = fraction of errors strictly below e.
    assert edf(errors, at=[5, 10, 15, 20, 25, 30, 35]).tolist() == [0, 0, 0.25, 0.25, 0.75, 0.75, 1.0]
    x, y = edf(errors)
    assert x.tolist() == [10, 20, 20, 30] and y.tolist() == [0.25, 0.5, 0.75, 1.0]


def test_weighted_edf_and_complexity_weights():
    # Weights 1, 1, 2 (normalized to 1/4, 1/4, 1/2).
    assert edf([1.0, 2.0, 3.0], at=[2.5, 4], weights=[1, 1, 2]).tolist() == [0.5, 1.0]
    # Two models in the low bin, one in the high bin: each bin gets half the weight.
    w = complexity_weights([100, 110, 10000], bins=2)
    assert np.allclose(w, [0.25, 0.25, 0.5])
    with pytest.raises(ValueError, match="weights: expected 3 non-negative numbers"):
        edf([1, 2, 3], weights=[1, 1])
    with pytest.raises(ValueError, match="errors: expected a non-empty sequence of finite numbers"):
        edf([])


def test_plot_edfs_writes_png_and_svg(tmp_path):
    rng = np.random.default_rng(0)
    curves = {"AnyNetX_A": rng.normal(50, 5, 100), "RegNetX": (rng.normal(40, 3, 80), np.ones(80))}
    png = plot_edfs(curves, tmp_path / "edf.png", title="spaces")
    svg = plot_edfs(curves, tmp_path / "sub" / "edf.svg")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(svg).read()
    assert "<svg" in text and "RegNetX" in text
    with pytest.raises(ValueError, match=r"expected a file name ending in one of \['.png', '.svg', '.pdf'\]"):
        plot_edfs(curves, tmp_path / "edf.jpg")


def test_bootstrap_good_range_finds_the_best_region():
    rng = np.random.default_rng(1)
    depth = rng.integers(1, 30, 500).astype(float)
    error = (depth - 12) ** 2 / 10 + rng.normal(0, 1, 500)
    r = bootstrap_good_range(depth, error, n_resamples=2000, seed=0)
    assert r.low <= 12 <= r.high and r.high - r.low <= 8
    assert r.low <= r.median <= r.high


def test_bootstrap_with_one_clear_winner_and_reproducibility():
    values, errors = [1, 2, 3, 4], [5.0, 0.0, 5.0, 5.0]
    # With fraction 1 every resample of 4 misses value 2 with probability (3/4)^4 ~ 0.32.
    r = bootstrap_good_range(values, errors, n_resamples=4000, fraction=1.0, seed=3)
    assert r.median == 2
    assert r == bootstrap_good_range(values, errors, n_resamples=4000, fraction=1.0, seed=3)
    with pytest.raises(ValueError, match="fraction=0 is out of range"):
        bootstrap_good_range(values, errors, fraction=0)
    with pytest.raises(ValueError, match="equal lengths, got 4 and 3"):
        bootstrap_good_range(values, errors[:3])


@pytest.mark.parametrize("name", sorted(ZOO))
def test_width_fit_recovers_zoo_parameters_within_quantisation(name):
    p = ZOO[name]
    widths, _ = quantized_linear_widths(p.depth, p.w0, p.wa, p.wm)
    fit = fit_widths(widths)
    # The widths are exactly a RegNet's: the fit reproduces them, with w0 exact and (wa, wm)
    # within the set of values that quantize to the same widths.
    assert fit.error == 0 and list(fit.fitted) == widths
    assert fit.w0 == p.w0
    assert abs(np.log(fit.wa / p.wa)) < 0.05 and abs(np.log(fit.wm / p.wm)) < 0.01


def test_width_fit_of_final_block_widths_is_at_least_as_good_as_the_truth():
    for name in ("regnetx_016", "regnety_040", "regnetx_320"):
        p = ZOO[name]
        observed = np.array(p.block_widths())  # after the group-width adjustment
        truth = quantized_widths(p.depth, p.w0, p.wa, p.wm)
        assert fit_widths(observed).error <= np.mean(np.abs(np.log(truth / observed))) + 1e-12


def test_width_fit_measures_distance_from_a_regnet():
    resnet50 = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    fit = fit_widths(resnet50)
    assert 0 < fit.error < 0.2 and fit.depth == 16
    assert fit_widths([64] * 5).error == 0
    with pytest.raises(ValueError, match="widths: expected positive block widths"):
        fit_widths([64, 0])

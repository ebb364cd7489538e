"""Comparing design spaces as the paper does: error EDFs, bootstrap good ranges, width fits.

    x, F = edf(errors)                                      # the EDF's steps
    plot_edfs({"AnyNetX_A": errs_a, "RegNetX": errs_x}, "edf.png")
    bootstrap_good_range(depths, errors)                    # GoodRange(low, median, high)
    fit_widths([48, 104, 104, 208, 208, 208, 440, 440])     # WidthFit(w0, wa, wm, error, ...)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "edf",
    "complexity_weights",
    "plot_edfs",
    "GoodRange",
    "bootstrap_good_range",
    "WidthFit",
    "fit_widths",
    "quantized_widths",
]

PLOT_FORMATS = ("png", "svg", "pdf")


def _as_1d(name: str, values) -> np.ndarray:
    a = np.asarray(values, dtype=float).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected a non-empty sequence of finite numbers, got {values!r}")
    return a


def _normalized_weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = _as_1d("weights", weights)
    if w.size != n or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights: expected {n} non-negative numbers with a positive sum")
    return w / w.sum()


def edf(errors: Sequence[float], at: Optional[Sequence[float]] = None, weights: Optional[Sequence[float]] = None):
    """The empirical distribution function of errors, F(e) = (1/n) sum_i [e_i < e].

    With `at`, F at those points. Without, the steps ``(x, y)``: the sorted errors and the
    fraction of models with error <= each (plot with ``where="post"``). `weights` (one per
    model, e.g. from ``complexity_weights``) replace the uniform 1/n: the paper's normalized EDF.
    """
    e = _as_1d("errors", errors)
    w = _normalized_weights(weights, e.size)
    if at is not None:
        points = np.asarray(at, dtype=float)
        return (w[None, :] * (e[None, :] < points.reshape(-1, 1))).sum(axis=1).reshape(points.shape)
    order = np.argsort(e, kind="stable")
    return e[order], np.cumsum(w[order])


def complexity_weights(complexities: Sequence[float], bins: int = 10) -> np.ndarray:
    """Weights that give each of `bins` log-spaced complexity bins the same total weight, so that
    spaces whose samples differ in complexity are compared on an equal footing (the paper's
    normalized EDF). Empty bins get nothing."""
    c = _as_1d("complexities", complexities)
    if np.any(c <= 0):
        raise ValueError("complexities: expected positive numbers (flops, params or acts)")
    edges = np.linspace(np.log(c.min()), np.log(c.max()) + 1e-12, bins + 1)
    which = np.clip(np.digitize(np.log(c), edges) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    w = 1.0 / counts[which]
    return w / w.sum()


def plot_edfs(curves: Mapping[str, Union[Sequence[float], Tuple[Sequence[float], Sequence[float]]]],
              path: Union[str, os.PathLike], title: str = "", xlabel: str = "error (%)",
              xlim: Optional[Tuple[float, float]] = None) -> str:
    """Plot one EDF per design space in one figure, saved as PNG, SVG or PDF (by extension).

    `curves` maps a label to its errors, or to (errors, weights). Legends read
    ``[min|mean] label`` as in the paper's figures. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; called before pyplot is first imported
    import matplotlib.pyplot as plt

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in PLOT_FORMATS:
        raise ValueError(f"path={path!r}: expected a file name ending in one of {['.' + f for f in PLOT_FORMATS]}")
    if not curves:
        raise ValueError("curves: expected at least one label -> errors")
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, data in curves.items():
        errors, weights = data if isinstance(data, tuple) else (data, None)
        x, y = edf(errors, weights=weights)
        mean = float(np.sum(x * np.diff(np.concatenate([[0.0], y]))))
        ax.step(np.concatenate([[x[0]], x]), np.concatenate([[0.0], y]), where="post",
                label=f"[{x[0]:.1f}|{mean:.1f}] {label} (n={x.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cumulative prob.")
    ax.set_ylim(0, 1)
    if xlim:
        ax.set_xlim(*xlim)
    ax.grid(alpha=0.4)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class GoodRange:
    """The 2.5th, 50th and 97.5th percentiles of the best model's parameter value."""

    low: float
    median: float
    high: float


def bootstrap_good_range(values: Sequence[float], errors: Sequence[float], n_resamples: int = 10000,
                         fraction: float = 0.25, seed: int = 0) -> GoodRange:
    """Where the best models' `values` of a parameter lie (the paper's empirical bootstrap).

    Each of `n_resamples` times: draw `fraction` of the (value, error) pairs with
    replacement and keep the value of the pair with the lowest error. Reports the 95%
    interval and the median of the kept values.
    """
    v, e = _as_1d("values", values), _as_1d("errors", errors)
    if v.size != e.size:
        raise ValueError(f"values and errors: expected equal lengths, got {v.size} and {e.size}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} is out of range: expected a number in (0, 1]")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples} is out of range: expected an integer >= 1")
    rng = np.random.default_rng(seed)
    m = max(1, int(round(fraction * v.size)))
    picks = rng.integers(0, v.size, (n_resamples, m))
    best = picks[np.arange(n_resamples), np.argmin(e[picks], axis=1)]
    low, median, high = np.percentile(v[best], [2.5, 50, 97.5])
    return GoodRange(float(low), float(median), float(high))


def quantized_widths(depth: int, w0, wa, wm, q: int = 8) -> np.ndarray:
    """The RegNet per-block widths for (w0, wa, wm), broadcast over arrays of them: the
    trailing axis is the block index (``regnet.widths.quantized_linear_widths``'s rule)."""
    w0, wa, wm = (np.asarray(a, dtype=float)[..., None] for a in (w0, wa, wm))
    ks = np.round(np.log((np.arange(depth) * wa + w0) / w0) / np.log(wm))
    return np.round(np.divide(w0 * np.power(wm, ks), q)) * q


@dataclass(frozen=True)
class WidthFit:
    """The RegNet (w0, wa, wm) closest to a network's per-block widths.

    `error` is the mean over blocks of |log(fitted width / width)|: 0 when the widths are
    exactly a RegNet's, log(2)/2 ~ 0.35 when every block is off by a factor sqrt(2).
    """

    w0: int
    wa: float
    wm: float
    error: float
    widths: Tuple[int, ...]
    fitted: Tuple[int, ...]

    @property
    def depth(self) -> int:
        return len(self.widths)


def _fit_errors(observed: np.ndarray, w0, wa, wm, q: int) -> np.ndarray:
    fitted = quantized_widths(observed.size, w0, wa, wm, q)
    return np.mean(np.abs(np.log(fitted / observed)), axis=-1)


def _grid_search(observed, w0s, was, wms, q):
    """Errors over the full grid [w0, wa, wm], one w0 at a time to bound memory."""
    return np.stack([_fit_errors(observed, w0, was[:, None], wms[None, :], q) for w0 in w0s])


def _refined(values: np.ndarray, i: int, n: int, log: bool) -> np.ndarray:
    """n points spanning the grid cells either side of values[i]."""
    lo, hi = values[max(i - 2, 0)], values[min(i + 2, values.size - 1)]
    return np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)


def fit_widths(widths: Sequence[int], q: int = 8, wm_range: Tuple[float, float] = (1.2, 4.0)) -> WidthFit:
    """Fit RegNet parameters to per-block widths by grid search (the paper's section 3.3).

    The depth is the number of blocks; w0 is searched over multiples of q near the first
    width, wa and wm on log grids, then refined around the best cell. Many parameter sets
    give the same quantized widths; of the best ones, the fit is the one closest to their
    centre (in log wa, log wm), a stable representative of the set.
    """
    observed = _as_1d("widths", widths)
    if np.any(observed <= 0):
        raise ValueError(f"widths: expected positive block widths, got {list(widths)}")
    if not 1 < wm_range[0] < wm_range[1]:
        raise ValueError(f"wm_range={wm_range}: expected 1 < low < high")
    first = observed[0]
    w0s = np.arange(max(q, np.floor(first * 0.8 / q) * q), first * 1.25 + q, q)
    was = np.geomspace(0.1, max(2.0 * observed.max(), 1.0), 160)
    wms = np.geomspace(*wm_range, 160)
    errs = _grid_search(observed, w0s, was, wms, q)
    i, j, k = np.unravel_index(np.argmin(errs), errs.shape)
    w0 = w0s[i]
    was, wms = _refined(was, j, 120, log=True), _refined(wms, k, 120, log=True)
    errs = _grid_search(observed, [w0], was, wms, q)[0]
    best = np.argwhere(errs <= errs.min() + 1e-12)
    centre = np.log(np.stack([was[best[:, 0]], wms[best[:, 1]]])).mean(axis=1)
    offsets = np.log(np.stack([was[best[:, 0]], wms[best[:, 1]]])) - centre[:, None]
    j, k = best[np.argmin((offsets ** 2).sum(axis=0))]
    wa, wm = float(was[j]), float(wms[k])
    fitted = quantized_widths(observed.size, w0, wa, wm, q)
    return WidthFit(int(w0), wa, wm, float(errs[j, k]), tuple(int(w) for w in observed),
                    tuple(int(w) for w in fitted))

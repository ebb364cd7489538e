"""The design spaces of "Designing Network Design Spaces": AnyNetX A-E, RegNetX and RegNetY.

A design space is a set of models given by constraints on their parameters. Each space here
checks its constraints (``violations`` lists every one a model breaks, ``check`` raises with
them) and draws seeded, reproducible samples, optionally restricted to a complexity regime
that is evaluated analytically, without building the models.

    space = get_space("RegNetX")
    specs = space.sample(100, seed=0, regime=Regime(flops=(360e6, 400e6)))
    model = space.build(specs[0], num_classes=10)

AnyNetX models are ``AnyNetSpec``s (per-stage depth d, width w, bottleneck ratio b, group
width g; the bottleneck width is w / b as in the paper). RegNet models are ``RegNetParams``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .blocks import SimpleStem
from .complexity import new_cx
from .model import AnyNet, RegNet, complexity_of_stages
from .widths import RegNetParams, StageSpec

__all__ = [
    "AnyNetSpec",
    "Regime",
    "DesignSpace",
    "AnyNetXSpace",
    "RegNetSpace",
    "SPACES",
    "get_space",
    "batch_complexity",
    "spec_to_dict",
    "spec_from_dict",
]

Spec = Union["AnyNetSpec", RegNetParams]
Range = Tuple[float, float]


@dataclass(frozen=True)
class AnyNetSpec:
    """An AnyNetX model: per-stage depths, widths, bottleneck ratios b and group widths g.

    Stage i has d_i blocks of output width w_i and bottleneck width w_i / b_i, split in groups
    of g_i channels. Every stage has stride 2 and the stem is 32 wide, as in the paper.
    """

    depths: Tuple[int, ...]
    widths: Tuple[int, ...]
    bottleneck_ratios: Tuple[int, ...]
    group_widths: Tuple[int, ...]

    def __post_init__(self):
        for name in ("depths", "widths", "bottleneck_ratios", "group_widths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        lengths = {len(self.depths), len(self.widths), len(self.bottleneck_ratios), len(self.group_widths)}
        if len(lengths) != 1:
            raise ValueError(f"AnyNetSpec: depths, widths, bottleneck_ratios and group_widths must have equal "
                             f"lengths, got {self}")

    def stages(self) -> List[StageSpec]:
        return [StageSpec(d, w, 2, 1.0 / b, g) for d, w, b, g in
                zip(self.depths, self.widths, self.bottleneck_ratios, self.group_widths)]


@dataclass(frozen=True)
class Regime:
    """A complexity regime: inclusive (low, high) bounds on flops, params and acts (any may be
    None), counted at `resolution` with a `num_classes` head, as pycls counts them."""

    flops: Optional[Range] = None
    params: Optional[Range] = None
    acts: Optional[Range] = None
    resolution: int = 224
    num_classes: int = 1000

    def __post_init__(self):
        for name in ("flops", "params", "acts"):
            bounds = getattr(self, name)
            if bounds is not None and not (len(bounds) == 2 and 0 <= bounds[0] <= bounds[1]):
                raise ValueError(f"Regime.{name}={bounds!r} is out of range: expected (low, high) with 0 <= low <= high")

    def bounds(self) -> Dict[str, Range]:
        return {k: v for k, v in (("flops", self.flops), ("params", self.params), ("acts", self.acts)) if v is not None}

    def contains(self, cx: Dict[str, Any]):
        """Whether `cx` is in the regime; elementwise when its values are arrays."""
        inside = True
        for k, (lo, hi) in self.bounds().items():
            inside = inside & (lo <= cx[k]) & (cx[k] <= hi)
        return inside


def _log_uniform(rng: np.random.Generator, low: float, high: float, q: float, size: int) -> np.ndarray:
    """Log-uniform in [low, high], rounded up to a multiple of q (so never below low when low
    is a multiple of q); draws start at low - min(q, low/2) so that low keeps its share."""
    f = np.exp(rng.uniform(np.log(low - min(q, low / 2)), np.log(high), size))
    return np.minimum(high, np.ceil(np.round(f / q, 9)) * q)


class DesignSpace:
    """A set of models given by constraints.

    Subclasses draw candidates in batches of arrays (``draw_batch``, one row a model), turn a
    row into a spec (``spec_at``), list the constraints a spec breaks (``violations``), and
    give per-stage arrays (``stage_arrays``) so that the complexity of a whole batch is
    counted at once: a narrow regime keeps about one AnyNetX_A draw in 7,000.
    """

    name: str = ""
    description: str = ""
    batch_size = 4096

    def draw_batch(self, rng: np.random.Generator, size: int) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def spec_at(self, batch: Dict[str, np.ndarray], i: int) -> Spec:
        raise NotImplementedError

    def stage_arrays(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Per-stage [rows, stages] arrays: depth, width, w_b (bottleneck width), group_w, and
        se_r; exact for the rows that are in the space."""
        raise NotImplementedError

    def violations(self, spec: Spec) -> List[str]:
        """Every constraint `spec` breaks, in words; empty when `spec` is in the space."""
        raise NotImplementedError

    def stages(self, spec: Spec) -> List[StageSpec]:
        return spec.stages()

    def contains(self, spec: Spec) -> bool:
        return not self.violations(spec)

    def check(self, spec: Spec) -> Spec:
        reasons = self.violations(spec)
        if reasons:
            raise ValueError(f"{spec} is not in {self.name}: " + "; ".join(reasons))
        return spec

    def complexity(self, spec: Spec, resolution: int = 224, num_classes: int = 1000) -> Dict[str, int]:
        """flops, params and acts, from the stage specs alone."""
        stem_w = getattr(spec, "stem_w", 32)
        return complexity_of_stages(self.stages(spec), resolution, stem_w=stem_w, num_classes=num_classes)

    def build(self, spec: Spec, num_classes: int = 1000, **kwargs) -> AnyNet:
        return AnyNet(self.stages(self.check(spec)), num_classes=num_classes, **kwargs)

    def sample(self, n: int, seed: int = 0, regime: Optional[Regime] = None, max_draws: Optional[int] = None) -> List[Spec]:
        """`n` models drawn uniformly from the space (within `regime` if given), by rejection.

        The same (n, seed, regime) always gives the same list, and a longer list starts with
        the shorter one. The batch complexity only pre-selects: every kept model is checked
        against the constraints and its exact complexity.
        """
        if n < 0:
            raise ValueError(f"n={n} is out of range: expected an integer >= 0")
        max_draws = max_draws or 10000 * n + 100000
        rng = np.random.default_rng(seed)
        specs: List[Spec] = []
        draws = 0
        while len(specs) < n:
            if draws >= max_draws:
                raise ValueError(f"{self.name}: only {len(specs)} of {n} models found in {draws} draws within "
                                 f"{regime}; widen the regime")
            batch = self.draw_batch(rng, self.batch_size)
            draws += self.batch_size
            rows = np.arange(self.batch_size) if regime is None else np.flatnonzero(regime.contains(
                batch_complexity(**self.stage_arrays(batch), resolution=regime.resolution,
                                 num_classes=regime.num_classes)))
            for i in rows:
                spec = self.spec_at(batch, int(i))
                if self._accepts(spec, regime):
                    specs.append(spec)
                    if len(specs) == n:
                        break
        return specs

    def _accepts(self, spec: Spec, regime: Optional[Regime]) -> bool:
        if self.violations(spec):
            return False
        return regime is None or bool(regime.contains(self.complexity(spec, regime.resolution, regime.num_classes)))


def _xblock_cx(h_in, h_out, w_in, w_out, w_b, group_w, w_se, proj: bool):
    """(flops, params, acts) of X/Y blocks, elementwise over arrays (BottleneckTransform's and
    Xblock's counts, for bottleneck widths that the group width divides)."""
    a_in, a_out = h_in * h_in, h_out * h_out
    flops = w_in * w_b * a_in + 9 * w_b * group_w * a_out + w_b * w_out * a_out
    params = w_in * w_b + 9 * w_b * group_w + w_b * w_out + 4 * w_b + 2 * w_out
    acts = w_b * a_in + w_b * a_out + w_out * a_out
    se = np.where(w_se > 0, 2 * w_b * w_se + w_se + w_b, 0)  # two 1x1 convs with bias on a 1x1 map
    flops, params, acts = flops + se, params + se, acts + np.where(w_se > 0, w_se + w_b, 0)
    if proj:
        flops, params, acts = flops + w_in * w_out * a_out, params + w_in * w_out + 2 * w_out, acts + w_out * a_out
    return flops, params, acts


def batch_complexity(depth, width, w_b, group_w, se_r, resolution: int = 224, num_classes: int = 1000,
                     stem_w: int = 32, in_chans: int = 3) -> Dict[str, np.ndarray]:
    """The complexity of many AnyNets at once, from [rows, stages] arrays; every stage has
    stride 2. Equal to ``complexity_of_stages`` row by row (tested)."""
    stem = SimpleStem.complexity(new_cx(resolution), in_chans, stem_w)
    h = stem["h"]
    total = np.array([stem["flops"], stem["params"], stem["acts"]], dtype=np.int64)[:, None]
    w_in = np.full(depth.shape[0], stem_w, dtype=np.int64)
    for s in range(depth.shape[1]):
        d, w, b, g = (np.asarray(a[:, s], dtype=np.int64) for a in (depth, width, w_b, group_w))
        h_out = (h - 1) // 2 + 1
        first = _xblock_cx(h, h_out, w_in, w, b, g, np.round(w_in * se_r[:, s]).astype(np.int64), proj=True)
        rest = _xblock_cx(h_out, h_out, w, w, b, g, np.round(w * se_r[:, s]).astype(np.int64), proj=False)
        total = total + np.array(first) + (d - 1) * np.array(rest)
        w_in, h = w, h_out
    head = np.array([w_in * num_classes + num_classes, w_in * num_classes + num_classes,
                     np.full_like(w_in, num_classes)])
    total = total + head
    return {"flops": total[0], "params": total[1], "acts": total[2]}


def _failures(values: Sequence, ok, what: str) -> List[str]:
    return [f"stage {i + 1}: {what}, got {v}" for i, v in enumerate(values) if not ok(v)]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class AnyNetXSpace(DesignSpace):
    """AnyNetX: 4 stages of X blocks; per stage d <= 16, w <= 1024 and a multiple of 8,
    b in {1, 2, 4}, g in {1, 2, 4, ..., 32}, with g dividing the bottleneck width w / b.

    Each later space adds one constraint: B shares b across stages, C also shares g,
    D makes widths non-decreasing, E depths too.
    """

    num_stages = 4
    max_depth = 16
    max_width = 1024
    width_quantum = 8
    bottleneck_ratios = (1, 2, 4)
    # The paper counts 6 values of g ("(16 * 128 * 3 * 6)^4 ~ 10^18 models"): powers of 2.
    group_widths = (1, 2, 4, 8, 16, 32)

    def __init__(self, name: str, shared_b=False, shared_g=False, increasing_w=False, increasing_d=False):
        self.name = name
        self.shared_b, self.shared_g = shared_b, shared_g
        self.increasing_w, self.increasing_d = increasing_w, increasing_d
        extra = [text for on, text in ((shared_b, "shared b"), (shared_g, "shared g"),
                                       (increasing_w, "w_i+1 >= w_i"), (increasing_d, "d_i+1 >= d_i")) if on]
        self.description = "4 stages; d<=16, w<=1024 (multiple of 8), b in {1,2,4}, g in {1..32}" + \
            "".join(f"; {e}" for e in extra)

    def draw_batch(self, rng: np.random.Generator, size: int) -> Dict[str, np.ndarray]:
        shape, n = (size, self.num_stages), self.num_stages
        depths = rng.integers(1, self.max_depth + 1, shape)
        widths = rng.integers(1, self.max_width // self.width_quantum + 1, shape) * self.width_quantum
        bs = rng.choice(self.bottleneck_ratios, (size, 1) if self.shared_b else shape)
        gs = rng.choice(self.group_widths, (size, 1) if self.shared_g else shape)
        # Sorting independent draws reaches every non-decreasing sequence (with the probability
        # of all its orderings) where rejecting the unsorted ones would discard 23 draws in 24.
        depths = np.sort(depths, axis=1) if self.increasing_d else depths
        widths = np.sort(widths, axis=1) if self.increasing_w else widths
        return {"depth": depths, "width": widths, "b": np.repeat(bs, n // bs.shape[1], axis=1),
                "group_w": np.repeat(gs, n // gs.shape[1], axis=1)}

    def spec_at(self, batch: Dict[str, np.ndarray], i: int) -> AnyNetSpec:
        return AnyNetSpec(batch["depth"][i], batch["width"][i], batch["b"][i], batch["group_w"][i])

    def stage_arrays(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {"depth": batch["depth"], "width": batch["width"], "w_b": batch["width"] // batch["b"],
                "group_w": batch["group_w"], "se_r": np.zeros(batch["depth"].shape)}

    def violations(self, spec: Spec) -> List[str]:
        if not isinstance(spec, AnyNetSpec):
            return [f"expected an AnyNetSpec, got {type(spec).__name__}"]
        out = []
        if len(spec.depths) != self.num_stages:
            out.append(f"expected {self.num_stages} stages, got {len(spec.depths)}")
        out += _failures(spec.depths, lambda d: 1 <= d <= self.max_depth, f"depth d must be in 1..{self.max_depth}")
        out += _failures(spec.widths, lambda w: 0 < w <= self.max_width and w % self.width_quantum == 0,
                         f"width w must be a multiple of {self.width_quantum} in {self.width_quantum}..{self.max_width}")
        out += _failures(spec.bottleneck_ratios, lambda b: b in self.bottleneck_ratios,
                         f"bottleneck ratio b must be in {set(self.bottleneck_ratios)}")
        out += _failures(spec.group_widths, lambda g: g in self.group_widths,
                         f"group width g must be in {set(self.group_widths)}")
        for i, (w, b, g) in enumerate(zip(spec.widths, spec.bottleneck_ratios, spec.group_widths)):
            if b > 0 and g > 0 and (w % b or (w // b) % g):
                out.append(f"stage {i + 1}: group width g={g} must divide the bottleneck width w/b={w}/{b}")
        out += self._shared_violations(spec)
        return out

    def _shared_violations(self, spec: AnyNetSpec) -> List[str]:
        out = []
        if self.shared_b and len(set(spec.bottleneck_ratios)) > 1:
            out.append(f"{self.name} shares b across stages, got {list(spec.bottleneck_ratios)}")
        if self.shared_g and len(set(spec.group_widths)) > 1:
            out.append(f"{self.name} shares g across stages, got {list(spec.group_widths)}")
        if self.increasing_w and list(spec.widths) != sorted(spec.widths):
            out.append(f"{self.name} needs non-decreasing widths, got {list(spec.widths)}")
        if self.increasing_d and list(spec.depths) != sorted(spec.depths):
            out.append(f"{self.name} needs non-decreasing depths, got {list(spec.depths)}")
        return out

class RegNetSpace(DesignSpace):
    """RegNetX / RegNetY: the six-number parameterisation with the paper's (and pycls's)
    sampling ranges: depth 12-28, w0 and wa log-uniform in 8-256, wm log-uniform in 2-3,
    group width 8-128 (multiple of 8), bottleneck ratio 1; 4 stages, none empty."""

    depth_range = (12, 28)
    w0_range = (8, 256)
    wa_range = (8.0, 256.0)
    wm_range = (2.0, 3.0)
    group_w_range = (8, 128)
    num_stages = 4

    def __init__(self, name: str, se_r: float):
        self.name, self.se_r = name, se_r
        self.description = "depth 12-28, w0 8-256, wa 8-256, wm 2-3, g 8-128, b=1, 4 stages" + \
            (f", SE ratio {se_r}" if se_r else "")

    def draw_batch(self, rng: np.random.Generator, size: int) -> Dict[str, np.ndarray]:
        # pycls's quantization: w0 to 8, wa to 0.1, wm to 0.001, group width to 8.
        return {
            "depth": rng.integers(self.depth_range[0], self.depth_range[1] + 1, size),
            "w0": _log_uniform(rng, *self.w0_range, 8, size).astype(int),
            "wa": np.round(_log_uniform(rng, *self.wa_range, 0.1, size), 1),
            "wm": np.round(_log_uniform(rng, *self.wm_range, 0.001, size), 3),
            "group_w": _log_uniform(rng, *self.group_w_range, 8, size).astype(int),
        }

    def spec_at(self, batch: Dict[str, np.ndarray], i: int) -> RegNetParams:
        return RegNetParams(depth=int(batch["depth"][i]), w0=int(batch["w0"][i]), wa=float(batch["wa"][i]),
                            wm=float(batch["wm"][i]), group_w=int(batch["group_w"][i]), se_r=self.se_r)

    def stage_arrays(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """``regnet.widths.stage_specs`` over a batch, for rows whose blocks fill stages 0..3:
        the same float operations, so the same widths."""
        w0, wa, wm, g = (batch[k][:, None] for k in ("w0", "wa", "wm", "group_w"))
        j = np.arange(self.depth_range[1])[None, :]
        ks = np.round(np.log((j * wa + w0) / w0) / np.log(wm))
        ks = np.where(j < batch["depth"][:, None], ks, -1)
        s = np.arange(self.num_stages)[None, :]
        depth = (ks[:, :, None] == s[:, None, :]).sum(axis=1)
        width = np.round(np.divide(w0 * np.power(wm, s), 8)).astype(int) * 8
        g = np.minimum(g, width)  # adjust_block_compatibility with bot_mul 1
        width = np.maximum(g, np.round(width / g).astype(int) * g)
        return {"depth": depth, "width": width, "w_b": width, "group_w": np.broadcast_to(g, width.shape),
                "se_r": np.full(width.shape, self.se_r)}

    def violations(self, spec: Spec) -> List[str]:
        if not isinstance(spec, RegNetParams):
            return [f"expected a RegNetParams, got {type(spec).__name__}"]
        out = []
        checks = [
            ("depth", spec.depth, self.depth_range, _is_int(spec.depth)),
            ("w0", spec.w0, self.w0_range, spec.w0 % 8 == 0),
            ("wa", spec.wa, self.wa_range, True),
            ("wm", spec.wm, self.wm_range, True),
            ("group_w", spec.group_w, self.group_w_range, spec.group_w % 8 == 0),
        ]
        for name, value, (lo, hi), quantized in checks:
            if not (lo <= value <= hi and quantized):
                step = " (a multiple of 8)" if name in ("w0", "group_w") else ""
                out.append(f"{name}={value} must be in [{lo}, {hi}]{step}")
        if spec.bot_mul != 1:
            out.append(f"bot_mul={spec.bot_mul} must be 1")
        if spec.se_r != self.se_r:
            out.append(f"se_r={spec.se_r} must be {self.se_r} in {self.name}")
        if not out:
            out += self._stage_violations(spec)
        return out

    def _stage_violations(self, spec: RegNetParams) -> List[str]:
        try:
            n = len(spec.stages())
        except ValueError as e:  # an empty stage
            return [str(e)]
        return [] if n == self.num_stages else [f"the widths form {n} stages, expected {self.num_stages}"]

    def build(self, spec: Spec, num_classes: int = 1000, **kwargs) -> RegNet:
        return RegNet(self.check(spec), num_classes=num_classes, **kwargs)


SPACES: Dict[str, DesignSpace] = {
    s.name: s
    for s in (
        AnyNetXSpace("AnyNetX_A"),
        AnyNetXSpace("AnyNetX_B", shared_b=True),
        AnyNetXSpace("AnyNetX_C", shared_b=True, shared_g=True),
        AnyNetXSpace("AnyNetX_D", shared_b=True, shared_g=True, increasing_w=True),
        AnyNetXSpace("AnyNetX_E", shared_b=True, shared_g=True, increasing_w=True, increasing_d=True),
        RegNetSpace("RegNetX", se_r=0.0),
        RegNetSpace("RegNetY", se_r=0.25),
    )
}


def get_space(name: str) -> DesignSpace:
    """A space by name, case-insensitively (``AnyNetX_A`` ... ``AnyNetX_E``, ``RegNetX``, ``RegNetY``)."""
    for key, space in SPACES.items():
        if key.lower() == name.lower().replace("-", "_"):
            return space
    raise ValueError(f"design space {name!r} is unknown: expected one of {list(SPACES)}")


def spec_to_dict(spec: Spec) -> Dict:
    """A JSON-ready dict that ``spec_from_dict`` turns back into the spec."""
    if isinstance(spec, AnyNetSpec):
        return {"kind": "anynet", **{k: list(v) for k, v in asdict(spec).items()}}
    if isinstance(spec, RegNetParams):
        return {"kind": "regnet", **asdict(spec)}
    raise TypeError(f"spec: expected an AnyNetSpec or RegNetParams, got {type(spec).__name__}")


def spec_from_dict(d: Dict) -> Spec:
    fields = {k: v for k, v in d.items() if k != "kind"}
    kinds = {"anynet": AnyNetSpec, "regnet": RegNetParams}
    if d.get("kind") not in kinds:
        raise ValueError(f"spec kind={d.get('kind')!r} is unknown: expected one of {list(kinds)}")
    return kinds[d["kind"]](**fields)

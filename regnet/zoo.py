"""The 24 RegNet models of pycls's model zoo, and the names torchvision and timm use for them.

``regnetx_002(block=Yblock, num_classes=10)`` builds RegNetX-200MF's widths with Y blocks.
``create_model(name)`` accepts our names (``regnetx_002``), pycls's (``RegNetX-200MF``),
timm's (``regnetx_002``) and torchvision's (``regnet_x_400mf``). torchvision rounds widths
differently; its names build torchvision's own configs (see ``regnet.interop.torchvision``).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Type

from .blocks import Xblock, Yblock
from .model import AnyNet, RegNet
from .widths import RegNetParams

__all__ = ["ZOO", "PYCLS_NAMES", "config_of", "create_model", "list_models"]

# name: (depth, w0, wa, wm, group_w, se_r)  -- pycls configs/dds_baselines, bot_mul 1 for all.
_ZOO_TABLE = {
    "regnetx_002": (13, 24, 36.44, 2.49, 8, 0.0),
    "regnetx_004": (22, 24, 24.48, 2.54, 16, 0.0),
    "regnetx_006": (16, 48, 36.97, 2.24, 24, 0.0),
    "regnetx_008": (16, 56, 35.73, 2.28, 16, 0.0),
    "regnetx_016": (18, 80, 34.01, 2.25, 24, 0.0),
    "regnetx_032": (25, 88, 26.31, 2.25, 48, 0.0),
    "regnetx_040": (23, 96, 38.65, 2.43, 40, 0.0),
    "regnetx_064": (17, 184, 60.83, 2.07, 56, 0.0),
    "regnetx_080": (23, 80, 49.56, 2.88, 120, 0.0),
    "regnetx_120": (19, 168, 73.36, 2.37, 112, 0.0),
    "regnetx_160": (22, 216, 55.59, 2.1, 128, 0.0),
    "regnetx_320": (23, 320, 69.86, 2.0, 168, 0.0),
    "regnety_002": (13, 24, 36.44, 2.49, 8, 0.25),
    "regnety_004": (16, 48, 27.89, 2.09, 8, 0.25),
    "regnety_006": (15, 48, 32.54, 2.32, 16, 0.25),
    "regnety_008": (14, 56, 38.84, 2.4, 16, 0.25),
    "regnety_016": (27, 48, 20.71, 2.65, 24, 0.25),
    "regnety_032": (21, 80, 42.63, 2.66, 24, 0.25),
    "regnety_040": (22, 96, 31.41, 2.24, 64, 0.25),
    "regnety_064": (25, 112, 33.22, 2.27, 72, 0.25),
    "regnety_080": (17, 192, 76.82, 2.19, 56, 0.25),
    "regnety_120": (19, 168, 73.36, 2.37, 112, 0.25),
    "regnety_160": (18, 200, 106.23, 2.48, 112, 0.25),
    "regnety_320": (20, 232, 115.89, 2.53, 232, 0.25),
}

ZOO: Dict[str, RegNetParams] = {
    name: RegNetParams(depth=d, w0=w0, wa=wa, wm=wm, group_w=g, se_r=se) for name, (d, w0, wa, wm, g, se) in _ZOO_TABLE.items()
}


def _pycls_name(name: str) -> str:
    kind, size = name[6].upper(), int(name[8:])
    label = f"{size * 100}MF" if size < 10 else f"{size / 10:.1f}GF" if size < 100 else f"{size // 10}GF"
    return f"RegNet{kind}-{label}"


PYCLS_NAMES: Dict[str, str] = {_pycls_name(n): n for n in ZOO}  # "RegNetX-200MF" -> "regnetx_002"

# Extra configs registered by other modules (torchvision's own configs): name -> factory(**kwargs).
_EXTRA: Dict[str, Callable[..., RegNet]] = {}
_EXTRA_PARAMS: Dict[str, Callable[[], object]] = {}


def register_model(name: str, factory: Callable[..., RegNet], stages_fn: Callable[[], object]) -> None:
    _EXTRA[name] = factory
    _EXTRA_PARAMS[name] = stages_fn


def _canonical(name: str) -> str:
    if name in ZOO or name in _EXTRA:
        return name
    if name in PYCLS_NAMES:
        return PYCLS_NAMES[name]
    low = name.lower().replace("-", "_")
    if low in ZOO:
        return low
    _load_extras()
    for key in (name, low):
        if key in _EXTRA:
            return key
    raise ValueError(f"model name {name!r} is unknown: expected one of {list_models()}")


def _load_extras() -> None:
    if not _EXTRA:
        from .interop import torchvision as _tv  # noqa: F401  registers torchvision's configs


def list_models():
    _load_extras()
    return sorted(ZOO) + sorted(PYCLS_NAMES) + sorted(_EXTRA)


def config_of(name: str):
    """RegNetParams of a zoo model (or the stage specs of a torchvision config)."""
    key = _canonical(name)
    return ZOO[key] if key in ZOO else _EXTRA_PARAMS[key]()


def create_model(name: str, **kwargs) -> AnyNet:
    """A zoo model (a RegNet) or a torchvision config (an AnyNet with torchvision's widths)."""
    key = _canonical(name)
    if key in _EXTRA:
        return _EXTRA[key](**kwargs)
    return RegNet(ZOO[key], **kwargs)


def _factory(name: str):
    default_block = Yblock if ZOO[name].se_r > 0 else Xblock

    def build(block: Optional[Type[Xblock]] = None, num_classes: int = 1000, **kwargs) -> RegNet:
        return RegNet(ZOO[name], block=block or default_block, num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{_pycls_name(name)} ({ZOO[name]}). ``block=Yblock``/``Xblock`` switches SE on/off."
    return build


for _n in ZOO:
    globals()[_n] = _factory(_n)
    __all__.append(_n)

"""Loads the compiled extension regnet_kernels._C once; a missing build warns once and the
pure-PyTorch paths keep working."""

from __future__ import annotations

import warnings
from typing import Optional

_C = None
_error: Optional[str] = None
_loaded = False


def load():
    """The extension module, or None (with one warning) when it is not built."""
    global _C, _error, _loaded
    if not _loaded:
        _loaded = True
        try:
            import torch  # noqa: F401  (the extension links against torch's libraries)

            from . import _C as ext

            _C = ext
        except ImportError as e:  # not built, or built against another torch
            _error = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"regnet_kernels._C is not available ({_error}); the cpu and cuda backends are off and "
                "ops use the triton or eager backends. Build it with `pip install --no-build-isolation -e .`.",
                RuntimeWarning,
                stacklevel=2,
            )
    return _C


def error() -> Optional[str]:
    load()
    return _error


def build_info() -> dict:
    ext = load()
    return dict(ext.build_info()) if ext is not None else {}

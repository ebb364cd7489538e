"""Loads the compiled extension regnet_kernels._C once; a missing build warns once and the
pure-PyTorch paths keep working."""

from __future__ import annotations

import warnings
from typing import Optional

_C = None
_error: Optional[str] = None
_loaded = False
_build_info: dict = {}


def load():
    """The extension module, or None (with one warning) when it is not built."""
    global _C, _error, _loaded
    if not _loaded:
        _loaded = True
        try:
            import torch  # noqa: F401  (the extension links against torch's libraries)

            from . import _C as ext

            _C = ext
            # Read once: dispatch consults it per call, also while torch.compile traces.
            _build_info.update(ext.build_info())
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
    """How the extension was built ({} when it is not available)."""
    load()
    return dict(_build_info)

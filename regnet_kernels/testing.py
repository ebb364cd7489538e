"""Test helpers that belong to the library (so every backend's tests use the same ones)."""

from __future__ import annotations

import contextlib

from . import _ext
from .ops import checks


@contextlib.contextmanager
def poison_outputs(on: bool = True):
    """Within the block, every kernel output (Python-allocated or native) starts as NaN."""
    ext = _ext.load()
    old = checks.POISON_OUTPUTS
    checks.POISON_OUTPUTS = on
    if ext is not None:
        ext.set_poison_outputs(on)
    try:
        yield
    finally:
        checks.POISON_OUTPUTS = old
        if ext is not None:
            ext.set_poison_outputs(old)

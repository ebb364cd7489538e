"""Pieces shared by the eager (reference) implementations of the ops."""

from typing import Optional

import torch
from torch import Tensor

from .checks import ALL_DTYPES


def eager_supports(*, x, forced=False, **_):
    """The eager backend serves every dtype the ops accept (float64 included: it is the reference)."""
    return [] if x.dtype in ALL_DTYPES else [f"eager: dtype {x.dtype} not supported"]


def epilogue(y: Tensor, residual: Optional[Tensor], relu: bool) -> Tensor:
    """[+ residual] [ReLU], the tail every op shares."""
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y

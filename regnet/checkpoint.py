"""Checkpoint files: written atomically, read without executing pickled code."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Any, Callable, Dict, Mapping

import torch
from torch import nn

__all__ = ["atomic_write", "atomic_save", "safe_load", "load_state_dict_strict"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call write(file) on a uniquely named temporary file in path's folder, fsync, then rename
    it over `path`: readers see the old file or the whole new one, and a crash mid-write leaves
    the previous file intact."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save written atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, no code runs."""
    return torch.load(os.fspath(path), map_location=map_location, weights_only=True)


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """load_state_dict that fails with the full lists of missing and unexpected keys and of
    shape mismatches, naming where the state came from."""
    own: Dict[str, torch.Tensor] = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not match {type(model).__name__}:\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(shapes)}): {shapes}"
        )
    model.load_state_dict(state, strict=True)

"""Built zoo models shared across test modules (building the large ones costs seconds)."""

import functools

import torch

from regnet import create_model


@functools.lru_cache(maxsize=None)
def zoo_model(name: str):
    """A freshly initialised zoo model (seeded per name). Callers must not modify it."""
    torch.manual_seed(sum(map(ord, name)))
    return create_model(name)

"""Large CPU activations reused across forwards (csrc/cpu/pool_allocator.cpp).

glibc gives freed blocks above its mmap threshold (32 MB at most) and the heap's free top back
to the OS, so every batch-16 forward page-faults its big activations in again: regnety_004 took
~14000 faults and ~40 ms of system time per ~125 ms forward on an AMD EPYC VM (bench/NOTES.md,
Step 9). While a FusedRegNet runs its forward on the CPU, `pooled_cpu_memory()` installs the
extension's pool as torch's CPU allocator: freed blocks of 256 KB or more are kept per size and
handed out again; smaller ones are allocated and freed as c10's default allocator does. The pool
reserves (in use + cached) at most twice the largest in-use total it has seen, freeing cached
blocks of other sizes when a new size would pass that; `release_cached_memory()` frees what it
keeps (like torch.cuda.empty_cache). Tensors allocated by other threads during such a forward
come from the pool too, and return to it. REGNET_KERNELS_CPU_POOL=0 turns it off.
"""

from __future__ import annotations

import os
from typing import Dict

from . import _ext

__all__ = ["pooled_cpu_memory", "unpooled", "release_cached_memory", "pool_stats", "pool_summary", "POOL_ENABLED"]

POOL_ENABLED = os.environ.get("REGNET_KERNELS_CPU_POOL", "1") != "0"


class pooled_cpu_memory:
    """Context manager: torch's CPU allocations inside go through the pool (a no-op without the
    extension, with REGNET_KERNELS_CPU_POOL=0 or when `enabled` is False). Scopes nest."""

    __slots__ = ("enabled", "_entered")

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and POOL_ENABLED
        self._entered = False

    def __enter__(self) -> bool:
        ext = _ext.load() if self.enabled else None
        self._entered = ext is not None and ext.cpu_pool_enter()
        return self._entered

    def __exit__(self, *exc) -> None:
        if self._entered:
            self._entered = False
            _ext.load().cpu_pool_exit()


class unpooled:
    """Context manager: this thread's allocations inside bypass the pool, for data that outlives
    the forward it is made in (derived weights): counted as in use, it left the activations less
    room under the pool's reserve bound until every forward missed. Nests; a no-op without the
    extension."""

    __slots__ = ("_ext",)

    def __enter__(self) -> None:
        self._ext = _ext.load()
        if self._ext is not None:
            self._ext.cpu_pool_bypass_enter()

    def __exit__(self, *exc) -> None:
        if self._ext is not None:
            self._ext.cpu_pool_bypass_exit()


def release_cached_memory() -> None:
    """Free the blocks the pool keeps (blocks in use are freed when their tensors go)."""
    ext = _ext.load()
    if ext is not None:
        ext.cpu_pool_release_cached()


def pool_stats() -> Dict[str, int]:
    """in_use_bytes, cached_bytes, peak_in_use_bytes, min_block_bytes, misses, evictions,
    stale_entries, undersized_cached (see csrc/cpu/pool_allocator.h; {} without the extension)."""
    ext = _ext.load()
    return dict(ext.cpu_pool_stats()) if ext is not None else {}


def pool_summary() -> str:
    """One line for `python -m regnet_kernels.info`."""
    if _ext.load() is None:
        return "cpu memory pool: unavailable (regnet_kernels._C is not built)"
    if not POOL_ENABLED:
        return "cpu memory pool: off (REGNET_KERNELS_CPU_POOL=0)"
    s = pool_stats()
    return (f"cpu memory pool: on for optimized models' CPU forwards (blocks >= {s['min_block_bytes'] >> 10} KB; "
            f"{s['cached_bytes'] >> 20} MB cached now); REGNET_KERNELS_CPU_POOL=0 turns it off")

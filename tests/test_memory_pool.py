"""The CPU memory pool (csrc/cpu/pool_allocator.cpp, regnet_kernels/memory.py): large blocks kept
and handed out again inside a scope, values intact, nothing pooled outside a scope, bounded
reserve, blocks crossing scope boundaries freed correctly (oneDNN's raw allocations included),
profiler records kept, and optimized models giving the same outputs with and without it."""

from __future__ import annotations

import threading

import pytest
import torch

import regnet
import regnet_kernels as rk
from regnet_kernels import memory
from regnet_kernels.backends import native
from regnet_kernels.modules import SETTLE_CALLS

pytestmark = pytest.mark.skipif(native.EXT is None, reason="regnet_kernels._C is not built")

GEN = torch.Generator().manual_seed(20261130)
BIG = 1 << 20  # floats: 4 MB, above the pool's minimum block


def stats():
    return memory.pool_stats()


def test_large_blocks_are_reused_inside_a_scope_and_values_are_intact():
    with memory.pooled_cpu_memory() as on:
        assert on
        a = torch.randn(BIG, generator=GEN)
        ptr = a.data_ptr()
        del a
        before = stats()
        b = torch.randn(BIG, generator=GEN)
        assert b.data_ptr() == ptr, "a freed block of the same size was not handed out again"
        assert stats()["misses"] == before["misses"]
        expected = b.clone()
        c = torch.randn(BIG, generator=GEN)  # a second block of that size while b lives
        assert c.data_ptr() != b.data_ptr()
        torch.testing.assert_close(b, expected, rtol=0, atol=0)
    del b, c


def test_nothing_is_pooled_outside_a_scope_or_below_the_minimum_block():
    before = stats()
    outside = torch.empty(BIG)
    assert stats()["in_use_bytes"] == before["in_use_bytes"]
    with memory.pooled_cpu_memory():
        small = torch.empty(before["min_block_bytes"] // 4 - 16)
        assert stats()["in_use_bytes"] == before["in_use_bytes"]
        big = torch.empty(BIG)
        assert stats()["in_use_bytes"] == before["in_use_bytes"] + BIG * 4
    del big  # freed after the scope: back to the pool, not to the OS
    after = stats()
    assert after["in_use_bytes"] == before["in_use_bytes"]
    assert after["cached_bytes"] >= BIG * 4
    del outside, small


def test_scopes_nest_and_an_exception_restores_the_allocator():
    before = stats()["in_use_bytes"]
    with pytest.raises(RuntimeError, match="inside"):
        with memory.pooled_cpu_memory():
            with memory.pooled_cpu_memory():
                inner = torch.empty(BIG)
            still = torch.empty(BIG)  # the outer scope is still on
            assert stats()["in_use_bytes"] == before + 2 * BIG * 4
            raise RuntimeError("inside")
    del inner, still
    after_scope = torch.empty(BIG)
    assert stats()["in_use_bytes"] == before, "the pool stayed installed after its scope"
    del after_scope


def test_disabled_pool_is_a_no_op(monkeypatch):
    monkeypatch.setattr(memory, "POOL_ENABLED", False)
    before = stats()["in_use_bytes"]
    with memory.pooled_cpu_memory() as on:
        t = torch.empty(BIG)
    assert not on and stats()["in_use_bytes"] == before
    del t


def test_reserve_stays_bounded_and_release_frees_the_cache():
    memory.release_cached_memory()
    assert stats()["cached_bytes"] == 0
    # Many sizes, each freed before the next, 10x the largest in-use total so far in all: the
    # cache must not keep them all.
    floats = max(BIG, stats()["peak_in_use_bytes"] // 16)
    with memory.pooled_cpu_memory():
        for i in range(40):
            t = torch.empty(floats + 1024 * i)
            del t
        s = stats()
        assert s["in_use_bytes"] + s["cached_bytes"] <= 2 * s["peak_in_use_bytes"], s
        assert s["evictions"] > 0
    memory.release_cached_memory()
    assert stats()["cached_bytes"] == 0


def test_blocks_crossing_scope_boundaries_are_freed_by_either_allocator():
    """Blocks made outside a scope and freed inside it go back to the system; oneDNN weight
    reorders (raw allocations freed through whichever allocator is installed) work in every
    order. The first version of the pool crashed here (it had no raw deleter)."""
    x = torch.randn(2, 32, 28, 28, generator=GEN).to(memory_format=torch.channels_last)
    w = torch.randn(32, 4, 3, 3, generator=GEN)
    outside = torch.empty(BIG)
    packed_outside = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 8, list(x.shape))
    with memory.pooled_cpu_memory():
        del outside
        packed_inside = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 8, list(x.shape))
        y_in = torch.ops.mkldnn._convolution_pointwise(x, packed_outside, None, [1, 1], [1, 1], [1, 1], 8, "none",
                                                       [None], "")
    y_out = torch.ops.mkldnn._convolution_pointwise(x, packed_inside, None, [1, 1], [1, 1], [1, 1], 8, "none",
                                                    [None], "")
    ref = torch.nn.functional.conv2d(x.double(), w.double(), None, 1, 1, 1, 8)
    for y in (y_in, y_out):
        assert (y.double() - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    del packed_inside, packed_outside


def _packed_weight(c_out):
    """A oneDNN-packed grouped 3x3 weight: oneDNN allocates it raw and frees it through whichever
    CPU allocator is installed when it goes."""
    w = torch.randn(c_out, 16, 3, 3, generator=GEN)
    return torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 4, [2, 64, 28, 28])


def test_stale_blocks_are_never_cached_under_their_old_size():
    """A block oneDNN took from the pool inside a scope and freed after it goes back to malloc
    behind the pool's back; when malloc hands that address to a smaller oneDNN buffer that is
    then freed inside a scope, the pool must not cache it under the old size (the first version
    did, and a later request of that size overran the chunk: heap corruption in the suite)."""
    # glibc serves blocks below its dynamic mmap threshold from the heap, where a freed address is
    # handed out again first; freeing a larger mmapped block raises the threshold above 4.7 MB.
    torch.empty(4 << 20).zero_()  # 16 MB, freed at once
    start = stats()["stale_entries"]
    for _ in range(500):
        with memory.pooled_cpu_memory():
            big = _packed_weight(2048)  # 4.7 MB
        del big  # freed by c10's default allocator
        small = _packed_weight(1024)  # half that, outside a scope: malloc may reuse the address
        with memory.pooled_cpu_memory():
            del small  # freed through the pool
        if stats()["stale_entries"] > start:
            break
    else:
        pytest.skip("malloc never reused a freed block's address here: the case cannot be built")
    assert stats()["undersized_cached"] == 0
    with memory.pooled_cpu_memory():  # requests of the old size get whole blocks
        blocks = [torch.randn(2048 * 16 * 9, generator=GEN) for _ in range(4)]
        copies = [b.clone() for b in blocks]
        for b in blocks:
            b.mul_(2)
    for b, c in zip(blocks, copies):
        assert torch.equal(b, c * 2)


def test_a_stale_entry_smaller_than_recorded_is_not_cached():
    """The same state built directly (malloc reuses addresses only sometimes, so the test above
    may not get there): a block recorded with 4 MB but 1 MB long, freed through the pool."""
    ext = native.EXT
    assert not ext.cpu_pool_simulate_stale_free(4 << 20, 1 << 20)
    assert stats()["undersized_cached"] == 0
    # One at least as long as recorded may be kept: its owner just freed it.
    assert ext.cpu_pool_simulate_stale_free(1 << 20, 1 << 20)
    with pytest.raises(RuntimeError, match="recorded must be"):
        ext.cpu_pool_simulate_stale_free(16, 16)


def test_profiler_still_records_pooled_allocations():
    """compare.py measures peak memory from the profiler's memory records."""
    with memory.pooled_cpu_memory():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            t = torch.empty(BIG)
            del t
    allocated = sum(e.cpu_memory_usage for e in prof.key_averages() if e.cpu_memory_usage > 0)
    assert allocated >= BIG * 4


def test_threads_share_the_pool_safely():
    errors = []

    def work(seed):
        gen = torch.Generator().manual_seed(seed)
        try:
            with memory.pooled_cpu_memory():
                for _ in range(30):
                    a = torch.randn(BIG // 2, generator=gen)
                    b = a * 2
                    if not torch.equal(b / 2, a):
                        errors.append("values changed under another thread")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    before = stats()["in_use_bytes"]
    t = torch.empty(BIG)
    assert stats()["in_use_bytes"] == before, "the pool stayed installed after the threads' scopes"
    del t


@pytest.mark.parametrize("name", ("regnetx_002", "regnety_002"))
def test_optimized_model_same_outputs_with_and_without_the_pool(name, monkeypatch):
    torch.manual_seed(0)
    model = regnet.create_model(name).eval()
    fast = rk.optimize(model)
    x = torch.randn(4, 3, 128, 128, generator=GEN)
    with torch.no_grad():
        ref = model(x)
        outs = [fast(x) for _ in range(SETTLE_CALLS + 1)]  # timed choices made, plans built
        misses = stats()["misses"]
        outs.append(fast(x))
        assert stats()["misses"] == misses, "a settled forward still missed the pool"
        monkeypatch.setattr(memory, "POOL_ENABLED", False)
        outs.append(fast(x))
    for out in outs:
        assert (out - ref).abs().max().item() <= 1e-4


def test_one_optimized_model_served_by_several_threads():
    """Server threads sharing one optimized model: pooled forwards overlap, plans and timed choices
    are made while other threads run; every output matches the original."""
    torch.manual_seed(0)
    model = regnet.create_model("regnety_002").eval()
    fast = rk.optimize(model)
    inputs = [torch.randn(2 + i % 2, 3, 96, 96, generator=GEN) for i in range(4)]
    with torch.no_grad():
        refs = [model(x) for x in inputs]
    errors = []

    def serve(i):
        try:
            with torch.no_grad():
                for _ in range(SETTLE_CALLS + 4):
                    err = (fast(inputs[i]) - refs[i]).abs().max().item()
                    if not err <= 1e-4:
                        errors.append(f"thread {i}: max abs error {err:.3g}")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert stats()["undersized_cached"] == 0


def test_derived_weights_made_in_a_forward_are_not_pooled():
    """Packed weights (ours, oneDNN's layouts) made during a pooled forward live as long as their
    weights: they bypass the pool, so a settled model holds nothing in use between forwards. Counted
    as in use they left the activations less room under the reserve bound, until every forward
    missed (test_optimized_model_same_outputs_with_and_without_the_pool failed about one run in
    two after other tests had made weights)."""
    model = regnet.create_model("regnetx_002").eval()  # 368x368 1x1 weights: 541 KB packed
    fast = rk.optimize(model)
    x = torch.randn(4, 3, 96, 96, generator=GEN)
    before = stats()["in_use_bytes"]
    with torch.no_grad():
        for _ in range(SETTLE_CALLS + 2):
            fast(x)
    # Not more in use than before (it may be less: earlier tests leave stale records of blocks that
    # c10's allocator freed behind the pool's back, dropped from the count when malloc hands their
    # address out again, which under ASan's allocator happened during this loop).
    assert stats()["in_use_bytes"] <= before
    with memory.pooled_cpu_memory() as pooled:
        if not pooled:
            pytest.skip("the pool could not be installed here")
        misses = stats()["misses"]
        with memory.unpooled():
            big = torch.empty(1 << 20)
        assert stats()["in_use_bytes"] <= before and stats()["misses"] == misses
        del big

// A CPU allocator that keeps large freed blocks for reuse, installed as the process's CPU
// allocator only while an optimized model runs its forward (regnet_kernels/memory.py).
//
// Why: glibc unmaps freed blocks above its mmap threshold (at most 32 MB) and trims the heap's
// free top, so the big activations of a batch-16 forward are page-faulted in again on every
// forward: regnety_004 at batch 16 took ~14000 minor faults and ~40 ms of system time per
// ~125 ms forward on an AMD EPYC VM, for optimize() and torch.compile alike (bench/NOTES.md,
// Step 9). ONNX Runtime and OpenVINO keep arenas for the same reason.
//
// Blocks of at least kMinBytes are kept per exact size (a forward asks for the same sizes each
// time); smaller ones are allocated and freed as c10's default allocator does. Reserved memory
// (in use + cached) stays under twice the largest in-use total seen: a miss that would pass that
// frees cached blocks of other sizes first (evict_locked).
// Hand-outs and returns are reported like c10's default allocator's (profiler memory records).
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/extension.h>

#include "pool_allocator.h"

#include <malloc.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace regnet_kernels {
namespace {

constexpr size_t kMinBytes = 256 * 1024;
constexpr size_t kReserveFactor = 2;

// Allocations made on this thread inside a CpuPoolBypass scope go straight to c10::alloc_cpu,
// untracked: derived weights (packed copies, oneDNN layouts) made during a forward live as long
// as their weights, and counted as in use they shrank the room the reserve bound leaves for the
// activations until every forward missed (NOTES.md, Step 11).
thread_local int bypass_depth = 0;

// Every block comes from c10::alloc_cpu and is reported like c10's default CPU allocator does, so
// the two free each other's blocks correctly: oneDNN (ideep) frees its buffers through whichever
// allocator is installed when it frees them (raw_deallocate), which may not be the one that gave
// them out. The pool is therefore only installed over c10's default allocator.
class PoolAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    void* data = nullptr;
    if (nbytes >= kMinBytes && bypass_depth == 0) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(nbytes);
      if (it != free_.end() && !it->second.empty()) {
        data = it->second.back();
        it->second.pop_back();
        cached_ -= nbytes;
      } else {
        ++misses_;
        evict_locked(nbytes);
        data = c10::alloc_cpu(nbytes);  // throws on failure, before any bookkeeping
      }
      auto stale = sizes_.find(data);  // handed out before and freed by c10's allocator since
      if (stale != sizes_.end()) {
        in_use_ -= stale->second;
      }
      sizes_[data] = nbytes;
      in_use_ += nbytes;
      peak_in_use_ = std::max(peak_in_use_, in_use_);
    } else {
      data = c10::alloc_cpu(nbytes);
    }
    c10::profiledCPUMemoryReporter().New(data, nbytes);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Install as the CPU allocator (nested scopes count). False when the installed allocator is
  // not c10's default (another library's or the user's): then nothing changes.
  bool enter() {
    std::lock_guard<std::mutex> lock(scope_mu_);
    if (depth_ == 0) {
      if (c10::GetCPUAllocator() != c10::GetDefaultCPUAllocator()) {
        return false;
      }
      c10::SetCPUAllocator(this, /*priority=*/0);
      if (c10::GetCPUAllocator() != this) {
        return false;
      }
    }
    ++depth_;
    return true;
  }

  void exit() {
    std::lock_guard<std::mutex> lock(scope_mu_);
    TORCH_CHECK(depth_ > 0, "cpu memory pool: exit without enter");
    if (--depth_ == 0) {
      c10::SetCPUAllocator(c10::GetDefaultCPUAllocator(), /*priority=*/0);
    }
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }

  std::map<std::string, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t undersized = 0;  // cached blocks whose chunk is smaller than their size: must stay 0
    for (const auto& entry : free_) {
      for (void* data : entry.second) {
        undersized += malloc_usable_size(data) < entry.first;
      }
    }
    return {{"undersized_cached", undersized},
            {"in_use_bytes", static_cast<int64_t>(in_use_)},
            {"cached_bytes", static_cast<int64_t>(cached_)},
            {"peak_in_use_bytes", static_cast<int64_t>(peak_in_use_)},
            {"min_block_bytes", static_cast<int64_t>(kMinBytes)},
            {"misses", static_cast<int64_t>(misses_)},
            {"evictions", static_cast<int64_t>(evictions_)},
            {"stale_entries", static_cast<int64_t>(stale_)}};
  }

  // Testing: the state keep() guards against, built directly (malloc reuses addresses only
  // sometimes): a malloc block of `actual` bytes recorded as a pool block of `recorded` bytes,
  // then freed through the pool. Returns whether the pool kept it in its cache.
  bool simulate_stale_free(size_t recorded, size_t actual) {
    void* data = c10::alloc_cpu(actual);
    {
      std::lock_guard<std::mutex> lock(mu_);
      sizes_[data] = recorded;
      in_use_ += recorded;
    }
    c10::profiledCPUMemoryReporter().New(data, actual);
    size_t cached_before = cached_bytes();
    release(data);
    return cached_bytes() > cached_before;
  }

  static PoolAllocator& get() {
    // Never destroyed: blocks it handed out may be freed during interpreter shutdown.
    static PoolAllocator* pool = new PoolAllocator();
    return *pool;
  }

 private:
  // The deleter of every block the pool hands out, and its raw_deleter: also called on blocks of
  // c10's default allocator (not in sizes_), which are freed as that allocator would.
  static void release(void* data) {
    if (data == nullptr) {  // zero-byte allocations
      return;
    }
    c10::profiledCPUMemoryReporter().Delete(data);
    if (!get().keep(data)) {
      c10::free_cpu(data);
    }
  }

  bool keep(void* data) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(data);
    if (it == sizes_.end()) {
      return false;
    }
    size_t nbytes = it->second;
    sizes_.erase(it);
    in_use_ -= nbytes;
    // A stale entry: the block was freed by c10's default allocator after a scope (oneDNN frees
    // its raw buffers through whichever allocator is installed then), and malloc has since given
    // the address to a smaller allocation, freed here now. Caching it under the old size would
    // hand out a block smaller than asked for (an ASan run of the test suite caught the heap
    // corruption). A chunk at least as large as recorded is safe to keep: its owner just freed it.
    if (malloc_usable_size(data) < nbytes) {
      ++stale_;
      return false;
    }
    free_[nbytes].push_back(data);
    cached_ += nbytes;
    return true;
  }

  // Free cached blocks (of other sizes: this one missed) until reserving `nbytes` more keeps the
  // total under kReserveFactor x the largest in-use total seen. Not 1x: the cache holds blocks
  // per size, and a forward's sizes peak at different times, so its steady state reserves more
  // than its in-use peak (regnety_004 batch 16: 88 MB for a 98 MB peak; at 1x the cache was
  // freed three times per forward, which is what it is there to avoid).
  void evict_locked(size_t nbytes) {
    size_t limit = kReserveFactor * std::max(peak_in_use_, in_use_ + nbytes);
    for (auto it = free_.begin(); it != free_.end() && in_use_ + cached_ + nbytes > limit;) {
      ++evictions_;
      for (void* data : it->second) {
        c10::free_cpu(data);
        cached_ -= it->first;
      }
      it = free_.erase(it);
    }
  }

  void release_cached_locked() {
    for (auto& entry : free_) {
      for (void* data : entry.second) {
        c10::free_cpu(data);
      }
    }
    free_.clear();
    cached_ = 0;
  }

  std::mutex mu_;        // the blocks and counters
  std::mutex scope_mu_;  // installing and restoring
  int depth_ = 0;
  std::unordered_map<size_t, std::vector<void*>> free_;  // size -> cached blocks
  std::unordered_map<void*, size_t> sizes_;               // large blocks handed out -> size
  size_t in_use_ = 0, cached_ = 0, peak_in_use_ = 0;
  int64_t misses_ = 0, evictions_ = 0;  // large requests not served from the cache; sizes evicted
  int64_t stale_ = 0;                    // stale entries met in keep() (see there)
};

}  // namespace

CpuPoolBypass::CpuPoolBypass() { ++bypass_depth; }
CpuPoolBypass::~CpuPoolBypass() { --bypass_depth; }
void cpu_pool_bypass_enter() { ++bypass_depth; }
void cpu_pool_bypass_exit() {
  TORCH_CHECK(bypass_depth > 0, "cpu memory pool: bypass exit without enter");
  --bypass_depth;
}

bool cpu_pool_enter() { return PoolAllocator::get().enter(); }
void cpu_pool_exit() { PoolAllocator::get().exit(); }
void cpu_pool_release_cached() { PoolAllocator::get().release_cached(); }
std::map<std::string, int64_t> cpu_pool_stats() { return PoolAllocator::get().stats(); }
bool cpu_pool_simulate_stale_free(int64_t recorded, int64_t actual) {
  TORCH_CHECK(recorded >= static_cast<int64_t>(kMinBytes) && actual > 0,
              "cpu_pool_simulate_stale_free: recorded must be >= ", kMinBytes, " and actual > 0");
  return PoolAllocator::get().simulate_stale_free(recorded, actual);
}

}  // namespace regnet_kernels

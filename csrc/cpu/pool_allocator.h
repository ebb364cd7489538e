// The CPU memory pool (pool_allocator.cpp): installed as the CPU allocator between enter and exit.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace regnet_kernels {

// Install the pool as the process's CPU allocator (scopes nest and may come from several
// threads; the last exit restores the allocator it replaced). False if another allocator of
// higher priority holds the slot: nothing is installed and exit must not be called.
bool cpu_pool_enter();
// While one is alive, this thread's allocations bypass the pool (long-lived derived weights made
// during a forward); cpu_pool_bypass_enter/exit are the same for Python (memory.unpooled()).
class CpuPoolBypass {
 public:
  CpuPoolBypass();
  ~CpuPoolBypass();
  CpuPoolBypass(const CpuPoolBypass&) = delete;
  CpuPoolBypass& operator=(const CpuPoolBypass&) = delete;
};
void cpu_pool_bypass_enter();
void cpu_pool_bypass_exit();
void cpu_pool_exit();
// Free the cached blocks (those in use stay theirs until their tensors go).
void cpu_pool_release_cached();
// in_use_bytes, cached_bytes, peak_in_use_bytes, min_block_bytes, misses (large requests not served
// from the cache), evictions (sizes whose cached blocks were freed to stay under the bound),
// stale_entries (blocks freed by c10's allocator after a scope whose address came back smaller),
// undersized_cached (cached blocks smaller than their size: a bug if ever non-zero).
std::map<std::string, int64_t> cpu_pool_stats();
// Testing: free through the pool a malloc block of `actual` bytes that the pool believes it
// handed out with `recorded` bytes; returns whether it was cached (it must not be if smaller).
bool cpu_pool_simulate_stale_free(int64_t recorded, int64_t actual);

}  // namespace regnet_kernels

// What ops_cpu.cpp exposes besides its op registrations.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace regnet_kernels {
namespace cpu {

// The packed-weight cache of our conv kernels (ops_cpu.cpp): entries, hits.
std::map<std::string, int64_t> packed_weight_stats();
void clear_packed_weights();

}  // namespace cpu
}  // namespace regnet_kernels

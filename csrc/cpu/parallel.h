// at::parallel_for for the CPU kernels, whether or not this file is compiled with -fopenmp.
//
// ATen's parallel_for is a header template: with the OpenMP backend (this torch) it expands to
// `#pragma omp parallel` in *our* object file, which only runs in parallel when we are compiled
// with -fopenmp (then _OPENMP is defined). setup.py does not pass -fopenmp today, so without
// it we call the same at::parallel_for compiled inside libtorch_cpu through its exported C
// entry point (torch_parallel_for, torch's stable ABI), which uses torch's OpenMP pool and
// at::get_num_threads(). The kernels never throw inside the body (arguments are checked first).
#pragma once
#include <ATen/Parallel.h>

#include <cstdint>

#if !defined(_OPENMP)
#include <torch/csrc/stable/c/shim.h>
#endif

namespace regnet_kernels {
namespace cpu {

template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
#if defined(_OPENMP)
  at::parallel_for(begin, end, grain, f);
#else
  if (begin >= end) return;
  auto trampoline = [](int64_t b, int64_t e, void* ctx) { (*static_cast<const F*>(ctx))(b, e); };
  const auto err = torch_parallel_for(begin, end, grain, trampoline, const_cast<void*>(static_cast<const void*>(&f)));
  TORCH_CHECK(err == AOTI_TORCH_SUCCESS, "regnet_kernels: torch_parallel_for failed");
#endif
}

}  // namespace cpu
}  // namespace regnet_kernels

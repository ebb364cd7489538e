// The CPU kernels thread with at::parallel_for. It is a header template that, with torch's
// OpenMP backend, expands to `#pragma omp parallel` in *our* objects: setup.py therefore
// compiles with -fopenmp, and this check stops a build where the loops would silently run on
// one thread. Threads come from torch's pool and follow torch.set_num_threads.
#pragma once
#include <ATen/Parallel.h>

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "regnet_kernels: compile the CPU kernels with -fopenmp, or at::parallel_for runs serially"
#endif

namespace regnet_kernels {
namespace cpu {
using at::parallel_for;
}  // namespace cpu
}  // namespace regnet_kernels

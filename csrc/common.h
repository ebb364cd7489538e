// Helpers shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>

#include <atomic>
#include <limits>

namespace regnet_kernels {

// When set (by regnet_kernels.testing.poison_outputs), outputs are filled with NaN before a
// kernel runs, so an element the kernel forgets to write fails the tests.
inline std::atomic<bool>& poison_outputs_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

// An output tensor in x's layout: channels-last when x's channel stride is 1.
inline at::Tensor new_output(const at::Tensor& x, at::IntArrayRef shape, at::ScalarType dtype) {
  const bool channels_last = shape.size() == 4 && x.dim() == 4 && x.size(1) > 1 && x.stride(1) == 1;
  auto out = at::empty(shape, x.options().dtype(dtype),
                       channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (poison_outputs_flag().load()) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

inline at::Tensor new_output(const at::Tensor& x, at::IntArrayRef shape) {
  return new_output(x, shape, x.scalar_type());
}

}  // namespace regnet_kernels

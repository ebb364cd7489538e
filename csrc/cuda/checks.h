// Argument checks the CUDA ops' host wrappers run before any launch: a bad argument must be a
// clear error naming it, never an out-of-bounds access on the device.
#pragma once

#include <ATen/ATen.h>

#include "cuda/launch.h"

namespace regnet_kernels {
namespace cuda {

inline void check_cuda_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.is_cuda(), op, " (CUDA): ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == x.device(), op, " (CUDA): ", name, " must be on ", x.device(), " (the device of x), got ",
              t.device());
}

// Channel stride 1 is the kernels' native (coalesced) layout; a single channel has no stride to speak of.
inline void check_channels_last(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.size(1) == 1 || t.stride(1) == 1, op, " (CUDA): ", name,
              " must be channels-last (stride of C == 1), got strides ", t.strides(),
              "; convert with .to(memory_format=torch.channels_last)");
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, " (CUDA): ", name, " must have dtype ", x.scalar_type(),
              " (the dtype of x), got ", t.scalar_type());
}

inline StorageType storage_type(const char* op, at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return StorageType::kFloat32;
    case at::kHalf: return StorageType::kFloat16;
    case at::kBFloat16: return StorageType::kBFloat16;
    default: TORCH_CHECK(false, op, " (CUDA): dtype must be float32, float16 or bfloat16, got ", dtype);
  }
}

inline Nhwc nhwc_strides(const at::Tensor& t) { return Nhwc{t.stride(0), t.stride(2), t.stride(3), t.stride(1)}; }

}  // namespace cuda
}  // namespace regnet_kernels

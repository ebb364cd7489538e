// Device helpers for the kernels: fp32 conversion of the storage dtypes and the dtype dispatch.
// No ATen here (see launch.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/launch.h"

namespace regnet_kernels {
namespace cuda {

// Storage dtype -> fp32 and back (round to nearest even). torch compiles with
// __CUDA_NO_HALF_CONVERSIONS__, so the intrinsics are spelled out.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Read-only loads go through the non-coherent (texture) path: inputs never alias outputs here.
template <typename T>
__device__ __forceinline__ float load_float(const T* p) { return to_float(__ldg(p)); }

// Calls fn(T{}) with T the CUDA type of the storage dtype (float, __half, __nv_bfloat16).
template <typename Fn>
void dispatch_storage_type(StorageType dtype, Fn&& fn) {
  switch (dtype) {
    case StorageType::kFloat32: fn(float{}); break;
    case StorageType::kFloat16: fn(__half{}); break;
    case StorageType::kBFloat16: fn(__nv_bfloat16{}); break;
  }
}

}  // namespace cuda
}  // namespace regnet_kernels

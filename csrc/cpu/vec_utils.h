// Small helpers shared by the CPU kernels: fp32 loads/stores of float, bfloat16 and half.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace regnet_kernels {
namespace cpu {

using at::vec::Vectorized;
constexpr int64_t kFloatLanes = Vectorized<float>::size();

// Vectorized<float>::size() elements of p, widened to fp32.
template <typename T>
inline Vectorized<float> load_as_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Vectorized<float>::loadu(p);
  } else {
    Vectorized<float> v;
    at::vec::load_to_float<T>(p, v);
    return v;
  }
}

// Store Vectorized<float>::size() fp32 lanes to p, rounding to T.
template <typename T>
inline void store_from_float(T* p, const Vectorized<float>& v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
    at::vec::convert<float, T>(reinterpret_cast<const float*>(&v), p, kFloatLanes);
  }
}

}  // namespace cpu
}  // namespace regnet_kernels

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

// Store Vectorized<float>::size() fp32 lanes to p, rounding to T. Not at::vec::convert(src, dst,
// n): its vector loop takes Vectorized<T>::size() (twice the fp32 lanes) elements a step, so for
// one fp32 vector it ran its scalar tail, lane by lane (bf16 1x1 convs at 2x fp32's time).
// Rounding both halves of a T vector from v and storing the first half is ATen's own idiom for
// one vector (vec256_convert.h).
template <typename T>
inline void store_from_float(T* p, const Vectorized<float>& v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, kFloatLanes);
  }
}

// The first `count` (< lanes) elements of p widened to fp32, the other lanes zero. Never reads
// past p + count (tails of channel runs end at a tensor's last element).
template <typename T>
inline Vectorized<float> load_as_float(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    return Vectorized<float>::loadu(p, count);
  } else {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    // A masked load (AVX-512) or a bounded copy into a zeroed vector (AVX2), then the low half
    // widened: channel tails of bf16/fp16 rows (C = 104, 120, 440, ...) went lane by lane.
    return std::get<0>(at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, static_cast<int16_t>(count))));
#else
    // (The portable Vectorized<T>::loadu(p, count) leaves the other lanes uninitialised.)
    __at_align__ T buf[kFloatLanes];
    for (int64_t i = 0; i < kFloatLanes; ++i) buf[i] = i < count ? p[i] : T(0.f);
    return load_as_float(buf);
#endif
  }
}

// Store the first `count` (< lanes) lanes of v to p, rounding to T; writes nothing past p + count.
template <typename T>
inline void store_from_float(T* p, const Vectorized<float>& v, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, count);
  } else {  // (Vectorized<T>::store with a count: a masked store, or a bounded memcpy)
    at::vec::convert_from_float<T>(v, v).store(p, static_cast<int>(count));
  }
}

}  // namespace cpu
}  // namespace regnet_kernels

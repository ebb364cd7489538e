// Index arithmetic and epilogue math shared by the CUDA kernels (csrc/cuda/) and their CPU twin
// (csrc/shared/cpu_twin.cpp, exercised by tests/test_cuda_backend.py without a GPU).
// Header-only, no ATen and no CUDA headers, so a host compiler builds it on its own.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define REGNET_HD __host__ __device__ __forceinline__
#else
#define REGNET_HD inline
#endif

namespace regnet_kernels {
namespace shared {

// Output size of a conv along one axis (floor division, as PyTorch).
REGNET_HD int conv_out_size(int size, int kernel, int stride, int padding) {
  return (size + 2 * padding - kernel) / stride + 1;
}

// An output pixel of a conv, from its linear index over (n, oh, ow) with ow fastest: the
// kernels walk pixels linearly so a tile never depends on the image shape.
struct Pixel {
  int n, h, w;
};

REGNET_HD Pixel decode_pixel(int64_t p, int out_h, int out_w) {
  const int w = static_cast<int>(p % out_w);
  const int64_t nh = p / out_w;
  return Pixel{static_cast<int>(nh / out_h), static_cast<int>(nh % out_h), w};
}

// Top-left input coordinate under the 3x3 window of output (oh, ow); may be -padding.
REGNET_HD int window_origin(int out_coord, int stride, int padding) { return out_coord * stride - padding; }

// Bit kh * 3 + kw is set when tap (kh, kw) of the 3x3 window at input origin (ih0, iw0) lies
// inside the H x W image. Padding is zeros, so a tap outside contributes nothing: the kernels
// skip it rather than read out of bounds.
REGNET_HD unsigned tap_mask_3x3(int ih0, int iw0, int height, int width) {
  unsigned mask = 0;
  for (int kh = 0; kh < 3; ++kh) {
    for (int kw = 0; kw < 3; ++kw) {
      const int ih = ih0 + kh, iw = iw0 + kw;
      if (ih >= 0 && ih < height && iw >= 0 && iw < width) mask |= 1u << (kh * 3 + kw);
    }
  }
  return mask;
}

// First input channel read by output channel `co` of a grouped conv.
REGNET_HD int group_first_input_channel(int co, int out_per_group, int in_per_group) {
  return (co / out_per_group) * in_per_group;
}

// Offset of element (n, h, w, c) for a tensor with the given element strides.
REGNET_HD int64_t offset_nhwc(int n, int h, int w, int c, int64_t sn, int64_t sh, int64_t sw, int64_t sc) {
  return n * sn + h * sh + w * sw + c * sc;
}

// ReLU that keeps NaN, like torch.relu, so a poisoned input is not hidden by the activation.
REGNET_HD float relu_if(float v, bool relu) { return relu && v <= 0.f ? 0.f : v; }

// conv epilogue: folded-BN bias, the block's shortcut, then ReLU, all on the fp32 accumulator
// so the result is rounded to the output dtype once.
REGNET_HD float conv_epilogue(float acc, float bias, float residual, bool relu) {
  return relu_if(acc + bias + residual, relu);
}

REGNET_HD float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

// se_gate's per-element epilogue: x * gate + residual, then ReLU.
REGNET_HD float se_gate_epilogue(float x, float gate, float residual, bool relu) {
  return relu_if(x * gate + residual, relu);
}

}  // namespace shared
}  // namespace regnet_kernels

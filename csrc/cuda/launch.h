// The plain C++ interface between the host wrappers (ops_cuda.cpp: argument checks, allocation,
// registration; compiled by the host compiler against ATen) and the kernels (*.cu: compiled by
// nvcc against this header and csrc/shared/ only). Keeping ATen out of the .cu files makes
// nvcc's per-arch device passes cheap, which matters because every build of the extension
// compiles them for sm_80 and sm_90.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace regnet_kernels {
namespace cuda {

// The storage dtypes of activations; arithmetic is fp32 for all of them.
enum class StorageType { kFloat32, kFloat16, kBFloat16 };

// Element strides of a 4-D tensor in (n, h, w, c) order.
struct Nhwc {
  int64_t sn, sh, sw, sc;
};

// grouped_conv3x3.cu: 3x3 conv, padding 1, + bias [+ residual] [+ ReLU] [+ per-(n, c) sums].
struct ConvParams {
  const void* x;
  const void* weight;    // [C_out, C_in/groups, 3, 3], contiguous
  const void* bias;      // [C_out] or null
  const void* residual;  // [N, C_out, OH, OW] with channel stride 1, or null
  void* y;
  float* sums;           // [N, C_out] zero-initialised (K2), or null
  int n, c_in, h, w, c_out, out_h, out_w, in_per_group, out_per_group, stride;
  int64_t pixels;        // n * out_h * out_w
  Nhwc xs;               // xs.sc == 1 (checked by the caller)
  Nhwc ys;
  Nhwc rs;               // rs.sc == 1 (checked by the caller)
  bool relu;
};
// Output pixels per block: the host checks pixels / kConvPixelsPerBlock fits a grid dimension.
constexpr int kConvPixelsPerBlock = 32;
void launch_grouped_conv3x3(const ConvParams& p, StorageType dtype, cudaStream_t stream);

// se_gate.cu.
// The excite kernel keeps mean[C] and hidden[C_se] in 48 KiB of shared memory.
constexpr int kSeExciteMaxFloats = 48 * 1024 / 4;
// sums[n, c] += sum over h, w of x (sums zero-initialised). Grid: needs n < 65536.
void launch_channel_sums(const void* x, float* sums, int n, int c, int h, int w, Nhwc xs, StorageType dtype,
                         cudaStream_t stream);
// gate[n, :] = sigmoid(w2 relu(w1 (sums[n, :] * inv_hw) + b1) + b2); all fp32, dense.
void launch_se_excite(const float* sums, float inv_hw, const float* w1, const float* b1, const float* w2,
                      const float* b2, float* gate, int n, int c, int c_se, cudaStream_t stream);
// y = act(x * gate[n, c] + residual); residual may be null. Grid: needs n * h < 65536.
void launch_se_apply(const void* x, const float* gate, const void* residual, void* y, int n, int c, int h, int w,
                     Nhwc xs, Nhwc rs, Nhwc ys, bool relu, StorageType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace regnet_kernels

// Squeeze-excitation gate on channels-last (NHWC) x:
//   y = act(x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2) + residual)
// in up to three launches:
//   1. channel sums of x in fp32 (skipped when the caller passes `sums`, e.g. K2's output);
//   2. the excite MLP on [N, C] in fp32, one block per image (tiny: the weights are read once
//      per image, from L2 after the first);
//   3. one elementwise pass: x * gate + residual, ReLU, rounded once to x's dtype.
// Bytes: with sums given, one read of x, one of the residual and one write of y, the minimum
// for this op; without, one more read of x. Eager PyTorch makes a full pass per mul, add and relu.
#include <algorithm>

#include "cuda/cuda_utils.cuh"
#include "cuda/launch.h"
#include "shared/kernel_math.h"

namespace regnet_kernels {
namespace cuda {
namespace {

namespace sh = regnet_kernels::shared;

// 1. sums[n, c] += x[n, c, hw] over a slice of the pixels. Lanes take consecutive channels (one
// coalesced run per pixel), warps take pixels; the warps' partials meet in shared memory and
// one atomicAdd per (block, c) lands in the zeroed sums.
constexpr int kSumWarps = 8;
constexpr int kSumPixelsPerBlock = 256;

template <typename T>
__global__ void __launch_bounds__(32 * kSumWarps)
    channel_sums_nhwc_kernel(const T* __restrict__ x, float* __restrict__ sums, int c, int h, int w, Nhwc xs) {
  __shared__ float partial[kSumWarps][32];
  const int ch = blockIdx.x * 32 + threadIdx.x;
  const int n = blockIdx.y;
  const int hw_end = min(h * w, static_cast<int>(blockIdx.z + 1) * kSumPixelsPerBlock);
  float acc = 0.f;
  if (ch < c) {
    for (int hw = blockIdx.z * kSumPixelsPerBlock + threadIdx.y; hw < hw_end; hw += kSumWarps) {
      acc += load_float(x + sh::offset_nhwc(n, hw / w, hw % w, ch, xs.sn, xs.sh, xs.sw, xs.sc));
    }
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kSumWarps; ++i) total += partial[i][threadIdx.x];
    atomicAdd(sums + static_cast<int64_t>(n) * c + ch, total);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// 2. gate[n, :] = sigmoid(W2 relu(W1 (sums[n, :] / hw) + b1) + b2), all fp32. One warp per
// output row, lanes striding over the row: each weight row is one coalesced read.
constexpr int kExciteThreads = 256;

__global__ void __launch_bounds__(kExciteThreads)
    se_excite_kernel(const float* __restrict__ sums, float inv_hw, const float* __restrict__ w1,
                     const float* __restrict__ b1, const float* __restrict__ w2, const float* __restrict__ b2,
                     float* __restrict__ gate, int c, int c_se) {
  extern __shared__ float smem[];
  float* mean = smem;         // [c]
  float* hidden = smem + c;   // [c_se]
  const int n = blockIdx.x;
  for (int i = threadIdx.x; i < c; i += blockDim.x) mean[i] = sums[static_cast<int64_t>(n) * c + i] * inv_hw;
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int j = warp; j < c_se; j += warps) {
    float dot = 0.f;
    for (int i = lane; i < c; i += 32) dot = fmaf(w1[static_cast<int64_t>(j) * c + i], mean[i], dot);
    dot = warp_sum(dot);
    if (lane == 0) hidden[j] = sh::relu_if(dot + b1[j], true);
  }
  __syncthreads();
  for (int j = warp; j < c; j += warps) {
    float dot = 0.f;
    for (int i = lane; i < c_se; i += 32) dot = fmaf(w2[static_cast<int64_t>(j) * c_se + i], hidden[i], dot);
    dot = warp_sum(dot);
    if (lane == 0) gate[static_cast<int64_t>(n) * c + j] = sh::sigmoid(dot + b2[j]);
  }
}

// 3. y = act(x * gate[n, c] + residual). Each block row is one image row (n, h) of W*C elements,
// contiguous in channels-last, so the only division is the split of the row index into (w, c).
constexpr int kApplyThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kApplyThreads)
    se_apply_nhwc_kernel(const T* __restrict__ x, const float* __restrict__ gate, const T* __restrict__ residual,
                         T* __restrict__ y, int c, int h, int w, Nhwc xs, Nhwc rs, Nhwc ys, bool relu) {
  const int row = blockIdx.y;  // n * h + ih
  const int n = row / h, ih = row % h;
  const int row_len = w * c;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < row_len; i += gridDim.x * blockDim.x) {
    const int iw = i / c, ch = i - iw * c;
    const float xv = load_float(x + sh::offset_nhwc(n, ih, iw, ch, xs.sn, xs.sh, xs.sw, xs.sc));
    const float res = residual ? load_float(residual + sh::offset_nhwc(n, ih, iw, ch, rs.sn, rs.sh, rs.sw, rs.sc)) : 0.f;
    const float g = __ldg(gate + static_cast<int64_t>(n) * c + ch);
    y[sh::offset_nhwc(n, ih, iw, ch, ys.sn, ys.sh, ys.sw, ys.sc)] = from_float<T>(sh::se_gate_epilogue(xv, g, res, relu));
  }
}

}  // namespace

void launch_channel_sums(const void* x, float* sums, int n, int c, int h, int w, Nhwc xs, StorageType dtype,
                         cudaStream_t stream) {
  const dim3 grid((c + 31) / 32, n, (h * w + kSumPixelsPerBlock - 1) / kSumPixelsPerBlock);
  dispatch_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    channel_sums_nhwc_kernel<T><<<grid, dim3(32, kSumWarps), 0, stream>>>(static_cast<const T*>(x), sums, c, h, w, xs);
  });
}

void launch_se_excite(const float* sums, float inv_hw, const float* w1, const float* b1, const float* w2,
                      const float* b2, float* gate, int n, int c, int c_se, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(c + c_se) * sizeof(float);
  se_excite_kernel<<<n, kExciteThreads, smem, stream>>>(sums, inv_hw, w1, b1, w2, b2, gate, c, c_se);
}

void launch_se_apply(const void* x, const float* gate, const void* residual, void* y, int n, int c, int h, int w,
                     Nhwc xs, Nhwc rs, Nhwc ys, bool relu, StorageType dtype, cudaStream_t stream) {
  // At most 64 blocks along a row, each striding over it; one block row per image row.
  const int64_t row_len = static_cast<int64_t>(w) * c;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((row_len + kApplyThreads - 1) / kApplyThreads, 64)),
                  static_cast<unsigned>(n * h));
  dispatch_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    se_apply_nhwc_kernel<T><<<grid, kApplyThreads, 0, stream>>>(static_cast<const T*>(x), gate,
                                                                 static_cast<const T*>(residual), static_cast<T*>(y),
                                                                 c, h, w, xs, rs, ys, relu);
  });
}

}  // namespace cuda
}  // namespace regnet_kernels

// Grouped 3x3 conv (BN folded) + bias [+ residual] [+ ReLU] on channels-last (NHWC) tensors, and
// K2: the same conv that also accumulates the fp32 per-(n, c) sums of its output for SE.
// Serves conv_bn_act / conv_bn_act_sums for 3x3 kernels, padding 1, stride 1 or 2, any groups
// (RegNet group widths 8..232); the host wrapper (ops_cuda.cpp) refuses
// other kernel sizes with a TORCH_CHECK.
//
// Bytes (why this shape). One output element needs 9 * C_in/groups inputs and as many weights.
// In NHWC a pixel's channels are contiguous, so a block takes 32 consecutive output channels
// (one per lane: the y store of a warp is one contiguous 64-128 byte run) and 32 consecutive
// output pixels (4 per thread, 8 warps). The x values of a pixel/tap are shared by every lane of
// the same group, so a warp load is a broadcast of 1-4 cache lines, and neighbouring blocks
// re-read the 3x3 halo from L1/L2, not DRAM: DRAM traffic stays near one read of x, one
// read of the weights per L2 residency, one write of y (+ one read of the residual), i.e. for
// fp16 2 * N*H*W*C_in / s^2-ish + 2 * N*OH*OW*C_out (+ the same for the residual) bytes.
// Weights are staged in shared memory, CI_CHUNK input channels at a time, as fp32 (each is
// reused for 4 pixels by every thread of the block); the epilogue runs on the fp32 accumulator
// and rounds once. The residual is read in the epilogue instead of a separate add pass, and K2's
// sums come from the values being stored, so SE never re-reads y.
// Arithmetic runs on the FP32 CUDA cores; a tensor-core (mma) variant is the next step for the
// widest groups, where 2 * 9 * g flops per output outrun the memory system.
#include "cuda/cuda_utils.cuh"
#include "cuda/launch.h"
#include "shared/kernel_math.h"

namespace regnet_kernels {
namespace cuda {
namespace {

namespace sh = regnet_kernels::shared;

constexpr int kCoTile = 32;         // output channels per block: one per lane
constexpr int kWarps = 8;           // blockDim.y
constexpr int kPixPerThread = 4;    // consecutive output pixels per thread
constexpr int kPixTile = kWarps * kPixPerThread;
static_assert(kPixTile == kConvPixelsPerBlock, "launch.h promises this tile");
constexpr int kCiChunk = 8;         // input channels of weights staged per shared-memory round
constexpr int kTaps = 9;
// +1 float per row: rows are read with lane = row, so an odd pitch keeps the 32 lanes on 32 banks.
constexpr int kWeightPitch = kCiChunk * kTaps + 1;

template <typename T, bool kWithSums>
__global__ void __launch_bounds__(kCoTile* kWarps)
    grouped_conv3x3_nhwc_kernel(const ConvParams p) {
  __shared__ float weight_tile[kCoTile * kWeightPitch];

  const int lane = threadIdx.x;
  const int co = blockIdx.y * kCoTile + lane;
  const bool co_valid = co < p.c_out;
  // Lanes past C_out compute on a valid channel and store nothing, so every address stays in bounds.
  const int co_safe = co_valid ? co : p.c_out - 1;
  const int ci_base = sh::group_first_input_channel(co_safe, p.out_per_group, p.in_per_group);
  const T* x = static_cast<const T*>(p.x);
  const T* weight = static_cast<const T*>(p.weight);

  // Per pixel: offset of its window origin in x (may point before the image; only masked-in taps
  // are added to it) and the mask of taps inside the image.
  const int64_t first_pixel = static_cast<int64_t>(blockIdx.x) * kPixTile + threadIdx.y * kPixPerThread;
  int64_t origin[kPixPerThread];
  unsigned mask[kPixPerThread];
#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i) {
    const int64_t pix = first_pixel + i;
    origin[i] = 0;
    mask[i] = 0;
    if (pix < p.pixels) {
      const sh::Pixel px = sh::decode_pixel(pix, p.out_h, p.out_w);
      const int ih0 = sh::window_origin(px.h, p.stride, 1), iw0 = sh::window_origin(px.w, p.stride, 1);
      origin[i] = px.n * p.xs.sn + static_cast<int64_t>(ih0) * p.xs.sh + static_cast<int64_t>(iw0) * p.xs.sw + ci_base;
      mask[i] = sh::tap_mask_3x3(ih0, iw0, p.h, p.w);
    }
  }

  float acc[kPixPerThread];
#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i) acc[i] = 0.f;

  const int tid = threadIdx.y * kCoTile + lane;
  const int64_t weight_row = static_cast<int64_t>(p.in_per_group) * kTaps;
  for (int ci0 = 0; ci0 < p.in_per_group; ci0 += kCiChunk) {
    const int chunk = min(kCiChunk, p.in_per_group - ci0);
    const int chunk_taps = chunk * kTaps;
    __syncthreads();  // the previous chunk's weights are no longer read
    // Row r = output channel blockIdx.y * 32 + r; each row's chunk is one contiguous run in memory.
    for (int e = tid; e < kCoTile * chunk_taps; e += kCoTile * kWarps) {
      const int r = e / chunk_taps, k = e - r * chunk_taps;
      const int row_co = blockIdx.y * kCoTile + r;
      weight_tile[r * kWeightPitch + k] =
          row_co < p.c_out ? load_float(weight + row_co * weight_row + ci0 * kTaps + k) : 0.f;
    }
    __syncthreads();
    const float* w_lane = weight_tile + lane * kWeightPitch;
    for (int ci = 0; ci < chunk; ++ci) {
#pragma unroll
      for (int kh = 0; kh < 3; ++kh) {
#pragma unroll
        for (int kw = 0; kw < 3; ++kw) {
          const float wv = w_lane[ci * kTaps + kh * 3 + kw];
          const int64_t tap = kh * p.xs.sh + kw * p.xs.sw + ci0 + ci;
#pragma unroll
          for (int i = 0; i < kPixPerThread; ++i) {
            if (mask[i] & (1u << (kh * 3 + kw))) acc[i] = fmaf(wv, load_float(x + (origin[i] + tap)), acc[i]);
          }
        }
      }
    }
  }

  if (!co_valid) return;
  const float bias = p.bias ? load_float(static_cast<const T*>(p.bias) + co) : 0.f;
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
  float run_sum = 0.f;  // K2: sum of this thread's stored values of image run_n
  int run_n = -1;
#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i) {
    const int64_t pix = first_pixel + i;
    if (pix >= p.pixels) break;
    const sh::Pixel px = sh::decode_pixel(pix, p.out_h, p.out_w);
    const float res =
        residual ? load_float(residual + sh::offset_nhwc(px.n, px.h, px.w, co, p.rs.sn, p.rs.sh, p.rs.sw, 1)) : 0.f;
    const T out = from_float<T>(sh::conv_epilogue(acc[i], bias, res, p.relu));
    y[sh::offset_nhwc(px.n, px.h, px.w, co, p.ys.sn, p.ys.sh, p.ys.sw, p.ys.sc)] = out;
    if constexpr (kWithSums) {
      // Sum what is stored (rounded), as the eager reference sums y; flush when the image changes.
      if (px.n != run_n) {
        if (run_n >= 0) atomicAdd(p.sums + static_cast<int64_t>(run_n) * p.c_out + co, run_sum);
        run_n = px.n;
        run_sum = 0.f;
      }
      run_sum += to_float(out);
    }
  }
  if constexpr (kWithSums) {
    if (run_n >= 0) atomicAdd(p.sums + static_cast<int64_t>(run_n) * p.c_out + co, run_sum);
  }
}

}  // namespace

void launch_grouped_conv3x3(const ConvParams& p, StorageType dtype, cudaStream_t stream) {
  const dim3 block(kCoTile, kWarps);
  const int64_t pixel_blocks = (p.pixels + kPixTile - 1) / kPixTile;
  const dim3 grid(static_cast<unsigned>(pixel_blocks), static_cast<unsigned>((p.c_out + kCoTile - 1) / kCoTile));
  dispatch_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.sums) {
      grouped_conv3x3_nhwc_kernel<T, true><<<grid, block, 0, stream>>>(p);
    } else {
      grouped_conv3x3_nhwc_kernel<T, false><<<grid, block, 0, stream>>>(p);
    }
  });
}

}  // namespace cuda
}  // namespace regnet_kernels

// Per-(n, c) sums over H, W of a channels-last activation, accumulated in fp32.
// The SE squeeze on the CPU: one pass over x, C contiguous per pixel, vectorised over C.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "common.h"
#include "cpu/parallel.h"
#include "cpu/vec_utils.h"

namespace regnet_kernels {
namespace {

using cpu::kFloatLanes;
using cpu::load_as_float;
using at::vec::Vectorized;

template <typename scalar_t>
void channel_sums_kernel(const at::Tensor& x, at::Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sN = x.stride(0), sH = x.stride(2), sW = x.stride(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  float* op = out.mutable_data_ptr<float>();
  cpu::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* acc = op + n * C;
      std::fill(acc, acc + C, 0.f);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t w = 0; w < W; ++w) {
          const scalar_t* px = xp + n * sN + h * sH + w * sW;
          int64_t c = 0;
          for (; c + kFloatLanes <= C; c += kFloatLanes) {
            Vectorized<float> v = load_as_float(px + c);
            (Vectorized<float>::loadu(acc + c) + v).store(acc + c);
          }
          for (; c < C; ++c) acc[c] += static_cast<float>(px[c]);
        }
      }
    }
  });
}

at::Tensor channel_sums_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "channel_sums: x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(x.stride(1) == 1 || x.size(1) == 1,
              "channel_sums: x must be channels-last (stride of C == 1), got strides ", x.strides());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "channel_sums: x dtype must be float32, bfloat16 or float16, got ", x.scalar_type());
  auto out = new_output(x, {x.size(0), x.size(1)}, at::kFloat);
  switch (x.scalar_type()) {
    case at::kFloat: channel_sums_kernel<float>(x, out); break;
    case at::kBFloat16: channel_sums_kernel<at::BFloat16>(x, out); break;
    default: channel_sums_kernel<at::Half>(x, out); break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(regnet_kernels, CPU, m) { m.impl("channel_sums", &channel_sums_cpu); }

}  // namespace regnet_kernels

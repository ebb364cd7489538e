// Host side of the CUDA se_gate (kernels in se_gate.cu): checks every argument, brings the tiny
// MLP's weights to dense fp32 (a no-op for fp32 weights), allocates y in x's layout, launches the
// sums (unless given), excite and apply kernels on the current stream, and registers the op.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <utility>

#include "common.h"
#include "cuda/checks.h"
#include "cuda/launch.h"

namespace regnet_kernels {
namespace cuda {
namespace {

// An FC weight given as [out, in] or as a 1x1 conv weight [out, in, 1, 1], as a dense fp32 matrix.
at::Tensor fp32_matrix(const char* name, const at::Tensor& t, int64_t rows, int64_t cols) {
  TORCH_CHECK((t.dim() == 2 || (t.dim() == 4 && t.size(2) == 1 && t.size(3) == 1)) && t.size(0) == rows &&
                  (cols < 0 || t.size(1) == cols),
              "se_gate (CUDA): ", name, " must be [", rows, ", ", cols, "] (or [", rows, ", ", cols, ", 1, 1]), got ",
              t.sizes());
  return t.reshape({t.size(0), t.size(1)}).to(at::kFloat).contiguous();
}

at::Tensor fp32_vector(const char* name, const at::Tensor& t, int64_t len) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == len, "se_gate (CUDA): ", name, " must be [", len, "], got ", t.sizes());
  return t.to(at::kFloat).contiguous();
}

at::Tensor se_gate_cuda(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                        const at::Tensor& b2, const c10::optional<at::Tensor>& residual, bool relu,
                        const c10::optional<at::Tensor>& sums) {
  const char* op = "se_gate";
  TORCH_CHECK(x.is_cuda(), op, " (CUDA): x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 4, op, " (CUDA): x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  check_channels_last(op, "x", x);
  const StorageType dtype = storage_type(op, x.scalar_type());
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"w1", &w1}, {"b1", &b1}, {"w2", &w2}, {"b2", &b2}}) {
    check_cuda_tensor(op, name, *t, x);
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, " (CUDA): ", name, " must be floating point, got ",
                t->scalar_type());
  }
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(n > 0 && c > 0 && h > 0 && w > 0, op, " (CUDA): x must be non-empty, got ", x.sizes());
  TORCH_CHECK(n * h < 65536 && w * c < (int64_t{1} << 31) && h * w < (int64_t{1} << 31), op,
              " (CUDA): x ", x.sizes(), " is too large for this kernel's grid (N*H must be < 65536)");
  const int64_t c_se = w1.dim() >= 1 ? w1.size(0) : -1;
  const at::Tensor w1f = fp32_matrix("w1", w1, c_se, c);
  const at::Tensor w2f = fp32_matrix("w2", w2, c, c_se);
  const at::Tensor b1f = fp32_vector("b1", b1, c_se);
  const at::Tensor b2f = fp32_vector("b2", b2, c);
  TORCH_CHECK(c + c_se <= kSeExciteMaxFloats, op, " (CUDA): C + C_se = ", c + c_se, " exceeds the excite kernel's ",
              kSeExciteMaxFloats, " floats of shared memory");
  if (residual) {
    check_cuda_tensor(op, "residual", *residual, x);
    check_same_dtype(op, "residual", *residual, x);
    TORCH_CHECK(residual->sizes() == x.sizes(), op, " (CUDA): residual must be ", x.sizes(), ", got ",
                residual->sizes());
    check_channels_last(op, "residual", *residual);
  }

  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  at::Tensor sums_f;
  if (sums) {
    check_cuda_tensor(op, "sums", *sums, x);
    TORCH_CHECK(sums->sizes() == at::IntArrayRef({n, c}), op, " (CUDA): sums must be [", n, ", ", c, "], got ",
                sums->sizes());
    TORCH_CHECK(at::isFloatingType(sums->scalar_type()), op, " (CUDA): sums must be floating point (fp32)");
    sums_f = sums->to(at::kFloat).contiguous();
  } else {
    sums_f = at::zeros({n, c}, x.options().dtype(at::kFloat));
    launch_channel_sums(x.const_data_ptr(), sums_f.mutable_data_ptr<float>(), static_cast<int>(n), static_cast<int>(c),
                        static_cast<int>(h), static_cast<int>(w), nhwc_strides(x), dtype, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  at::Tensor gate = at::empty({n, c}, x.options().dtype(at::kFloat));
  launch_se_excite(sums_f.const_data_ptr<float>(), 1.f / static_cast<float>(h * w), w1f.const_data_ptr<float>(),
                   b1f.const_data_ptr<float>(), w2f.const_data_ptr<float>(), b2f.const_data_ptr<float>(),
                   gate.mutable_data_ptr<float>(), static_cast<int>(n), static_cast<int>(c), static_cast<int>(c_se),
                   stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor y = new_output(x, x.sizes());
  launch_se_apply(x.const_data_ptr(), gate.const_data_ptr<float>(), residual ? residual->const_data_ptr() : nullptr,
                  y.mutable_data_ptr(), static_cast<int>(n), static_cast<int>(c), static_cast<int>(h),
                  static_cast<int>(w), nhwc_strides(x), residual ? nhwc_strides(*residual) : Nhwc{0, 0, 0, 0},
                  nhwc_strides(y), relu, dtype, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(regnet_kernels, CUDA, m) { m.impl("se_gate", &cuda::se_gate_cuda); }

}  // namespace regnet_kernels

// Host side of the CUDA ops (kernels in grouped_conv3x3.cu and se_gate.cu): checks every
// argument (a bad one is a clear error, never an out-of-bounds access on the device), allocates
// outputs in x's layout, launches on the current stream of x's device, and registers the ops for
// the CUDA dispatch key. One file, because parsing ATen's headers is most of its compile time.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "common.h"
#include "cuda/checks.h"
#include "cuda/launch.h"

namespace regnet_kernels {
namespace cuda {
namespace {

// conv_bn_act / conv_bn_act_sums: grouped 3x3 conv + bias [+ residual] [+ ReLU] [+ K2 sums].

// Checks every argument, allocates y (x's layout) and, for K2, the zeroed sums; launches.
std::tuple<at::Tensor, at::Tensor> conv_impl(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                             const c10::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                             int64_t groups, const c10::optional<at::Tensor>& residual, bool relu,
                                             bool with_sums) {
  TORCH_CHECK(x.is_cuda(), op, " (CUDA): x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 4, op, " (CUDA): x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  storage_type(op, x.scalar_type());
  check_cuda_tensor(op, "weight", weight, x);
  check_same_dtype(op, "weight", weight, x);
  TORCH_CHECK(weight.dim() == 4, op, " (CUDA): weight must be 4-D [C_out, C_in/groups, k, k], got ", weight.sizes());
  TORCH_CHECK(weight.size(2) == 3 && weight.size(3) == 3, op,
              " (CUDA): only 3x3 kernels are implemented (the grouped convs), got ", weight.size(2), "x",
              weight.size(3), "; 1x1 convs run on the other backends");
  TORCH_CHECK(padding == 1, op, " (CUDA): padding must be 1 for a 3x3 kernel, got ", padding);
  TORCH_CHECK(stride == 1 || stride == 2, op, " (CUDA): stride must be 1 or 2, got ", stride);
  const int64_t n = x.size(0), c_in = x.size(1), h = x.size(2), w = x.size(3), c_out = weight.size(0);
  TORCH_CHECK(groups >= 1 && c_in % groups == 0 && c_out % groups == 0, op, " (CUDA): groups=", groups,
              " must divide C_in=", c_in, " and C_out=", c_out);
  TORCH_CHECK(weight.size(1) == c_in / groups, op, " (CUDA): weight must be [C_out, C_in/groups=", c_in / groups,
              ", 3, 3], got ", weight.sizes());
  TORCH_CHECK(weight.is_contiguous(), op, " (CUDA): weight must be contiguous");
  check_channels_last(op, "x", x);
  const int64_t out_h = (h + 2 * padding - 3) / stride + 1, out_w = (w + 2 * padding - 3) / stride + 1;
  TORCH_CHECK(n > 0 && out_h > 0 && out_w > 0 && c_out > 0, op, " (CUDA): empty input or output, x ", x.sizes());
  const int64_t pixels = n * out_h * out_w;
  TORCH_CHECK(pixels / kConvPixelsPerBlock < (int64_t{1} << 31) && c_out * c_in < (int64_t{1} << 31) && h < (1 << 30) &&
                  w < (1 << 30),
              op, " (CUDA): tensor too large for 32-bit channel/block indexing");
  if (bias) {
    check_cuda_tensor(op, "bias", *bias, x);
    check_same_dtype(op, "bias", *bias, x);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c_out && bias->stride(0) == 1, op,
                " (CUDA): bias must be a dense [", c_out, "] vector, got ", bias->sizes());
  }
  if (residual) {
    check_cuda_tensor(op, "residual", *residual, x);
    check_same_dtype(op, "residual", *residual, x);
    TORCH_CHECK(residual->sizes() == at::IntArrayRef({n, c_out, out_h, out_w}), op, " (CUDA): residual must be [",
                n, ", ", c_out, ", ", out_h, ", ", out_w, "], got ", residual->sizes());
    check_channels_last(op, "residual", *residual);
  }

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = new_output(x, {n, c_out, out_h, out_w});
  at::Tensor sums = with_sums ? at::zeros({n, c_out}, x.options().dtype(at::kFloat)) : at::Tensor();

  ConvParams p{};
  p.x = x.const_data_ptr();
  p.weight = weight.const_data_ptr();
  p.bias = bias ? bias->const_data_ptr() : nullptr;
  p.residual = residual ? residual->const_data_ptr() : nullptr;
  p.y = y.mutable_data_ptr();
  p.sums = with_sums ? sums.mutable_data_ptr<float>() : nullptr;
  p.n = static_cast<int>(n);
  p.c_in = static_cast<int>(c_in);
  p.h = static_cast<int>(h);
  p.w = static_cast<int>(w);
  p.c_out = static_cast<int>(c_out);
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.in_per_group = static_cast<int>(c_in / groups);
  p.out_per_group = static_cast<int>(c_out / groups);
  p.stride = static_cast<int>(stride);
  p.pixels = pixels;
  p.xs = nhwc_strides(x);
  p.ys = nhwc_strides(y);
  if (residual) p.rs = nhwc_strides(*residual);
  p.relu = relu;

  launch_grouped_conv3x3(p, storage_type(op, x.scalar_type()), c10::cuda::getCurrentCUDAStream(x.device().index()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, sums};
}

at::Tensor conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            int64_t stride, int64_t padding, int64_t groups, const c10::optional<at::Tensor>& residual,
                            bool relu) {
  return std::get<0>(conv_impl("conv_bn_act", x, weight, bias, stride, padding, groups, residual, relu, false));
}

std::tuple<at::Tensor, at::Tensor> conv_bn_act_sums_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                         const c10::optional<at::Tensor>& bias, int64_t stride,
                                                         int64_t padding, int64_t groups, bool relu) {
  return conv_impl("conv_bn_act_sums", x, weight, bias, stride, padding, groups, c10::nullopt, relu, true);
}

// se_gate: sums (unless given), the fp32 excite MLP on [N, C], then x * gate + residual + ReLU.
// The MLP's weights are brought to dense fp32 first (a no-op for fp32 weights).

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

TORCH_LIBRARY_IMPL(regnet_kernels, CUDA, m) {
  m.impl("conv_bn_act", &cuda::conv_bn_act_cuda);
  m.impl("conv_bn_act_sums", &cuda::conv_bn_act_sums_cuda);
  m.impl("se_gate", &cuda::se_gate_cuda);
}

}  // namespace regnet_kernels

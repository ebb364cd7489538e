// Host side of the CUDA conv_bn_act / conv_bn_act_sums (kernels in grouped_conv3x3.cu): checks
// every argument, allocates y in x's layout (and the zeroed K2 sums), launches on the current
// stream of x's device, and registers the ops for the CUDA dispatch key.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common.h"
#include "cuda/checks.h"
#include "cuda/launch.h"

namespace regnet_kernels {
namespace cuda {
namespace {

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

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(regnet_kernels, CUDA, m) {
  m.impl("conv_bn_act", &cuda::conv_bn_act_cuda);
  m.impl("conv_bn_act_sums", &cuda::conv_bn_act_sums_cuda);
}

}  // namespace regnet_kernels

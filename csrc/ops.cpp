// Schemas of the native ops (namespace regnet_kernels) and the module's build report.
// CPU kernels register their implementations in csrc/cpu/, CUDA kernels in csrc/cuda/.
#include <torch/extension.h>
#include <torch/library.h>

#include <map>
#include <string>

#include "call_list.h"
#include "call_signature.h"
#include "common.h"
#include "cpu/ops_cpu.h"
#include "cpu/pool_allocator.h"

TORCH_LIBRARY(regnet_kernels, m) {
  // Per-(n, c) sums over H, W in fp32 (the SE squeeze), for a channels-last x.
  m.def("channel_sums(Tensor x) -> Tensor");
  // conv (BN folded into weight, bias) [+ residual] [+ ReLU]; see regnet_kernels/ops/conv_bn_act.py.
  m.def("conv_bn_act(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, int groups, "
        "Tensor? residual, bool relu) -> Tensor");
  // K2: conv + bias [+ ReLU] that also returns the fp32 per-(n, c) sums of its output.
  m.def("conv_bn_act_sums(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, int groups, "
        "bool relu) -> (Tensor, Tensor)");
  // K1 fused into K2: conv(relu(conv1x1(x, w1) + b1), w2) + b2 [+ ReLU], K1's output never stored;
  // see regnet_kernels/ops/conv1x1_conv_bn_act.py.
  m.def("conv1x1_conv_bn_act(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, int stride, int padding, "
        "int groups, bool relu) -> Tensor");
  m.def("conv1x1_conv_bn_act_sums(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, int stride, "
        "int padding, int groups, bool relu) -> (Tensor, Tensor)");
  // A whole X block: relu(conv1x1(K2(K1(x)), w3) + b3 + shortcut), the shortcut `residual` or the
  // projection conv1x1(x, wp, stride) + bp (exactly one given); see regnet_kernels/ops/x_block.py.
  m.def("x_block(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, int stride, int padding, int groups, "
        "Tensor w3, Tensor? b3, Tensor? residual, Tensor? wp=None, Tensor? bp=None) -> Tensor");
  // Squeeze-excitation gate x * sigmoid(W2 relu(W1 mean(x) + b1) + b2) [+ residual] [+ ReLU];
  // `sums` (fp32 [N, C]) replaces the mean's pass over x when given.
  m.def("se_gate(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor? residual, bool relu, "
        "Tensor? sums) -> Tensor");
  // K3: gate = sigmoid(W2 relu(W1 (sums / hw) + b1) + b2), fp32 [N, C], from fp32 per-(n, c) sums.
  m.def("se_excite(Tensor sums, int hw, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor");
  // K4: 1x1 conv of (x * gate[n, c]) + bias [+ residual] [+ ReLU].
  m.def("gated_conv1x1(Tensor x, Tensor gate, Tensor weight, Tensor? bias, Tensor? residual, bool relu) -> Tensor");
}

namespace {
std::map<std::string, std::string> build_info() {
  std::map<std::string, std::string> info;
  info["torch_version"] = TORCH_VERSION;
#if REGNET_WITH_CUDA
  info["cuda"] = "yes";
#else
  info["cuda"] = "no";
#endif
#ifdef __VERSION__
  info["compiler"] = __VERSION__;
#endif
  info["cxx_standard"] = std::to_string(__cplusplus);
  return info;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "regnet_kernels native ops (CPU and, when built with CUDA, GPU)";
  m.def("build_info", &build_info, "How this extension was built");
  m.def("set_poison_outputs", [](bool on) { regnet_kernels::poison_outputs_flag().store(on); },
        "Fill native op outputs with NaN before kernels run (testing)");
  m.def("cpu_pool_enter", &regnet_kernels::cpu_pool_enter,
        "Install the CPU memory pool as the CPU allocator (regnet_kernels/memory.py)");
  m.def("cpu_pool_exit", &regnet_kernels::cpu_pool_exit, "Leave a cpu_pool_enter scope");
  m.def("cpu_pool_bypass_enter", &regnet_kernels::cpu_pool_bypass_enter,
        "This thread's allocations bypass the pool until cpu_pool_bypass_exit");
  m.def("cpu_pool_bypass_exit", &regnet_kernels::cpu_pool_bypass_exit, "Leave a cpu_pool_bypass_enter scope");
  m.def("cpu_pool_release_cached", &regnet_kernels::cpu_pool_release_cached, "Free the pool's cached blocks");
  m.def("cpu_pool_stats", &regnet_kernels::cpu_pool_stats, "The pool's byte counters");
  m.def("cpu_packed_weight_stats", &regnet_kernels::cpu::packed_weight_stats,
        "Our conv kernels' packed-weight cache: entries, hits");
  m.def("cpu_clear_packed_weights", &regnet_kernels::cpu::clear_packed_weights,
        "Drop our conv kernels' packed weights");
  m.def("cpu_pool_simulate_stale_free", &regnet_kernels::cpu_pool_simulate_stale_free,
        "Testing: free a block the pool has recorded with the wrong size (see pool_allocator.h)");
  regnet_kernels::bind_call_list(m);
  regnet_kernels::bind_call_signature(m);
}

// The interface between the ISA-independent op wrappers (ops_cpu.cpp: checks, allocation,
// weight packing, run-time ISA choice) and the kernel bodies (kernels_impl.h), which are
// compiled once per ISA (kernels_avx512.cpp, kernels_avx2.cpp, kernels_default.cpp).
//
// Only plain pointers, sizes and strides cross this boundary: the per-ISA translation units
// must not include ATen's vec headers before they choose CPU_CAPABILITY, so they see no
// at::Tensor here.
#pragma once
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace regnet_kernels {
namespace cpu {

// One conv (k x k, k in {1, 3}, 'same' padding, stride 1 or 2, grouped) on channels-last
// activations, with the epilogue: + bias (folded BN), + residual, ReLU, per-(n, c) sums.
// The input is optionally scaled by gate[n, c_in] as it is loaded (K4's SE prologue), or
// computed row by row by another conv (`pre`: K1 fused into K2).
struct ConvProblem {
  c10::ScalarType dtype;  // of x, residual and y (float, bfloat16 or half); math is fp32

  // When set, x is not read: its rows are pre's output (a 1x1, stride 1, unpadded, with ReLU;
  // n, c_in, h, w are pre's output sizes), computed in fp32 as the rows are needed and never
  // rounded or stored: K1's output stays in the thread's row buffers.
  const struct ConvProblem* pre;
  // When set, this conv's output is not stored: each output row, after bias and ReLU, is the fp32
  // input row of post (a 1x1, stride 1, unpadded: K4), whose residual, ReLU and y are post's own.
  // Needs rows whole (all channels), so rows are the only work items.
  const struct ConvProblem* post;
  // On post (K4) only, when set: post's residual is proj's output (a 1x1 of the block's input,
  // stride 1 or 2, unpadded, bias, no ReLU: the projection shortcut), computed in fp32 for each
  // output row from x's row oh * stride as K4 needs it, never stored (x_block with a projection).
  const struct ConvProblem* proj;
  const void* x;
  int64_t n, c_in, h, w;
  int64_t x_sn, x_sh, x_sw;  // element strides; the channel stride is 1

  const float* gate;  // [n][c_in] fp32, row stride gate_sn, or nullptr
  int64_t gate_sn;

  int64_t k, stride, pad, groups;
  int64_t cin_g, cout_g;  // channels per group
  // Packed weights, [group][co_block][kh][kw][ci][nv * lanes] fp32, zero beyond cout_g: the
  // inner loop is a broadcast of one input value times nv contiguous weight vectors.
  const float* w_packed;
  const float* b_packed;  // [group][co_block][nv * lanes] fp32 (zeros without bias)
  int64_t nv, co_blocks;  // vectors per output-channel block, blocks per group
  // Paired groups (3x3 grouped convs whose group width is an odd number of half vectors, at most
  // 4 vectors a pair: 8 or 24 with AVX-512): the kernel's "groups" are pairs of groups; vector k
  // of a pair holds the k-th half-vector chunk of both groups' output channels, lanes interleaved
  // (lane 2i + j: channel k * lanes/2 + i of the pair's group j; kernels_impl.h). w_packed is then
  // [pair][kh][kw][ci][nv * lanes] and b_packed [pair][nv * lanes] in that lane order, with
  // nv = 2 cout_g / lanes and co_blocks = 1; an odd group count leaves the last pair's second
  // group zero.
  bool pair_groups;

  const void* residual;  // like y, or nullptr
  int64_t r_sn, r_sh, r_sw;
  bool relu;

  void* y;
  int64_t c_out, h_out, w_out;
  int64_t y_sn, y_sh, y_sw;

  float* sums;      // [n][c_out] fp32 sums of y over (h, w), or nullptr
  float* row_sums;  // scratch [n * h_out][c_out] when sums is set (one row per work item)
};

// The conv's groups per kernel group: 2 with paired groups (ConvProblem::pair_groups), else 1;
// and the kernel groups (the weights' packed groups) of a conv with `groups` groups.
inline int64_t groups_per_kernel_group(bool pair_groups) { return pair_groups ? 2 : 1; }
inline int64_t kernel_groups(int64_t groups, bool pair_groups) {
  const int64_t per = groups_per_kernel_group(pair_groups);
  return (groups + per - 1) / per;
}

// Squeeze-excitation: y = act(x * sigmoid(W2 relu(W1 mean(x) + b1) + b2) + residual).
struct SeProblem {
  c10::ScalarType dtype;
  const void* x;
  int64_t n, c, h, w;
  int64_t x_sn, x_sh, x_sw;
  const float* sums;  // [n][c] fp32 contiguous, or nullptr (then computed from x)
  const float* w1;    // [c_se][c] fp32 contiguous
  const float* b1;    // [c_se]
  const float* w2;    // [c][c_se], or [c_se][c] when w2_by_input (see se_gate_cpu)
  bool w2_by_input;
  const float* b2;    // [c]
  int64_t c_se;
  const void* residual;
  int64_t r_sn, r_sh, r_sw;
  bool relu;
  void* y;
  int64_t y_sn, y_sh, y_sw;
  float* gate;      // scratch [n][c]
  float* row_sums;  // scratch [n * h][c] (used when sums is nullptr)
};

// Per-(n, c) sums over H, W of a channels-last activation, in fp32 (the SE squeeze).
struct SumsProblem {
  c10::ScalarType dtype;
  const void* x;
  int64_t n, c, h, w;
  int64_t x_sn, x_sh, x_sw;
  float* out;       // [n][c]
  float* row_sums;  // scratch [n * h][c]
};

// The entry points one ISA provides.
struct IsaKernels {
  const char* name;
  int64_t lanes;                     // fp32 lanes of a vector (the packing unit)
  int64_t (*max_pixels)(int64_t nv);  // register block: output pixels per micro-kernel call
  void (*conv)(const ConvProblem&);
  void (*se_gate)(const SeProblem&);
  void (*se_excite)(const SeProblem&);  // K3 alone: sums -> gate (x, residual, y unused)
  void (*channel_sums)(const SumsProblem&);
};

// Defined in kernels_<isa>.cpp; each returns its table. AVX-512/AVX2 variants exist only on
// x86-64 builds (REGNET_CPU_X86).
const IsaKernels& kernels_default();
#if defined(__x86_64__) || defined(_M_X64)
#define REGNET_CPU_X86 1
const IsaKernels& kernels_avx2();
const IsaKernels& kernels_avx512();
#endif

// The table for this machine (ATen's choice, so ATEN_CPU_CAPABILITY=avx2 etc. overrides it).
const IsaKernels& selected_kernels();

}  // namespace cpu
}  // namespace regnet_kernels

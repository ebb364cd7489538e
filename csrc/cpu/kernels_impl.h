// Kernel bodies, compiled once per ISA. Include only from kernels_<isa>.cpp, after defining
// CPU_CAPABILITY (and CPU_CAPABILITY_<ISA>, plus `#pragma GCC target`): ATen's vec headers put
// Vectorized<float> in the inline namespace at::vec::CPU_CAPABILITY, and so does this file
// (regnet_kernels::cpu::CPU_CAPABILITY), so every ISA's copy has its own symbols.
//
// Conv design (see csrc/cpu/README.md): one work item is one output row (n, oh), or a chunk of
// its output channels where rows alone would leave a thread idle. Its input rows are converted
// to fp32 (times the SE gate for K4) into a zero-padded thread-local buffer, so the inner loop
// has no border tests, no dtype conversion and works on strided views (an unpadded fp32 1x1
// without a gate reads x in place instead). The
// micro-kernel keeps P output pixels x NV vectors of output channels in registers; each step
// broadcasts one input value and does NV fused multiply-adds with a packed weight row. The
// epilogue (residual, ReLU, store, channel sums) runs on the tile while it is in L1. Fused
// neighbours (ConvProblem::pre, ::post): a 1x1 before the conv computes its input rows where they
// are packed; a 1x1 after it takes each output row from a row buffer; neither is stored.
#pragma once

#ifdef VECTOR_WIDTH
#error "kernels_impl.h must be the first include of ATen's vec headers in its translation unit"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/kernel_args.h"
#include "cpu/parallel.h"
#include "cpu/vec_utils.h"

namespace regnet_kernels {
namespace cpu {
inline namespace CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
// Accumulator registers the micro-kernel may use: 32 vector registers with AVX-512, 16
// otherwise, minus the weight vectors and the broadcast input.
constexpr int64_t kAccRegs = kLanes == 16 ? 28 : 12;
constexpr int kMaxNv = 4;
constexpr int kMaxPixels = 14;

constexpr int64_t max_pixels_for(int64_t nv) {
  return std::min<int64_t>(kMaxPixels, std::max<int64_t>(1, (kAccRegs - nv) / nv));
}

// What the micro-kernel needs for one tile: P output pixels x NV vectors of one group's
// output channels.
struct Tile {
  const float* const* rows;  // k fp32 input rows: padded copies, or x's own rows (direct_input)
  int64_t pixel_stride;      // elements between consecutive pixels of a row
  int64_t in_col0;           // first input column (padded coordinates) of the tile's first pixel
  int64_t stride;
  int64_t k;
  int64_t cin_g;
  int64_t ci0;             // first input channel of the group
  const float* w;          // packed [kh][kw][ci][NV * lanes] of this (group, block)
  const float* b;          // [NV * lanes]
  float* out;              // [P][NV * lanes]
};

// Paired groups (ConvProblem::pair_groups): where a group's width is an odd number of half
// vectors (8 or 24 channels with AVX-512's 16 lanes), its last vector would be half empty. Two
// groups then share vectors: vector k of a pair holds the k-th half-vector chunk of both groups'
// output channels, interleaved (lane 2i + j: channel k * lanes/2 + i of group j of the pair), so
// every FMA does useful work on every lane. Packed input rows hold each pair's input channels
// interleaved the same way (x[group 0][ci], x[group 1][ci], ...), so one 8-byte broadcast feeds
// the lanes of both groups. from_pairs turns a vector of that layout into the two chunks in
// their natural order (group 0's, then group 1's).
constexpr int64_t kHalf = kLanes / 2;

constexpr int64_t lane_mask(int64_t from, int64_t step) {
  int64_t mask = 0;
  for (int64_t lane = from; lane < kLanes; lane += step) mask |= int64_t{1} << lane;
  return mask;
}

inline Vec from_pairs(const Vec& v) {
  const auto parts = at::vec::deinterleave2(v, v);  // (even lanes twice, odd lanes twice)
  return Vec::blend<lane_mask(kHalf, 1)>(parts.first, parts.second);
}

// The micro-kernels' broadcast of input channel ci at x: one value, or with paired groups the
// pair's two values (x[2 ci], x[2 ci + 1]) repeated across the vector.
template <bool PAIRS>
inline Vec broadcast_input(const float* x, int64_t ci) {
  if constexpr (PAIRS) {
    double both;
    std::memcpy(&both, x + 2 * ci, sizeof(both));
    return at::vec::cast<float>(at::vec::Vectorized<double>(both));
  } else {
    return Vec(x[ci]);
  }
}

// Every tile has input channels (cin_g >= 1, checked when the problem is made). Told so, GCC
// keeps the accumulators in registers from the bias to the store; otherwise it keeps a copy on
// the stack for a loop that might not run, stored and reloaded around every tile.
inline void assume_channels(const Tile& t) {
  if (t.cin_g < 1) __builtin_unreachable();
}

// K (the kernel size) is a template parameter so the tap loops unroll: with runtime tap loops
// GCC kept the accumulators on the stack, storing and reloading all of them for every tap.
template <int P, int NV, int K, bool PAIRS = false>
void micro_kernel(const Tile& t) {
  constexpr int64_t VW = NV * kLanes;
  assume_channels(t);
  Vec acc[P][NV];
  for (int v = 0; v < NV; ++v) {
    const Vec bias = Vec::loadu(t.b + v * kLanes);
    for (int p = 0; p < P; ++p) acc[p][v] = bias;
  }
  const int64_t pix_step = t.stride * t.pixel_stride;  // between consecutive output pixels in a row
  const float* w = t.w;
#pragma GCC unroll 3
  for (int kh = 0; kh < K; ++kh) {
#pragma GCC unroll 3
    for (int kw = 0; kw < K; ++kw) {
      const float* x = t.rows[kh] + (t.in_col0 + kw) * t.pixel_stride + t.ci0;
      for (int64_t ci = 0; ci < t.cin_g; ++ci, w += VW) {
        Vec wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = Vec::loadu(w + v * kLanes);
        for (int p = 0; p < P; ++p) {
          const Vec xb = broadcast_input<PAIRS>(x + p * pix_step, ci);
          for (int v = 0; v < NV; ++v) acc[p][v] = at::vec::fmadd(wv[v], xb, acc[p][v]);
        }
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v].store(t.out + p * VW + v * kLanes);
}

// The 3x3 micro-kernel for one vector of output channels (group widths 8, paired, and 16: most
// grouped convs of the zoo), stride S. The generic kernel broadcasts each input value once per
// tap it meets: per input channel and kernel row 3 x (1 weight + P broadcasts) loads for 3P FMAs,
// which bound it on the Intel Xeon of Step 6. Here each of the row's S (P - 1) + 3 input values is
// broadcast once and feeds the output pixels it contributes to (up to three at stride 1, one or
// two at stride 2): 3 weights + P + 2 (stride 1) or 2P + 1 (stride 2) broadcasts for the same 3P
// FMAs. (On the AMD EPYC, FMA-bound, stride 2 measured the same as the generic kernel: NOTES,
// Step 13; one kernel serves both strides and the paired groups.) The tap conditions are
// compile-time once the loops unroll.
template <int P, int S, bool PAIRS>
void micro_kernel_3x3_nv1(const Tile& t) {
  assume_channels(t);
  Vec acc[P];
  const Vec bias = Vec::loadu(t.b);
  for (int p = 0; p < P; ++p) acc[p] = bias;
  const int64_t ps = t.pixel_stride, tap_stride = t.cin_g * kLanes;  // packed [kh][kw][ci][lanes]
  for (int kh = 0; kh < 3; ++kh) {
    const float* x = t.rows[kh] + t.in_col0 * ps + t.ci0;
    const float* w = t.w + kh * 3 * tap_stride;
    for (int64_t ci = 0; ci < t.cin_g; ++ci, w += kLanes) {
      const Vec wk[3] = {Vec::loadu(w), Vec::loadu(w + tap_stride), Vec::loadu(w + 2 * tap_stride)};
#pragma GCC unroll 32
      for (int j = 0; j < S * (P - 1) + 3; ++j) {
        const Vec xb = broadcast_input<PAIRS>(x + j * ps, ci);
#pragma GCC unroll 3
        for (int kw = 0; kw < 3; ++kw) {
          const int d = j - kw;  // input column j is tap kw of output pixel d / S
          if (d >= 0 && d % S == 0 && d / S < P) acc[d / S] = at::vec::fmadd(wk[kw], xb, acc[d / S]);
        }
      }
    }
  }
  for (int p = 0; p < P; ++p) acc[p].store(t.out + p * kLanes);
}

// The 3x3 micro-kernel for three input channels and groups 1 (RGB stems). Packed rows hold 3
// floats a pixel, so a kernel row's 3 taps x 3 channels of an output pixel are 9 consecutive
// floats, in the packed weights' [kw][ci] order, and pixel p's start is p * S * 3 floats after
// the first's: every broadcast is at a compile-time offset from one pointer per kernel row. The
// generic kernel runs the same FMAs as 9 taps of a 3-iteration channel loop, recomputing P pixel
// pointers per tap from a runtime stride (GCC spilled six of them at P = 13: NOTES, Step 14).
constexpr int64_t kRgbChannels = 3;

template <int P, int NV, int S>
void micro_kernel_rgb(const Tile& t) {
  constexpr int64_t VW = NV * kLanes, C = kRgbChannels;
  Vec acc[P][NV];
  for (int v = 0; v < NV; ++v) {
    const Vec bias = Vec::loadu(t.b + v * kLanes);
    for (int p = 0; p < P; ++p) acc[p][v] = bias;
  }
  const float* w = t.w;
  for (int kh = 0; kh < 3; ++kh) {
    const float* x = t.rows[kh] + t.in_col0 * C;
    // Not unrolled: unrolled 9 times, GCC hoisted broadcasts and spilled accumulators.
#pragma GCC unroll 1
    for (int j = 0; j < 3 * C; ++j, ++x, w += VW) {  // j = kw * C + ci
      Vec wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = Vec::loadu(w + v * kLanes);
      for (int p = 0; p < P; ++p) {
        const Vec xb(x[p * S * C]);
        for (int v = 0; v < NV; ++v) acc[p][v] = at::vec::fmadd(wv[v], xb, acc[p][v]);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v].store(t.out + p * VW + v * kLanes);
}

using MicroFn = void (*)(const Tile&);

template <int P, int NV, int K, bool PAIRS>
constexpr MicroFn micro_entry() {
  if constexpr (P <= max_pixels_for(NV) && !(PAIRS && NV % 2 == 0)) {
    return &micro_kernel<P, NV, K, PAIRS>;
  } else {
    // Would not fit in registers (see max_pixels_for), or paired with an even vector count (a
    // pair has 2 x width / lanes vectors, an odd number): never chosen.
    return nullptr;
  }
}

template <int NV, int K, bool PAIRS, int... Ps>
constexpr std::array<MicroFn, kMaxPixels + 1> micro_table(std::integer_sequence<int, Ps...>) {
  return {nullptr, micro_entry<Ps + 1, NV, K, PAIRS>()...};
}

using MicroTable = std::array<std::array<MicroFn, kMaxPixels + 1>, kMaxNv + 1>;

template <int K, bool PAIRS = false>
constexpr MicroTable micro_tables() {
  constexpr auto pixels = std::make_integer_sequence<int, kMaxPixels>{};
  return {std::array<MicroFn, kMaxPixels + 1>{}, micro_table<1, K, PAIRS>(pixels), micro_table<2, K, PAIRS>(pixels),
          micro_table<3, K, PAIRS>(pixels), micro_table<4, K, PAIRS>(pixels)};
}

// kMicro1x1[nv][p]: the micro-kernel for p pixels x nv vectors (nullptr where it would not fit
// in registers). kMicro3x3s1/s2 likewise, with micro_kernel_3x3_nv1 for single vectors; the
// Pairs tables for paired groups.
inline constexpr MicroTable kMicro1x1 = micro_tables<1>();

template <int S, bool PAIRS, int... Ps>
constexpr std::array<MicroFn, kMaxPixels + 1> micro_3x3_nv1_table(std::integer_sequence<int, Ps...>) {
  return {nullptr, &micro_kernel_3x3_nv1<Ps + 1, S, PAIRS>...};
}

template <int S, bool PAIRS>
constexpr MicroTable micro_3x3_tables() {
  MicroTable table = micro_tables<3, PAIRS>();
  table[1] = micro_3x3_nv1_table<S, PAIRS>(std::make_integer_sequence<int, kMaxPixels>{});
  return table;
}

template <int NV, int S, int... Ps>
constexpr std::array<MicroFn, kMaxPixels + 1> micro_rgb_table(std::integer_sequence<int, Ps...>) {
  return {nullptr, (Ps + 1 <= max_pixels_for(NV) ? &micro_kernel_rgb<Ps + 1, NV, S> : nullptr)...};
}

template <int S>
constexpr MicroTable micro_rgb_tables() {
  constexpr auto pixels = std::make_integer_sequence<int, kMaxPixels>{};
  return {std::array<MicroFn, kMaxPixels + 1>{}, micro_rgb_table<1, S>(pixels), micro_rgb_table<2, S>(pixels),
          micro_rgb_table<3, S>(pixels), micro_rgb_table<4, S>(pixels)};
}

inline constexpr MicroTable kMicro3x3s1 = micro_3x3_tables<1, false>();
inline constexpr MicroTable kMicro3x3s2 = micro_3x3_tables<2, false>();
inline constexpr MicroTable kMicro3x3s1Pairs = micro_3x3_tables<1, true>();
inline constexpr MicroTable kMicro3x3s2Pairs = micro_3x3_tables<2, true>();
inline constexpr MicroTable kMicroRgbS1 = micro_rgb_tables<1>();
inline constexpr MicroTable kMicroRgbS2 = micro_rgb_tables<2>();

// The conv's micro-kernel table.
inline const MicroTable& micro_tables_for(const ConvProblem& p) {
  if (p.k == 1) return kMicro1x1;
  if (p.pair_groups) return p.stride == 1 ? kMicro3x3s1Pairs : kMicro3x3s2Pairs;
  if (p.groups == 1 && p.c_in == kRgbChannels && !p.pre) return p.stride == 1 ? kMicroRgbS1 : kMicroRgbS2;
  return p.stride == 1 ? kMicro3x3s1 : kMicro3x3s2;
}

// Floats per pixel of a packed input row: the channels, or with paired groups whole pairs (an
// odd group count leaves the last pair's second group zero).
inline int64_t packed_pixel_stride(const ConvProblem& p) {
  const int64_t span = p.cin_g * groups_per_kernel_group(p.pair_groups);
  return p.pair_groups ? (p.c_in + span - 1) / span * span : p.c_in;
}

// w pixels of one row (pixel stride src_ps, channel stride 1), widened to fp32 and gated, into dst
// (pixel stride packed_pixel_stride(p)). Paired groups: pairs [pair_lo, pair_hi) only, each
// half-vector chunk of the two groups' channels interleaved into one vector.
template <typename T>
void pack_pixels(const ConvProblem& p, const T* src, int64_t src_ps, const float* gate, int64_t w, float* dst,
                 int64_t pair_lo, int64_t pair_hi) {
  const int64_t ps = packed_pixel_stride(p);
  if (!p.pair_groups && !gate && src_ps == p.c_in) {
    // Dense pixels in, dense out (ps is c_in): the row is one run of w * c_in values. Pixel by
    // pixel, few channels (the stem's 3) cost a masked load and store a pixel.
    const int64_t count = w * p.c_in;
    int64_t i = 0;
    for (; i + kLanes <= count; i += kLanes) load_as_float(src + i).store(dst + i);
    if (i < count) load_as_float(src + i, count - i).store(dst + i, count - i);
    return;
  }
  for (int64_t iw = 0; iw < w; ++iw) {
    const T* in = src + iw * src_ps;
    float* out = dst + iw * ps;
    if (p.pair_groups) {
      for (int64_t pair = pair_lo; pair < pair_hi; ++pair) {
        for (int64_t c = 0; c < p.cin_g; c += kHalf) {
          const int64_t c0 = 2 * pair * p.cin_g + c, c1 = c0 + p.cin_g;
          const bool second = c1 < p.c_in;
          Vec a = load_as_float(in + c0, kHalf), b = second ? load_as_float(in + c1, kHalf) : Vec(0.f);
          if (gate) {
            a = a * Vec::loadu(gate + c0, kHalf);
            if (second) b = b * Vec::loadu(gate + c1, kHalf);
          }
          at::vec::interleave2(a, b).first.store(out + 2 * pair * p.cin_g + 2 * c);
        }
      }
      continue;
    }
    int64_t c = 0;
    for (; c + kLanes <= p.c_in; c += kLanes) {
      Vec v = load_as_float(in + c);
      if (gate) v = v * Vec::loadu(gate + c);
      v.store(out + c);
    }
    if (c < p.c_in) {
      Vec v = load_as_float(in + c, p.c_in - c);
      if (gate) v = v * Vec::loadu(gate + c, p.c_in - c);
      v.store(out + c, p.c_in - c);
    }
  }
}

// One input row of x (n, ih), widened to fp32 and gated, into dst's columns pad..pad+w-1.
template <typename scalar_t>
void pack_input_row(const ConvProblem& p, const scalar_t* x, int64_t n, int64_t ih, float* dst) {
  const float* gate = p.gate ? p.gate + n * p.gate_sn : nullptr;
  pack_pixels(p, x + n * p.x_sn + ih * p.x_sh, p.x_sw, gate, p.w, dst + p.pad * packed_pixel_stride(p), 0,
              kernel_groups(p.groups, p.pair_groups));
}

// `count` lanes of v, after ReLU if asked, into an fp32 row buffer (a fused conv's intermediate).
inline void store_intermediate(Vec v, bool relu, float* out, int64_t count) {
  if (relu) v = at::vec::maximum(v, Vec(0.f));
  if (count == kLanes) {
    v.store(out);
  } else {
    v.store(out, count);
  }
}

// Output blocks [block_lo, block_hi) of a stride-1 unpadded 1x1 conv q (K1 or K4) of one fp32
// input row (pixel stride ps): each pixel's vector of channels (bias added) goes to
// store(ow, co, v, count). tile: kMaxPixels x q's block width.
template <typename Store>
void conv1x1_row(const ConvProblem& q, const float* row, int64_t ps, int64_t block_lo, int64_t block_hi, float* tile,
                 const Store& store) {
  const int64_t vw = q.nv * kLanes, max_px = max_pixels_for(q.nv);
  const int64_t px_blocks = (q.w_out + max_px - 1) / max_px;
  Tile t{&row, ps, 0, 1, 1, q.c_in, 0, nullptr, nullptr, tile};
  for (int64_t block = block_lo; block < block_hi; ++block) {
    const int64_t co0 = block * vw, valid = std::min(vw, q.c_out - co0);
    t.w = q.w_packed + block * q.c_in * vw;
    t.b = q.b_packed + block * vw;
    for (int64_t pb = 0, ow0 = 0; pb < px_blocks; ++pb) {
      const int64_t np = (q.w_out - ow0 + (px_blocks - pb) - 1) / (px_blocks - pb);
      t.in_col0 = ow0;
      kMicro1x1[q.nv][np](t);
      for (int64_t i = 0; i < np; ++i)
        for (int64_t c = 0; c < valid; c += kLanes)
          store(ow0 + i, co0 + c, Vec::loadu(tile + i * vw + c), std::min(kLanes, valid - c));
      ow0 += np;
    }
  }
}

// Output channels [c_lo, c_hi) (rounded out to whole blocks) of row (n, ih) of `pre`, an unpadded
// stride-1 1x1 conv (K1), into dst (pixel stride dst_ps) in fp32, after its bias and ReLU. x_row:
// scratch for one fp32 input row when pre's x is not fp32 (fp32 is read in place); tile:
// kMaxPixels x pre's block width.
template <typename scalar_t>
void pre_conv_row(const ConvProblem& pre, int64_t n, int64_t ih, int64_t c_lo, int64_t c_hi, float* dst,
                  int64_t dst_ps, float* x_row, float* tile) {
  const float* row = x_row;
  int64_t ps = pre.c_in;
  if constexpr (std::is_same_v<scalar_t, float>) {
    row = static_cast<const float*>(pre.x) + n * pre.x_sn + ih * pre.x_sh;
    ps = pre.x_sw;
  } else {
    pack_input_row(pre, static_cast<const scalar_t*>(pre.x), n, ih, x_row);
  }
  const int64_t vw = pre.nv * kLanes;
  const int64_t block_hi = std::min(pre.co_blocks, (c_hi + vw - 1) / vw);
  conv1x1_row(pre, row, ps, c_lo / vw, block_hi, tile, [&](int64_t ow, int64_t co, Vec v, int64_t count) {
    store_intermediate(v, pre.relu, dst + ow * dst_ps + co, count);
  });
}

// Residual, ReLU, store and channel sums for `count` channels starting at co of one pixel.
// (res_t: scalar_t, or float for a residual computed in fp32: x_block's projection.)
template <typename res_t, typename scalar_t>
inline void epilogue(const ConvProblem& p, Vec v, const res_t* res, scalar_t* y, float* row_sum, int64_t count) {
  if (count == kLanes) {
    if (res) v = v + load_as_float(res);
    if (p.relu) v = at::vec::maximum(v, Vec(0.f));
    store_from_float(y, v);
    if (row_sum) (Vec::loadu(row_sum) + v).store(row_sum);
  } else {
    if (res) v = v + load_as_float(res, count);
    if (p.relu) v = at::vec::maximum(v, Vec(0.f));
    store_from_float(y, v, count);
    if (row_sum) (Vec::loadu(row_sum, count) + v).store(row_sum, count);
  }
}

// Sum rows [n][rows][c] over rows into out [n][c].
inline void reduce_row_sums(const float* row_sums, int64_t n, int64_t rows, int64_t c, float* out) {
  parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t i = n0; i < n1; ++i) {
      float* dst = out + i * c;
      std::memcpy(dst, row_sums + i * rows * c, c * sizeof(float));
      for (int64_t r = 1; r < rows; ++r) {
        const float* src = row_sums + (i * rows + r) * c;
        int64_t j = 0;
        for (; j + kLanes <= c; j += kLanes) (Vec::loadu(dst + j) + Vec::loadu(src + j)).store(dst + j);
        for (; j < c; ++j) dst[j] += src[j];
      }
    }
  });
}

// How many chunks to split each output row's output-channel blocks into, so that the work items
// (row, chunk) keep every thread busy: at least 95% of threads x items-per-thread, the split
// at::parallel_for makes. Rows alone left a thread idle on maps with few rows: batch 1 at 7x7
// splits 7 rows 4:3 over 2 threads, so one thread idles for an eighth of the conv.
inline int64_t balanced_chunks(int64_t rows, int64_t blocks, int64_t threads) {
  for (int64_t chunks = 1; chunks < blocks; ++chunks) {
    const int64_t items = rows * chunks, per_thread = (items + threads - 1) / threads;
    if (items * 20 >= per_thread * std::min(threads, items) * 19) return chunks;
  }
  return std::max<int64_t>(1, blocks);
}

// First output channel of packed block `block` (blocks run group-major).
inline int64_t block_channel(const ConvProblem& p, int64_t block) {
  return (block / p.co_blocks) * p.cout_g * groups_per_kernel_group(p.pair_groups) +
         (block % p.co_blocks) * p.nv * kLanes;
}

// Row (n, oh) of `post`, a stride-1 unpadded 1x1 (K4) whose input row is `row` (fp32, pixel
// stride row_ps), with its bias, residual, ReLU and store. tile: kMaxPixels x post's block width.
// With post.proj, the residual row is the projection of x's row oh * proj.stride, computed here
// into proj_row (fp32, [w_out][c_out]) while that row of x is still in cache from K1's read of it
// (a separate projection read x from memory again and wrote and re-read its output:
// bench/NOTES.md, Step 17). proj_x_row: scratch for x's row in fp32 when x is not fp32;
// proj_tile: kMaxPixels x proj's block width.
template <typename scalar_t>
void post_conv_row(const ConvProblem& post, int64_t n, int64_t oh, const float* row, int64_t row_ps, float* tile,
                   float* proj_row, float* proj_x_row, float* proj_tile) {
  scalar_t* y_row = static_cast<scalar_t*>(post.y) + n * post.y_sn + oh * post.y_sh;
  if (const ConvProblem* proj = post.proj) {
    const auto* x = static_cast<const scalar_t*>(proj->x) + n * proj->x_sn + oh * proj->stride * proj->x_sh;
    const float* x_row = proj_x_row;
    int64_t ps = proj->c_in;
    if constexpr (std::is_same_v<scalar_t, float>) {
      x_row = x, ps = proj->stride * proj->x_sw;  // every stride-th pixel, read in place
    } else {
      pack_pixels(*proj, x, proj->stride * proj->x_sw, nullptr, proj->w_out, proj_x_row, 0, 1);
    }
    conv1x1_row(*proj, x_row, ps, 0, proj->co_blocks, proj_tile, [&](int64_t ow, int64_t co, Vec v, int64_t count) {
      store_intermediate(v, false, proj_row + ow * post.c_out + co, count);
    });
    conv1x1_row(post, row, row_ps, 0, post.co_blocks, tile, [&](int64_t ow, int64_t co, Vec v, int64_t count) {
      epilogue(post, v, proj_row + ow * post.c_out + co, y_row + ow * post.y_sw + co, nullptr, count);
    });
    return;
  }
  const auto* res = static_cast<const scalar_t*>(post.residual);
  const scalar_t* res_row = res ? res + n * post.r_sn + oh * post.r_sh : nullptr;
  conv1x1_row(post, row, row_ps, 0, post.co_blocks, tile, [&](int64_t ow, int64_t co, Vec v, int64_t count) {
    epilogue(post, v, res_row ? res_row + ow * post.r_sw + co : nullptr, y_row + ow * post.y_sw + co, nullptr, count);
  });
}

template <typename scalar_t>
void conv_typed(const ConvProblem& p) {
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* res = static_cast<const scalar_t*>(p.residual);
  auto* y = static_cast<scalar_t*>(p.y);
  const int64_t padded_w = p.w + 2 * p.pad;
  const int64_t in_ps = packed_pixel_stride(p);
  const int64_t row_floats = padded_w * in_ps;
  const int64_t vw = p.nv * kLanes;
  // The kernel's groups: the conv's, or pairs of them. kcin_g/kcout_g: channels each spans.
  const int64_t gpk = groups_per_kernel_group(p.pair_groups);
  const int64_t kgroups = kernel_groups(p.groups, p.pair_groups), kcin_g = p.cin_g * gpk, kcout_g = p.cout_g * gpk;
  const int64_t max_px = max_pixels_for(p.nv);
  // Split each row into equal pixel blocks of at most max_px (7 -> 7; 28 -> 10, 9, 9).
  const int64_t px_blocks = (p.w_out + max_px - 1) / max_px;
  const int64_t w_block_stride = p.k * p.k * p.cin_g * vw;
  const int64_t rows_out = p.n * p.h_out;
  const int64_t blocks = kgroups * p.co_blocks;
  const ConvProblem* post = p.post;
  const int64_t chunks = post ? 1 : balanced_chunks(rows_out, blocks, at::get_num_threads());
  const MicroTable& micro = micro_tables_for(p);
  // An unpadded fp32 1x1 conv without a gate reads x's rows in place: a copy would only repeat
  // them (x's channel stride is 1, its pixel stride is given to the micro-kernel).
  bool direct_input = false;
  if constexpr (std::is_same_v<scalar_t, float>) direct_input = p.k == 1 && p.pad == 0 && !p.gate && !p.pre;
  // With K1 fused in (p.pre), a row of x is K1's output, computed where it is packed: for all
  // channels when rows are split between threads, or for a chunk's channels only (each thread
  // computing and reading just its chunks' share of K1's weights).
  const ConvProblem* pre = p.pre;
  const int64_t pre_chunks = pre && chunks > 1 ? chunks : 1;

  // Items are (output row, chunk of its channel blocks). Row-major where rows are packed: a
  // thread's consecutive items share a row, which it packs once. Chunk-major where x is read in
  // place: each thread then reads only its chunks' weights (a stage-4 1x1 at batch 1 reads
  // 590 KB of weights, from L3 in a forward, for 7 rows of 7 pixels); and where K1 computes a
  // chunk's rows, so that no thread computes another's channels of K1.
  const bool chunk_major = direct_input || pre_chunks > 1;
  parallel_for(0, rows_out * chunks, 1, [&](int64_t i0, int64_t i1) {
    // Per-thread scratch: kRowSlots padded input rows (the pad columns stay zero), a zero row for
    // taps above/below the image, and the tile. Input row ih lives in slot ih % kRowSlots and is
    // packed only if the slot holds another row: consecutive output rows share k - stride input
    // rows (a stride-2 grouped conv at 112 px spent ~19% of its time packing rows again).
    constexpr int64_t kRowSlots = 4;
    std::vector<float> buf(direct_input ? 0 : (kRowSlots + 1) * row_floats, 0.f);
    std::vector<float> tile(kMaxPixels * vw);
    std::vector<float> pre_tile(pre ? kMaxPixels * pre->nv * kLanes : 0);
    std::vector<float> pre_x_row(pre && !std::is_same_v<scalar_t, float> ? pre->w * pre->c_in : 0);
    std::vector<float> pre_row(pre && p.pair_groups ? p.w * p.c_in : 0);  // K1's row before pairing
    std::vector<float> post_row(post ? p.w_out * p.c_out : 0);  // this conv's output row, post's input
    std::vector<float> post_tile(post ? kMaxPixels * post->nv * kLanes : 0);
    const ConvProblem* proj = post ? post->proj : nullptr;
    std::vector<float> proj_row(proj ? p.w_out * post->c_out : 0);
    std::vector<float> proj_x_row(proj && !std::is_same_v<scalar_t, float> ? proj->w_out * proj->c_in : 0);
    std::vector<float> proj_tile(proj ? kMaxPixels * proj->nv * kLanes : 0);
    const float* zero_row = direct_input ? nullptr : buf.data() + kRowSlots * row_floats;
    // (n * h + ih) * pre_chunks + chunk of the row packed in each slot (chunk: whose channels
    // K1 computed; 0 when all are there)
    int64_t slot_row[kRowSlots] = {-1, -1, -1, -1};
    const auto packed_row = [&](int64_t n, int64_t ih, int64_t chunk) -> const float* {
      const int64_t slot = ih % kRowSlots, tag = (n * p.h + ih) * pre_chunks + chunk;
      float* dst = buf.data() + slot * row_floats;
      if (slot_row[slot] != tag) {
        if (pre) {
          // The chunk's groups' input channels (whole groups: a chunk may end inside one).
          const int64_t b0 = chunk * blocks / chunks, b1 = (chunk + 1) * blocks / chunks;
          const int64_t c_lo = pre_chunks > 1 ? b0 / p.co_blocks * kcin_g : 0;
          const int64_t c_hi = pre_chunks > 1 ? std::min(p.c_in, ((b1 - 1) / p.co_blocks + 1) * kcin_g) : p.c_in;
          if (p.pair_groups) {  // K1's row in channel order, then its pairs packed (c_lo: a pair's start)
            pre_conv_row<scalar_t>(*pre, n, ih, c_lo, c_hi, pre_row.data(), p.c_in, pre_x_row.data(),
                                   pre_tile.data());
            pack_pixels(p, pre_row.data(), p.c_in, nullptr, p.w, dst + p.pad * in_ps, c_lo / kcin_g,
                        (c_hi + kcin_g - 1) / kcin_g);
          } else {
            pre_conv_row<scalar_t>(*pre, n, ih, c_lo, c_hi, dst + p.pad * in_ps, in_ps, pre_x_row.data(),
                                   pre_tile.data());
          }
        } else {
          pack_input_row(p, x, n, ih, dst);
        }
        slot_row[slot] = tag;
      }
      return dst;
    };
    const float* rows[3];
    int64_t rows_of = -1;  // the (output row, chunk) whose input rows are in `rows`
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t row = chunk_major ? item % rows_out : item / chunks;
      const int64_t chunk = chunk_major ? item / rows_out : item % chunks;
      const int64_t n = row / p.h_out, oh = row % p.h_out;
      const int64_t row_chunk = pre_chunks > 1 ? chunk : 0;
      if (row * pre_chunks + row_chunk != rows_of) {
        for (int64_t kh = 0; kh < p.k; ++kh) {
          const int64_t ih = oh * p.stride + kh - p.pad;
          if (ih < 0 || ih >= p.h) {
            rows[kh] = zero_row;
          } else if constexpr (std::is_same_v<scalar_t, float>) {
            rows[kh] = direct_input ? x + n * p.x_sn + ih * p.x_sh : packed_row(n, ih, row_chunk);
          } else {
            rows[kh] = packed_row(n, ih, row_chunk);
          }
        }
        rows_of = row * pre_chunks + row_chunk;
      }
      const int64_t pixel_stride = direct_input ? p.x_sw : in_ps;
      const int64_t b0 = chunk * blocks / chunks, b1 = (chunk + 1) * blocks / chunks;
      // This chunk's channels of the row's partial sums: blocks are contiguous in channels.
      float* row_sum = p.row_sums ? p.row_sums + row * p.c_out : nullptr;
      if (row_sum) {
        const int64_t end = b1 == blocks ? p.c_out : block_channel(p, b1);
        std::fill(row_sum + block_channel(p, b0), row_sum + end, 0.f);
      }
      const scalar_t* res_row = res ? res + n * p.r_sn + oh * p.r_sh : nullptr;
      scalar_t* y_row = post ? nullptr : y + n * p.y_sn + oh * p.y_sh;  // (with post, y is post's)

      for (int64_t block = b0; block < b1; ++block) {
        const int64_t g = block / p.co_blocks, cb = block % p.co_blocks;
        const int64_t co_local0 = cb * vw;
        const int64_t co0 = g * kcout_g + co_local0;
        const int64_t valid = std::min(vw, std::min(kcout_g, p.c_out - g * kcout_g) - co_local0);
        Tile t{rows, pixel_stride, 0, p.stride, p.k, p.cin_g, g * kcin_g, p.w_packed + block * w_block_stride,
               p.b_packed + block * vw, tile.data()};
        for (int64_t pb = 0, ow0 = 0; pb < px_blocks; ++pb) {
          const int64_t np = (p.w_out - ow0 + (px_blocks - pb) - 1) / (px_blocks - pb);
          t.in_col0 = ow0 * p.stride;
          micro[p.nv][np](t);
          for (int64_t q = 0; q < np; ++q) {
            const int64_t ow = ow0 + q;
            // `count` channels from co: to post's input row, or the epilogue into y.
            const auto emit = [&](Vec v, int64_t co, int64_t count) {
              if (post) {
                store_intermediate(v, p.relu, post_row.data() + ow * p.c_out + co, count);
              } else {
                epilogue(p, v, res_row ? res_row + ow * p.r_sw + co : nullptr, y_row + ow * p.y_sw + co,
                         row_sum ? row_sum + co : nullptr, count);
              }
            };
            if (!p.pair_groups) {
              for (int64_t c = 0; c < valid; c += kLanes)
                emit(Vec::loadu(tile.data() + q * vw + c), co0 + c, std::min(kLanes, valid - c));
              continue;
            }
            // Paired: vector k holds chunk k of both groups (co_blocks is 1: the pair's vectors).
            const int64_t first = 2 * g * p.cout_g;
            const bool second = 2 * g + 1 < p.groups;
            for (int64_t k = 0; k < p.nv; ++k) {
              const Vec v = from_pairs(Vec::loadu(tile.data() + q * vw + k * kLanes));
              if (p.cout_g == kHalf) {  // the two chunks are adjacent channels
                emit(v, first, second ? kLanes : kHalf);
                continue;
              }
              __at_align__ float halves[kLanes];
              v.store(halves);
              emit(Vec::loadu(halves, kHalf), first + k * kHalf, kHalf);
              if (second) emit(Vec::loadu(halves + kHalf, kHalf), first + p.cout_g + k * kHalf, kHalf);
            }
          }
          ow0 += np;
        }
      }
      if (post)
        post_conv_row<scalar_t>(*post, n, oh, post_row.data(), p.c_out, post_tile.data(), proj_row.data(),
                                proj_x_row.data(), proj_tile.data());
    }
  });
  if (p.sums) reduce_row_sums(p.row_sums, p.n, p.h_out, p.c_out, p.sums);
}

void conv(const ConvProblem& p) {
  switch (p.dtype) {
    case at::kFloat: conv_typed<float>(p); break;
    case at::kBFloat16: conv_typed<at::BFloat16>(p); break;
    default: conv_typed<at::Half>(p); break;
  }
}

// Sum of a[0..len) * b[0..len) in fp32. Two accumulators halve the FMA latency chain of the
// first SE FC (C = 440: 28 dependent FMAs per output otherwise).
inline float dot(const float* a, const float* b, int64_t len) {
  Vec acc0(0.f), acc1(0.f);
  int64_t i = 0;
  for (; i + 2 * kLanes <= len; i += 2 * kLanes) {
    acc0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc0);
    acc1 = at::vec::fmadd(Vec::loadu(a + i + kLanes), Vec::loadu(b + i + kLanes), acc1);
  }
  for (; i < len; i += kLanes) {
    const int64_t count = std::min(kLanes, len - i);
    acc0 = at::vec::fmadd(Vec::loadu(a + i, count), Vec::loadu(b + i, count), acc0);
  }
  // A shuffle tree, not a loop over lanes: the row-major second FC does one dot per channel.
  return at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc0 + acc1);
}

// se_gate's passes over x are cheap per element; below this many elements per task an OpenMP
// region's fork and join (a few us on 2 threads) costs more than the second thread saves, so
// small maps (batch 1 in the last stages) run on the calling thread.
constexpr int64_t kSeMinTaskElements = 32768;

inline int64_t se_grain_rows(int64_t row_elements) {
  return std::max<int64_t>(1, kSeMinTaskElements / std::max<int64_t>(1, row_elements));
}

// Adds NV vectors of x's channels at c0 (the last with `last` lanes) summed over `pixels` pixels
// (pixel stride ps) into acc: NV independent chains of adds held in registers.
template <int NV, typename scalar_t>
inline void add_pixel_sums_block(const scalar_t* x, int64_t pixels, int64_t ps, int64_t c0, int64_t last, float* acc) {
  const auto lanes = [&](int k) { return k == NV - 1 ? last : kLanes; };
  Vec s[NV];
  for (int k = 0; k < NV; ++k) s[k] = Vec::loadu(acc + c0 + k * kLanes, lanes(k));
  for (int64_t i = 0; i < pixels; ++i) {
    const scalar_t* px = x + i * ps + c0;
    for (int k = 0; k < NV; ++k)
      s[k] = s[k] + (lanes(k) == kLanes ? load_as_float(px + k * kLanes) : load_as_float(px + k * kLanes, lanes(k)));
  }
  for (int k = 0; k < NV; ++k) s[k].store(acc + c0 + k * kLanes, lanes(k));
}

// Adds x's channels [0, c) summed over `pixels` pixels (pixel stride ps) into acc (fp32).
// Blocks of 4 vectors of channels stay in registers across the pixels (one load and one add per
// input vector), and the last 1-4 vectors (C = 48: 3) go together, so each block has independent
// add chains. (A load-add-store of acc per pixel and vector made each add wait on the previous
// pixel's store: ~3x slower; and channel_sums was the generic, non-vector build.)
template <typename scalar_t>
inline void add_pixel_sums(const scalar_t* x, int64_t pixels, int64_t ps, int64_t c, float* acc) {
  int64_t c0 = 0;
  for (; c0 + 4 * kLanes <= c; c0 += 4 * kLanes) add_pixel_sums_block<4>(x, pixels, ps, c0, kLanes, acc);
  const int64_t rem = c - c0, nvec = (rem + kLanes - 1) / kLanes, last = rem - (nvec - 1) * kLanes;
  switch (nvec) {
    case 1: add_pixel_sums_block<1>(x, pixels, ps, c0, last, acc); break;
    case 2: add_pixel_sums_block<2>(x, pixels, ps, c0, last, acc); break;
    case 3: add_pixel_sums_block<3>(x, pixels, ps, c0, last, acc); break;
    case 4: add_pixel_sums_block<4>(x, pixels, ps, c0, last, acc); break;
    default: break;  // rem == 0
  }
}

// Per-row partial sums (rows in parallel: batch 1 has one sample), then a sum over each
// sample's rows.
template <typename scalar_t>
void channel_sums_typed(const SumsProblem& p) {
  const auto* x = static_cast<const scalar_t*>(p.x);
  parallel_for(0, p.n * p.h, se_grain_rows(p.w * p.c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* acc = p.row_sums + r * p.c;
      std::fill(acc, acc + p.c, 0.f);
      add_pixel_sums(x + (r / p.h) * p.x_sn + (r % p.h) * p.x_sh, p.w, p.x_sw, p.c, acc);
    }
  });
  reduce_row_sums(p.row_sums, p.n, p.h, p.c, p.out);
}

void channel_sums(const SumsProblem& p) {
  switch (p.dtype) {
    case at::kFloat: channel_sums_typed<float>(p); break;
    case at::kBFloat16: channel_sums_typed<at::BFloat16>(p); break;
    default: channel_sums_typed<at::Half>(p); break;
  }
}

// NV vectors of the gate pre-activation at channel c0 from W2 stored input-major ([c_se][c]):
// NV independent FMA chains over j, no horizontal sums. The last vector has `last` lanes
// (a tail of the channels when < kLanes).
template <int NV>
inline void w2_by_input_block(const SeProblem& p, const float* hidden, int64_t c0, int64_t last, float* gate) {
  Vec acc[NV];
  const auto lanes = [&](int k) { return k == NV - 1 ? last : kLanes; };
  for (int k = 0; k < NV; ++k) acc[k] = Vec::loadu(p.b2 + c0 + k * kLanes, lanes(k));
  for (int64_t j = 0; j < p.c_se; ++j) {
    const Vec h(hidden[j]);
    const float* w = p.w2 + j * p.c + c0;
    for (int k = 0; k < NV; ++k) acc[k] = at::vec::fmadd(Vec::loadu(w + k * kLanes, lanes(k)), h, acc[k]);
  }
  for (int k = 0; k < NV; ++k) acc[k].store(gate + c0 + k * kLanes, lanes(k));
}

// The SE MLP of one sample: gate[c] = sigmoid(W2 relu(W1 mean + b1) + b2)[c], fp32.
// `hidden` has room for c_se floats; `gate` holds the sample's sums on entry.
inline void se_excite_sample(const SeProblem& p, float inv_hw, float* gate, float* hidden) {
  for (int64_t c = 0; c < p.c; ++c) gate[c] *= inv_hw;
  // W1 four rows at a time: each vector of the mean feeds four independent FMA chains.
  int64_t j = 0;
  for (; j + 4 <= p.c_se; j += 4) {
    Vec acc[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
    const float* w = p.w1 + j * p.c;
    int64_t i = 0;
    for (; i + kLanes <= p.c; i += kLanes) {
      const Vec m = Vec::loadu(gate + i);
      for (int k = 0; k < 4; ++k) acc[k] = at::vec::fmadd(Vec::loadu(w + k * p.c + i), m, acc[k]);
    }
    if (i < p.c) {
      const Vec m = Vec::loadu(gate + i, p.c - i);
      for (int k = 0; k < 4; ++k) acc[k] = at::vec::fmadd(Vec::loadu(w + k * p.c + i, p.c - i), m, acc[k]);
    }
    for (int k = 0; k < 4; ++k)
      hidden[j + k] = std::max(0.f, at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc[k]) + p.b1[j + k]);
  }
  for (; j < p.c_se; ++j) hidden[j] = std::max(0.f, dot(p.w1 + j * p.c, gate, p.c) + p.b1[j]);
  if (p.w2_by_input) {
    // Four vectors of channels at a time, then the remaining 1-4 (the last one partial) together.
    int64_t c0 = 0;
    for (; c0 + 4 * kLanes <= p.c; c0 += 4 * kLanes) w2_by_input_block<4>(p, hidden, c0, kLanes, gate);
    const int64_t rem = p.c - c0, nvec = (rem + kLanes - 1) / kLanes, last = rem - (nvec - 1) * kLanes;
    switch (nvec) {
      case 1: w2_by_input_block<1>(p, hidden, c0, last, gate); break;
      case 2: w2_by_input_block<2>(p, hidden, c0, last, gate); break;
      case 3: w2_by_input_block<3>(p, hidden, c0, last, gate); break;
      case 4: w2_by_input_block<4>(p, hidden, c0, last, gate); break;
      default: break;  // rem == 0
    }
  } else {
    for (int64_t c = 0; c < p.c; ++c) gate[c] = dot(p.w2 + c * p.c_se, hidden, p.c_se) + p.b2[c];
  }
  // Vectorised sigmoid (Sleef's exp where the CPU has AVX2/AVX-512, 1 ulp).
  const Vec one(1.f);
  int64_t c = 0;
  for (; c + kLanes <= p.c; c += kLanes) (one / (one + Vec::loadu(gate + c).neg().exp())).store(gate + c);
  if (c < p.c) (one / (one + Vec::loadu(gate + c, p.c - c).neg().exp())).store(gate + c, p.c - c);
}

// K3: p.gate[n] = the SE MLP of p.sums[n] / (h w), fp32 (p.sums may be p.gate); tasks of at
// least ~64K FMAs (batch 1 stays on the calling thread).
void se_excite(const SeProblem& p) {
  const float inv_hw = 1.f / static_cast<float>(p.h * p.w);
  if (p.sums != p.gate) std::memcpy(p.gate, p.sums, p.n * p.c * sizeof(float));
  const int64_t mlp_grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, 2 * p.c * p.c_se));
  parallel_for(0, p.n, mlp_grain, [&](int64_t n0, int64_t n1) {
    std::vector<float> hidden(p.c_se);
    for (int64_t n = n0; n < n1; ++n) se_excite_sample(p, inv_hw, p.gate + n * p.c, hidden.data());
  });
}

template <typename scalar_t>
void se_gate_typed(const SeProblem& p) {
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* res = static_cast<const scalar_t*>(p.residual);
  auto* y = static_cast<scalar_t*>(p.y);
  const int64_t rows = p.n * p.h;

  const int64_t grain = se_grain_rows(p.w * p.c);

  // 1. Squeeze (skipped when the caller has the sums, e.g. from the conv's epilogue).
  const float* sums = p.sums;
  if (!sums) {
    // The gate buffer holds the sums until step 2 overwrites them with the gate.
    channel_sums_typed<scalar_t>(SumsProblem{p.dtype, p.x, p.n, p.c, p.h, p.w, p.x_sn, p.x_sh, p.x_sw, p.gate,
                                             p.row_sums});
    sums = p.gate;
  }

  // 2. Excite: the MLP on the gate buffer.
  SeProblem excite = p;
  excite.sums = sums;
  se_excite(excite);

  // 3. Scale: y = act(x * gate + residual), one pass over x.
  parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.h, ih = r % p.h;
      const float* gate = p.gate + n * p.c;
      for (int64_t iw = 0; iw < p.w; ++iw) {
        const scalar_t* px = x + n * p.x_sn + ih * p.x_sh + iw * p.x_sw;
        const scalar_t* pr = res ? res + n * p.r_sn + ih * p.r_sh + iw * p.r_sw : nullptr;
        scalar_t* py = y + n * p.y_sn + ih * p.y_sh + iw * p.y_sw;
        for (int64_t c = 0; c < p.c; c += kLanes) {
          const int64_t count = std::min(kLanes, p.c - c);
          Vec v = count == kLanes ? load_as_float(px + c) * Vec::loadu(gate + c)
                                  : load_as_float(px + c, count) * Vec::loadu(gate + c, count);
          if (pr) v = v + (count == kLanes ? load_as_float(pr + c) : load_as_float(pr + c, count));
          if (p.relu) v = at::vec::maximum(v, Vec(0.f));
          if (count == kLanes) store_from_float(py + c, v); else store_from_float(py + c, v, count);
        }
      }
    }
  });
}

void se_gate(const SeProblem& p) {
  switch (p.dtype) {
    case at::kFloat: se_gate_typed<float>(p); break;
    case at::kBFloat16: se_gate_typed<at::BFloat16>(p); break;
    default: se_gate_typed<at::Half>(p); break;
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace regnet_kernels

// Defines kernels_<isa>() returning this ISA's table.
#define REGNET_DEFINE_ISA_KERNELS(fn_name, isa_name)                                                         \
  namespace regnet_kernels::cpu {                                                                            \
  const IsaKernels& fn_name() {                                                                              \
    static const IsaKernels table{isa_name, CPU_CAPABILITY::kLanes, [](int64_t nv) { return CPU_CAPABILITY::max_pixels_for(nv); }, \
                                  &CPU_CAPABILITY::conv, &CPU_CAPABILITY::se_gate,                           \
                                  &CPU_CAPABILITY::se_excite, &CPU_CAPABILITY::channel_sums};                \
    return table;                                                                                            \
  }                                                                                                          \
  }

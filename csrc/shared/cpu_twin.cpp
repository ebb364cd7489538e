// CPU twin of the CUDA kernels' math (csrc/cuda/grouped_conv3x3.cu, csrc/cuda/se_gate.cu): the
// same shared helpers (kernel_math.h) walked in the same order (pixel decode, window origin, tap
// mask, group channel base, epilogue; per-image sums flushed when the image changes), over dense
// fp32 channels-last buffers. There is no GPU here, so tests/test_cuda_backend.py builds this file
// with the host compiler into a small shared library, calls it through ctypes and compares with
// the float64 eager reference: an index or epilogue bug in the helpers fails on the CPU.
// Not part of the extension (setup.py compiles csrc/*.cpp and csrc/cpu/ only).
#include <algorithm>
#include <cmath>
#include <vector>

#include "shared/kernel_math.h"

namespace sh = regnet_kernels::shared;

namespace {
constexpr int kCoTile = 32, kPixTile = 32, kCiChunk = 8, kTaps = 9;
}

extern "C" {

// y[n, oh, ow, co] = act(sum over group/taps of x * w + bias + residual); sums[n, co] += y when
// sums is non-null (K2). x: [N, H, W, C_in], w: [C_out, C_in/groups, 3, 3], residual and y:
// [N, OH, OW, C_out]; bias, residual, sums may be null. Padding 1.
int regnet_twin_grouped_conv3x3(const float* x, int n, int c_in, int h, int w, const float* weight,
                                const float* bias, const float* residual, int c_out, int groups, int stride,
                                int relu, float* y, float* sums) {
  if (groups < 1 || c_in % groups || c_out % groups) return 1;
  const int out_h = sh::conv_out_size(h, 3, stride, 1), out_w = sh::conv_out_size(w, 3, stride, 1);
  const int in_pg = c_in / groups, out_pg = c_out / groups;
  const int64_t pixels = static_cast<int64_t>(n) * out_h * out_w;
  const int64_t x_sn = static_cast<int64_t>(h) * w * c_in, x_sh = static_cast<int64_t>(w) * c_in, x_sw = c_in;
  const int64_t y_sn = static_cast<int64_t>(out_h) * out_w * c_out, y_sh = static_cast<int64_t>(out_w) * c_out,
                y_sw = c_out;
  // One "block" = kPixTile pixels x kCoTile channels, one "thread" = one (pixel, channel) here.
  for (int64_t tile = 0; tile < pixels; tile += kPixTile) {
    for (int co = 0; co < c_out; ++co) {
      const int ci_base = sh::group_first_input_channel(co, out_pg, in_pg);
      float run_sum = 0.f;
      int run_n = -1;
      for (int64_t pix = tile; pix < std::min<int64_t>(tile + kPixTile, pixels); ++pix) {
        const sh::Pixel px = sh::decode_pixel(pix, out_h, out_w);
        const int ih0 = sh::window_origin(px.h, stride, 1), iw0 = sh::window_origin(px.w, stride, 1);
        const int64_t origin = px.n * x_sn + static_cast<int64_t>(ih0) * x_sh + static_cast<int64_t>(iw0) * x_sw + ci_base;
        const unsigned mask = sh::tap_mask_3x3(ih0, iw0, h, w);
        float acc = 0.f;
        for (int ci0 = 0; ci0 < in_pg; ci0 += kCiChunk) {
          const int chunk = std::min(kCiChunk, in_pg - ci0);
          for (int ci = 0; ci < chunk; ++ci) {
            for (int kh = 0; kh < 3; ++kh) {
              for (int kw = 0; kw < 3; ++kw) {
                const float wv = weight[(static_cast<int64_t>(co) * in_pg + ci0 + ci) * kTaps + kh * 3 + kw];
                const int64_t tap = kh * x_sh + kw * x_sw + ci0 + ci;
                if (mask & (1u << (kh * 3 + kw))) acc = std::fma(wv, x[origin + tap], acc);
              }
            }
          }
        }
        const float res =
            residual ? residual[sh::offset_nhwc(px.n, px.h, px.w, co, y_sn, y_sh, y_sw, 1)] : 0.f;
        const float out = sh::conv_epilogue(acc, bias ? bias[co] : 0.f, res, relu != 0);
        y[sh::offset_nhwc(px.n, px.h, px.w, co, y_sn, y_sh, y_sw, 1)] = out;
        if (sums) {
          if (px.n != run_n) {
            if (run_n >= 0) sums[static_cast<int64_t>(run_n) * c_out + co] += run_sum;
            run_n = px.n;
            run_sum = 0.f;
          }
          run_sum += out;
        }
      }
      if (sums && run_n >= 0) sums[static_cast<int64_t>(run_n) * c_out + co] += run_sum;
    }
  }
  return 0;
}

// se_gate on dense fp32 [N, H, W, C] x (and residual, y): sums (computed from x when sums_in is
// null), the excite MLP, then x * gate + residual and ReLU. w1: [c_se, C], w2: [C, c_se].
int regnet_twin_se_gate(const float* x, int n, int c, int h, int w, const float* w1, const float* b1,
                        const float* w2, const float* b2, int c_se, const float* residual, int relu,
                        const float* sums_in, float* y) {
  const int64_t hw = static_cast<int64_t>(h) * w;
  std::vector<float> sums(static_cast<size_t>(n) * c, 0.f), gate(static_cast<size_t>(n) * c), hidden(c_se);
  for (int b = 0; b < n; ++b) {
    for (int ch = 0; ch < c; ++ch) {
      float s = 0.f;
      if (sums_in) {
        s = sums_in[static_cast<int64_t>(b) * c + ch];
      } else {
        for (int64_t p = 0; p < hw; ++p) s += x[(b * hw + p) * c + ch];
      }
      sums[static_cast<size_t>(b) * c + ch] = s;
    }
    const float inv_hw = 1.f / static_cast<float>(hw);
    for (int j = 0; j < c_se; ++j) {
      float dot = 0.f;
      for (int i = 0; i < c; ++i) dot = std::fma(w1[static_cast<int64_t>(j) * c + i], sums[b * c + i] * inv_hw, dot);
      hidden[j] = sh::relu_if(dot + b1[j], true);
    }
    for (int j = 0; j < c; ++j) {
      float dot = 0.f;
      for (int i = 0; i < c_se; ++i) dot = std::fma(w2[static_cast<int64_t>(j) * c_se + i], hidden[i], dot);
      gate[static_cast<size_t>(b) * c + j] = sh::sigmoid(dot + b2[j]);
    }
    for (int64_t p = 0; p < hw; ++p) {
      for (int ch = 0; ch < c; ++ch) {
        const int64_t e = (b * hw + p) * c + ch;
        y[e] = sh::se_gate_epilogue(x[e], gate[static_cast<size_t>(b) * c + ch], residual ? residual[e] : 0.f,
                                    relu != 0);
      }
    }
  }
  return 0;
}

// Direct checks of the helpers the twins do not reach at every edge: returns 0 when all pass,
// else the number of the first failing check.
int regnet_twin_helper_selftest() {
  if (sh::conv_out_size(7, 3, 2, 1) != 4 || sh::conv_out_size(8, 3, 2, 1) != 4 || sh::conv_out_size(1, 3, 1, 1) != 1)
    return 1;
  const sh::Pixel px = sh::decode_pixel(49, 3, 5);  // 49 = ((3 * 3) + 0) * 5 + 4
  if (px.n != 3 || px.h != 0 || px.w != 4) return 2;
  if (sh::tap_mask_3x3(-1, -1, 5, 5) != 0b110110000u) return 3;  // top-left corner: taps (1..2, 1..2)
  if (sh::tap_mask_3x3(-1, -1, 1, 1) != 1u << 4) return 4;       // 1x1 image: only the centre tap
  if (sh::tap_mask_3x3(1, 1, 5, 5) != 0x1ffu) return 5;
  if (sh::group_first_input_channel(17, 8, 8) != 16 || sh::group_first_input_channel(17, 16, 4) != 4) return 6;
  if (sh::relu_if(-2.f, true) != 0.f || sh::relu_if(-2.f, false) != -2.f) return 7;
  const float nan = __builtin_nanf("");
  if (sh::relu_if(nan, true) == sh::relu_if(nan, true)) return 8;  // NaN must survive ReLU
  if (sh::sigmoid(0.f) != 0.5f || !(sh::sigmoid(-100.f) >= 0.f) || sh::sigmoid(100.f) != 1.f) return 9;
  if (sh::conv_epilogue(1.f, 2.f, -4.f, true) != 0.f || sh::conv_epilogue(1.f, 2.f, -4.f, false) != -1.f) return 10;
  if (sh::se_gate_epilogue(2.f, 0.25f, 1.f, true) != 1.5f) return 11;
  return 0;
}

}  // extern "C"

// How much does a oneDNN convolution cost per call when its primitive is made once and executed
// directly (no torch op around it)? Batch-1 RegNetX-400MF conv shapes, NHWC, bias + ReLU post-op,
// weights in oneDNN's preferred layout, user scratchpad. Built and run by probe.sh against a
// oneDNN of our own (PyPI's onednn-cpu-gomp); compare with torch's mkldnn op on the same shapes
// (bench/NOTES.md, Step 20). An experiment, not part of the extension.
#include <dnnl.hpp>
#include <unordered_map>
#include <chrono>
#include <cstdio>
#include <vector>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

// Best of 5 rounds of 500 executions, in microseconds per call; prints the implementation chosen.
double bench(engine& eng, stream& s, dt t, int n, int c, int hw, int k, int groups) {
  memory::dims src_d = {n, c, hw, hw}, dst_d = {n, c, hw, hw}, bias_d = {c};
  memory::dims w_d = groups == 1 ? memory::dims{c, c, k, k} : memory::dims{groups, c / groups, c / groups, k, k};
  auto src_md = memory::desc(src_d, t, tag::nhwc);
  auto dst_md = memory::desc(dst_d, t, tag::nhwc);
  auto w_any = memory::desc(w_d, t, tag::any);
  auto b_md = memory::desc(bias_d, t, tag::x);
  post_ops po; po.append_eltwise(algorithm::eltwise_relu, 0.f, 0.f);
  primitive_attr attr; attr.set_post_ops(po); attr.set_scratchpad_mode(scratchpad_mode::user);
  int p = (k - 1) / 2;
  auto pd = convolution_forward::primitive_desc(eng, prop_kind::forward_inference, algorithm::convolution_direct,
      src_md, w_any, b_md, dst_md, {1, 1}, {p, p}, {p, p}, attr);
  memory src(src_md, eng), dst(dst_md, eng), w(pd.weights_desc(), eng), b(b_md, eng), sp(pd.scratchpad_desc(), eng);
  convolution_forward conv(pd);
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b},
                                          {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, sp}};
  for (int i = 0; i < 50; ++i) conv.execute(s, args);
  s.wait();
  double best = 1e9;
  for (int r = 0; r < 5; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 500; ++i) conv.execute(s, args);
    s.wait();
    double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 500;
    if (us < best) best = us;
  }
  printf("%s n%d c%d %dpx k%d g%d: %.1f us  (impl %s)\n", t == dt::bf16 ? "bf16" : "fp32", n, c, hw, k, groups, best,
         pd.impl_info_str());
  return best;
}

int main() {
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  for (auto t : {dt::f32, dt::bf16}) {
    bench(eng, s, t, 1, 64, 56, 1, 1);
    bench(eng, s, t, 1, 160, 14, 1, 1);
    bench(eng, s, t, 1, 384, 7, 1, 1);
    bench(eng, s, t, 1, 160, 14, 3, 10);
    bench(eng, s, t, 1, 384, 7, 3, 24);
  }
}

// CPU implementations of the regnet_kernels ops (schemas in csrc/ops.cpp): argument checks,
// output allocation, weight packing and the run-time ISA choice. The kernels themselves are in
// kernels_impl.h, compiled per ISA (see csrc/cpu/README.md).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <cstdlib>
#include <vector>

#include "common.h"
#include "cpu/kernel_args.h"
#include "cpu/ops_cpu.h"
#include "cpu/pool_allocator.h"
#include "cpu/parallel.h"

namespace regnet_kernels {
namespace cpu {

const IsaKernels& selected_kernels() {
  // ATen's own choice (cpuinfo + the ATEN_CPU_CAPABILITY override), read once.
  static const IsaKernels& chosen = []() -> const IsaKernels& {
#ifdef REGNET_CPU_X86
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return kernels_avx512();
    if (cap == "AVX2") return kernels_avx2();
#endif
    return kernels_default();
  }();
  return chosen;
}

namespace {

bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

// Checks every op makes of its activation input x.
void check_activation(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(is_kernel_dtype(x.scalar_type()), op, ": x dtype must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.stride(1) == 1 || x.size(1) == 1, op,
              ": x must be channels-last (stride of C == 1), got strides ", x.strides());
}

// An optional tensor that must match x in device and dtype, with `shape` and channel stride 1.
void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                  at::IntArrayRef shape, bool channels_last) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " like x, got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " dtype must be ", x.scalar_type(),
              " (the dtype of x), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  if (channels_last)
    TORCH_CHECK(t.stride(1) == 1 || t.size(1) == 1, op, ": ", name,
                " must be channels-last (stride of C == 1), got strides ", t.strides());
}

// A small parameter tensor (weights, biases, gate, sums) as contiguous fp32. An fp32 contiguous
// tensor is returned as is: the two no-op conversions cost ~0.2 us each through the dispatcher,
// which counts in a batch-1 SE op of ~10 us.
at::Tensor as_float_param(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                          at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " like x, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == x.scalar_type(), op, ": ", name,
              " dtype must be float32 or ", x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t;
  return t.to(at::kFloat).contiguous();
}

// An FC weight given as [out, in] or as a 1x1 conv weight [out, in, 1, 1]: its [out, in] shape.
// The kernels read it through its strides (fc_strides), so no view is made.
std::array<int64_t, 2> fc_shape(const char* op, const char* name, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1), op, ": ", name,
              " must be [out, in] or [out, in, 1, 1], got ", w.sizes());
  return {w.size(0), w.size(1)};
}

// An FC weight (see fc_shape) as contiguous fp32 [out, in] data: a 4-D [out, in, 1, 1] weight
// whose first two strides are contiguous is used in place.
at::Tensor fc_as_float(const char* op, const char* name, const at::Tensor& w, const at::Tensor& x,
                       std::array<int64_t, 2> shape) {
  const auto got = fc_shape(op, name, w);
  TORCH_CHECK(got == shape, op, ": ", name, " must have shape [", shape[0], ", ", shape[1], "] (or [", shape[0],
              ", ", shape[1], ", 1, 1]), got ", w.sizes());
  const bool dense = w.stride(1) == 1 && w.stride(0) == shape[1];
  if (w.dim() == 4 && w.scalar_type() == at::kFloat && w.device() == x.device() && dense) return w;
  return as_float_param(op, name, w.dim() == 2 ? w : w.flatten(1), x, {shape[0], shape[1]});
}

// How a conv's weights are packed for the kernel (ConvProblem: nv, co_blocks, pair_groups).
struct WeightLayout {
  int64_t groups, nv, co_blocks, lanes;
  bool pair_groups;
  bool operator==(const WeightLayout& o) const {
    return groups == o.groups && nv == o.nv && co_blocks == o.co_blocks && lanes == o.lanes &&
           pair_groups == o.pair_groups;
  }
};

// Weight [C_out, C_in/groups, k, k] repacked to fp32 [group][block][kh][kw][ci][nv * lanes],
// zero-padded to whole vectors, and the bias to [group][block][nv * lanes]. With paired groups
// a "group" is a pair of groups with their lanes interleaved: lane 2i + j of vector k holds
// output channel k * lanes/2 + i of group j of the pair (kernel_args.h).
std::pair<at::Tensor, at::Tensor> pack_weights(const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                               const WeightLayout& layout) {
  const int64_t groups = layout.groups, nv = layout.nv, co_blocks = layout.co_blocks, lanes = layout.lanes;
  const int64_t cout_g = weight.size(0) / groups, cin_g = weight.size(1), k = weight.size(2);
  const int64_t vw = nv * lanes, blocks = kernel_groups(groups, layout.pair_groups) * co_blocks;
  auto w32 = weight.to(at::kFloat);  // a no-op for fp32 weights; strides are honoured below
  auto b32 = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  auto w_packed = at::zeros({blocks * k * k * cin_g * vw}, weight.options().dtype(at::kFloat));
  auto b_packed = at::zeros({blocks * vw}, weight.options().dtype(at::kFloat));
  const float* src = w32.const_data_ptr<float>();
  const int64_t s0 = w32.stride(0), s1 = w32.stride(1), s2 = w32.stride(2), s3 = w32.stride(3);
  float* wp = w_packed.mutable_data_ptr<float>();
  float* bp = b_packed.mutable_data_ptr<float>();
  const float* bsrc = bias ? b32.const_data_ptr<float>() : nullptr;
  // Output channel of lane j of block cb of (kernel) group g, or -1 for a zero lane.
  const auto lane_channel = [&](int64_t g, int64_t cb, int64_t j) -> int64_t {
    if (!layout.pair_groups) return cb * vw + j < cout_g ? g * cout_g + cb * vw + j : -1;
    const int64_t vector = cb * nv + j / lanes, lane = j % lanes;
    const int64_t group = 2 * g + lane % 2, channel = vector * (lanes / 2) + lane / 2;
    return group < groups && channel < cout_g ? group * cout_g + channel : -1;
  };
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t block = b0; block < b1; ++block) {
      const int64_t g = block / co_blocks, cb = block % co_blocks;
      float* dst = wp + block * k * k * cin_g * vw;
      for (int64_t kh = 0; kh < k; ++kh)
        for (int64_t kw = 0; kw < k; ++kw)
          for (int64_t ci = 0; ci < cin_g; ++ci, dst += vw)
            for (int64_t j = 0; j < vw; ++j) {
              const int64_t co = lane_channel(g, cb, j);
              if (co >= 0) dst[j] = src[co * s0 + ci * s1 + kh * s2 + kw * s3];
            }
      for (int64_t j = 0; bsrc && j < vw; ++j) {
        const int64_t co = lane_channel(g, cb, j);
        if (co >= 0) bp[block * vw + j] = bsrc[co];
      }
    }
  });
  return {w_packed, b_packed};
}

// Packed weights cached per weight (and bias) storage, so a fused conv's weights are packed once
// instead of on every call: at batch 1 the packing (a zero fill and a strided gather) was 25-45%
// of a stage-4 grouped conv (bench/NOTES.md, Step 10). An entry serves a call while the weight's
// storage is alive (weak reference) with the same data pointer, sizes, strides, dtype and version
// counter (in-place updates through the tensor or its views bump it), and the same for the bias.
// Views made per call (gated_conv1x1's 4-D view of a 2-D weight) hit too: the key is the storage,
// not the tensor object. Inference tensors have no version counter: packed on every call. An
// update through `.data` (which gets its own version counter) is not seen, as in the Python cache.
class PackedWeightCache {
 public:
  std::pair<at::Tensor, at::Tensor> get(const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                        const WeightLayout& layout) {
    if (weight.is_inference() || (bias && bias->is_inference())) {
      return pack_weights(weight, bias, layout);
    }
    Entry probe = describe(weight, bias, layout);
    std::lock_guard<std::mutex> lock(mu_);
    auto& bucket = entries_[probe.w.data];
    for (const Entry& e : bucket) {
      if (e.matches(probe, weight, bias)) {
        ++hits_;
        return {e.w_packed, e.b_packed};
      }
    }
    prune_locked();  // on every miss (rare, and dearer than the scan): dead weights' copies go
    {
      CpuPoolBypass long_lived;  // the copy lives as long as the weight, not the forward
      probe.set_packed(pack_weights(weight, bias, layout));
    }
    entries_[probe.w.data].push_back(probe);  // (the prune may have dropped `bucket`)
    ++size_;
    return {probe.w_packed, probe.b_packed};
  }

  std::map<std::string, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {{"entries", static_cast<int64_t>(size_)}, {"hits", hits_}};
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
    size_ = 0;
  }

 private:
  static constexpr size_t kMaxEntries = 1024;

  struct Source {  // what a packed copy was made from
    std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> storage;  // empty: no bias
    const void* data = nullptr;
    std::vector<int64_t> sizes, strides;
    at::ScalarType dtype = at::kFloat;
    int64_t version = 0;

    static Source of(const at::Tensor& t) {
      Source s;
      s.storage.emplace(t.storage().getWeakStorageImpl());
      s.data = t.const_data_ptr();
      s.sizes = t.sizes().vec();
      s.strides = t.strides().vec();
      s.dtype = t.scalar_type();
      s.version = t._version();
      return s;
    }

    bool expired() const { return storage && storage->expired(); }

    // `t` is the tensor `o` describes (nullptr for no bias).
    bool same(const Source& o, const at::Tensor* t) const {
      if (storage.has_value() != o.storage.has_value()) return false;
      if (!storage) return true;
      // The storage must be the live one the copy was made from, not a new one at the address.
      return storage->lock().get() == t->storage().unsafeGetStorageImpl() && data == o.data && sizes == o.sizes &&
             strides == o.strides && dtype == o.dtype && version == o.version;
    }
  };

  struct Entry {
    Source w, b;
    WeightLayout layout{};
    at::Tensor w_packed, b_packed;

    bool matches(const Entry& probe, const at::Tensor& weight, const std::optional<at::Tensor>& bias) const {
      return layout == probe.layout && w.same(probe.w, &weight) && b.same(probe.b, bias ? &*bias : nullptr);
    }
    void set_packed(std::pair<at::Tensor, at::Tensor> packed) {
      w_packed = std::move(packed.first);
      b_packed = std::move(packed.second);
    }
  };

  static Entry describe(const at::Tensor& weight, const std::optional<at::Tensor>& bias, const WeightLayout& layout) {
    Entry e;
    e.w = Source::of(weight);
    if (bias) e.b = Source::of(*bias);
    e.layout = layout;
    return e;
  }

  // Drop entries whose weight or bias storage is gone; if the rest still fill the cache, all.
  void prune_locked() {
    size_ = 0;
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto& bucket = it->second;
      bucket.erase(std::remove_if(bucket.begin(), bucket.end(),
                                  [](const Entry& e) { return e.w.expired() || e.b.expired(); }),
                   bucket.end());
      size_ += bucket.size();
      it = bucket.empty() ? entries_.erase(it) : std::next(it);
    }
    if (size_ >= kMaxEntries) {
      entries_.clear();
      size_ = 0;
    }
  }

  std::mutex mu_;
  std::unordered_map<const void*, std::vector<Entry>> entries_;  // weight data pointer -> entries
  size_t size_ = 0;
  int64_t hits_ = 0;
};

PackedWeightCache& packed_weight_cache() {
  static PackedWeightCache* cache = new PackedWeightCache();  // never destroyed (exit order)
  return *cache;
}

}  // namespace

std::map<std::string, int64_t> packed_weight_stats() { return packed_weight_cache().stats(); }
void clear_packed_weights() { packed_weight_cache().clear(); }

namespace {

// Output-channel blocking: vectors of output channels per block (1-4; blocks have equal widths,
// zero-padded), from a cost model of the micro-kernel for one output row, in cycles:
// - each input-channel step of a tile of P pixels costs max(P nv FMAs, 1.5 (nv + P) loads);
// - a block's packed weights (steps x nv vectors) stream from L2 once per tile, or once per
//   row if they fit in L1 (kL1WeightBytes), at ~32 bytes per cycle.
// Fitted on an AMD EPYC (bench/NOTES.md, Step 11), against blocks of 4 vectors as even as
// possible: 160 channels as 5 x 2 vectors instead of 3 x 4 (12 vectors for 10) 14-18% faster;
// 384 and 440 on 7-pixel rows as blocks of 3 with one 7-pixel tile instead of blocks of 4
// (tiles of 4 and 3, weights streamed twice) 7-18% faster; single-vector blocks lose (a
// broadcast per FMA), hence the load weight. Wider blocks win ties within 3%.
constexpr int64_t kL1WeightBytes = 24 * 1024;

int64_t vectors_per_block(const IsaKernels& isa, int64_t vectors, int64_t w_out, int64_t steps) {
  int64_t best_nv = 0;
  double best_cost = 0;
  for (int64_t nv = std::min<int64_t>(4, vectors); nv >= 1; --nv) {
    const int64_t blocks = (vectors + nv - 1) / nv, max_px = isa.max_pixels(nv);
    const int64_t tiles = (w_out + max_px - 1) / max_px;
    double fma_cycles = 0;
    for (int64_t t = 0, done = 0; t < tiles; ++t) {
      const int64_t p = (w_out - done + (tiles - t) - 1) / (tiles - t);  // the kernel's equal split
      fma_cycles += static_cast<double>(steps) * std::max<double>(p * nv, 1.5 * (nv + p));
      done += p;
    }
    const int64_t block_bytes = steps * nv * isa.lanes * static_cast<int64_t>(sizeof(float));
    const int64_t streams = block_bytes <= kL1WeightBytes ? 1 : tiles;
    const double cost = static_cast<double>(blocks) * (fma_cycles + static_cast<double>(streams * block_bytes) / 32.0);
    if (best_nv == 0 || cost < best_cost * 0.97) best_nv = nv, best_cost = cost;
  }
  return best_nv;
}

// Shared by conv_bn_act, conv_bn_act_sums and gated_conv1x1. Returns y; fills sums if given.
// One conv's weight and bias checked against its input (in_shape, with x's dtype and device;
// `in` names the input in messages), and its problem without the activations' pointers and
// strides. `packed` keeps the packed weights alive while the kernel runs.
ConvProblem conv_problem(const char* op, const char* in, at::IntArrayRef in_shape, const at::Tensor& x,
                         const char* w_name, const at::Tensor& weight, const char* b_name,
                         const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding, int64_t groups,
                         bool relu, std::pair<at::Tensor, at::Tensor>& packed) {
  TORCH_CHECK(weight.dim() == 4, op, ": ", w_name, " must be 4-D [C_out, C_in/groups, k, k], got ", weight.dim(),
              "-D");
  TORCH_CHECK(weight.device() == x.device(), op, ": ", w_name, " must be on ", x.device(), ", got ",
              weight.device());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": ", w_name, " dtype must be ", x.scalar_type(),
              " (the dtype of x), got ", weight.scalar_type());
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  const int64_t n = in_shape[0], c_in = in_shape[1], h = in_shape[2], w = in_shape[3];
  const int64_t c_out = weight.size(0), k = weight.size(2);
  // (The kernels assume every group has input channels: micro-kernel's assume_channels.)
  TORCH_CHECK(c_in >= 1, op, ": ", in, " must have at least one channel, got shape ", in_shape);
  TORCH_CHECK(k == weight.size(3) && (k == 1 || k == 3), op, ": ", w_name, " must be a 1x1 or 3x3 kernel, got ",
              weight.size(2), "x", weight.size(3));
  TORCH_CHECK(c_in % groups == 0 && c_out % groups == 0, op, ": groups=", groups, " must divide C_in=", c_in,
              " (channels of ", in, ") and C_out=", c_out);
  TORCH_CHECK(weight.size(1) == c_in / groups, op, ": ", w_name, " must have C_in/groups=", c_in / groups,
              " input channels (", in, " has ", c_in, "), got shape ", weight.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(padding == (k - 1) / 2, op, ": padding must be ", (k - 1) / 2, " for a ", k, "x", k,
              " kernel, got ", padding);
  const int64_t h_out = (h + 2 * padding - k) / stride + 1, w_out = (w + 2 * padding - k) / stride + 1;
  TORCH_CHECK(h_out >= 1 && w_out >= 1, op, ": ", in, " of shape ", in_shape, " gives an empty output");
  if (bias) {
    TORCH_CHECK(bias->device() == x.device() && bias->scalar_type() == x.scalar_type() && bias->dim() == 1 &&
                    bias->size(0) == c_out,
                op, ": ", b_name, " must be a [", c_out, "] ", x.scalar_type(), " tensor on ", x.device(),
                ", got ", bias->sizes(), " ", bias->scalar_type(), " on ", bias->device());
  }
  const IsaKernels& isa = selected_kernels();
  const int64_t cout_g = c_out / groups, cin_g = c_in / groups;
  // A group width that is an odd number of half vectors, up to 4 vectors a pair (8 or 24 with
  // AVX-512): pairs of groups share vectors (kernel_args.h), so no lane idles. (3x3 only: an
  // unpadded 1x1 may read x in place, in its channel order.)
  const int64_t half = isa.lanes / 2;
  const bool pair_groups = k == 3 && groups > 1 && cin_g == cout_g && cout_g % half == 0 &&
                           cout_g % isa.lanes != 0 && 2 * cout_g <= 4 * isa.lanes;
  const int64_t vectors = pair_groups ? 2 * cout_g / isa.lanes : (cout_g + isa.lanes - 1) / isa.lanes;
  const int64_t nv = pair_groups ? vectors : vectors_per_block(isa, vectors, w_out, cin_g * k * k);
  const int64_t co_blocks = (vectors + nv - 1) / nv;
  packed = packed_weight_cache().get(weight, bias, {groups, nv, co_blocks, isa.lanes, pair_groups});

  ConvProblem p{};
  p.dtype = x.scalar_type();
  p.n = n, p.c_in = c_in, p.h = h, p.w = w;
  p.k = k, p.stride = stride, p.pad = padding, p.groups = groups, p.cin_g = cin_g, p.cout_g = cout_g;
  p.w_packed = packed.first.const_data_ptr<float>();
  p.b_packed = packed.second.const_data_ptr<float>();
  p.nv = nv, p.co_blocks = co_blocks, p.pair_groups = pair_groups;
  p.relu = relu;
  p.c_out = c_out, p.h_out = h_out, p.w_out = w_out;
  return p;
}

// Runs p (its x or pre already set) into a new output in x's layout, with the residual and the
// fp32 per-(n, c) sums if asked for. With `launch`, p is the post of the conv `launch`, which is
// what runs (x_block: p is K4, launch K2).
at::Tensor run_problem(const char* op, ConvProblem& p, const at::Tensor& x, const std::optional<at::Tensor>& residual,
                       at::Tensor* sums, const ConvProblem* launch = nullptr) {
  const std::vector<int64_t> out_shape{p.n, p.c_out, p.h_out, p.w_out};
  if (residual) check_like_x(op, "residual", *residual, x, out_shape, true);
  at::Tensor y = new_output(x, out_shape);
  at::Tensor row_sums;
  if (sums) {
    *sums = new_output(x, {p.n, p.c_out}, at::kFloat);
    row_sums = at::empty({p.n * p.h_out, p.c_out}, x.options().dtype(at::kFloat));
  }
  if (y.numel() == 0) {
    if (sums) sums->zero_();
    return y;
  }
  p.residual = residual ? residual->const_data_ptr() : nullptr;
  if (residual) p.r_sn = residual->stride(0), p.r_sh = residual->stride(2), p.r_sw = residual->stride(3);
  p.y = y.mutable_data_ptr();
  p.y_sn = y.stride(0), p.y_sh = y.stride(2), p.y_sw = y.stride(3);
  p.sums = sums ? sums->mutable_data_ptr<float>() : nullptr;
  p.row_sums = sums ? row_sums.mutable_data_ptr<float>() : nullptr;
  selected_kernels().conv(launch ? *launch : p);
  return y;
}

void set_input(ConvProblem& p, const at::Tensor& x) {
  p.x = x.const_data_ptr();
  p.x_sn = x.stride(0), p.x_sh = x.stride(2), p.x_sw = x.stride(3);
}

// conv [+ gate on load] + bias [+ residual] [+ ReLU] [+ sums].
at::Tensor run_conv(const char* op, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    int64_t stride, int64_t padding, int64_t groups, const std::optional<at::Tensor>& residual,
                    bool relu, const at::Tensor& gate, at::Tensor* sums) {
  check_activation(op, x);
  std::pair<at::Tensor, at::Tensor> packed;
  ConvProblem p =
      conv_problem(op, "x", x.sizes(), x, "weight", weight, "bias", bias, stride, padding, groups, relu, packed);
  set_input(p, x);
  p.gate = gate.defined() ? gate.const_data_ptr<float>() : nullptr;
  p.gate_sn = gate.defined() ? gate.stride(0) : 0;
  return run_problem(op, p, x, residual, sums);
}

// The convs of a fused op (kernel_args.h, ConvProblem::pre and ::post) and their packed weights.
// Not copyable: k2 points at k1 (and at k4 in x_block).
struct FusedConvs {
  ConvProblem k1, k2, k4, kp;  // kp: x_block's projection shortcut
  std::pair<at::Tensor, at::Tensor> packed1, packed2, packed4, packedp;
  FusedConvs() = default;
  FusedConvs(const FusedConvs&) = delete;
  FusedConvs& operator=(const FusedConvs&) = delete;
};

// K1 (1x1 + bias + ReLU, reading x) and K2 (its conv, [ReLU]) computing K1's rows as it packs them.
void set_front(const char* op, const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
               const at::Tensor& w2, const std::optional<at::Tensor>& b2, int64_t stride, int64_t padding,
               int64_t groups, bool relu, FusedConvs& f) {
  check_activation(op, x);
  TORCH_CHECK(w1.dim() == 4 && w1.size(2) == 1 && w1.size(3) == 1, op,
              ": w1 must be a 1x1 kernel [C_mid, C_in, 1, 1], got ", w1.sizes());
  f.k1 = conv_problem(op, "x", x.sizes(), x, "w1", w1, "b1", b1, 1, 0, 1, true, f.packed1);
  set_input(f.k1, x);
  const std::vector<int64_t> mid_shape{f.k1.n, f.k1.c_out, f.k1.h_out, f.k1.w_out};
  f.k2 = conv_problem(op, "w1's output", mid_shape, x, "w2", w2, "b2", b2, stride, padding, groups, relu, f.packed2);
  f.k2.pre = &f.k1;
}

// K1 fused into K2: conv2(relu(conv1x1(x, w1) + b1)) + b2 [+ ReLU] [+ sums], K1's output never
// stored.
at::Tensor run_conv_pair(const char* op, const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const std::optional<at::Tensor>& b2, int64_t stride, int64_t padding,
                         int64_t groups, bool relu, at::Tensor* sums) {
  FusedConvs f;
  set_front(op, x, w1, b1, w2, b2, stride, padding, groups, relu, f);
  return run_problem(op, f.k2, x, std::nullopt, sums);
}

at::Tensor conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           int64_t stride, int64_t padding, int64_t groups, const std::optional<at::Tensor>& residual,
                           bool relu) {
  return run_conv("conv_bn_act", x, weight, bias, stride, padding, groups, residual, relu, at::Tensor(), nullptr);
}

std::tuple<at::Tensor, at::Tensor> conv_bn_act_sums_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias, int64_t stride,
                                                        int64_t padding, int64_t groups, bool relu) {
  at::Tensor sums;
  at::Tensor y = run_conv("conv_bn_act_sums", x, weight, bias, stride, padding, groups, std::nullopt, relu,
                          at::Tensor(), &sums);
  return {y, sums};
}

// A whole X block: relu(conv1x1(K2(K1(x))) + b3 + shortcut), K1's and K2's outputs never stored.
// The shortcut is `residual`, or with wp the projection conv1x1(x, wp, stride) + bp, computed row
// by row inside the op (ConvProblem::proj); exactly one of the two is given.
at::Tensor x_block_cpu(const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                       const at::Tensor& w2, const std::optional<at::Tensor>& b2, int64_t stride, int64_t padding,
                       int64_t groups, const at::Tensor& w3, const std::optional<at::Tensor>& b3,
                       const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& wp,
                       const std::optional<at::Tensor>& bp) {
  const char* op = "x_block";
  TORCH_CHECK(residual.has_value() != wp.has_value(), op,
              ": expected exactly one shortcut, residual or wp (the projection's weight), got ",
              residual ? "both" : "neither");
  TORCH_CHECK(wp || !bp, op, ": bp (the projection's bias) must be None without wp");
  FusedConvs f;
  set_front(op, x, w1, b1, w2, b2, stride, padding, groups, true, f);
  TORCH_CHECK(w3.dim() == 4 && w3.size(2) == 1 && w3.size(3) == 1, op,
              ": w3 must be a 1x1 kernel [C_out, C_mid, 1, 1], got ", w3.sizes());
  const std::vector<int64_t> mid_shape{f.k2.n, f.k2.c_out, f.k2.h_out, f.k2.w_out};
  f.k4 = conv_problem(op, "w2's output", mid_shape, x, "w3", w3, "b3", b3, 1, 0, 1, true, f.packed4);
  f.k2.post = &f.k4;
  if (wp) {
    TORCH_CHECK(wp->dim() == 4 && wp->size(2) == 1 && wp->size(3) == 1, op,
                ": wp must be a 1x1 kernel [C_out, C_in, 1, 1], got ", wp->sizes());
    f.kp = conv_problem(op, "x", x.sizes(), x, "wp", *wp, "bp", bp, stride, 0, 1, false, f.packedp);
    set_input(f.kp, x);
    TORCH_CHECK(f.kp.c_out == f.k4.c_out && f.kp.h_out == f.k4.h_out && f.kp.w_out == f.k4.w_out, op,
                ": the projection's output [", f.kp.c_out, ", ", f.kp.h_out, ", ", f.kp.w_out,
                "] must match the block's [", f.k4.c_out, ", ", f.k4.h_out, ", ", f.k4.w_out, "]");
    f.k4.proj = &f.kp;
  }
  return run_problem(op, f.k4, x, residual, nullptr, &f.k2);
}

at::Tensor conv1x1_conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                   const at::Tensor& w2, const std::optional<at::Tensor>& b2, int64_t stride,
                                   int64_t padding, int64_t groups, bool relu) {
  return run_conv_pair("conv1x1_conv_bn_act", x, w1, b1, w2, b2, stride, padding, groups, relu, nullptr);
}

std::tuple<at::Tensor, at::Tensor> conv1x1_conv_bn_act_sums_cpu(const at::Tensor& x, const at::Tensor& w1,
                                                                const std::optional<at::Tensor>& b1,
                                                                const at::Tensor& w2,
                                                                const std::optional<at::Tensor>& b2, int64_t stride,
                                                                int64_t padding, int64_t groups, bool relu) {
  at::Tensor sums;
  at::Tensor y =
      run_conv_pair("conv1x1_conv_bn_act_sums", x, w1, b1, w2, b2, stride, padding, groups, relu, &sums);
  return {y, sums};
}

at::Tensor gated_conv1x1_cpu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                             bool relu) {
  const char* op = "gated_conv1x1";
  check_activation(op, x);
  TORCH_CHECK(weight.dim() == 2 || (weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1), op,
              ": weight must be [C_out, C] or [C_out, C, 1, 1], got ", weight.sizes());
  const at::Tensor w4 = weight.dim() == 2 ? weight.unsqueeze(2).unsqueeze(3) : weight;
  TORCH_CHECK(w4.size(1) == x.size(1), op, ": weight must have C=", x.size(1), " input channels, got ",
              weight.sizes());
  const at::Tensor gate32 = as_float_param(op, "gate", gate, x, {x.size(0), x.size(1)});
  return run_conv(op, x, w4, bias, 1, 0, 1, residual, relu, gate32, nullptr);
}

at::Tensor channel_sums_cpu(const at::Tensor& x) {
  check_activation("channel_sums", x);
  at::Tensor out = new_output(x, {x.size(0), x.size(1)}, at::kFloat);
  if (x.numel() == 0) return out.zero_();
  at::Tensor row_sums = at::empty({x.size(0) * x.size(2), x.size(1)}, x.options().dtype(at::kFloat));
  selected_kernels().channel_sums(SumsProblem{x.scalar_type(), x.const_data_ptr(), x.size(0), x.size(1), x.size(2),
                                              x.size(3), x.stride(0), x.stride(2), x.stride(3),
                                              out.mutable_data_ptr<float>(), row_sums.mutable_data_ptr<float>()});
  return out;
}

// The SE MLP's weights as the kernels read them (fp32; W2 input-major when given so), checked
// against C channels; `like` gives the device and the dtype the weights may also have.
struct SeWeights {
  at::Tensor w1, b1, w2, b2;
  bool w2_by_input = false;
  int64_t c_se = 0;
};

SeWeights se_weights(const char* op, const at::Tensor& like, int64_t c, const at::Tensor& w1, const at::Tensor& b1,
                     const at::Tensor& w2, const at::Tensor& b2) {
  SeWeights s;
  s.c_se = fc_shape(op, "w1", w1)[0];
  TORCH_CHECK(s.c_se >= 1, op, ": w1 must have at least one output, got ", w1.sizes());
  s.w1 = fc_as_float(op, "w1", w1, like, {s.c_se, c});
  // W2 [c, c_se] with strides (1, c) (a transposed contiguous [c_se, c], as the cpu backend
  // caches it) is read in place: the gate is then computed on whole vectors of channels.
  // Any other layout is made a contiguous [c, c_se].
  s.w2_by_input = w2.dim() == 2 && w2.scalar_type() == at::kFloat && w2.device() == like.device() &&
                  w2.sizes() == at::IntArrayRef{c, s.c_se} && c > 1 && w2.stride(0) == 1 && w2.stride(1) == c;
  s.w2 = s.w2_by_input ? w2 : fc_as_float(op, "w2", w2, like, {c, s.c_se});
  s.b1 = as_float_param(op, "b1", b1, like, {s.c_se});
  s.b2 = as_float_param(op, "b2", b2, like, {c});
  return s;
}

void set_se_weights(SeProblem& p, const SeWeights& s) {
  p.w1 = s.w1.const_data_ptr<float>(), p.b1 = s.b1.const_data_ptr<float>();
  p.w2 = s.w2.const_data_ptr<float>(), p.b2 = s.b2.const_data_ptr<float>();
  p.w2_by_input = s.w2_by_input;
  p.c_se = s.c_se;
}

at::Tensor se_gate_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                       const at::Tensor& b2, const std::optional<at::Tensor>& residual, bool relu,
                       const std::optional<at::Tensor>& sums) {
  const char* op = "se_gate";
  check_activation(op, x);
  const int64_t n = x.size(0), c = x.size(1);
  const SeWeights weights = se_weights(op, x, c, w1, b1, w2, b2);
  at::Tensor sums32;
  if (sums) {
    TORCH_CHECK(sums->scalar_type() == at::kFloat, op, ": sums must be float32, got ", sums->scalar_type());
    sums32 = as_float_param(op, "sums", *sums, x, {n, c});
  }
  if (residual) check_like_x(op, "residual", *residual, x, x.sizes(), true);

  at::Tensor y = new_output(x, x.sizes());
  if (y.numel() == 0) return y;
  // One scratch allocation: the gate [n][c], then the row sums [n * h][c] when x is summed here.
  at::Tensor scratch = at::empty({(n + (sums ? 0 : n * x.size(2))) * c}, x.options().dtype(at::kFloat));
  SeProblem p{};
  p.dtype = x.scalar_type();
  p.x = x.const_data_ptr();
  p.n = n, p.c = c, p.h = x.size(2), p.w = x.size(3);
  p.x_sn = x.stride(0), p.x_sh = x.stride(2), p.x_sw = x.stride(3);
  p.sums = sums ? sums32.const_data_ptr<float>() : nullptr;
  set_se_weights(p, weights);
  p.residual = residual ? residual->const_data_ptr() : nullptr;
  if (residual) p.r_sn = residual->stride(0), p.r_sh = residual->stride(2), p.r_sw = residual->stride(3);
  p.relu = relu;
  p.y = y.mutable_data_ptr();
  p.y_sn = y.stride(0), p.y_sh = y.stride(2), p.y_sw = y.stride(3);
  p.gate = scratch.mutable_data_ptr<float>();
  p.row_sums = sums ? nullptr : p.gate + n * c;
  selected_kernels().se_gate(p);
  return y;
}

at::Tensor se_excite_cpu(const at::Tensor& sums, int64_t hw, const at::Tensor& w1, const at::Tensor& b1,
                         const at::Tensor& w2, const at::Tensor& b2) {
  const char* op = "se_excite";
  TORCH_CHECK(sums.dim() == 2, op, ": sums must be 2-D [N, C], got ", sums.dim(), "-D");
  TORCH_CHECK(sums.device().is_cpu(), op, ": sums must be a CPU tensor, got ", sums.device());
  TORCH_CHECK(sums.scalar_type() == at::kFloat, op, ": sums must be float32, got ", sums.scalar_type());
  TORCH_CHECK(hw >= 1, op, ": hw (pixels the sums are over) must be >= 1, got ", hw);
  const int64_t n = sums.size(0), c = sums.size(1);
  const SeWeights weights = se_weights(op, sums, c, w1, b1, w2, b2);
  const at::Tensor sums32 = sums.contiguous();
  at::Tensor gate = new_output(sums, {n, c}, at::kFloat);
  if (gate.numel() == 0) return gate;
  SeProblem p{};
  p.dtype = at::kFloat;
  p.n = n, p.c = c, p.h = hw, p.w = 1;
  p.sums = sums32.const_data_ptr<float>();
  set_se_weights(p, weights);
  p.gate = gate.mutable_data_ptr<float>();
  selected_kernels().se_excite(p);
  return gate;
}

}  // namespace

TORCH_LIBRARY_IMPL(regnet_kernels, CPU, m) {
  m.impl("conv_bn_act", &conv_bn_act_cpu);
  m.impl("conv_bn_act_sums", &conv_bn_act_sums_cpu);
  m.impl("conv1x1_conv_bn_act", &conv1x1_conv_bn_act_cpu);
  m.impl("x_block", &x_block_cpu);
  m.impl("conv1x1_conv_bn_act_sums", &conv1x1_conv_bn_act_sums_cpu);
  m.impl("gated_conv1x1", &gated_conv1x1_cpu);
  m.impl("se_gate", &se_gate_cpu);
  m.impl("se_excite", &se_excite_cpu);
  m.impl("channel_sums", &channel_sums_cpu);
}

}  // namespace cpu
}  // namespace regnet_kernels

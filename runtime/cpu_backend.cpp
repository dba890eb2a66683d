#include "runtime/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <mutex>
#include <tuple>

#include <fmt/format.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>

#include "kernels/cpu/direct_conv.h"
#include "kernels/cpu/eltwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/strip_conv.h"
#include "kernels/cpu/winograd.h"
#include "runtime/error.h"

namespace qsweep {

SpatialPlan plan_spatial(const NodeAttrs& a, int64_t h, int64_t w) {
  const int64_t in[2] = {h, w};
  int64_t out[2] = {0, 0}, pb[2] = {0, 0}, pe[2] = {0, 0};
  for (int d = 0; d < 2; ++d) {
    const int64_t k = a.kernel[d], s = a.strides[d], dil = a.dilations[d];
    const int64_t span = (k - 1) * dil + 1;
    switch (a.auto_pad) {
      case AutoPad::kSameUpper:
      case AutoPad::kSameLower: {
        out[d] = (in[d] + s - 1) / s;
        const int64_t total = std::max<int64_t>(0, (out[d] - 1) * s + span - in[d]);
        pb[d] = a.auto_pad == AutoPad::kSameUpper ? total / 2 : total - total / 2;
        pe[d] = total - pb[d];
        break;
      }
      case AutoPad::kValid:
        pb[d] = pe[d] = 0;
        out[d] = in[d] < span ? 0 : (in[d] - span) / s + 1;  // (division truncates toward 0)
        break;
      case AutoPad::kNotSet: {
        pb[d] = a.pads[d];
        pe[d] = a.pads[d + 2];
        const int64_t num = in[d] + pb[d] + pe[d] - span;
        if (num < 0) {  // the window is larger than the padded input (division truncates toward 0)
          out[d] = 0;
          break;
        }
        out[d] = (a.ceil_mode ? (num + s - 1) / s : num / s) + 1;
        // The last window must start inside the input or the left padding (PyTorch, ONNX).
        if (a.ceil_mode && (out[d] - 1) * s >= in[d] + pb[d]) --out[d];
        // Extra right padding so that (in + pb + pe - span) / s + 1 == out, as oneDNN checks.
        pe[d] = std::max(pe[d], (out[d] - 1) * s + span - in[d] - pb[d]);
        break;
      }
    }
    if (out[d] < 1) out[d] = 0;
  }
  return SpatialPlan{out[0], out[1], pb[0], pb[1], pe[0], pe[1]};
}

SpatialPlan plan_spatial(const Node& n, int64_t h, int64_t w) {
  const SpatialPlan sp = plan_spatial(n.attrs, h, w);
  if (sp.out_h < 1 || sp.out_w < 1) {
    user_error("node '{}' ({}) has a {}x{} window (dilations {}x{}) that does not fit in its {}x{} input with its "
               "padding", n.name, op_name(n.op), n.attrs.kernel[0], n.attrs.kernel[1], n.attrs.dilations[0],
               n.attrs.dilations[1], h, w);
  }
  return sp;
}

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// Key of a cached primitive: the node, the input shape it was created for, and the
// activation fused into it (nullptr: none).
using PrimKey = std::tuple<const Node*, int64_t, int64_t, int64_t, int64_t, bool, const Node*>;

struct CachedPrimitive {
  dnnl::primitive prim;
  memory::desc src, weights, bias, dst;  // the plain layouts qsweep's tensors use
  // Convolutions run in the layout oneDNN prefers (blocked, e.g. nChw16c on AVX-512) with
  // reorders at the boundary: much faster than plain NCHW, and the reorders are cheap next
  // to the convolution.
  memory::desc src_k, weights_k, dst_k;
  std::optional<dnnl::reorder> src_to_k, weights_to_k, k_to_dst;
};

class CpuContext final : public BackendContext {
 public:
  CpuContext(const dnnl::engine& eng, bool transforms) : engine(eng), stream(eng), transform_convs(transforms) {}
  dnnl::engine engine;
  dnnl::stream stream;
  std::map<PrimKey, CachedPrimitive> prims;
  Tensor bias_scratch;
  std::vector<float> src_k, weights_k, dst_k;  // blocked-layout buffers of the conv in flight
  Tensor padded;  // explicitly padded pooling input (see run_pool)
  std::vector<Tensor> nchw;  // NCHW copies of NHWC inputs, for ops that need NCHW
  Tensor conv_out;  // a conv's output on its way into a residual join that could not be fused
  bool transform_convs = false;  // run.conv_transforms: Winograd and strip convolutions where they apply
  WinogradScratch winograd;
  DirectConvScratch direct;
};

void check_rank(const Node& n, const Tensor& x, size_t rank) {
  if (x.rank() != rank) {
    user_error("node '{}' ({}) received an input of shape {}; it needs rank {}", n.name, op_name(n.op),
               shape_str(x.shape), rank);
  }
}

// A Relu or Clip as a clamp [lo, hi]: the epilogue of qsweep's convolution kernels, add_clamp.
void clamp_range(const Node& act, bool& clamp, float& lo, float& hi) {
  clamp = true;
  lo = act.op == OpType::kClip ? act.attrs.act_alpha : 0.0f;
  hi = act.op == OpType::kClip ? act.attrs.act_beta : std::numeric_limits<float>::infinity();
}

// out = act(conv(in)) (act: a Relu or Clip that alone consumes the conv's output, or null),
// or with `residual`: out = act(conv(in) + residual), act then being the residual join's
// activation and residual an NHWC tensor of the output's shape. Bit for bit the ops one
// after the other.
void run_conv(CpuContext& ctx, const Node& n, std::span<const Tensor* const> in, Tensor& out,
              const Node* act = nullptr, const Tensor* residual = nullptr) {
  const Tensor& x = *in[0];
  const Tensor& w = *in[1];
  check_rank(n, x, 4);
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t O = w.dim(0), G = n.attrs.group;
  if (C != w.dim(1) * G) {
    user_error("node '{}' (Conv) received {} input channels; its weight expects {} (group {})", n.name, C,
               w.dim(1) * G, G);
  }
  const SpatialPlan sp = plan_spatial(n, H, W);
  out.reshape_to({N, O, sp.out_h, sp.out_w});
  out.nhwc = true;
  const float* bias = in.size() > 2 ? in[2]->ptr() : nullptr;
  if (ctx.transform_convs && x.nhwc && G == 1 && w.dim(2) == 3 && w.dim(3) == 3 && n.attrs.strides[0] == 1 &&
      n.attrs.strides[1] == 1 && n.attrs.dilations[0] == 1 && n.attrs.dilations[1] == 1) {
    WinogradConv p;
    p.N = N, p.H = H, p.W = W, p.C = C, p.K = O;
    p.pad_t = sp.pad_t, p.pad_l = sp.pad_l, p.out_h = sp.out_h, p.out_w = sp.out_w;
    if (act != nullptr) clamp_range(*act, p.clamp, p.lo, p.hi);
    if (residual != nullptr) p.residual = residual->ptr();
    if (winograd_available(p)) {
      winograd_conv_f43(p, x.ptr(), w.ptr(), bias, out.ptr(), ctx.winograd);
      return;
    }
  }
  DirectConv dc;
  dc.N = N, dc.H = H, dc.W = W, dc.C = C, dc.K = O, dc.kh = w.dim(2), dc.kw = w.dim(3);
  dc.stride_h = n.attrs.strides[0], dc.stride_w = n.attrs.strides[1];
  dc.dil_h = n.attrs.dilations[0], dc.dil_w = n.attrs.dilations[1];
  dc.pad_t = sp.pad_t, dc.pad_l = sp.pad_l, dc.out_h = sp.out_h, dc.out_w = sp.out_w;
  if (act != nullptr) clamp_range(*act, dc.clamp, dc.lo, dc.hi);
  if (residual != nullptr) dc.residual = residual->ptr();
  if (ctx.transform_convs && x.nhwc && G == 1 && strip_conv_available(dc)) {
    // 16 input channels: sums reordered so that each input load feeds several outputs
    // (kernels/cpu/strip_conv.h); rounds differently from a direct sum, hence the option.
    strip_conv(dc, x.ptr(), w.ptr(), bias, out.ptr(), ctx.direct);
    return;
  }
  const bool strided = dc.stride_h > 1 || dc.stride_w > 1;
  if (x.nhwc && G == 1 && (C >= 32 || (strided && dc.kh == 1 && dc.kw == 1)) && direct_conv_available(dc)) {
    // 32+ input channels, or a strided 1x1: qsweep's direct kernel, which skips the taps on
    // padding (kernels/cpu/direct_conv.h). On the shipped ResNet it gave the same bits as
    // oneDNN's and made the default grid 1.1x faster (bench/RESULTS.md); with 16 input
    // channels oneDNN's was faster.
    direct_conv(dc, x.ptr(), w.ptr(), bias, out.ptr(), ctx.direct);
    return;
  }
  if (residual != nullptr) {  // oneDNN's convolution, then the join as its own loop
    run_conv(ctx, n, in, out);
    bool clamp = false;
    float lo = 0.0f, hi = 0.0f;
    clamp_range(*act, clamp, lo, hi);
    add_clamp(out.ptr(), residual->ptr(), out.ptr(), out.numel(), lo, hi, act->op == OpType::kRelu);
    return;
  }
  const PrimKey key{&n, N, C, H, W, x.nhwc, act};
  auto it = ctx.prims.find(key);
  if (it == ctx.prims.end()) {
    CachedPrimitive c;
    // Activations stay NHWC from conv to conv (oneDNN's convolutions read and write it
    // natively), so only the first conv's input is reordered.
    c.src = memory::desc({N, C, H, W}, dt::f32, x.nhwc ? tag::nhwc : tag::nchw);
    c.dst = memory::desc({N, O, sp.out_h, sp.out_w}, dt::f32, tag::nhwc);
    if (G == 1) {
      c.weights = memory::desc({O, C, w.dim(2), w.dim(3)}, dt::f32, tag::oihw);
    } else {
      c.weights = memory::desc({G, O / G, C / G, w.dim(2), w.dim(3)}, dt::f32, tag::goihw);
    }
    c.bias = memory::desc({O}, dt::f32, tag::x);
    const memory::dims strides = {n.attrs.strides[0], n.attrs.strides[1]};
    const memory::dims dil = {n.attrs.dilations[0] - 1, n.attrs.dilations[1] - 1};
    const memory::dims pl = {sp.pad_t, sp.pad_l}, pr = {sp.pad_b, sp.pad_r};
    const memory::desc src_any({N, C, H, W}, dt::f32, C == 1 ? tag::any : tag::nhwc);
    const memory::desc wei_any(c.weights.dims(), dt::f32, tag::any);
    dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                      src_any, wei_any, c.bias, c.dst, strides, dil, pl, pr);
    dnnl::primitive_attr attr;
    if (act != nullptr) {  // y = act(conv(x)): ReLU and clip are exact in either order of operations
      dnnl::post_ops po;
      if (act->op == OpType::kRelu) {
        po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      } else {
        po.append_eltwise(1.0f, dnnl::algorithm::eltwise_clip, act->attrs.act_alpha, act->attrs.act_beta);
      }
      attr.set_post_ops(po);
    }
    dnnl::convolution_forward::primitive_desc pd(d, attr, ctx.engine);
    c.prim = dnnl::convolution_forward(pd);
    c.src_k = pd.src_desc();
    c.weights_k = pd.weights_desc();
    c.dst_k = pd.dst_desc();
    if (c.src_k != c.src) c.src_to_k = dnnl::reorder(dnnl::reorder::primitive_desc(ctx.engine, c.src, ctx.engine, c.src_k));
    if (c.weights_k != c.weights) {
      c.weights_to_k = dnnl::reorder(dnnl::reorder::primitive_desc(ctx.engine, c.weights, ctx.engine, c.weights_k));
    }
    if (c.dst_k != c.dst) c.k_to_dst = dnnl::reorder(dnnl::reorder::primitive_desc(ctx.engine, c.dst_k, ctx.engine, c.dst));
    it = ctx.prims.emplace(key, std::move(c)).first;
  }
  const CachedPrimitive& c = it->second;
  const float* bias_ptr;
  if (in.size() > 2) {
    bias_ptr = in[2]->ptr();
  } else {
    ctx.bias_scratch.reshape_to({O});
    std::fill(ctx.bias_scratch.data.begin(), ctx.bias_scratch.data.end(), 0.0f);
    bias_ptr = ctx.bias_scratch.ptr();
  }
  memory src(c.src, ctx.engine, const_cast<float*>(x.ptr()));
  memory wei(c.weights, ctx.engine, const_cast<float*>(w.ptr()));
  memory bia(c.bias, ctx.engine, const_cast<float*>(bias_ptr));
  memory dst(c.dst, ctx.engine, out.ptr());
  // Each reorder is exact (a permutation of values), so results equal a plain-layout conv
  // up to the summation order oneDNN's kernel uses.
  auto blocked = [&](const memory::desc& md, std::vector<float>& buf) {
    buf.resize(md.get_size() / sizeof(float));
    return memory(md, ctx.engine, buf.data());
  };
  memory src_k = c.src_to_k ? blocked(c.src_k, ctx.src_k) : src;
  memory wei_k = c.weights_to_k ? blocked(c.weights_k, ctx.weights_k) : wei;
  memory dst_k = c.k_to_dst ? blocked(c.dst_k, ctx.dst_k) : dst;
  if (c.src_to_k) c.src_to_k->execute(ctx.stream, src, src_k);
  if (c.weights_to_k) c.weights_to_k->execute(ctx.stream, wei, wei_k);
  c.prim.execute(ctx.stream, {{DNNL_ARG_SRC, src_k}, {DNNL_ARG_WEIGHTS, wei_k}, {DNNL_ARG_BIAS, bia}, {DNNL_ARG_DST, dst_k}});
  if (c.k_to_dst) c.k_to_dst->execute(ctx.stream, dst_k, dst);
  ctx.stream.wait();
}

void run_pool(CpuContext& ctx, const Node& n, const Tensor& input, Tensor& out) {
  check_rank(n, input, 4);
  SpatialPlan sp = plan_spatial(n, input.dim(2), input.dim(3));
  const NodeAttrs& a = n.attrs;
  const Tensor* src_tensor = &input;
  bool include_pad = a.count_include_pad;
  if (n.op == OpType::kAveragePool && include_pad && a.auto_pad == AutoPad::kNotSet &&
      (sp.pad_b > a.pads[2] || sp.pad_r > a.pads[3])) {
    // ceil_mode widened the end padding. PyTorch and ONNX divide by the taps inside the
    // declared padding only, while oneDNN's include-padding mode would count the widening
    // too: pad explicitly with zeros by the declared pads, then exclude what remains.
    if (input.nhwc) {
      ctx.nchw.resize(std::max<size_t>(ctx.nchw.size(), 1));
      to_nchw(input, ctx.nchw[0]);
      src_tensor = &ctx.nchw[0];
    }
    const Shape s = input.shape;
    const std::vector<int64_t> pads = {0, 0, a.pads[0], a.pads[1], 0, 0, a.pads[2], a.pads[3]};
    ctx.padded.reshape_to({s[0], s[1], s[2] + a.pads[0] + a.pads[2], s[3] + a.pads[1] + a.pads[3]});
    pad(src_tensor->ptr(), s, pads, PadMode::kConstant, 0.0f, ctx.padded.ptr());
    src_tensor = &ctx.padded;
    sp.pad_t = sp.pad_l = 0;
    sp.pad_b -= a.pads[2];
    sp.pad_r -= a.pads[3];
    include_pad = false;
  }
  const Tensor& x = *src_tensor;
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const tag layout = x.nhwc ? tag::nhwc : tag::nchw;
  out.reshape_to({N, C, sp.out_h, sp.out_w});
  out.nhwc = x.nhwc;
  const PrimKey key{&n, N, C, H, W, x.nhwc, nullptr};
  auto it = ctx.prims.find(key);
  if (it == ctx.prims.end()) {
    CachedPrimitive c;
    c.src = memory::desc({N, C, H, W}, dt::f32, layout);
    c.dst = memory::desc({N, C, sp.out_h, sp.out_w}, dt::f32, layout);
    const auto alg = n.op == OpType::kMaxPool ? dnnl::algorithm::pooling_max
                     : include_pad ? dnnl::algorithm::pooling_avg_include_padding
                                                 : dnnl::algorithm::pooling_avg_exclude_padding;
    dnnl::pooling_forward::desc d(dnnl::prop_kind::forward_inference, alg, c.src, c.dst,
                                  {n.attrs.strides[0], n.attrs.strides[1]}, {n.attrs.kernel[0], n.attrs.kernel[1]},
                                  {sp.pad_t, sp.pad_l}, {sp.pad_b, sp.pad_r});
    dnnl::pooling_forward::primitive_desc pd(d, ctx.engine);
    c.prim = dnnl::pooling_forward(pd);
    it = ctx.prims.emplace(key, std::move(c)).first;
  }
  const CachedPrimitive& c = it->second;
  memory src(c.src, ctx.engine, const_cast<float*>(x.ptr()));
  memory dst(c.dst, ctx.engine, out.ptr());
  c.prim.execute(ctx.stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}});
  ctx.stream.wait();
}

// Row by row in a fixed order (kernels/cpu/gemm.h), so that an image's outputs do not depend
// on its batch; oneDNN's sgemm blocks by the row count.
void sgemm(const Node& n, char transb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           const float* B, float beta, float* C) {
  gemm_rows(A, B, transb == 'T', M, N, K, alpha, beta, C);
}

void run_gemm(const Node& n, std::span<const Tensor* const> in, Tensor& out) {
  const Tensor& a = *in[0];
  const Tensor& b = *in[1];
  check_rank(n, a, 2);
  const int64_t M = a.dim(0), K = a.dim(1);
  const int64_t N = n.attrs.trans_b ? b.dim(0) : b.dim(1);
  const int64_t Kb = n.attrs.trans_b ? b.dim(1) : b.dim(0);
  if (K != Kb) user_error("node '{}' (Gemm) received {} features; its weight expects {}", n.name, K, Kb);
  out.reshape_to({M, N});
  float beta = 0.0f;
  if (in.size() > 2 && n.attrs.beta != 0.0f) {
    // Y starts as C broadcast to (M, N); sgemm then computes alpha * A * B + beta * Y.
    const Tensor& c = *in[2];
    const Shape ys{M, N};
    const std::vector<float> zero(1, 0.0f);
    const Shape scalar{1};
    broadcast_binary(BinaryOp::kAdd, c.ptr(), c.shape, zero.data(), scalar, out.ptr(), ys);
    beta = n.attrs.beta;
  }
  sgemm(n, n.attrs.trans_b ? 'T' : 'N', M, N, K, n.attrs.alpha, a.ptr(), b.ptr(), beta, out.ptr());
}

void run_matmul(const Node& n, std::span<const Tensor* const> in, Tensor& out) {
  const Tensor& a = *in[0];
  const Tensor& b = *in[1];
  const int64_t K = a.shape.back(), N = b.dim(1);
  if (K != b.dim(0)) user_error("node '{}' (MatMul) received {} features; its weight expects {}", n.name, K, b.dim(0));
  Shape os = a.shape;
  os.back() = N;
  out.reshape_to(os);
  const int64_t rows = a.numel() / K;
  sgemm(n, 'N', rows, N, K, 1.0f, a.ptr(), b.ptr(), 0.0f, out.ptr());
  // A third input is a per-output-feature bias (a quantization plan's corrected bias; ONNX
  // MatMul has two inputs), added after the product as the fused CUDA kernel does.
  if (in.size() > 2) {
    const float* bias = in[2]->ptr();
    if (in[2]->numel() != N) throw std::logic_error(fmt::format("node '{}' (MatMul): bias of {} values for {} features", n.name, in[2]->numel(), N));
    for (int64_t r = 0; r < rows; ++r) {
      float* y = out.ptr() + r * N;
      for (int64_t c = 0; c < N; ++c) y[c] += bias[c];
    }
  }
}

void run_reshape(const Node& n, const Tensor& x, Tensor& out) {
  out.shape = reshape_target(n, x.shape);
  out.data.assign(x.data.begin(), x.data.end());
}

}  // namespace

struct CpuBackend::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  bool transform_convs = false;
};

CpuBackend::CpuBackend(bool transform_convs) : impl_(std::make_unique<Impl>()) {
  impl_->transform_convs = transform_convs;
}

bool CpuBackend::conv_transforms() const { return impl_->transform_convs && winograd_cpu_supported(); }
CpuBackend::~CpuBackend() = default;

std::string CpuBackend::device_name() const {
  std::string model = "unknown CPU";
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return fmt::format("{} ({} threads)", model, omp_get_max_threads());
}

std::string CpuBackend::library_versions() const {
  const dnnl_version_t* v = dnnl_version();
  // Which convolutions ran where: qsweep's own kernels need AVX-512 (kernels/cpu).
  return fmt::format("oneDNN {}.{}.{} ({}); qsweep CPU convolution kernels: {}", v->major, v->minor, v->patch, v->hash,
                     winograd_cpu_supported() ? "AVX-512 (direct; Winograd and strips with run.conv_transforms)"
                                              : "none (no AVX-512: every convolution on oneDNN)");
}

bool CpuBackend::supports(OpType) const { return true; }

std::unique_ptr<BackendContext> CpuBackend::make_context() const {
  return std::make_unique<CpuContext>(impl_->engine, conv_transforms());
}

void CpuBackend::run(BackendContext& base, const Node& n, std::span<const Tensor* const> in, Tensor& out) const {
  auto& ctx = static_cast<CpuContext&>(base);
  // Convolutions, pooling, activations, global pooling and same-shape Add/Mul work on NHWC
  // (channels-innermost) tensors; every other op sees NCHW copies of NHWC inputs.
  const bool same_shape_binary = (n.op == OpType::kAdd || n.op == OpType::kMul) && in.size() == 2 &&
                                 in[0]->shape == in[1]->shape && in[0]->nhwc == in[1]->nhwc;
  const bool layout_aware = n.op == OpType::kConv || n.op == OpType::kMaxPool || n.op == OpType::kAveragePool ||
                            n.op == OpType::kGlobalAveragePool || is_activation(n.op) || same_shape_binary;
  if (!layout_aware && std::any_of(in.begin(), in.end(), [](const Tensor* t) { return t->nhwc; })) {
    ctx.nchw.resize(std::max(ctx.nchw.size(), in.size()));
    std::vector<const Tensor*> converted(in.begin(), in.end());
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i]->nhwc) {
        to_nchw(*in[i], ctx.nchw[i]);
        converted[i] = &ctx.nchw[i];
      }
    }
    return run(base, n, converted, out);
  }
  const Tensor& x = *in[0];
  const NodeAttrs& a = n.attrs;
  switch (n.op) {
    case OpType::kConv:
      return run_conv(ctx, n, in, out);
    case OpType::kGemm:
      return run_gemm(n, in, out);
    case OpType::kMatMul:
      return run_matmul(n, in, out);
    case OpType::kMaxPool:
    case OpType::kAveragePool:
      return run_pool(ctx, n, x, out);
    case OpType::kGlobalAveragePool: {
      check_rank(n, x, 4);
      const int64_t N = x.dim(0), C = x.dim(1), hw = x.dim(2) * x.dim(3);
      out.reshape_to({N, C, 1, 1});  // (N, C, 1, 1) is the same in both layouts
      if (x.nhwc) {
        std::vector<double> s(C);
        for (int64_t i = 0; i < N; ++i) {
          std::fill(s.begin(), s.end(), 0.0);
          for (int64_t k = 0; k < hw; ++k) {
            const float* px = x.data.data() + (i * hw + k) * C;
            for (int64_t c = 0; c < C; ++c) s[c] += px[c];
          }
          for (int64_t c = 0; c < C; ++c) out.data[i * C + c] = static_cast<float>(s[c] / static_cast<double>(hw));
        }
        return;
      }
      for (int64_t i = 0; i < N * C; ++i) {
        double s = 0.0;
        for (int64_t k = 0; k < hw; ++k) s += x.data[i * hw + k];
        out.data[i] = static_cast<float>(s / static_cast<double>(hw));
      }
      return;
    }
    case OpType::kBatchNorm: {
      out.reshape_to(x.shape);
      const int64_t C = x.rank() > 1 ? x.dim(1) : 1;
      if (C != static_cast<int64_t>(a.bn_scale.size())) {
        user_error("node '{}' (BatchNormalization) received {} channels; it has {}", n.name, C, a.bn_scale.size());
      }
      channel_affine(x.ptr(), out.ptr(), x.dim(0), C, x.numel() / (x.dim(0) * C), a.bn_scale.data(), a.bn_shift.data());
      return;
    }
    case OpType::kRelu:
    case OpType::kClip:
    case OpType::kLeakyRelu:
    case OpType::kSigmoid:
    case OpType::kHardSigmoid:
    case OpType::kHardSwish: {
      static constexpr std::pair<OpType, Activation> kMap[] = {
          {OpType::kRelu, Activation::kRelu},           {OpType::kClip, Activation::kClip},
          {OpType::kLeakyRelu, Activation::kLeakyRelu}, {OpType::kSigmoid, Activation::kSigmoid},
          {OpType::kHardSigmoid, Activation::kHardSigmoid}, {OpType::kHardSwish, Activation::kHardSwish}};
      Activation act = Activation::kRelu;
      for (const auto& [op, ac] : kMap) {
        if (op == n.op) act = ac;
      }
      out.reshape_to(x.shape);
      out.nhwc = x.nhwc;
      activation(act, a.act_alpha, a.act_beta, x.ptr(), out.ptr(), x.numel());
      return;
    }
    case OpType::kAdd:
    case OpType::kMul: {
      const Tensor& y = *in[1];
      Shape s;
      try {
        s = broadcast_shape(x.shape, y.shape);
      } catch (const std::invalid_argument&) {
        user_error("node '{}' ({}) cannot broadcast {} with {}", n.name, op_name(n.op), shape_str(x.shape),
                   shape_str(y.shape));
      }
      out.reshape_to(s);
      out.nhwc = same_shape_binary && x.nhwc;  // same shape and layout: element by element
      broadcast_binary(n.op == OpType::kAdd ? BinaryOp::kAdd : BinaryOp::kMul, x.ptr(), x.shape, y.ptr(),
                       y.shape, out.ptr(), s);
      return;
    }
    case OpType::kConcat: {
      const int64_t axis = normalize_axis(n, a.axis, x.rank());
      Shape s = x.shape;
      s[axis] = 0;
      std::vector<const float*> ptrs;
      std::vector<size_t> sizes;
      for (const Tensor* t : in) {
        if (t->rank() != x.rank()) user_error("node '{}' (Concat) received inputs of different ranks", n.name);
        for (size_t d = 0; d < x.rank(); ++d) {
          if (static_cast<int64_t>(d) != axis && t->dim(d) != x.dim(d)) {
            user_error("node '{}' (Concat) received {} and {}", n.name, shape_str(x.shape), shape_str(t->shape));
          }
        }
        s[axis] += t->dim(axis);
        ptrs.push_back(t->ptr());
        sizes.push_back(t->dim(axis));
      }
      out.reshape_to(s);
      int64_t outer = 1, inner = 1;
      for (int64_t d = 0; d < axis; ++d) outer *= s[d];
      for (size_t d = axis + 1; d < s.size(); ++d) inner *= s[d];
      concat(ptrs, sizes, outer, inner, out.ptr());
      return;
    }
    case OpType::kFlatten: {
      const int64_t axis = flatten_axis(n, x.rank());
      int64_t outer = 1;
      for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
      out.shape = {outer, outer ? x.numel() / outer : 0};
      out.data.assign(x.data.begin(), x.data.end());
      return;
    }
    case OpType::kReshape:
      return run_reshape(n, x, out);
    case OpType::kSoftmax: {
      out.reshape_to(x.shape);
      const int64_t axis = normalize_axis(n, a.axis, x.rank());
      int64_t outer = 1, inner = 1;
      for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
      if (a.softmax_legacy) {
        softmax(x.ptr(), out.ptr(), outer, x.numel() / std::max<int64_t>(outer, 1), 1);
      } else {
        for (size_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
        softmax(x.ptr(), out.ptr(), outer, x.dim(axis), inner);
      }
      return;
    }
    case OpType::kPad: {
      if (a.pad_amounts.size() != 2 * x.rank()) {
        user_error("node '{}' (Pad) has {} pad values for an input of rank {}", n.name, a.pad_amounts.size(), x.rank());
      }
      for (int64_t p : a.pad_amounts) {
        if (p < 0) user_error("node '{}' (Pad) has negative pads, which qsweep does not support", n.name);
      }
      Shape s = x.shape;
      for (size_t d = 0; d < x.rank(); ++d) s[d] += a.pad_amounts[d] + a.pad_amounts[d + x.rank()];
      out.reshape_to(s);
      pad(x.ptr(), x.shape, a.pad_amounts, static_cast<PadMode>(a.pad_mode), a.pad_value, out.ptr());
      return;
    }
  }
}

// Conv + Relu/Clip: a oneDNN post-op. Add + Relu/Clip: one loop over same-shape operands
// (a broadcasting Add runs as two steps). Both equal the separate ops bit for bit: the
// activation sees the same rounded float.
bool CpuBackend::fuses_activation(OpType op, OpType act) const {
  return (op == OpType::kConv || op == OpType::kAdd) && (act == OpType::kRelu || act == OpType::kClip);
}

void CpuBackend::run_with_activation(BackendContext& base, const Node& node, const Node& act,
                                     std::span<const Tensor* const> in, Tensor& out) const {
  if (!fuses_activation(node.op, act.op)) return Backend::run_with_activation(base, node, act, in, out);
  auto& ctx = static_cast<CpuContext&>(base);
  if (node.op == OpType::kConv) return run_conv(ctx, node, in, out, &act);
  bool clamp = false;
  float lo = 0.0f, hi = 0.0f;
  clamp_range(act, clamp, lo, hi);
  if (in.size() == 2 && in[0]->shape == in[1]->shape && in[0]->nhwc == in[1]->nhwc) {
    out.reshape_to(in[0]->shape);
    out.nhwc = in[0]->nhwc;
    add_clamp(in[0]->ptr(), in[1]->ptr(), out.ptr(), in[0]->numel(), lo, hi, act.op == OpType::kRelu);
    return;
  }
  run(base, node, in, out);
  const Tensor* y = &out;
  run(base, act, std::span<const Tensor* const>(&y, 1), out);
}

bool CpuBackend::fuses_residual(OpType act) const { return act == OpType::kRelu || act == OpType::kClip; }

void CpuBackend::run_conv_residual(BackendContext& base, const Node& conv, const Node& add, const Node& act,
                                   std::span<const Tensor* const> in, const Tensor& residual, Tensor& out) const {
  auto& ctx = static_cast<CpuContext&>(base);
  const Tensor& x = *in[0];
  const SpatialPlan sp = plan_spatial(conv, x.dim(2), x.dim(3));
  const Shape conv_shape = {x.dim(0), in[1]->dim(0), sp.out_h, sp.out_w};
  if (residual.nhwc && residual.shape == conv_shape) return run_conv(ctx, conv, in, out, &act, &residual);
  // Another layout or a broadcast: the conv, then the Add + activation as usual.
  run_conv(ctx, conv, in, ctx.conv_out);
  const Tensor* args[2] = {&ctx.conv_out, &residual};
  if (add.inputs[0] != conv.output) std::swap(args[0], args[1]);
  run_with_activation(base, add, act, args, out);
}

void CpuBackend::fake_quantize(BackendContext&, const Tensor& x, const QuantParams& p, Tensor& y) const {
  if (&y != &x) {
    y.reshape_to(x.shape);
    y.nhwc = x.nhwc;  // element-wise: any layout
  }
  fake_quantize_per_tensor(x.ptr(), y.ptr(), x.numel(), p);
}

}  // namespace qsweep

// Every op of the CPU backend against a naive loop reference written here (plain nested
// loops, double accumulation), on seeded random shapes and data, mostly through one-node
// ONNX models so that the importer's attribute parsing is tested too. Then the executor:
// suffix_forward must equal a full forward with the same single-layer plan, bit for bit.
#include "runtime/cpu_backend.h"
#include "runtime/error.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <bit>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kernels/cpu/fake_quant.h"
#include "kernels/cpu/winograd.h"
#include "runtime/executor.h"
#include "runtime/onnx_import.h"
#include "tests/runtime/onnx_builder.h"
#include "tests/shipped_models.h"

namespace qsweep {
namespace {

using test::attr_f;
using test::attr_i;
using test::attr_ints;
using test::attr_s;
using test::OnnxBuilder;

// ---------------------------------------------------------------- tolerances
//
// NMSE = sum (got - ref)^2 / sum ref^2 against a double reference. float32 rounds with a
// unit roundoff u = 2^-24 ~ 6e-8, so a single rounding gives NMSE ~ u^2/3 ~ 1e-15; a
// K-term float32 dot product accumulates a random-walk error of ~sqrt(K) roundings, NMSE
// ~ K u^2 ~ 1e-13 for the fan-ins used here (K <= 150). The limits below leave ~100x room
// over that estimate and at least ~10x over what the tests measure (printed by each test,
// e.g. Conv: NMSE ~3e-14, max abs ~1.4e-6), and sit many orders of magnitude below what
// any indexing or formula mistake produces (NMSE >= 1e-3).
// The max-abs limits are for inputs and weights in [-1, 1]: they bound the worst element,
// which NMSE can hide.

// Conv, Gemm, MatMul: float32 dot products of up to ~150 terms, outputs up to ~|10|.
constexpr double kMaxNmseConv = 1e-11;
constexpr double kMaxAbsConv = 2e-5;
constexpr double kMaxNmseGemm = 1e-11;
constexpr double kMaxAbsGemm = 2e-5;
constexpr double kMaxNmseMatMul = 1e-11;
constexpr double kMaxAbsMatMul = 2e-5;
// AveragePool: a sum of at most 9 values in [-1, 1] and one division.
constexpr double kMaxNmseAveragePool = 1e-12;
constexpr double kMaxAbsAveragePool = 1e-6;
// GlobalAveragePool accumulates in double and rounds once: half an ulp of |mean| <= 1.
constexpr double kMaxNmseGlobalAveragePool = 1e-14;
constexpr double kMaxAbsGlobalAveragePool = 6e-8;
// Sigmoid: float exp and one division, a few ulps of outputs in (0, 1).
constexpr double kMaxNmseSigmoid = 1e-12;
constexpr double kMaxAbsSigmoid = 1e-6;
// HardSigmoid: alpha * x + beta in float32 (two roundings), outputs in [0, 1].
constexpr double kMaxNmseHardSigmoid = 1e-12;
constexpr double kMaxAbsHardSigmoid = 1e-6;
// HardSwish: x * hardsigmoid(x) with |x| <= 8: a few ulps of |y| <= 8.
constexpr double kMaxNmseHardSwish = 1e-12;
constexpr double kMaxAbsHardSwish = 4e-6;
// Softmax: float exp, a float sum of <= ~100 terms and a division; outputs in (0, 1).
constexpr double kMaxNmseSoftmax = 1e-12;
constexpr double kMaxAbsSoftmax = 1e-6;
// BatchNormalization: x * scale + shift with scale, shift rounded to float32; |y| <= ~5.
constexpr double kMaxNmseBatchNorm = 1e-12;
constexpr double kMaxAbsBatchNorm = 3e-6;
// Exact ops (Relu, Clip, LeakyRelu, MaxPool, Add, Mul, Concat, Flatten, Reshape, Pad) are
// compared for equality: they select or move values, or do one IEEE operation that the
// reference does too (LeakyRelu's alpha * x and Add/Mul's a op b round identically in float32
// and in double-then-float32, since the exact product/sum of two floats fits a double).

// ---------------------------------------------------------------- helpers

struct RefTensor {
  Shape shape;
  std::vector<double> data;
  explicit RefTensor(Shape s) : shape(std::move(s)), data(shape_numel(shape), 0.0) {}
};

std::vector<float> uniform(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

Tensor random_tensor(std::mt19937& rng, Shape s, float lo = -1.0f, float hi = 1.0f) {
  Tensor t(std::move(s));
  t.data = uniform(rng, t.data.size(), lo, hi);
  return t;
}

// A batch of n inputs of graph g, uniform in [-2, 2).
Tensor random_batch(std::mt19937& rng, const Graph& g, int64_t n) {
  Shape s = g.input_shape;
  s.insert(s.begin(), n);
  return random_tensor(rng, s, -2.0f, 2.0f);
}

int64_t rand_int(std::mt19937& rng, int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// The worst NMSE and max-abs error a test saw, printed at its end so that the margin to
// the tolerance is visible in the log.
struct Worst {
  std::string op;
  double nmse = 0.0, max_abs = 0.0;
  int cases = 0;
  ~Worst() {
    if (cases > 0) std::printf("[ %s ] %d cases: worst NMSE %.3g, worst max abs error %.3g\n", op.c_str(), cases, nmse, max_abs);
  }
};

// Compares got with ref where mask (if given) is set.
void expect_close(const Tensor& got, const RefTensor& ref, double max_nmse, double max_abs, Worst& worst,
                  const std::vector<char>* mask = nullptr) {
  ASSERT_EQ(got.shape, ref.shape);
  ASSERT_EQ(got.data.size(), ref.data.size());
  double num = 0.0, den = 0.0, mx = 0.0;
  size_t worst_i = 0;
  for (size_t i = 0; i < ref.data.size(); ++i) {
    if (mask && !(*mask)[i]) continue;
    const double d = static_cast<double>(got.data[i]) - ref.data[i];
    num += d * d;
    den += ref.data[i] * ref.data[i];
    if (!(std::abs(d) <= mx)) {  // NaN-safe: a NaN becomes the worst element
      mx = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::abs(d);
      worst_i = i;
    }
  }
  const double nmse = den > 0.0 ? num / den : num;
  EXPECT_LE(nmse, max_nmse);
  EXPECT_LE(mx, max_abs) << "worst element " << worst_i << ": got " << got.data[worst_i] << ", want "
                         << ref.data[worst_i];
  worst.nmse = std::max(worst.nmse, nmse);
  worst.max_abs = std::max(worst.max_abs, mx);
  ++worst.cases;
}

void expect_exact(const Tensor& got, const Shape& shape, const std::vector<float>& want) {
  ASSERT_EQ(got.shape, shape);
  ASSERT_EQ(got.data.size(), want.size());
  size_t mismatches = 0, first = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!(got.data[i] == want[i])) {
      if (mismatches++ == 0) first = i;
    }
  }
  EXPECT_EQ(mismatches, 0u) << "first mismatch at " << first << ": got " << got.data[first] << ", want "
                            << want[first];
}

std::vector<float> to_float(const RefTensor& r) {
  return std::vector<float>(r.data.begin(), r.data.end());
}

// Imports a model, checks that it became exactly `ops` and runs each input through the
// same workspace (so cached primitives meet a second batch size).
std::vector<Tensor> run_model(const OnnxBuilder& b, const std::vector<OpType>& ops, const std::vector<Tensor>& inputs) {
  const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
  std::vector<Tensor> out;
  EXPECT_EQ(g.nodes.size(), ops.size());
  if (g.nodes.size() != ops.size()) return out;
  for (size_t i = 0; i < ops.size(); ++i) EXPECT_EQ(g.nodes[i].op, ops[i]) << "node " << i;
  CpuBackend backend;
  Executor ex(g, backend);
  auto ws = ex.make_workspace();
  for (const Tensor& x : inputs) out.push_back(ex.forward(ws, x));
  return out;
}

Tensor run_model(const OnnxBuilder& b, const std::vector<OpType>& ops, const Tensor& input) {
  auto out = run_model(b, ops, std::vector<Tensor>{input});
  return out.empty() ? Tensor() : out[0];
}

// Runs one hand-made node directly on the backend.
Tensor run_node(const Node& n, const std::vector<const Tensor*>& inputs) {
  CpuBackend backend;
  auto ctx = backend.make_context();
  Tensor out;
  backend.run(*ctx, n, inputs, out);
  return out;
}

size_t at4(const Shape& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return static_cast<size_t>(((n * s[1] + c) * s[2] + h) * s[3] + w);
}

// ---------------------------------------------------------------- Conv

// One spatial dimension of a Conv or pool: output size and the padding before it, per the
// ONNX operator spec (written out here independently of plan_spatial).
struct SpatialDim {
  int64_t out, pad_begin, pad_end;
};

SpatialDim conv_dim(int64_t in, int64_t k, int64_t s, int64_t d, const std::string& auto_pad, int64_t pb, int64_t pe) {
  const int64_t span = (k - 1) * d + 1;
  if (auto_pad == "VALID") return {ceil_div(in - span + 1, s), 0, 0};
  if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    const int64_t out = ceil_div(in, s);
    const int64_t total = std::max<int64_t>(0, (out - 1) * s + span - in);
    // SAME_UPPER puts the odd extra pad at the end, SAME_LOWER at the beginning.
    const int64_t begin = auto_pad == "SAME_UPPER" ? total / 2 : (total + 1) / 2;
    return {out, begin, total - begin};
  }
  return {(in + pb + pe - span) / s + 1, pb, pe};
}

struct ConvCase {
  int64_t n, c, h, w, o, group, kh, kw, sh, sw, dh, dw;
  std::string auto_pad;
  std::vector<int64_t> pads;  // top, left, bottom, right (NOTSET); empty = attribute omitted
  bool bias;
  std::string str() const {
    return fmt::format("x ({},{},{},{}) w ({},{},{},{}) group {} strides ({},{}) dilations ({},{}) auto_pad {} "
                       "pads [{}] bias {}",
                       n, c, h, w, o, c / group, kh, kw, group, sh, sw, dh, dw, auto_pad, fmt::join(pads, ","), bias);
  }
};

RefTensor conv_reference(const ConvCase& cs, const Tensor& x, const std::vector<float>& w, const std::vector<float>& b) {
  const int64_t pt = cs.pads.empty() ? 0 : cs.pads[0], pl = cs.pads.empty() ? 0 : cs.pads[1];
  const int64_t pbot = cs.pads.empty() ? 0 : cs.pads[2], pr = cs.pads.empty() ? 0 : cs.pads[3];
  const SpatialDim dy = conv_dim(x.dim(2), cs.kh, cs.sh, cs.dh, cs.auto_pad, pt, pbot);
  const SpatialDim dx = conv_dim(x.dim(3), cs.kw, cs.sw, cs.dw, cs.auto_pad, pl, pr);
  const int64_t N = x.dim(0), H = x.dim(2), W = x.dim(3);
  const int64_t cin_g = cs.c / cs.group, cout_g = cs.o / cs.group;
  RefTensor y({N, cs.o, dy.out, dx.out});
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t oc = 0; oc < cs.o; ++oc) {
      const int64_t g = oc / cout_g;
      for (int64_t oy = 0; oy < dy.out; ++oy) {
        for (int64_t ox = 0; ox < dx.out; ++ox) {
          double acc = cs.bias ? b[oc] : 0.0;
          for (int64_t ic = 0; ic < cin_g; ++ic) {
            for (int64_t ky = 0; ky < cs.kh; ++ky) {
              for (int64_t kx = 0; kx < cs.kw; ++kx) {
                const int64_t iy = oy * cs.sh - dy.pad_begin + ky * cs.dh;
                const int64_t ix = ox * cs.sw - dx.pad_begin + kx * cs.dw;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                acc += static_cast<double>(x.data[at4(x.shape, n, g * cin_g + ic, iy, ix)]) *
                       w[((oc * cin_g + ic) * cs.kh + ky) * cs.kw + kx];
              }
            }
          }
          y.data[at4(y.shape, n, oc, oy, ox)] = acc;
        }
      }
    }
  }
  return y;
}

TEST(CpuBackend, ConvAgainstNaiveLoops) {
  std::mt19937 rng(101);
  Worst worst{"Conv"};
  const std::vector<std::pair<int64_t, int64_t>> kernels = {{1, 1}, {3, 3}, {2, 3}, {3, 1}, {5, 5}, {1, 4}};
  int idx = 0;
  for (int64_t stride : {1, 2, 3}) {
    for (const std::string ap : {"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"}) {
      for (int64_t dil : {1, 2}) {
        for (int group_kind = 0; group_kind < 3; ++group_kind) {  // 1, 2, depthwise
          for (bool bias : {false, true}) {
            ConvCase cs;
            std::tie(cs.kh, cs.kw) = kernels[idx % kernels.size()];
            // Square strides and dilations on even cases, mixed on odd ones.
            cs.sh = stride;
            cs.sw = idx % 2 ? 1 + stride % 3 : stride;
            cs.dh = dil;
            cs.dw = idx % 2 ? 1 + dil % 2 : dil;
            if (group_kind == 0) {
              cs.group = 1;
              cs.c = rand_int(rng, 1, 5);
              cs.o = rand_int(rng, 1, 6);
            } else if (group_kind == 1) {
              cs.group = 2;
              cs.c = 2 * rand_int(rng, 1, 3);
              cs.o = 2 * rand_int(rng, 1, 3);
            } else {
              cs.c = rand_int(rng, 2, 5);
              cs.group = cs.c;
              cs.o = cs.c * rand_int(rng, 1, 2);  // depth multiplier 1 or 2
            }
            cs.auto_pad = ap;
            cs.bias = bias;
            const int64_t span_h = (cs.kh - 1) * cs.dh + 1, span_w = (cs.kw - 1) * cs.dw + 1;
            int64_t min_h = span_h, min_w = span_w;
            if (ap == "NOTSET" && idx % 4 != 0) {  // every 4th NOTSET case omits pads (all 0)
              cs.pads = {rand_int(rng, 0, span_h - 1), rand_int(rng, 0, span_w - 1), rand_int(rng, 0, span_h - 1),
                         rand_int(rng, 0, span_w - 1)};
              min_h = std::max<int64_t>(1, span_h - cs.pads[0] - cs.pads[2]);
              min_w = std::max<int64_t>(1, span_w - cs.pads[1] - cs.pads[3]);
            } else if (ap == "SAME_UPPER" || ap == "SAME_LOWER") {
              min_h = std::max<int64_t>(1, span_h - 2);
              min_w = std::max<int64_t>(1, span_w - 2);
            }
            cs.h = min_h + rand_int(rng, 0, 6);
            cs.w = min_w + rand_int(rng, 0, 6);
            cs.n = rand_int(rng, 1, 3);
            ++idx;
            SCOPED_TRACE(cs.str());

            const auto w = uniform(rng, cs.o * (cs.c / cs.group) * cs.kh * cs.kw);
            const auto b = uniform(rng, cs.o);
            OnnxBuilder mb;
            mb.input("x", {cs.c, cs.h, cs.w}).initializer("w", w, {cs.o, cs.c / cs.group, cs.kh, cs.kw});
            if (bias) mb.initializer("b", b, {cs.o});
            std::vector<onnx::AttributeProto> attrs = {attr_ints("kernel_shape", {cs.kh, cs.kw}),
                                                       attr_ints("strides", {cs.sh, cs.sw}),
                                                       attr_ints("dilations", {cs.dh, cs.dw})};
            if (cs.group != 1) attrs.push_back(attr_i("group", cs.group));
            if (ap != "NOTSET") attrs.push_back(attr_s("auto_pad", ap));
            if (!cs.pads.empty()) attrs.push_back(attr_ints("pads", cs.pads));
            mb.node("Conv", bias ? std::vector<std::string>{"x", "w", "b"} : std::vector<std::string>{"x", "w"},
                    {"y"}, attrs, "conv")
                .output("y");
            // Two batch sizes through one workspace: the primitive cache is keyed by shape.
            const Tensor x1 = random_tensor(rng, {cs.n, cs.c, cs.h, cs.w});
            const Tensor x2 = random_tensor(rng, {cs.n + 1, cs.c, cs.h, cs.w});
            const auto ys = run_model(mb, {OpType::kConv}, {x1, x2});
            ASSERT_EQ(ys.size(), 2u);
            expect_close(ys[0], conv_reference(cs, x1, w, b), kMaxNmseConv, kMaxAbsConv, worst);
            expect_close(ys[1], conv_reference(cs, x2, w, b), kMaxNmseConv, kMaxAbsConv, worst);
          }
        }
      }
    }
  }
}

TEST(CpuBackend, ConvUsesTheWeightItIsGiven) {
  // The executor passes fake-quantized weights as input 1 instead of the node's constant.
  std::mt19937 rng(102);
  ConvCase cs{2, 3, 6, 6, 4, 1, 3, 3, 1, 1, 1, 1, "NOTSET", {1, 1, 1, 1}, true};
  Node n;
  n.name = "conv";
  n.op = OpType::kConv;
  n.attrs.kernel = {3, 3};
  n.attrs.strides = {1, 1};
  n.attrs.dilations = {1, 1};
  n.attrs.pads = {1, 1, 1, 1};
  const Tensor x = random_tensor(rng, {2, 3, 6, 6});
  const Tensor w1 = random_tensor(rng, {4, 3, 3, 3}), w2 = random_tensor(rng, {4, 3, 3, 3});
  const Tensor b = random_tensor(rng, {4});
  CpuBackend backend;
  auto ctx = backend.make_context();
  Tensor y1, y2;
  backend.run(*ctx, n, std::vector<const Tensor*>{&x, &w1, &b}, y1);
  backend.run(*ctx, n, std::vector<const Tensor*>{&x, &w2, &b}, y2);
  Worst worst{"Conv (direct)"};
  // The backend may return NHWC (Tensor::nhwc); compare in NCHW order.
  Tensor y1n, y2n;
  to_nchw(y1, y1n);
  to_nchw(y2, y2n);
  expect_close(y1n, conv_reference(cs, x, w1.data, b.data), kMaxNmseConv, kMaxAbsConv, worst);
  expect_close(y2n, conv_reference(cs, x, w2.data, b.data), kMaxNmseConv, kMaxAbsConv, worst);
}

// ---------------------------------------------------------------- Gemm, MatMul

TEST(CpuBackend, GemmAgainstNaiveLoops) {
  std::mt19937 rng(201);
  Worst worst{"Gemm"};
  struct AlphaBeta {
    float alpha, beta;
  };
  for (bool trans_b : {false, true}) {
    for (int bias_kind = 0; bias_kind < 3; ++bias_kind) {  // none, (N), (1, N)
      for (AlphaBeta ab : {AlphaBeta{1.0f, 1.0f}, AlphaBeta{0.5f, 2.0f}, AlphaBeta{-1.5f, 0.0f}, AlphaBeta{1.25f, -0.75f}}) {
        const int64_t M = rand_int(rng, 1, 6), K = rand_int(rng, 1, 40), N = rand_int(rng, 1, 12);
        SCOPED_TRACE(fmt::format("M {} K {} N {} transB {} bias kind {} alpha {} beta {}", M, K, N, trans_b, bias_kind,
                                 ab.alpha, ab.beta));
        const auto w = uniform(rng, K * N);
        const auto c = uniform(rng, N);
        OnnxBuilder mb;
        mb.input("x", {K}).initializer("w", w, trans_b ? std::vector<int64_t>{N, K} : std::vector<int64_t>{K, N});
        if (bias_kind == 1) mb.initializer("c", c, {N});
        if (bias_kind == 2) mb.initializer("c", c, {1, N});
        std::vector<onnx::AttributeProto> attrs;
        if (trans_b) attrs.push_back(attr_i("transB", 1));
        if (ab.alpha != 1.0f) attrs.push_back(attr_f("alpha", ab.alpha));
        if (ab.beta != 1.0f) attrs.push_back(attr_f("beta", ab.beta));
        mb.node("Gemm", bias_kind ? std::vector<std::string>{"x", "w", "c"} : std::vector<std::string>{"x", "w"}, {"y"},
                attrs, "gemm")
            .output("y");
        const Tensor x = random_tensor(rng, {M, K});
        const Tensor y = run_model(mb, {OpType::kGemm}, x);
        RefTensor ref({M, N});
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t j = 0; j < N; ++j) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; ++k) {
              acc += static_cast<double>(x.data[m * K + k]) * (trans_b ? w[j * K + k] : w[k * N + j]);
            }
            ref.data[m * N + j] = static_cast<double>(ab.alpha) * acc + (bias_kind ? static_cast<double>(ab.beta) * c[j] : 0.0);
          }
        }
        expect_close(y, ref, kMaxNmseGemm, kMaxAbsGemm, worst);
      }
    }
  }
}

TEST(CpuBackend, MatMulWithConstantWeightAgainstNaiveLoops) {
  std::mt19937 rng(202);
  Worst worst{"MatMul"};
  for (int rank : {2, 3}) {
    for (int rep = 0; rep < 4; ++rep) {
      const int64_t B = rand_int(rng, 1, 3), T = rand_int(rng, 1, 5), K = rand_int(rng, 1, 50), N = rand_int(rng, 1, 10);
      SCOPED_TRACE(fmt::format("rank {} B {} T {} K {} N {}", rank, B, T, K, N));
      const auto w = uniform(rng, K * N);
      OnnxBuilder mb;
      mb.input("x", rank == 2 ? std::vector<int64_t>{K} : std::vector<int64_t>{T, K})
          .initializer("w", w, {K, N})
          .node("MatMul", {"x", "w"}, {"y"}, {}, "mm")
          .output("y");
      const Shape xs = rank == 2 ? Shape{B, K} : Shape{B, T, K};
      const Tensor x = random_tensor(rng, xs);
      const Tensor y = run_model(mb, {OpType::kMatMul}, x);
      Shape ys = xs;
      ys.back() = N;
      RefTensor ref(ys);
      const int64_t rows = x.numel() / K;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < N; ++j) {
          double acc = 0.0;
          for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(x.data[r * K + k]) * w[k * N + j];
          ref.data[r * N + j] = acc;
        }
      }
      expect_close(y, ref, kMaxNmseMatMul, kMaxAbsMatMul, worst);
    }
  }
}

// ---------------------------------------------------------------- pooling

struct PoolCase {
  int64_t n, c, h, w, kh, kw, sh, sw;
  std::string auto_pad;
  std::vector<int64_t> pads;  // top, left, bottom, right; empty = attribute omitted
  bool ceil_mode, count_include_pad;
  std::string str() const {
    return fmt::format("x ({},{},{},{}) kernel ({},{}) strides ({},{}) auto_pad {} pads [{}] ceil_mode {} "
                       "count_include_pad {}",
                       n, c, h, w, kh, kw, sh, sw, auto_pad, fmt::join(pads, ","), ceil_mode, count_include_pad);
  }
};

// Per the ONNX spec (and PyTorch): with ceil_mode the output size rounds up, but a window
// that would start in the right padding is dropped.
SpatialDim pool_dim(int64_t in, int64_t k, int64_t s, const std::string& auto_pad, int64_t pb, int64_t pe, bool ceil_mode) {
  if (auto_pad != "NOTSET") return conv_dim(in, k, s, 1, auto_pad, pb, pe);
  const int64_t num = in + pb + pe - k;
  int64_t out = (ceil_mode ? ceil_div(num, s) : num / s) + 1;
  while (ceil_mode && (out - 1) * s - pb >= in) --out;
  return {out, pb, pe};
}

enum class PoolKind { kMax, kAverage };

// `overhang` (if given) is set for outputs whose window runs past the padded input (only
// possible with ceil_mode): there count_include_pad implementations disagree.
RefTensor pool_reference(PoolKind kind, const PoolCase& pc, const Tensor& x, std::vector<char>* overhang = nullptr) {
  const auto pad = [&](int i) { return pc.pads.empty() ? int64_t{0} : pc.pads[i]; };
  const SpatialDim dy = pool_dim(x.dim(2), pc.kh, pc.sh, pc.auto_pad, pad(0), pad(2), pc.ceil_mode);
  const SpatialDim dx = pool_dim(x.dim(3), pc.kw, pc.sw, pc.auto_pad, pad(1), pad(3), pc.ceil_mode);
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  RefTensor y({N, C, dy.out, dx.out});
  if (overhang) overhang->assign(y.data.size(), 0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t oy = 0; oy < dy.out; ++oy) {
        for (int64_t ox = 0; ox < dx.out; ++ox) {
          const int64_t y0 = oy * pc.sh - dy.pad_begin, x0 = ox * pc.sw - dx.pad_begin;
          const int64_t y1 = y0 + pc.kh, x1 = x0 + pc.kw;
          double mx = -std::numeric_limits<double>::infinity(), sum = 0.0;
          int64_t inside = 0;
          for (int64_t iy = std::max<int64_t>(y0, 0); iy < std::min(y1, H); ++iy) {
            for (int64_t ix = std::max<int64_t>(x0, 0); ix < std::min(x1, W); ++ix) {
              const double v = x.data[at4(x.shape, n, c, iy, ix)];
              mx = std::max(mx, v);
              sum += v;
              ++inside;
            }
          }
          // Taps inside the padded input [-pad_begin, in + pad_end).
          const int64_t padded = (std::min(y1, H + dy.pad_end) - y0) * (std::min(x1, W + dx.pad_end) - x0);
          const size_t o = at4(y.shape, n, c, oy, ox);
          if (overhang) (*overhang)[o] = y1 > H + dy.pad_end || x1 > W + dx.pad_end;
          if (kind == PoolKind::kMax) {
            y.data[o] = mx;
          } else {
            y.data[o] = sum / static_cast<double>(pc.count_include_pad ? padded : inside);
          }
        }
      }
    }
  }
  return y;
}

std::vector<PoolCase> pool_cases(std::mt19937& rng) {
  std::vector<PoolCase> cases;
  const std::vector<std::pair<int64_t, int64_t>> kernels = {{2, 2}, {3, 3}, {2, 3}, {3, 1}};
  int idx = 0;
  for (int64_t stride : {1, 2, 3}) {
    for (int pad_kind = 0; pad_kind < 6; ++pad_kind) {  // none, symmetric, asymmetric, SAME_UPPER, SAME_LOWER, VALID
      for (bool ceil_mode : {false, true}) {
        for (bool cip : {false, true}) {
          if (pad_kind >= 3 && ceil_mode) continue;  // ceil_mode only matters with explicit pads
          PoolCase pc;
          std::tie(pc.kh, pc.kw) = kernels[idx % kernels.size()];
          pc.sh = stride;
          pc.sw = idx % 2 ? 1 + stride % 3 : stride;
          pc.auto_pad = pad_kind == 3 ? "SAME_UPPER" : pad_kind == 4 ? "SAME_LOWER" : pad_kind == 5 ? "VALID" : "NOTSET";
          // Pads stay below the kernel size so that every window sees the input.
          if (pad_kind == 1) {
            const int64_t ph = rand_int(rng, 1, std::max<int64_t>(1, pc.kh - 1)) % pc.kh;
            const int64_t pw = rand_int(rng, 1, std::max<int64_t>(1, pc.kw - 1)) % pc.kw;
            pc.pads = {ph, pw, ph, pw};
          } else if (pad_kind == 2) {
            pc.pads = {rand_int(rng, 0, pc.kh - 1), rand_int(rng, 0, pc.kw - 1), rand_int(rng, 0, pc.kh - 1),
                       rand_int(rng, 0, pc.kw - 1)};
          }
          pc.ceil_mode = ceil_mode;
          pc.count_include_pad = cip;
          pc.n = rand_int(rng, 1, 3);
          pc.c = rand_int(rng, 1, 4);
          pc.h = pc.kh + rand_int(rng, 0, 8);
          pc.w = pc.kw + rand_int(rng, 0, 8);
          ++idx;
          cases.push_back(pc);
        }
      }
    }
  }
  return cases;
}

OnnxBuilder pool_model(const std::string& op, const PoolCase& pc) {
  std::vector<onnx::AttributeProto> attrs = {attr_ints("kernel_shape", {pc.kh, pc.kw}), attr_ints("strides", {pc.sh, pc.sw})};
  if (pc.auto_pad != "NOTSET") attrs.push_back(attr_s("auto_pad", pc.auto_pad));
  if (!pc.pads.empty()) attrs.push_back(attr_ints("pads", pc.pads));
  if (pc.ceil_mode) attrs.push_back(attr_i("ceil_mode", 1));
  if (op == "AveragePool" && pc.count_include_pad) attrs.push_back(attr_i("count_include_pad", 1));
  OnnxBuilder mb;
  mb.input("x", {pc.c, pc.h, pc.w}).node(op, {"x"}, {"y"}, attrs, "pool").output("y");
  return mb;
}

TEST(CpuBackend, MaxPoolAgainstNaiveLoops) {
  std::mt19937 rng(301);
  int cases = 0;
  for (const PoolCase& pc : pool_cases(rng)) {  // count_include_pad is not set on MaxPool
    SCOPED_TRACE(pc.str());
    const Tensor x = random_tensor(rng, {pc.n, pc.c, pc.h, pc.w});
    const Tensor y = run_model(pool_model("MaxPool", pc), {OpType::kMaxPool}, x);
    const RefTensor ref = pool_reference(PoolKind::kMax, pc, x);
    expect_exact(y, ref.shape, to_float(ref));
    ++cases;
  }
  EXPECT_GT(cases, 50);
}

TEST(CpuBackend, AveragePoolAgainstNaiveLoops) {
  std::mt19937 rng(302);
  Worst worst{"AveragePool"};
  int overhanging = 0;
  for (const PoolCase& pc : pool_cases(rng)) {
    SCOPED_TRACE(pc.str());
    const Tensor x = random_tensor(rng, {pc.n, pc.c, pc.h, pc.w});
    const Tensor y = run_model(pool_model("AveragePool", pc), {OpType::kAveragePool}, x);
    std::vector<char> overhang, compare;
    const RefTensor ref = pool_reference(PoolKind::kAverage, pc, x, &overhang);
    // With ceil_mode and count_include_pad=1, a window that runs past the padded input is
    // divided by the taps inside the padded input in PyTorch and the ONNX reference, but
    // by the whole kernel in oneDNN; those outputs are compared on their own in
    // AveragePoolCeilModeIncludePadOverhang. Everywhere else the two semantics agree.
    compare.resize(overhang.size());
    for (size_t i = 0; i < overhang.size(); ++i) {
      compare[i] = !(pc.ceil_mode && pc.count_include_pad && overhang[i]);
      overhanging += !compare[i];
    }
    expect_close(y, ref, kMaxNmseAveragePool, kMaxAbsAveragePool, worst, &compare);
  }
  EXPECT_GT(overhanging, 0);  // the masked combination did occur
}

// ceil_mode=1 with count_include_pad=1: the windows added by ceil_mode that run past the
// explicit padding. ONNX's reference implementation, onnxruntime (since the fix for
// microsoft/onnxruntime#16203) and PyTorch all divide by the number of taps inside the
// padded input, not by the kernel size; e.g. 1-D [1, 2, 3, 4, 5], kernel 2, stride 2,
// ceil_mode gives [1.5, 3.5, 5.0].
TEST(CpuBackend, AveragePoolCeilModeIncludePadOverhang) {
  OnnxBuilder mb;
  mb.input("x", {1, 1, 5})
      .node("AveragePool", {"x"}, {"y"},
            {attr_ints("kernel_shape", {1, 2}), attr_ints("strides", {1, 2}), attr_i("ceil_mode", 1),
             attr_i("count_include_pad", 1)},
            "pool")
      .output("y");
  const Tensor x({1, 1, 1, 5}, {1, 2, 3, 4, 5});
  const Tensor y = run_model(mb, {OpType::kAveragePool}, x);
  expect_exact(y, {1, 1, 1, 3}, {1.5f, 3.5f, 5.0f});

  // 2-D, with explicit pads: 6x6, kernel 3, stride 2, pads 1, ceil_mode. The fourth
  // row/column window starts at 5 and covers rows 5, 6 (pad), 7 (past the padding).
  std::mt19937 rng(303);
  PoolCase pc{1, 2, 6, 6, 3, 3, 2, 2, "NOTSET", {1, 1, 1, 1}, true, true};
  const Tensor x2 = random_tensor(rng, {1, 2, 6, 6});
  const Tensor y2 = run_model(pool_model("AveragePool", pc), {OpType::kAveragePool}, x2);
  Worst worst{"AveragePool (ceil_mode overhang)"};
  expect_close(y2, pool_reference(PoolKind::kAverage, pc, x2), kMaxNmseAveragePool, kMaxAbsAveragePool, worst);
}

TEST(CpuBackend, GlobalAveragePoolAgainstNaiveLoops) {
  std::mt19937 rng(304);
  Worst worst{"GlobalAveragePool"};
  for (int rep = 0; rep < 6; ++rep) {
    const int64_t N = rand_int(rng, 1, 3), C = rand_int(rng, 1, 6), H = rand_int(rng, 1, 9), W = rand_int(rng, 1, 9);
    OnnxBuilder mb;
    mb.input("x", {C, H, W}).node("GlobalAveragePool", {"x"}, {"y"}, {}, "gap").output("y");
    const Tensor x = random_tensor(rng, {N, C, H, W});
    const Tensor y = run_model(mb, {OpType::kGlobalAveragePool}, x);
    RefTensor ref({N, C, 1, 1});
    for (int64_t i = 0; i < N * C; ++i) {
      double s = 0.0;
      for (int64_t k = 0; k < H * W; ++k) s += x.data[i * H * W + k];
      ref.data[i] = s / static_cast<double>(H * W);
    }
    expect_close(y, ref, kMaxNmseGlobalAveragePool, kMaxAbsGlobalAveragePool, worst);
  }
}

// ---------------------------------------------------------------- activations

// Random values in [-8, 8] plus the points where the piecewise formulas switch.
Tensor activation_input(std::mt19937& rng) {
  Tensor x = random_tensor(rng, {3, 4, 5, 6}, -8.0f, 8.0f);
  const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, 3.0f, -3.0f, 6.0f, -6.0f, 2.5f, -2.5f, 0.5f, 1e-30f, -1e-30f};
  std::copy(std::begin(special), std::end(special), x.data.begin());
  return x;
}

struct ActivationCase {
  std::string label, op;
  std::vector<onnx::AttributeProto> attrs;
  float clip_min, clip_max;  // Clip: NaN = input omitted
  int64_t opset;
};

// ONNX formulas, in double from the float32 parameters the model stores.
double activation_reference(const std::string& op, double x, double alpha, double beta) {
  if (op == "Relu") return x > 0.0 ? x : 0.0;
  if (op == "Clip") return std::min(std::max(x, alpha), beta);
  if (op == "LeakyRelu") return x >= 0.0 ? x : alpha * x;
  if (op == "Sigmoid") return 1.0 / (1.0 + std::exp(-x));
  if (op == "HardSigmoid") return std::max(0.0, std::min(1.0, alpha * x + beta));
  if (op == "HardSwish") return x * std::max(0.0, std::min(1.0, x / 6.0 + 0.5));
  ADD_FAILURE() << "no reference for " << op;
  return 0.0;
}

TEST(CpuBackend, ActivationsAgainstFormulas) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<ActivationCase> cases = {
      {"Relu", "Relu", {}, nan, nan, 13},
      {"Clip(0, 6)", "Clip", {}, 0.0f, 6.0f, 13},
      {"Clip(-1.5, 2.25)", "Clip", {}, -1.5f, 2.25f, 13},
      {"Clip(min only)", "Clip", {}, -0.75f, nan, 13},
      {"Clip(max only)", "Clip", {}, nan, 0.3f, 13},
      {"Clip(opset 11)", "Clip", {}, 0.0f, 6.0f, 11},
      {"LeakyRelu(default 0.01)", "LeakyRelu", {}, nan, nan, 13},
      {"LeakyRelu(0.1)", "LeakyRelu", {attr_f("alpha", 0.1f)}, nan, nan, 13},
      {"Sigmoid", "Sigmoid", {}, nan, nan, 13},
      {"HardSigmoid(default 0.2, 0.5)", "HardSigmoid", {}, nan, nan, 13},
      {"HardSigmoid(0.3, 0.4)", "HardSigmoid", {attr_f("alpha", 0.3f), attr_f("beta", 0.4f)}, nan, nan, 13},
      {"HardSwish", "HardSwish", {}, nan, nan, 14},
  };
  const std::map<std::string, OpType> ops = {{"Relu", OpType::kRelu},           {"Clip", OpType::kClip},
                                             {"LeakyRelu", OpType::kLeakyRelu}, {"Sigmoid", OpType::kSigmoid},
                                             {"HardSigmoid", OpType::kHardSigmoid}, {"HardSwish", OpType::kHardSwish}};
  std::mt19937 rng(401);
  Worst w_sig{"Sigmoid"}, w_hsig{"HardSigmoid"}, w_hswish{"HardSwish"};
  for (const ActivationCase& ac : cases) {
    SCOPED_TRACE(ac.label);
    OnnxBuilder mb(ac.opset);
    mb.input("x", {4, 5, 6});
    std::vector<std::string> inputs = {"x"};
    if (ac.op == "Clip") {
      inputs.push_back(std::isnan(ac.clip_min) ? "" : "cmin");
      inputs.push_back(std::isnan(ac.clip_max) ? "" : "cmax");
      if (!std::isnan(ac.clip_min)) mb.initializer("cmin", {ac.clip_min}, {});
      if (!std::isnan(ac.clip_max)) mb.initializer("cmax", {ac.clip_max}, {});
      while (inputs.back().empty()) inputs.pop_back();
    }
    mb.node(ac.op, inputs, {"y"}, ac.attrs, "act").output("y");
    const Tensor x = activation_input(rng);
    const Tensor y = run_model(mb, {ops.at(ac.op)}, x);
    // The parameters as the ONNX defaults / attributes give them, in float32.
    double alpha = 0.0, beta = 0.0;
    if (ac.op == "Clip") {
      alpha = std::isnan(ac.clip_min) ? -inf : ac.clip_min;
      beta = std::isnan(ac.clip_max) ? inf : ac.clip_max;
    } else if (ac.op == "LeakyRelu") {
      alpha = ac.attrs.empty() ? 0.01f : ac.attrs[0].f();
    } else if (ac.op == "HardSigmoid") {
      alpha = ac.attrs.empty() ? 0.2f : ac.attrs[0].f();
      beta = ac.attrs.empty() ? 0.5f : ac.attrs[1].f();
    }
    RefTensor ref(x.shape);
    for (size_t i = 0; i < x.data.size(); ++i) ref.data[i] = activation_reference(ac.op, x.data[i], alpha, beta);
    if (ac.op == "Sigmoid") {
      expect_close(y, ref, kMaxNmseSigmoid, kMaxAbsSigmoid, w_sig);
    } else if (ac.op == "HardSigmoid") {
      expect_close(y, ref, kMaxNmseHardSigmoid, kMaxAbsHardSigmoid, w_hsig);
    } else if (ac.op == "HardSwish") {
      expect_close(y, ref, kMaxNmseHardSwish, kMaxAbsHardSwish, w_hswish);
    } else {
      expect_exact(y, ref.shape, to_float(ref));  // Relu, Clip, LeakyRelu
    }
  }
}

// ---------------------------------------------------------------- Add, Mul

// Reference broadcasting: index each input by the output index, dims aligned right.
std::vector<float> broadcast_reference(bool add, const Tensor& a, const Tensor& b, Shape* out_shape) {
  const size_t r = std::max(a.rank(), b.rank());
  Shape os(r);
  auto dim = [&](const Tensor& t, size_t i) { return i < r - t.rank() ? int64_t{1} : t.shape[i - (r - t.rank())]; };
  for (size_t i = 0; i < r; ++i) os[i] = std::max(dim(a, i), dim(b, i));
  *out_shape = os;
  std::vector<float> out(shape_numel(os));
  std::vector<int64_t> idx(r, 0);
  for (size_t flat = 0; flat < out.size(); ++flat) {
    int64_t rem = static_cast<int64_t>(flat);
    for (size_t i = r; i-- > 0;) {
      idx[i] = rem % os[i];
      rem /= os[i];
    }
    auto offset = [&](const Tensor& t) {
      int64_t off = 0;
      for (size_t i = r - t.rank(); i < r; ++i) {
        const int64_t d = t.shape[i - (r - t.rank())];
        off = off * d + (d == 1 ? 0 : idx[i]);
      }
      return off;
    };
    const float u = a.data[offset(a)], v = b.data[offset(b)];
    out[flat] = add ? u + v : u * v;
  }
  return out;
}

TEST(CpuBackend, AddMulBroadcastingThroughTheImporter) {
  std::mt19937 rng(501);
  const Shape xs = {2, 3, 4, 5};
  const std::vector<Shape> const_shapes = {{3, 1, 1}, {1}, {}, {4, 5}, {1, 3, 1, 5}};
  for (const std::string op : {"Add", "Mul"}) {
    for (const Shape& cs : const_shapes) {
      for (bool const_first : {false, true}) {
        SCOPED_TRACE(fmt::format("{} x {} const {} const first {}", op, shape_str(xs), shape_str(cs), const_first));
        const Tensor c = random_tensor(rng, cs);
        OnnxBuilder mb;
        mb.input("x", {xs[1], xs[2], xs[3]})
            .initializer("c", c.data, cs)
            .node(op, const_first ? std::vector<std::string>{"c", "x"} : std::vector<std::string>{"x", "c"}, {"y"}, {}, "op")
            .output("y");
        const Tensor x = random_tensor(rng, xs);
        const Tensor y = run_model(mb, {op == "Add" ? OpType::kAdd : OpType::kMul}, x);
        Shape os;
        const auto want = const_first ? broadcast_reference(op == "Add", c, x, &os) : broadcast_reference(op == "Add", x, c, &os);
        expect_exact(y, os, want);
      }
    }
    // Same shape, both activations.
    OnnxBuilder mb;
    mb.input("x", {xs[1], xs[2], xs[3]}).node(op, {"x", "x"}, {"y"}, {}, "op").output("y");
    const Tensor x = random_tensor(rng, xs);
    Shape os;
    const auto want = broadcast_reference(op == "Add", x, x, &os);
    expect_exact(run_model(mb, {op == "Add" ? OpType::kAdd : OpType::kMul}, x), os, want);
  }
}

TEST(CpuBackend, AddMulBroadcastingDirect) {
  // Two different activations, including both-sided broadcasting.
  std::mt19937 rng(502);
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{2, 3, 4, 5}, {2, 3, 4, 5}}, {{2, 3, 4, 5}, {3, 1, 1}}, {{3, 1, 1}, {2, 3, 4, 5}}, {{2, 3, 1, 5}, {1, 1, 4, 1}},
      {{2, 1, 4, 5}, {3, 1, 1}},    {{2, 3, 4, 5}, {}},        {{5}, {2, 3, 4, 1}}};
  for (OpType op : {OpType::kAdd, OpType::kMul}) {
    for (const auto& [sa, sb] : shapes) {
      SCOPED_TRACE(fmt::format("{} {} {}", op_name(op), shape_str(sa), shape_str(sb)));
      Node n;
      n.name = "op";
      n.op = op;
      const Tensor a = random_tensor(rng, sa), b = random_tensor(rng, sb);
      Shape os;
      const auto want = broadcast_reference(op == OpType::kAdd, a, b, &os);
      expect_exact(run_node(n, {&a, &b}), os, want);
    }
  }
}

// ---------------------------------------------------------------- Concat, Flatten, Reshape

std::vector<float> concat_reference(const std::vector<const Tensor*>& in, int64_t axis, Shape* out_shape) {
  const int64_t r = static_cast<int64_t>(in[0]->rank());
  if (axis < 0) axis += r;
  Shape os = in[0]->shape;
  os[axis] = 0;
  for (const Tensor* t : in) os[axis] += t->shape[axis];
  *out_shape = os;
  std::vector<float> out(shape_numel(os));
  // Walk the output; find which input and where.
  std::vector<int64_t> idx(r);
  for (size_t flat = 0; flat < out.size(); ++flat) {
    int64_t rem = static_cast<int64_t>(flat);
    for (int64_t i = r; i-- > 0;) {
      idx[i] = rem % os[i];
      rem /= os[i];
    }
    int64_t a = idx[axis];
    size_t t = 0;
    while (a >= in[t]->shape[axis]) a -= in[t++]->shape[axis];
    int64_t off = 0;
    for (int64_t i = 0; i < r; ++i) off = off * in[t]->shape[i] + (i == axis ? a : idx[i]);
    out[flat] = in[t]->data[off];
  }
  return out;
}

TEST(CpuBackend, ConcatThroughTheImporter) {
  std::mt19937 rng(601);
  for (int64_t axis : {1, -1}) {
    SCOPED_TRACE("axis " + std::to_string(axis));
    OnnxBuilder mb;
    mb.input("x", {3, 4, 5})
        .node("Relu", {"x"}, {"r"}, {}, "relu")
        .node("Concat", {"x", "r", "x"}, {"y"}, {attr_i("axis", axis)}, "cat")
        .output("y");
    const Tensor x = random_tensor(rng, {2, 3, 4, 5});
    Tensor r = x;
    for (float& v : r.data) v = v > 0.0f ? v : 0.0f;
    Shape os;
    const auto want = concat_reference({&x, &r, &x}, axis, &os);
    expect_exact(run_model(mb, {OpType::kRelu, OpType::kConcat}, x), os, want);
  }
}

TEST(CpuBackend, ConcatDirectEveryAxis) {
  std::mt19937 rng(602);
  for (int64_t axis : {0, 1, 2, 3, -1, -2, -3, -4}) {
    SCOPED_TRACE("axis " + std::to_string(axis));
    const int64_t a = axis < 0 ? axis + 4 : axis;
    if (a == 0) {  // the batch: refused, as each image's result would depend on its batch
      Node n;
      n.name = "cat";
      n.op = OpType::kConcat;
      n.attrs.axis = axis;
      const Tensor t = random_tensor(rng, {2, 3, 4, 5});
      try {
        run_node(n, {&t, &t});
        ADD_FAILURE() << "a Concat over the batch ran";
      } catch (const UserError& e) {
        EXPECT_NE(std::string(e.what()).find("the batch"), std::string::npos) << e.what();
      }
      continue;
    }
    std::vector<Tensor> ts;
    for (int64_t k : {1, 3, 2}) {
      Shape s = {2, 3, 4, 5};
      s[a] = k;
      ts.push_back(random_tensor(rng, s));
    }
    Node n;
    n.name = "cat";
    n.op = OpType::kConcat;
    n.attrs.axis = axis;
    const std::vector<const Tensor*> in = {&ts[0], &ts[1], &ts[2]};
    Shape os;
    const auto want = concat_reference(in, axis, &os);
    expect_exact(run_node(n, in), os, want);
  }
}

TEST(CpuBackend, FlattenThroughTheImporter) {
  std::mt19937 rng(603);
  const Tensor x = random_tensor(rng, {2, 3, 4, 5});
  for (int64_t axis : {1, 2, -1}) {
    SCOPED_TRACE("axis " + std::to_string(axis));
    OnnxBuilder mb;
    mb.input("x", {3, 4, 5}).node("Flatten", {"x"}, {"y"}, {attr_i("axis", axis)}, "flat").output("y");
    const int64_t a = axis < 0 ? axis + 4 : axis;
    int64_t outer = 1;
    for (int64_t d = 0; d < a; ++d) outer *= x.shape[d];
    expect_exact(run_model(mb, {OpType::kFlatten}, x), {outer, x.numel() / outer}, x.data);
  }
  // The default axis is 1.
  OnnxBuilder mb;
  mb.input("x", {3, 4, 5}).node("Flatten", {"x"}, {"y"}, {}, "flat").output("y");
  expect_exact(run_model(mb, {OpType::kFlatten}, x), {2, 60}, x.data);
}

TEST(CpuBackend, ReshapeThroughTheImporter) {
  std::mt19937 rng(604);
  const Tensor x = random_tensor(rng, {2, 3, 4, 5});
  const std::vector<std::pair<std::vector<int64_t>, Shape>> cases = {
      {{0, -1}, {2, 60}}, {{0, 3, -1}, {2, 3, 20}}, {{0, 0, -1, 10}, {2, 3, 2, 10}}, {{-1, 5}, {24, 5}}, {{0, 12, 5}, {2, 12, 5}}};
  for (const auto& [target, want_shape] : cases) {
    SCOPED_TRACE(fmt::format("shape [{}]", fmt::join(target, ",")));
    OnnxBuilder mb;
    mb.input("x", {3, 4, 5}).int64_initializer("s", target).node("Reshape", {"x", "s"}, {"y"}, {}, "reshape").output("y");
    expect_exact(run_model(mb, {OpType::kReshape}, x), want_shape, x.data);
  }
}

// ---------------------------------------------------------------- Softmax

RefTensor softmax_reference(const Tensor& x, int64_t outer, int64_t k, int64_t inner) {
  RefTensor y(x.shape);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t in = 0; in < inner; ++in) {
      double m = -std::numeric_limits<double>::infinity(), s = 0.0;
      for (int64_t i = 0; i < k; ++i) m = std::max(m, static_cast<double>(x.data[(o * k + i) * inner + in]));
      for (int64_t i = 0; i < k; ++i) s += std::exp(x.data[(o * k + i) * inner + in] - m);
      for (int64_t i = 0; i < k; ++i) y.data[(o * k + i) * inner + in] = std::exp(x.data[(o * k + i) * inner + in] - m) / s;
    }
  }
  return y;
}

TEST(CpuBackend, SoftmaxAgainstNaiveLoops) {
  std::mt19937 rng(701);
  Worst worst{"Softmax"};
  const Tensor x = random_tensor(rng, {2, 3, 4, 5}, -6.0f, 6.0f);
  struct Case {
    std::string label;
    int64_t opset;
    std::vector<onnx::AttributeProto> attrs;
    int64_t outer, k, inner;
  };
  const std::vector<Case> cases = {
      {"opset 13 default axis (-1)", 13, {}, 24, 5, 1},
      {"opset 13 axis -1", 13, {attr_i("axis", -1)}, 24, 5, 1},
      {"opset 13 axis 1 (channels)", 13, {attr_i("axis", 1)}, 2, 3, 20},
      {"opset 13 axis 2", 13, {attr_i("axis", 2)}, 6, 4, 5},
      // Before opset 13 the input is coerced to 2-D at axis (default 1): one softmax over C*H*W.
      {"opset 11 default axis (1, flattened)", 11, {}, 2, 60, 1},
      {"opset 11 axis 2 (flattened)", 11, {attr_i("axis", 2)}, 6, 20, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    OnnxBuilder mb(c.opset);
    mb.input("x", {3, 4, 5}).node("Softmax", {"x"}, {"y"}, c.attrs, "softmax").output("y");
    expect_close(run_model(mb, {OpType::kSoftmax}, x), softmax_reference(x, c.outer, c.k, c.inner), kMaxNmseSoftmax,
                 kMaxAbsSoftmax, worst);
  }
}

// ---------------------------------------------------------------- Pad

// ONNX Pad: reflect mirrors without repeating the edge, edge repeats it.
std::vector<float> pad_reference(const Tensor& x, const std::vector<int64_t>& pads, const std::string& mode, float value,
                                 Shape* out_shape) {
  const size_t r = x.rank();
  Shape os(r);
  for (size_t d = 0; d < r; ++d) os[d] = x.shape[d] + pads[d] + pads[d + r];
  *out_shape = os;
  std::vector<float> out(shape_numel(os));
  std::vector<int64_t> idx(r);
  for (size_t flat = 0; flat < out.size(); ++flat) {
    int64_t rem = static_cast<int64_t>(flat);
    for (size_t i = r; i-- > 0;) {
      idx[i] = rem % os[i];
      rem /= os[i];
    }
    bool inside = true;
    int64_t off = 0;
    for (size_t d = 0; d < r; ++d) {
      int64_t s = idx[d] - pads[d];
      const int64_t n = x.shape[d];
      if (s < 0 || s >= n) {
        if (mode == "constant") {
          inside = false;
        } else if (mode == "edge") {
          s = s < 0 ? 0 : n - 1;
        } else {  // reflect, pads < n
          s = s < 0 ? -s : 2 * (n - 1) - s;
        }
      }
      off = off * n + s;
    }
    out[flat] = inside ? x.data[off] : value;
  }
  return out;
}

TEST(CpuBackend, PadThroughTheImporter) {
  std::mt19937 rng(801);
  const Tensor x = random_tensor(rng, {2, 3, 4, 5});
  // [begin N, C, H, W, end N, C, H, W]; reflect needs pads < dim.
  const std::vector<std::vector<int64_t>> pad_sets = {
      {0, 0, 1, 2, 0, 0, 2, 1}, {0, 1, 0, 3, 0, 2, 3, 0}, {0, 0, 3, 4, 0, 0, 3, 4}, {0, 0, 0, 0, 0, 0, 0, 0}};
  for (const std::string mode : {"constant", "reflect", "edge"}) {
    for (const auto& pads : pad_sets) {
      for (bool with_value : {false, true}) {
        if (with_value && mode != "constant") continue;
        SCOPED_TRACE(fmt::format("mode {} pads [{}] value {}", mode, fmt::join(pads, ","), with_value));
        OnnxBuilder mb;
        mb.input("x", {3, 4, 5}).int64_initializer("p", pads);
        std::vector<std::string> inputs = {"x", "p"};
        if (with_value) {
          mb.initializer("v", {1.5f}, {});
          inputs.push_back("v");
        }
        std::vector<onnx::AttributeProto> attrs;
        if (mode != "constant" || with_value) attrs.push_back(attr_s("mode", mode));  // default is constant
        mb.node("Pad", inputs, {"y"}, attrs, "pad").output("y");
        Shape os;
        const auto want = pad_reference(x, pads, mode, with_value ? 1.5f : 0.0f, &os);
        expect_exact(run_model(mb, {OpType::kPad}, x), os, want);
      }
    }
  }
}

// ---------------------------------------------------------------- BatchNormalization

TEST(CpuBackend, StandaloneBatchNormAgainstFormula) {
  std::mt19937 rng(901);
  Worst worst{"BatchNormalization"};
  for (float eps : {1e-5f, 1e-3f}) {
    for (const Shape& xs : {Shape{2, 4, 3, 5}, Shape{3, 6}}) {
      SCOPED_TRACE(fmt::format("x {} eps {}", shape_str(xs), eps));
      const int64_t C = xs[1];
      const auto gamma = uniform(rng, C, 0.5f, 1.5f), beta = uniform(rng, C), mean = uniform(rng, C);
      const auto var = uniform(rng, C, 0.2f, 2.0f);
      OnnxBuilder mb;
      mb.input("x", Shape(xs.begin() + 1, xs.end()))
          .initializer("g", gamma, {C})
          .initializer("b", beta, {C})
          .initializer("m", mean, {C})
          .initializer("v", var, {C})
          .node("BatchNormalization", {"x", "g", "b", "m", "v"}, {"y"}, {attr_f("epsilon", eps)}, "bn")
          .output("y");
      const Tensor x = random_tensor(rng, xs);
      const Tensor y = run_model(mb, {OpType::kBatchNorm}, x);
      RefTensor ref(xs);
      const int64_t inner = x.numel() / (xs[0] * C);
      for (int64_t i = 0; i < x.numel(); ++i) {
        const int64_t c = (i / inner) % C;
        ref.data[i] = (x.data[i] - static_cast<double>(mean[c])) /
                          std::sqrt(static_cast<double>(var[c]) + static_cast<double>(eps)) * gamma[c] + beta[c];
      }
      expect_close(y, ref, kMaxNmseBatchNorm, kMaxAbsBatchNorm, worst);
    }
  }
}

// ---------------------------------------------------------------- executor: suffix_forward

// x (N,3,8,8)
//  conv0 3->4 3x3 -> relu0 ............................. layer 0 (fused Relu)
//  conv1 4->4 3x3 (relu0) -> add(conv1, relu0) -> relu . layer 1 (output feeds the Add)
//  conv2 4->2 1x1 (relu0) -> clip(0, 6) ................. layer 2, a parallel branch
//  conv3 3->2 3x3 (x) -> sigmoid ........................ layer 3, a branch from the input
//  concat(relu, clip, sigmoid) -> maxpool -> gap -> flatten -> gemm ... layer 4 (logits)
std::string multi_branch_model(std::mt19937& rng) {
  OnnxBuilder b;
  const auto pad1 = attr_ints("pads", {1, 1, 1, 1});
  b.input("x", {3, 8, 8})
      .initializer("w0", uniform(rng, 4 * 3 * 9), {4, 3, 3, 3})
      .initializer("b0", uniform(rng, 4), {4})
      .initializer("w1", uniform(rng, 4 * 4 * 9, -0.5f, 0.5f), {4, 4, 3, 3})
      .initializer("b1", uniform(rng, 4), {4})
      .initializer("w2", uniform(rng, 8), {2, 4, 1, 1})
      .initializer("w3", uniform(rng, 2 * 3 * 9), {2, 3, 3, 3})
      .initializer("b3", uniform(rng, 2), {2})
      .initializer("cmin", {0.0f}, {})
      .initializer("cmax", {6.0f}, {})
      .initializer("wf", uniform(rng, 5 * 8), {5, 8})
      .initializer("bf", uniform(rng, 5), {5})
      .node("Conv", {"x", "w0", "b0"}, {"c0"}, {pad1}, "conv0")
      .node("Relu", {"c0"}, {"r0"}, {}, "relu0")
      .node("Conv", {"r0", "w1", "b1"}, {"c1"}, {pad1}, "conv1")
      .node("Add", {"c1", "r0"}, {"s"}, {}, "add")
      .node("Relu", {"s"}, {"sr"}, {}, "relu_add")
      .node("Conv", {"r0", "w2"}, {"c2"}, {}, "conv2")
      .node("Clip", {"c2", "cmin", "cmax"}, {"c2r"}, {}, "clip2")
      .node("Conv", {"x", "w3", "b3"}, {"c3"}, {pad1}, "conv3")
      .node("Sigmoid", {"c3"}, {"c3s"}, {}, "sig3")
      .node("Concat", {"sr", "c2r", "c3s"}, {"cat"}, {attr_i("axis", 1)}, "cat")
      .node("MaxPool", {"cat"}, {"p"}, {attr_ints("kernel_shape", {2, 2}), attr_ints("strides", {2, 2})}, "pool")
      .node("GlobalAveragePool", {"p"}, {"g"}, {}, "gap")
      .node("Flatten", {"g"}, {"f"}, {}, "flatten")
      .node("Gemm", {"f", "wf", "bf"}, {"logits"}, {attr_i("transB", 1)}, "fc")
      .output("logits");
  return b.serialize();
}

QuantParams range_params(const Tensor& t, int bits) {
  float lo, hi;
  min_max(t.ptr(), t.data.size(), &lo, &hi);
  return choose_quant_params(lo, hi, bits, Scheme::kAsymmetric);
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape == b.shape && std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)) == 0;
}

// Add + Relu / Clip in one call equals Add then the activation, bit for bit, on values that
// tell the orders apart: sums that round to ties, signed zeros, infinities and NaN, for
// same-shape operands (one loop) and broadcasting ones (two steps).
TEST(CpuBackend, AddWithActivationEqualsSeparateOpsBitForBit) {
  std::mt19937 rng(314);
  CpuBackend backend;
  auto ctx = backend.make_context();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  Node add;
  add.name = "add";
  add.op = OpType::kAdd;
  std::vector<Node> acts(3);
  acts[0].name = "relu";
  acts[0].op = OpType::kRelu;
  acts[1].name = "relu6";
  acts[1].op = OpType::kClip;
  acts[1].attrs.act_alpha = 0.0f;
  acts[1].attrs.act_beta = 6.0f;
  acts[2].name = "clip";
  acts[2].op = OpType::kClip;
  acts[2].attrs.act_alpha = -0.5f;
  acts[2].attrs.act_beta = 0.25f;
  for (bool broadcast : {false, true}) {
    Tensor a = random_tensor(rng, {3, 4, 5, 5}, -8.0f, 8.0f);
    Tensor b = broadcast ? random_tensor(rng, {1, 4, 1, 1}, -8.0f, 8.0f) : random_tensor(rng, {3, 4, 5, 5}, -8.0f, 8.0f);
    const float specials[][2] = {{-0.0f, 0.0f}, {0.0f, -0.0f}, {-0.0f, -0.0f}, {inf, 1.0f}, {-inf, 1.0f},
                                 {nan, 1.0f},   {1.0f, -1.0f}, {6.0f, 1e-7f},   {0.25f, 1e-8f}, {1.0f, 0x1p-24f}};
    if (!broadcast) {
      for (size_t i = 0; i < std::size(specials); ++i) {
        a.data[i] = specials[i][0];
        b.data[i] = specials[i][1];
      }
    }
    for (const Node& act : acts) {
      ASSERT_TRUE(backend.fuses_activation(OpType::kAdd, act.op));
      Tensor fused, sum, separate;
      backend.run_with_activation(*ctx, add, act, std::vector<const Tensor*>{&a, &b}, fused);
      backend.run(*ctx, add, std::vector<const Tensor*>{&a, &b}, sum);
      backend.run(*ctx, act, std::vector<const Tensor*>{&sum}, separate);
      EXPECT_TRUE(bitwise_equal(fused, separate)) << act.name << (broadcast ? " broadcast" : "");
      // and against the definition, element by element
      int nans = 0;
      for (size_t i = 0; i < fused.data.size(); ++i) {
        const float x = a.data[i], y = broadcast ? b.data[(i / 25) % 4] : b.data[i], v = x + y;
        const float want = act.op == OpType::kRelu ? (v > 0.0f ? v : 0.0f)
                                                   : std::min(std::max(v, act.attrs.act_alpha), act.attrs.act_beta);
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(fused.data[i])) << act.name << " at " << i;
          ++nans;
        } else {
          EXPECT_EQ(std::bit_cast<uint32_t>(fused.data[i]), std::bit_cast<uint32_t>(want)) << act.name << " at " << i;
        }
      }
      if (!broadcast) EXPECT_EQ(nans, act.op == OpType::kRelu ? 0 : 1) << act.name;
    }
  }
}

TEST(Executor, SuffixForwardEqualsSingleLayerPlanBitForBit) {
  std::mt19937 rng(1001);
  const Graph g = import_onnx_bytes(multi_branch_model(rng), "test.onnx");
  ASSERT_EQ(g.layers.size(), 5u);
  const std::vector<std::string> names = {"conv0", "conv1", "conv2", "conv3", "fc"};
  for (size_t j = 0; j < names.size(); ++j) EXPECT_EQ(g.layers[j].name, names[j]);
  EXPECT_GE(g.layers[0].act_node, 0);
  EXPECT_EQ(g.layers[1].act_node, -1);
  EXPECT_GE(g.layers[2].act_node, 0);
  EXPECT_GE(g.layers[3].act_node, 0);
  EXPECT_EQ(g.layers[4].output_value, g.output);

  CpuBackend backend;
  Executor ex(g, backend);
  const Tensor x = random_tensor(rng, {3, 3, 8, 8});
  auto ws = ex.make_workspace();
  const Tensor y_float = ex.forward(ws, x);
  const std::vector<Tensor> float_values = ws.values;

  // Per layer: weights fake-quantized at 4 bits, activations at 8 bits with ranges from
  // this batch's float forward.
  const size_t L = g.layers.size();
  std::vector<Tensor> wq(L);
  for (size_t j = 0; j < L; ++j) {
    const Tensor& w = g.constant(g.layers[j].weight_value);
    wq[j] = Tensor(w.shape);
    fake_quantize_per_tensor(w.ptr(), wq[j].ptr(), w.data.size(), range_params(w, 4));
  }
  struct Variant {
    std::string label;
    bool weights, input, output;
  };
  const std::vector<Variant> variants = {
      {"weights+input+output", true, true, true}, {"input only", false, true, false}, {"output only", false, false, true},
      {"weights only", true, false, false}};
  for (const Variant& v : variants) {
    std::vector<LayerQuantization> q(L);
    for (size_t j = 0; j < L; ++j) {
      q[j].weights = v.weights ? &wq[j] : nullptr;
      q[j].quantize_input = v.input;
      q[j].input = range_params(float_values[g.layers[j].input_value], 8);
      q[j].quantize_output = v.output;
      q[j].output = range_params(float_values[g.layers[j].output_value], 8);
    }
    // Forward order, then reverse order, through the same workspace: a suffix forward must
    // not disturb the cached float forward.
    for (bool reverse : {false, true}) {
      for (size_t step = 0; step < L; ++step) {
        const int j = static_cast<int>(reverse ? L - 1 - step : step);
        SCOPED_TRACE(fmt::format("{}, layer {} ({}){}", v.label, j, g.layers[j].name, reverse ? ", reverse order" : ""));
        const Tensor y_suffix = ex.suffix_forward(ws, j, q[j]);

        QuantPlan plan(L, nullptr);
        plan[j] = &q[j];
        auto ws_full = ex.make_workspace();
        const Tensor y_full = ex.forward(ws_full, x, &plan);

        EXPECT_TRUE(bitwise_equal(y_suffix, y_full));
        EXPECT_FALSE(bitwise_equal(y_suffix, y_float)) << "quantizing the layer changed nothing: the test is vacuous";
        // Quantizing layer j's input happens on the path into layer j only: the tensor
        // itself (seen by the other consumers) stays float32.
        EXPECT_TRUE(bitwise_equal(ws_full.values[g.layers[j].input_value], float_values[g.layers[j].input_value]));
        // The suffix is only what depends on layer j: everything before the layer is untouched.
        for (size_t k = 0; k < static_cast<size_t>(g.layers[j].node); ++k) {
          const int out = g.nodes[k].output;
          EXPECT_TRUE(bitwise_equal(ws_full.values[out], float_values[out])) << g.nodes[k].name;
        }
      }
    }
  }
  // The float forward cached in ws is intact.
  for (size_t v = 0; v < g.values.size(); ++v) EXPECT_TRUE(bitwise_equal(ws.values[v], float_values[v])) << g.values[v].name;
}

// Conv + Relu / Clip run as one oneDNN call (a post-op) in forwards and suffixes, and a
// residual Add + Relu as one loop; with keep_all_values they run as separate ops. Both give the same outputs, bit for bit, float and
// with every layer quantized, on the shipped ResNet (Relu) and MobileNet-V2 (Clip = ReLU6).
// With transforms = true the ResNet's 3x3 convolutions run as Winograd F(4x4, 3x3), whose
// epilogue applies the activation: the same bit-for-bit requirement holds.
void expect_fused_equals_separate(bool transforms) {
  CpuBackend backend(transforms);
  std::mt19937 rng(77);
  int models = 0, fused_adds = 0;
  for (const auto& m : testing::shipped_models()) {
    const Graph g = import_onnx(m.onnx);
    Executor ex(g, backend);
    int fusable = 0;
    for (const Layer& L : g.layers) {
      fusable += L.act_node >= 0 && g.nodes[L.node].op == OpType::kConv &&
                 backend.fuses_activation(g.nodes[L.node].op, g.nodes[L.act_node].op);
    }
    EXPECT_GT(fusable, 0) << m.name << ": nothing to fuse, the test is vacuous";
    const Tensor x = random_batch(rng, g, 5);
    auto fused = ex.make_workspace();
    auto separate = ex.make_workspace();
    separate.keep_all_values = true;
    const Tensor yf = ex.forward(fused, x);
    const Tensor ys = ex.forward(separate, x);
    EXPECT_TRUE(bitwise_equal(yf, ys)) << m.name;
    for (const Layer& L : g.layers) {  // the fused way really skipped the pre-activation values
      if (L.act_node < 0 || !backend.fuses_activation(g.nodes[L.node].op, g.nodes[L.act_node].op)) continue;
      EXPECT_TRUE(fused.values[g.nodes[L.node].output].data.empty()) << m.name << " " << L.name;
      EXPECT_FALSE(separate.values[g.nodes[L.node].output].data.empty()) << m.name << " " << L.name;
    }
    const auto consumers = g.consumers();
    for (const Node& n : g.nodes) {  // and every residual Add + Relu skipped the sum
      if (n.op != OpType::kAdd || consumers[n.output].size() != 1) continue;
      if (g.nodes[consumers[n.output][0]].op != OpType::kRelu) continue;
      ++fused_adds;
      EXPECT_TRUE(fused.values[n.output].data.empty()) << m.name << " " << n.name;
      EXPECT_FALSE(separate.values[n.output].data.empty()) << m.name << " " << n.name;
    }
    const size_t L = g.layers.size();
    std::vector<Tensor> wq(L);
    std::vector<LayerQuantization> q(L);
    QuantPlan plan(L, nullptr);
    for (size_t j = 0; j < L; ++j) {
      const Tensor& w = g.constant(g.layers[j].weight_value);
      wq[j] = Tensor(w.shape);
      fake_quantize_per_tensor(w.ptr(), wq[j].ptr(), w.data.size(), range_params(w, 4));
      q[j].weights = &wq[j];
      q[j].input = range_params(separate.values[g.layers[j].input_value], 8);
      q[j].output = range_params(separate.values[g.layers[j].output_value], 8);
      plan[j] = &q[j];
    }
    EXPECT_TRUE(bitwise_equal(ex.forward(fused, x, &plan), ex.forward(separate, x, &plan))) << m.name;
    ex.forward(fused, x);
    ex.forward(separate, x);
    for (size_t j = 0; j < L; ++j) {
      EXPECT_TRUE(bitwise_equal(ex.suffix_forward(fused, static_cast<int>(j), q[j]),
                                ex.suffix_forward(separate, static_cast<int>(j), q[j])))
          << m.name << " layer " << j;
    }
    ++models;
  }
  EXPECT_EQ(models, 2);
  EXPECT_GT(fused_adds, 0) << "the ResNet's residual Add + Relu were not fused";
}

TEST(Executor, FusedConvActivationEqualsSeparateOpsBitForBit) { expect_fused_equals_separate(false); }

TEST(Executor, FusedConvActivationEqualsSeparateOpsBitForBitWithConvTransforms) {
  expect_fused_equals_separate(true);
}

TEST(Executor, SuffixFusesResidualJoinsIntoTheConvolution) {
  // In a suffix forward, the Conv that computes a residual Add's later operand runs together
  // with that Add and its Relu (in the convolution kernel's epilogue, or as one loop after
  // oneDNN's): the conv's output and the sum are never stored, and the result equals the
  // nodes one after the other bit for bit (keep_all_values runs them unfused), with and
  // without run.conv_transforms.
  const auto models = testing::shipped_models();
  const Graph g = import_onnx(models.at(0).onnx);
  const auto consumers = g.consumers();
  std::vector<int> producer(g.values.size(), -1);
  for (size_t k = 0; k < g.nodes.size(); ++k) producer[g.nodes[k].output] = static_cast<int>(k);
  std::vector<std::pair<int, int>> joins;  // (the Add, the conv of its later operand)
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const Node& n = g.nodes[k];
    if (n.op != OpType::kAdd) continue;
    const int last = std::max(producer[n.inputs[0]], producer[n.inputs[1]]);
    if (g.nodes[last].op == OpType::kConv) joins.emplace_back(static_cast<int>(k), last);
  }
  ASSERT_GE(joins.size(), 3u) << "the ResNet's residual joins were not found";
  std::mt19937 rng(79);
  const Tensor x = random_batch(rng, g, 4);
  for (bool transforms : {false, true}) {
    CpuBackend backend(transforms);
    Executor ex(g, backend);
    auto fused = ex.make_workspace();
    auto separate = ex.make_workspace();
    separate.keep_all_values = true;
    ex.forward(fused, x);
    ex.forward(separate, x);
    // The first layer's suffix is the whole network after it: every join is in it.
    const Tensor& w = g.constant(g.layers[0].weight_value);
    Tensor wq(w.shape);
    fake_quantize_per_tensor(w.ptr(), wq.ptr(), w.data.size(), range_params(w, 4));
    LayerQuantization q;
    q.weights = &wq;
    q.input = range_params(separate.values[g.layers[0].input_value], 8);
    q.output = range_params(separate.values[g.layers[0].output_value], 8);
    EXPECT_TRUE(bitwise_equal(ex.suffix_forward(fused, 0, q), ex.suffix_forward(separate, 0, q)))
        << "transforms " << transforms;
    for (const auto& [add, conv] : joins) {
      EXPECT_TRUE(fused.scratch[g.nodes[conv].output].data.empty()) << g.nodes[conv].name << " was stored";
      EXPECT_TRUE(fused.scratch[g.nodes[add].output].data.empty()) << g.nodes[add].name << " was stored";
      EXPECT_FALSE(separate.scratch[g.nodes[conv].output].data.empty()) << g.nodes[conv].name;
    }
  }
}

TEST(CpuBackend, ConvTransformsChangeOnlyTheConvolutionsTheyTake) {
  // run.conv_transforms on the CPU: 3x3 stride-1 convolutions with 32 and 64 channels run as
  // Winograd F(4x4, 3x3), ungrouped ones with 16 input channels as reordered strips: float32
  // arithmetic, rounded differently from the direct convolution, so the logits differ by
  // rounding only. A model with no such convolution must not change at all.
  WinogradConv probe;
  probe.N = probe.H = probe.W = probe.out_h = probe.out_w = 1;
  probe.C = probe.K = 32;
  if (!winograd_available(probe)) GTEST_SKIP() << "this CPU has no AVX-512: run.conv_transforms changes nothing here";
  CpuBackend direct(false), transformed(true);
  EXPECT_FALSE(direct.conv_transforms());
  EXPECT_TRUE(transformed.conv_transforms());
  std::mt19937 rng(78);
  int checked = 0;
  for (const auto& m : testing::shipped_models()) {
    const Graph g = import_onnx(m.onnx);
    const Tensor x = random_batch(rng, g, 6);
    Executor ed(g, direct), et(g, transformed);
    auto wd = ed.make_workspace();
    auto wt = et.make_workspace();
    const Tensor yd = ed.forward(wd, x);
    const Tensor yt = et.forward(wt, x);
    ASSERT_EQ(yd.shape, yt.shape);
    int eligible = 0;  // convolutions run as Winograd or as 16-channel strips
    for (const Node& n : g.nodes) {
      // The network's first convolution reads the NCHW input and always stays on oneDNN.
      if (n.op != OpType::kConv || n.attrs.group != 1 || n.inputs[0] == g.input) continue;
      const Shape& w = g.constant(n.inputs[1]).shape;
      const bool unit = n.attrs.strides[0] == 1 && n.attrs.strides[1] == 1 && n.attrs.dilations[0] == 1 &&
                        n.attrs.dilations[1] == 1;
      eligible += unit && w[2] == 3 && w[3] == 3 && w[0] % 16 == 0 && w[1] % 16 == 0 && w[0] + w[1] >= 64;
      // A strip sums (kernel row, channel, kernel column): only with 2+ kernel columns is that
      // another order than the direct one.
      eligible += w[1] == 16 && (w[0] == 16 || w[0] == 32) && w[3] >= 2 && w[3] <= 3 && n.attrs.strides[1] <= 2 &&
                  n.attrs.dilations[1] == 1;
    }
    if (eligible == 0) {
      EXPECT_TRUE(bitwise_equal(yd, yt)) << m.name;
    } else {
      EXPECT_FALSE(bitwise_equal(yd, yt)) << m.name << ": " << eligible << " convolutions should have changed";
      double num = 0.0, den = 0.0;
      for (size_t i = 0; i < yd.data.size(); ++i) {
        num += std::pow(static_cast<double>(yt.data[i]) - yd.data[i], 2);
        den += std::pow(static_cast<double>(yd.data[i]), 2);
      }
      EXPECT_LE(num / den, 1e-10) << m.name;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

// An image's values do not depend on the batch it runs in: every value of the float32
// forward of each shipped model, for images run in a batch of 7, in a batch of 3 and alone,
// bit for bit (README: results do not depend on run.batch_size). The Gemm used to differ by
// an ulp between batches of 1 and 2 (oneDNN's sgemm blocks by the row count).
TEST(Executor, AnImageGetsTheSameBitsInAnyBatch) {
  if (!__builtin_cpu_supports("avx512f")) {
    GTEST_SKIP() << "this CPU has no AVX-512: its convolutions run on oneDNN, which may block by batch";
  }
  CpuBackend cpu;
  std::mt19937 rng(91);
  int checked = 0;
  for (const auto& m : testing::shipped_models()) {
    const Graph g = import_onnx(m.onnx);
    const Tensor x = random_batch(rng, g, 7);
    const int64_t per = x.numel() / 7;
    Executor exec(g, cpu);
    auto all = exec.make_workspace();
    exec.forward(all, x);
    for (const auto& [begin, n] : {std::pair<int64_t, int64_t>{2, 3}, {0, 1}, {4, 1}, {6, 1}}) {
      Shape sb = x.shape;
      sb[0] = n;
      Tensor xb(sb);
      std::copy_n(x.data.begin() + begin * per, n * per, xb.data.begin());
      auto ws = exec.make_workspace();
      exec.forward(ws, xb);
      for (size_t v = 0; v < g.values.size(); ++v) {
        if (g.values[v].is_constant) continue;
        const Tensor& a = all.values[v];
        const Tensor& b = ws.values[v];
        ASSERT_EQ(a.numel() % 7, 0) << g.values[v].name;
        const int64_t k = a.numel() / 7;
        ASSERT_EQ(b.numel(), n * k) << g.values[v].name;
        EXPECT_EQ(std::memcmp(a.ptr() + begin * k, b.ptr(), n * k * sizeof(float)), 0)
            << m.name << ": value " << g.values[v].name << " of images " << begin << ".." << begin + n - 1;
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

// ONNX defines Clip with min > max (the output is max everywhere) and Gemm with one bias value
// for every output; both import and compute as defined.
TEST(Executor, ClipWithMinAboveMaxAndGemmWithAScalarBias) {
  OnnxBuilder b;
  b.input("x", {4})
      .initializer("lo", {3.0f}, {})
      .initializer("hi", {1.0f}, {})
      .node("Clip", {"x", "lo", "hi"}, {"c"}, {}, "clip")
      .initializer("w", {1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}, {4, 3})
      .initializer("bias", {0.5f}, {})
      .node("Gemm", {"c", "w", "bias"}, {"y"}, {}, "fc")
      .output("y");
  const Tensor x(Shape{2, 4}, {-5, 0, 2, 9, 1, 1, 1, 1});
  const Tensor y = run_model(b, {OpType::kClip, OpType::kGemm}, x);
  ASSERT_EQ(y.shape, (Shape{2, 3}));
  // Clip gives 1 everywhere; row . w = (1, 1, 1); plus 0.5.
  for (float v : y.data) EXPECT_EQ(v, 1.5f);
}

// What only the input's shape decides is refused when the node runs, with a sentence naming
// the node, instead of a read past a buffer or a library's internal error (found by fuzzing).
// Shapes and pads are read as the integers the file holds: 4097 * 4097 = 2^24 + 8193 is odd, so
// float (exact to 2^24) would read it as 16785408, and the Reshape would be refused.
TEST(Executor, ReshapeSizesAboveFloatIntegersAreExact) {
  constexpr int64_t kSide = 4097, kSize = kSide * kSide;
  static_assert(kSize > (int64_t{1} << 24) && kSize % 2 == 1);
  OnnxBuilder b;
  b.input("x", {1, kSide, kSide}).int64_initializer("s", {0, kSize}).node("Reshape", {"x", "s"}, {"y"}, {}, "rs").output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
  CpuBackend backend;
  Executor ex(g, backend);
  auto ws = ex.make_workspace();
  Tensor x(Shape{1, 1, kSide, kSide});
  for (int64_t i = 0; i < kSize; ++i) x.data[i] = static_cast<float>(i % 1000);
  const Tensor& y = ex.forward(ws, x);
  ASSERT_EQ(y.shape, (Shape{1, kSize}));
  EXPECT_EQ(y.data[kSize - 1], static_cast<float>((kSize - 1) % 1000));
}

TEST(Executor, ShapeErrorsAtRunTimeNameTheNode) {
  auto error_of = [](const OnnxBuilder& b, const Tensor& x) -> std::string {
    const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
    CpuBackend backend;
    Executor ex(g, backend);
    auto ws = ex.make_workspace();
    try {
      ex.forward(ws, x);
    } catch (const UserError& e) {
      return e.what();
    }
    ADD_FAILURE() << "the forward succeeded";
    return "";
  };
  const Tensor x(Shape{2, 1, 6, 6});
  {  // Flatten past the input's rank
    OnnxBuilder b;
    b.input("x", {1, 6, 6}).node("Flatten", {"x"}, {"y"}, {test::attr_i("axis", 5)}, "flat").output("y");
    const std::string msg = error_of(b, x);
    for (const char* p : {"'flat' (Flatten)", "axis 5", "rank 4", "1 to 4"}) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
  {  // a pooling window larger than the padded input
    OnnxBuilder b;
    b.input("x", {1, 6, 6}).node("MaxPool", {"x"}, {"y"}, {test::attr_ints("kernel_shape", {9, 9})}, "pool").output("y");
    const std::string msg = error_of(b, x);
    for (const char* p : {"'pool' (MaxPool)", "9x9 window", "6x6 input"}) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
  {  // one pixel too small with a stride: (2 - 3) / 2 truncates to 0, which is no window either
    OnnxBuilder b;
    b.input("x", {1, 2, 2})
        .node("MaxPool", {"x"}, {"y"}, {test::attr_ints("kernel_shape", {3, 3}), test::attr_ints("strides", {2, 2})}, "pool")
        .output("y");
    const std::string msg = error_of(b, Tensor(Shape{2, 1, 2, 2}));
    for (const char* p : {"'pool' (MaxPool)", "3x3 window", "2x2 input"}) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
  // Reshape shapes that cannot hold the input are refused naming the node: at import where ONNX
  // infers a too large per-image size, or the first dimension fixes the batch (an int64 product
  // (2^62 + 9) * 8 = 2^65 + 72 that wraps around to the input's 72 values would pass a size
  // check that wraps too), at run time where the batch dimension carries it: an inferred -1
  // beside a product that overflows; and two -1 or a negative size.
  for (const auto& [shape, want] : std::vector<std::pair<std::vector<int64_t>, std::string>>{
           {{0, 1099511627777}, "more than 2^28 values per image"},
           {{(int64_t{1} << 62) + 9, 8}, "has the shape [4611686018427387913,8], whose first dimension fixes the batch"},
           {{1, -1}, "has the shape [1,-1], whose first dimension fixes the batch size at 1"},
           {{-1, int64_t{1} << 62, 4}, "cannot reshape (2, 1, 6, 6) into -1,4611686018427387904,4"},
           {{-1, -1}, ""},
           {{0, -2}, ""}}) {
    OnnxBuilder b;
    b.input("x", {1, 6, 6}).int64_initializer("s", shape).node("Reshape", {"x", "s"}, {"y"}, {}, "rs").output("y");
    std::string msg;
    try {
      msg = error_of(b, x);
    } catch (const UserError& e) {
      msg = e.what();  // refused at import
    }
    EXPECT_TRUE(msg.find("'rs' (Reshape)") != std::string::npos || msg.find("node 'rs', Reshape") != std::string::npos)
        << msg;
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
  }
  {  // A Reshape of a constant (an export without constant folding: a per-channel scale shaped
     // [1, C, 1, 1]) has no batch to fix: imported and run, each channel scaled by its value.
    OnnxBuilder b;
    b.input("x", {2, 3, 3})
        .initializer("scale", {2.0f, -0.5f}, {2})
        .int64_initializer("s", {1, 2, 1, 1})
        .node("Reshape", {"scale", "s"}, {"sc"}, {}, "rs")
        .node("Mul", {"x", "sc"}, {"y"}, {}, "mul")
        .output("y");
    const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
    CpuBackend backend;
    Executor ex(g, backend);
    auto ws = ex.make_workspace();
    Tensor in(Shape{3, 2, 3, 3});
    for (size_t i = 0; i < in.data.size(); ++i) in.data[i] = static_cast<float>(i) - 20.0f;
    const Tensor& y = ex.forward(ws, in);
    ASSERT_EQ(y.shape, in.shape);
    for (size_t i = 0; i < in.data.size(); ++i) {
      EXPECT_EQ(y.data[i], in.data[i] * ((i / 9) % 2 == 0 ? 2.0f : -0.5f)) << i;
    }
  }
  {  // Softmax over the batch, with a negative axis that only the rank resolves to 0
    OnnxBuilder b;
    b.input("x", {1, 6, 6}).node("Softmax", {"x"}, {"y"}, {test::attr_i("axis", -4)}, "sm").output("y");
    const std::string msg = error_of(b, x);
    for (const char* p : {"'sm' (Softmax)", "axis -4, the batch"}) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace qsweep

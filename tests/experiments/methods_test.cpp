// The quantization methods of experiments/quant_plan.h and the statistics of stats.h:
// weight quantization under every clipping method and granularity, per-layer overrides,
// cross-layer equalization, empirical bias correction, the paired bootstrap, Pearson r and
// the least-squares slope. Each is checked against a computation written out here.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "experiments/config.h"
#include "experiments/layerwise.h"
#include "experiments/quant_plan.h"
#include "experiments/stats.h"
#include "kernels/cpu/clipping.h"
#include "runtime/cpu_backend.h"
#include "runtime/error.h"
#include "runtime/onnx_import.h"
#include "tests/runtime/onnx_builder.h"
#include "tests/shipped_models.h"
#include "tests/reference_quant.h"

namespace qsweep {
namespace {

using testing::RefQuant;

using test::attr_i;
using test::attr_ints;
using test::OnnxBuilder;

// ---------------------------------------------------------------- tolerances

// A de-quantized weight is k * scale for an integer k; k recovered in float32 is within
// this of an integer.
constexpr double kGridIntegerTol = 1e-3;
// Equalization rescales weights by non-powers of two: each rescaled weight rounds once
// (relative 6e-8), so outputs move by ~1e-7 relative; 100x room.
constexpr double kEqualizeRelTol = 1e-5;
// After equalization every pair's per-channel ranges agree: |log(r1_i / r2_i)| below this.
constexpr double kEqualizedLogTol = 0.05;
// Bias correction removes the mean shift up to float32 rounding of outputs of size ~1-10:
// the remaining shift is below this fraction of the one before.
constexpr double kBiasResidualRatio = 1e-3;

// ---------------------------------------------------------------- helpers

std::vector<float> uniform(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// x (N, 2, 6, 6)
//   /a/conv1  2->8 3x3 pad 1, bias -> Relu ..... layer 0; output channel i scaled by 2^(i-4)
//   /a/conv2  8->6 3x3 pad 1, bias -> Relu ..... layer 1
//   /b/conv1  6->4 1x1, no bias -> Relu ........ layer 2
//   GlobalAveragePool -> Flatten -> fc Gemm (K, N) = (4, 3), no transB ... layer 3 (logits)
// Equalization pairs: (0, 1) and (1, 2).
std::string unbalanced_model() {
  std::mt19937 rng(2024);
  auto w0 = uniform(rng, 8 * 2 * 9), b0 = uniform(rng, 8, -0.2f, 0.2f);
  for (int o = 0; o < 8; ++o) {
    const float s = std::ldexp(1.0f, o - 4);  // 1/16 .. 8
    for (int k = 0; k < 18; ++k) w0[o * 18 + k] *= s;
    b0[o] *= s;
  }
  auto w1 = uniform(rng, 6 * 8 * 9, -0.3f, 0.3f), b1 = uniform(rng, 6, -0.1f, 0.1f);
  // The next layer's input channels unbalanced the other way round.
  for (int o = 0; o < 6; ++o) {
    for (int i = 0; i < 8; ++i) {
      for (int k = 0; k < 9; ++k) w1[(o * 8 + i) * 9 + k] *= std::ldexp(1.0f, 2 - i / 2);
    }
  }
  const auto w2 = uniform(rng, 4 * 6);
  const auto wf = uniform(rng, 4 * 3), bf = uniform(rng, 3, -0.1f, 0.1f);
  const auto pad1 = attr_ints("pads", {1, 1, 1, 1});
  OnnxBuilder b;
  b.input("x", {2, 6, 6})
      .initializer("w0", w0, {8, 2, 3, 3})
      .initializer("b0", b0, {8})
      .initializer("w1", w1, {6, 8, 3, 3})
      .initializer("b1", b1, {6})
      .initializer("w2", w2, {4, 6, 1, 1})
      .initializer("wf", wf, {4, 3})
      .initializer("bf", bf, {3})
      .node("Conv", {"x", "w0", "b0"}, {"c0"}, {pad1}, "/a/conv1")
      .node("Relu", {"c0"}, {"r0"}, {}, "/a/relu1")
      .node("Conv", {"r0", "w1", "b1"}, {"c1"}, {pad1}, "/a/conv2")
      .node("Relu", {"c1"}, {"r1"}, {}, "/a/relu2")
      .node("Conv", {"r1", "w2"}, {"c2"}, {}, "/b/conv1")
      .node("Relu", {"c2"}, {"r2"}, {}, "/b/relu1")
      .node("GlobalAveragePool", {"r2"}, {"g"}, {}, "gap")
      .node("Flatten", {"g"}, {"f"}, {}, "flatten")
      .node("Gemm", {"f", "wf", "bf"}, {"logits"}, {}, "fc")
      .output("logits");
  return b.serialize();
}

// A MatMul layer on a rank-3 input: x (N, 2, 6, 6) reshaped to (N, 12, 6), times (6, 5), then
// ReLU, Flatten and a Gemm. The MatMul's output features are its last axis (5), not axis 1.
std::string matmul_rank3_model() {
  std::mt19937 rng(2025);
  auto wm = uniform(rng, 6 * 5, -0.6f, 0.6f);
  for (int k = 0; k < 6; ++k) wm[k * 5 + 2] *= 4.0f;  // one wide column: a visible 3-bit shift
  const auto wf = uniform(rng, 60 * 3, -0.3f, 0.3f);
  OnnxBuilder b;
  b.input("x", {2, 6, 6})
      .int64_initializer("shape", {-1, 12, 6})
      .initializer("wm", wm, {6, 5})
      .initializer("wf", wf, {60, 3})
      .node("Reshape", {"x", "shape"}, {"r"}, {}, "reshape")
      .node("MatMul", {"r", "wm"}, {"m"}, {}, "/mm")
      .node("Relu", {"m"}, {"a"}, {}, "/mm/relu")
      .node("Flatten", {"a"}, {"f"}, {}, "flatten")
      .node("Gemm", {"f", "wf"}, {"logits"}, {}, "fc")
      .output("logits");
  return b.serialize();
}

Dataset random_dataset(int64_t count, int64_t channels, int64_t h, int64_t w, int classes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> px(0, 255), lab(0, classes - 1);
  Dataset d;
  d.name = "synthetic";
  d.count = count;
  d.channels = channels;
  d.height = h;
  d.width = w;
  d.pixels.resize(count * channels * h * w);
  for (auto& p : d.pixels) p = static_cast<uint8_t>(px(rng));
  for (int64_t i = 0; i < count; ++i) d.labels.push_back(lab(rng));
  d.num_classes = classes;
  return d;
}

Tensor random_input(std::mt19937& rng, const Shape& s) {
  Tensor t(s);
  t.data = uniform(rng, t.data.size(), -2.0f, 2.0f);
  return t;
}

double max_abs(const Tensor& t) {
  double m = 0.0;
  for (float v : t.data) m = std::max(m, std::fabs(static_cast<double>(v)));
  return m;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape, b.shape);
  double m = 0.0;
  for (size_t i = 0; i < a.data.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(a.data[i]) - b.data[i]));
  return m;
}

// The weights of output channel c: Conv (O, ...) rows, Gemm (K, N) columns.
std::vector<float> channel_of(const Graph& g, const Layer& L, int64_t c) {
  const Tensor& w = g.constant(L.weight_value);
  std::vector<float> s;
  for (int64_t o = 0; o < L.w_outer; ++o) {
    for (int64_t i = 0; i < L.w_inner; ++i) s.push_back(w.data[(o * L.w_channels + c) * L.w_inner + i]);
  }
  return s;
}


// The range a clipping method gives one slice of weights (the kernels are tested against
// hand computations in tests/kernels/clipping_test.cpp; here the plumbing is under test).
void expected_range(const std::vector<float>& w, const QuantSpec& spec, int bits, float* lo, float* hi) {
  const float mn = *std::min_element(w.begin(), w.end()), mx = *std::max_element(w.begin(), w.end());
  float alpha = 0.0f;
  switch (spec.clip) {
    case ClipMethod::kMinMax:
      *lo = mn;
      *hi = mx;
      return;
    case ClipMethod::kPercentile:
      percentile_range(w.data(), w.size(), spec.percentile, lo, hi);
      return;
    case ClipMethod::kSawb:
      alpha = std::fabs(sawb_clip(w.data(), w.size(), bits));
      break;
    case ClipMethod::kMse:
      alpha = mse_clip(w.data(), w.size(), bits, spec.scheme, spec.mse_grid);
      break;
  }
  *lo = std::max(mn, -alpha);
  *hi = std::min(mx, alpha);
}

// Checks the quantized slice q of the weights w under range [lo, hi]: every value is on
// the grid of that range, within half a step of the clamped weight, and equals method.md's
// fake quantization. Returns how many weights lie outside [lo, hi].
size_t check_slice(const std::vector<float>& w, const std::vector<float>& q, float lo, float hi, int bits,
                   Scheme scheme, const std::string& what) {
  SCOPED_TRACE(what);
  const RefQuant ref(lo, hi, bits, scheme);
  size_t outside = 0;
  std::set<float> levels;
  for (size_t i = 0; i < w.size(); ++i) {
    const double k = static_cast<double>(q[i]) / ref.scale;
    EXPECT_NEAR(k, std::nearbyint(k), kGridIntegerTol) << "weight " << i << " is off the grid";
    const long code = std::lround(k) + ref.zp;
    EXPECT_GE(code, ref.qmin);
    EXPECT_LE(code, ref.qmax);
    const float lo_level = static_cast<float>(ref.qmin - ref.zp) * ref.scale;
    const float hi_level = static_cast<float>(ref.qmax - ref.zp) * ref.scale;
    const float clamped = std::clamp(w[i], lo_level, hi_level);
    EXPECT_LE(std::fabs(q[i] - clamped), 0.5f * ref.scale * (1.0f + 1e-5f)) << "weight " << i;
    EXPECT_EQ(q[i], ref(w[i])) << "weight " << i;
    outside += (w[i] < lo || w[i] > hi);
    levels.insert(q[i]);
  }
  EXPECT_LE(levels.size(), static_cast<size_t>(ref.qmax - ref.qmin + 1));
  return outside;
}

const char* clip_str(ClipMethod c) {
  switch (c) {
    case ClipMethod::kMinMax:
      return "minmax";
    case ClipMethod::kSawb:
      return "sawb";
    case ClipMethod::kMse:
      return "mse";
    case ClipMethod::kPercentile:
      return "percentile";
  }
  return "?";
}

// ---------------------------------------------------------------- (a) weights, overrides

TEST(QuantizeWeights, RangeClipFractionAndGridForEveryMethod) {
  const Graph g = import_onnx_bytes(unbalanced_model(), "unbalanced.onnx");
  ASSERT_EQ(g.layers.size(), 4u);
  // Layer 0: Conv (8, 2, 3, 3) with channel ranges 1/16..8; layer 3: Gemm (K, N) = (4, 3),
  // whose output channels are columns.
  ASSERT_EQ(g.layers[3].w_outer, 4);
  ASSERT_EQ(g.layers[3].w_channels, 3);
  ASSERT_EQ(g.layers[3].w_inner, 1);
  int clipped_cases = 0;
  for (int layer : {0, 3}) {
    const Layer& L = g.layers[layer];
    const Tensor& w = g.constant(L.weight_value);
    for (ClipMethod clip : {ClipMethod::kMinMax, ClipMethod::kSawb, ClipMethod::kMse, ClipMethod::kPercentile}) {
      for (Granularity gran : {Granularity::kPerTensor, Granularity::kPerChannel}) {
        for (Scheme scheme : {Scheme::kAsymmetric, Scheme::kSymmetric}) {
          for (int bits : {3, 4, 8}) {
            QuantSpec spec;
            spec.clip = clip;
            spec.granularity = gran;
            spec.scheme = scheme;
            spec.percentile = 95.0;
            const std::string what = fmt::format("layer {} {} {} {} {} bits", layer, clip_str(clip),
                                                 gran == Granularity::kPerTensor ? "per-tensor" : "per-channel",
                                                 scheme == Scheme::kSymmetric ? "symmetric" : "asymmetric", bits);
            SCOPED_TRACE(what);
            const QuantizedWeights q = quantize_weights(g, L, spec, bits);
            ASSERT_EQ(q.weights.shape, w.shape);
            size_t outside = 0;
            if (gran == Granularity::kPerTensor) {
              float lo, hi;
              expected_range(w.data, spec, bits, &lo, &hi);
              EXPECT_EQ(q.range_lo, lo);
              EXPECT_EQ(q.range_hi, hi);
              outside = check_slice(w.data, q.weights.data, lo, hi, bits, scheme, what);
            } else {
              float wide_lo = std::numeric_limits<float>::infinity(), wide_hi = -wide_lo;
              for (int64_t c = 0; c < L.w_channels; ++c) {
                const std::vector<float> wc = channel_of(g, L, c);
                std::vector<float> qc;
                for (int64_t o = 0; o < L.w_outer; ++o) {
                  for (int64_t i = 0; i < L.w_inner; ++i) {
                    qc.push_back(q.weights.data[(o * L.w_channels + c) * L.w_inner + i]);
                  }
                }
                float lo, hi;
                expected_range(wc, spec, bits, &lo, &hi);
                outside += check_slice(wc, qc, lo, hi, bits, scheme, what + fmt::format(" channel {}", c));
                wide_lo = std::min(wide_lo, lo);
                wide_hi = std::max(wide_hi, hi);
              }
              EXPECT_EQ(q.range_lo, wide_lo);
              EXPECT_EQ(q.range_hi, wide_hi);
            }
            // The range is inside the weights' min/max, and the clip fraction counts the rest.
            const float wmin = *std::min_element(w.data.begin(), w.data.end());
            const float wmax = *std::max_element(w.data.begin(), w.data.end());
            EXPECT_GE(q.range_lo, wmin);
            EXPECT_LE(q.range_hi, wmax);
            EXPECT_LT(q.range_lo, q.range_hi);
            EXPECT_DOUBLE_EQ(q.clip_fraction, static_cast<double>(outside) / static_cast<double>(w.data.size()));
            if (clip == ClipMethod::kMinMax) {
              EXPECT_EQ(q.clip_fraction, 0.0);
              if (gran == Granularity::kPerTensor) {
                EXPECT_EQ(q.range_lo, wmin);
                EXPECT_EQ(q.range_hi, wmax);
              }
            }
            if (clip == ClipMethod::kPercentile) EXPECT_GT(q.clip_fraction, 0.0);  // 95th percentile clips
            clipped_cases += q.clip_fraction > 0.0;
          }
        }
      }
    }
  }
  // Not vacuous: SAWB and MSE clip the unbalanced conv per tensor at 3 bits.
  EXPECT_GT(clipped_cases, 2 * 2 * 2 * 3);  // more than the percentile cases alone
  for (ClipMethod clip : {ClipMethod::kSawb, ClipMethod::kMse}) {
    QuantSpec spec;
    spec.clip = clip;
    EXPECT_GT(quantize_weights(g, g.layers[0], spec, 3).clip_fraction, 0.0) << clip_str(clip);
  }
}

TEST(QuantizeWeights, SawbRefusesBitWidthsWithoutCoefficients) {
  const Graph g = import_onnx_bytes(unbalanced_model(), "unbalanced.onnx");
  QuantSpec spec;
  spec.clip = ClipMethod::kSawb;
  EXPECT_THROW(quantize_weights(g, g.layers[0], spec, 9), UserError);
  EXPECT_NO_THROW(quantize_weights(g, g.layers[0], spec, 8));
}

TEST(QuantizeWeights, PerChannelBeatsPerTensorOnUnbalancedChannels) {
  // Layer 0's output channels have ranges 1/16..8: at 4 bits per tensor the step (~1) wipes
  // out the small channels, per channel each keeps its own 16 levels.
  const Graph g = import_onnx_bytes(unbalanced_model(), "unbalanced.onnx");
  const Layer& L = g.layers[0];
  QuantSpec pt, pc;
  pc.granularity = Granularity::kPerChannel;
  const QuantizedWeights qt = quantize_weights(g, L, pt, 4), qc = quantize_weights(g, L, pc, 4);
  double rel_t = 0.0, rel_c = 0.0;  // sum over channels of ||w_c - q_c||^2 / ||w_c||^2
  for (int64_t c = 0; c < L.w_channels; ++c) {
    double et = 0.0, ec = 0.0, energy = 0.0;
    for (int64_t i = 0; i < L.w_inner; ++i) {
      const size_t k = static_cast<size_t>(c * L.w_inner + i);
      const double w = g.constant(L.weight_value).data[k];
      et += std::pow(w - qt.weights.data[k], 2);
      ec += std::pow(w - qc.weights.data[k], 2);
      energy += w * w;
    }
    EXPECT_LE(ec, et * (1.0 + 1e-9)) << "channel " << c;
    rel_t += et / energy;
    rel_c += ec / energy;
  }
  std::printf("[per-channel] 4-bit relative weight error summed over channels: per tensor %.3g, per channel %.3g\n",
              rel_t, rel_c);
  EXPECT_LT(rel_c, 0.1 * rel_t);
}

LayerOverride override_of(std::vector<std::string> selectors, std::string where) {
  LayerOverride o;
  o.selectors = std::move(selectors);
  o.where = std::move(where);
  return o;
}

TEST(LayerSpecs, OverridesApplyByIndexNameAndGlobInOrder) {
  const Graph g = import_onnx_bytes(unbalanced_model(), "unbalanced.onnx");
  ASSERT_EQ(g.layers.size(), 4u);
  ASSERT_EQ(g.layers[0].name, "/a/conv1");
  ASSERT_EQ(g.layers[1].name, "/a/conv2");
  ASSERT_EQ(g.layers[2].name, "/b/conv1");
  ASSERT_EQ(g.layers[3].name, "fc");
  QuantConfig q;
  q.base.weight_bits = 4;
  q.base.act_bits = 8;
  auto o1 = override_of({"1"}, "cfg.toml:10");  // by index
  o1.weight_bits = 3;
  o1.act_bits = 6;
  auto o2 = override_of({"/a/*"}, "cfg.toml:14");  // glob: layers 0, 1
  o2.clip = ClipMethod::kSawb;
  o2.weight_bits = 5;
  auto o3 = override_of({"/a/conv1", "fc"}, "cfg.toml:18");  // exact names: layers 0, 3
  o3.granularity = Granularity::kPerChannel;
  o3.weight_bits = 6;
  auto o4 = override_of({"/?/conv1"}, "cfg.toml:22");  // glob: layers 0, 2
  o4.percentile = 99.0;
  o4.scheme = Scheme::kSymmetric;
  q.layers = {o1, o2, o3, o4};
  const std::vector<QuantSpec> s = resolve_layer_specs(g, q);
  ASSERT_EQ(s.size(), 4u);
  // Layer 0: o2, o3 (wins on bits), o4.
  EXPECT_EQ(s[0].weight_bits, 6);
  EXPECT_EQ(s[0].clip, ClipMethod::kSawb);
  EXPECT_EQ(s[0].granularity, Granularity::kPerChannel);
  EXPECT_EQ(s[0].scheme, Scheme::kSymmetric);
  EXPECT_EQ(s[0].percentile, 99.0);
  EXPECT_EQ(s[0].act_bits, 8);
  // Layer 1: o1, then o2 (wins on bits); o1's act_bits stays.
  EXPECT_EQ(s[1].weight_bits, 5);
  EXPECT_EQ(s[1].act_bits, 6);
  EXPECT_EQ(s[1].clip, ClipMethod::kSawb);
  EXPECT_EQ(s[1].granularity, Granularity::kPerTensor);
  EXPECT_EQ(s[1].scheme, Scheme::kAsymmetric);
  // Layer 2: o4 only.
  EXPECT_EQ(s[2].weight_bits, 4);
  EXPECT_EQ(s[2].clip, ClipMethod::kMinMax);
  EXPECT_EQ(s[2].scheme, Scheme::kSymmetric);
  EXPECT_EQ(s[2].percentile, 99.0);
  // Layer 3: o3 only.
  EXPECT_EQ(s[3].weight_bits, 6);
  EXPECT_EQ(s[3].granularity, Granularity::kPerChannel);
  EXPECT_EQ(s[3].clip, ClipMethod::kMinMax);
  EXPECT_EQ(s[3].percentile, q.base.percentile);

  // The same overrides in the opposite order: now o1's bits win on layer 1, o2's on layer 0.
  q.layers = {o4, o3, o2, o1};
  const std::vector<QuantSpec> r = resolve_layer_specs(g, q);
  EXPECT_EQ(r[0].weight_bits, 5);
  EXPECT_EQ(r[1].weight_bits, 3);
  EXPECT_EQ(r[3].weight_bits, 6);
}

TEST(LayerSpecs, SelectLayersSortsMergesAndRejectsUnmatchedSelectors) {
  const Graph g = import_onnx_bytes(unbalanced_model(), "unbalanced.onnx");
  EXPECT_EQ(select_layers(g, {"3", "/a/*", "0"}, "here"), (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(select_layers(g, {"/b/conv1"}, "here"), (std::vector<int>{2}));
  EXPECT_EQ(select_layers(g, {"*"}, "here"), (std::vector<int>{0, 1, 2, 3}));
  for (const std::string bad : {"/c/*", "/a/conv", "4", "conv1"}) {
    try {
      select_layers(g, {"/a/conv1", bad}, "cfg.toml:7:3");
      ADD_FAILURE() << "selector '" << bad << "' matched nothing but was accepted";
    } catch (const UserError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("'" + bad + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("cfg.toml:7:3"), std::string::npos) << msg;
    }
  }
  // resolve_layer_specs reports an override's unmatched selector the same way.
  QuantConfig q;
  q.layers = {override_of({"/nowhere/*"}, "cfg.toml:30")};
  EXPECT_THROW(resolve_layer_specs(g, q), UserError);
}

// Names that look like indices or patterns (audit: a layer named "0" could not be picked by
// name, the string "0" picked layer 0 in silence; "a*[b]" matched no layer as a pattern). A
// string is a layer's exact name first; an integer in the config is always an index.
TEST(LayerSpecs, ExactNamesComeFirstAndIntegersAreIndices) {
  std::mt19937 rng(21);
  OnnxBuilder b;
  b.input("x", {1, 4, 4}).initializer("w0", uniform(rng, 9), {1, 1, 3, 3}).initializer("w1", uniform(rng, 1), {1, 1, 1, 1});
  b.initializer("w2", uniform(rng, 1), {1, 1, 1, 1});
  b.node("Conv", {"x", "w0"}, {"a"}, {}, "2").node("Conv", {"a", "w1"}, {"c"}, {}, "conv*[b]");
  b.node("Conv", {"c", "w2"}, {"d"}, {}, "0").node("Flatten", {"d"}, {"y"}, {}, "flat").output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "names.onnx");
  ASSERT_EQ(g.layers.size(), 3u);
  ASSERT_EQ(g.layers[0].name, "2");
  ASSERT_EQ(g.layers[2].name, "0");
  EXPECT_EQ(select_layers(g, {"0"}, "here"), (std::vector<int>{2}));      // the layer named "0"
  EXPECT_EQ(select_layers(g, {"0"}, "here", {1}), (std::vector<int>{0}));  // the integer 0
  EXPECT_EQ(select_layers(g, {"1"}, "here"), (std::vector<int>{1}));      // no layer named "1": index 1
  EXPECT_EQ(select_layers(g, {"conv*[b]"}, "here"), (std::vector<int>{1}));
  EXPECT_EQ(select_layers(g, {"conv*"}, "here"), (std::vector<int>{1}));  // a pattern where no name is equal
  // Through a config: layers = [0, "0"] is layer 0 (index) and layer 2 (name), and config.toml
  // writes them back as they were given.
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("qsweep_selectors_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "c.toml") << "[model]\npath = \"m.onnx\"\n[[quant.layer]]\nlayers = [0, \"0\"]\nact_bits = 6\n";
  const Config cfg = load_config((dir / "c.toml").string(), {});
  const std::vector<QuantSpec> specs = resolve_layer_specs(g, cfg.quant);
  EXPECT_EQ(specs[0].act_bits, 6);
  EXPECT_EQ(specs[1].act_bits, 8);
  EXPECT_EQ(specs[2].act_bits, 6);
  EXPECT_NE(config_to_toml(cfg).find("layers = [ 0, '0' ]"), std::string::npos) << config_to_toml(cfg);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- (b) equalization

// Per output channel of a conv weight (O, ...): max |w|.
std::vector<double> out_ranges(const Tensor& w) {
  const int64_t O = w.dim(0), per = w.numel() / O;
  std::vector<double> r(O, 0.0);
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t i = 0; i < per; ++i) r[o] = std::max(r[o], std::fabs(static_cast<double>(w.data[o * per + i])));
  }
  return r;
}

// Per input channel of a conv weight (O, I, kh, kw), group 1: max |w|.
std::vector<double> in_ranges(const Tensor& w) {
  const int64_t O = w.dim(0), I = w.dim(1), k = w.dim(2) * w.dim(3);
  std::vector<double> r(I, 0.0);
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t i = 0; i < I; ++i) {
      for (int64_t j = 0; j < k; ++j)
        r[i] = std::max(r[i], std::fabs(static_cast<double>(w.data[(o * I + i) * k + j])));
    }
  }
  return r;
}

double spread(const std::vector<double>& r) {
  return *std::max_element(r.begin(), r.end()) / *std::min_element(r.begin(), r.end());
}

// max over channels of |log(r1_i / r2_i)| for a pair (first conv's outputs, second's inputs).
double imbalance(const Graph& g, int first, int second) {
  const auto r1 = out_ranges(g.constant(g.layers[first].weight_value));
  const auto r2 = in_ranges(g.constant(g.layers[second].weight_value));
  double m = 0.0;
  for (size_t i = 0; i < r1.size(); ++i) m = std::max(m, std::fabs(std::log(r1[i] / r2[i])));
  return m;
}

TEST(Equalization, KeepsOutputsAndBalancesUnbalancedChannels) {
  const Graph g0 = import_onnx_bytes(unbalanced_model(), "unbalanced.onnx");
  Graph g1 = g0;
  const int pairs = equalize_cross_layer(g1);
  EXPECT_EQ(pairs, 2);  // (/a/conv1, /a/conv2) and (/a/conv2, /b/conv1)
  ASSERT_EQ(g1.layers.size(), g0.layers.size());

  const double spread_before = spread(out_ranges(g0.constant(g0.layers[0].weight_value)));
  const double spread_after = spread(out_ranges(g1.constant(g1.layers[0].weight_value)));
  const double imb01_before = imbalance(g0, 0, 1), imb01_after = imbalance(g1, 0, 1);
  const double imb12_before = imbalance(g0, 1, 2), imb12_after = imbalance(g1, 1, 2);
  std::printf(
      "[equalization] conv1 channel-range spread %.3g -> %.3g; max|log(r1/r2)| pair 0-1 %.3g -> %.3g, "
      "pair 1-2 %.3g -> %.3g\n",
      spread_before, spread_after, imb01_before, imb01_after, imb12_before, imb12_after);
  EXPECT_GT(spread_before, 50.0);  // built with ranges 1/16..8
  EXPECT_LT(spread_after, spread_before / 4);
  EXPECT_GT(imb01_before, 1.0);
  EXPECT_LT(imb01_after, kEqualizedLogTol);
  EXPECT_LT(imb12_after, kEqualizedLogTol);
  // The fc layer (no Conv after a Conv) is untouched.
  EXPECT_EQ(g1.constant(g1.layers[3].weight_value).data, g0.constant(g0.layers[3].weight_value).data);

  CpuBackend cpu;
  Executor e0(g0, cpu), e1(g1, cpu);
  auto ws0 = e0.make_workspace(), ws1 = e1.make_workspace();
  std::mt19937 rng(5);
  const Tensor x = random_input(rng, {16, 2, 6, 6});
  const Tensor y0 = e0.forward(ws0, x);
  const Tensor y1 = e1.forward(ws1, x);
  const double diff = max_abs_diff(y0, y1), scale = max_abs(y0);
  std::printf("[equalization] logits max |diff| %.3g of max |y| %.3g\n", diff, scale);
  EXPECT_GT(scale, 0.0);
  EXPECT_LE(diff, kEqualizeRelTol * scale);
}

TEST(Equalization, LeavesShippedResnetLogitsUnchanged) {
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const auto models = testing::shipped_models();
  ASSERT_FALSE(models.empty());
  const Graph g0 = import_onnx(models[0].onnx);
  Graph g1 = g0;
  const int pairs = equalize_cross_layer(g1);
  // The first conv of each basic block feeds (through its ReLU) only the second one; the
  // stem's and every second conv's outputs also reach a residual Add.
  EXPECT_EQ(pairs, 3);
  EXPECT_LT(imbalance(g1, 1, 2), kEqualizedLogTol);
  const Dataset test = load_idx_split(kFashionMnistDir, "test");
  const Normalization norm{{0.2860f}, {0.3530f}};
  Tensor x;
  load_batch(test, norm, 0, 64, x);
  CpuBackend cpu;
  Executor e0(g0, cpu), e1(g1, cpu);
  auto ws0 = e0.make_workspace(), ws1 = e1.make_workspace();
  const Tensor y0 = e0.forward(ws0, x);
  const Tensor y1 = e1.forward(ws1, x);
  const double diff = max_abs_diff(y0, y1), scale = max_abs(y0);
  std::printf("[equalization] resnet: %d pairs, logits max |diff| %.3g of max |y| %.3g\n", pairs, diff, scale);
  EXPECT_LE(diff, kEqualizeRelTol * scale);
}

// ---------------------------------------------------------------- (c) bias correction

// Per output channel: mean over images and positions of the layer's float32 pre-activation
// output minus its quantized one, the latter from a full forward with only `layer` planned.
std::vector<double> mean_shift(const Executor& exec, int layer, const LayerQuantization& q, const Dataset& data,
                               const Normalization& norm, int64_t count) {
  const Graph& g = exec.graph();
  const int node_out = g.nodes[g.layers[layer].node].output;
  EXPECT_GE(g.layers[layer].act_node, 0) << "the pre-activation output must not be fake-quantized";
  QuantPlan plan(g.layers.size(), nullptr);
  plan[layer] = &q;
  auto ws = exec.make_workspace();
  ws.keep_all_values = true;  // the conv's pre-activation output is read below
  std::vector<double> sum;
  int64_t per_channel = 0;
  Tensor x;
  for (int64_t begin = 0; begin < count; begin += 50) {
    const int64_t n = std::min<int64_t>(50, count - begin);
    load_batch(data, norm, begin, n, x);
    exec.forward(ws, x);
    Tensor y, yq;  // intermediate values may be NHWC: read them in NCHW order
    to_nchw(ws.values[node_out], y);
    exec.forward(ws, x, &plan);
    to_nchw(ws.values[node_out], yq);
    // Output channels: axis 1 of a Conv's (N, C, H, W); the last axis of a Gemm / MatMul.
    const bool conv = g.nodes[g.layers[layer].node].op == OpType::kConv;
    const int64_t C = conv ? y.dim(1) : y.shape.back();
    const int64_t inner = conv ? y.numel() / (y.dim(0) * C) : 1;
    const int64_t outer = y.numel() / (C * inner);
    sum.resize(C, 0.0);
    for (int64_t i = 0; i < outer; ++i) {
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t k = 0; k < inner; ++k) {
          const int64_t idx = (i * C + c) * inner + k;
          sum[c] += static_cast<double>(y.data[idx]) - yq.data[idx];
        }
      }
    }
    per_channel += outer * inner;
  }
  for (auto& s : sum) s /= static_cast<double>(per_channel);
  return sum;
}

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

void check_bias_correction(const Executor& exec, int layer, int bits, const Dataset& calib, const Normalization& norm,
                           int64_t count, double min_visible_shift, const char* what) {
  SCOPED_TRACE(what);
  const ActivationRanges ranges = calibrate(exec, calib, norm, count, 50, 2);
  QuantSpec spec;
  const auto plain = quantize_layer(exec, layer, spec, bits, ranges, nullptr, 50, 2);
  ASSERT_FALSE(plain->corrected_bias);
  EXPECT_EQ(plain->q.bias, nullptr);
  const BiasCorrectionSource bc{&calib, norm, count};
  const auto corrected = quantize_layer(exec, layer, spec, bits, ranges, &bc, 50, 2);
  ASSERT_TRUE(corrected->corrected_bias);
  ASSERT_EQ(corrected->q.bias, &corrected->bias);
  const Tensor direct = bias_correction(exec, layer, plain->q, calib, norm, count, 50, 2);
  EXPECT_EQ(direct.data, corrected->bias.data);  // the same numbers whichever way it is asked for

  const std::vector<double> before = mean_shift(exec, layer, plain->q, calib, norm, count);
  const std::vector<double> after = mean_shift(exec, layer, corrected->q, calib, norm, count);
  ASSERT_EQ(before.size(), after.size());
  ASSERT_EQ(static_cast<int64_t>(before.size()), corrected->bias.numel());
  std::printf("[bias correction] %s at %d bits: max |mean shift| over channels %.3g -> %.3g\n", what, bits,
              max_abs(before), max_abs(after));
  EXPECT_GT(max_abs(before), min_visible_shift) << "the shift must be visible before correction";
  EXPECT_LT(max_abs(after), kBiasResidualRatio * max_abs(before));
  // The correction is the shift itself added to the bias.
  const Layer& L = exec.graph().layers[layer];
  for (size_t c = 0; c < before.size(); ++c) {
    const double base = L.bias_value >= 0 ? exec.graph().constant(L.bias_value).data[c] : 0.0;
    EXPECT_NEAR(corrected->bias.data[c] - base, before[c], 1e-4 * max_abs(before) + 1e-7) << "channel " << c;
  }
}

TEST(BiasCorrection, RemovesTheMeanShiftOfAThreeBitLayer) {
  const Graph g = import_onnx_bytes(unbalanced_model(), "unbalanced.onnx");
  CpuBackend cpu;
  Executor exec(g, cpu);
  const Dataset calib = random_dataset(300, 2, 6, 6, 3, 77);
  const Normalization norm{{0.5f, 0.5f}, {0.25f, 0.25f}};
  check_bias_correction(exec, 1, 3, calib, norm, 300, 0.1, "/a/conv2 (with bias)");
  check_bias_correction(exec, 2, 3, calib, norm, 300, 0.1, "/b/conv1 (no bias)");
}

// A MatMul on a rank-3 input: one correction per output feature (the last axis), and the
// corrected bias is applied (MatMul has no bias input of its own).
TEST(BiasCorrection, RemovesTheMeanShiftOfARankThreeMatMul) {
  const Graph g = import_onnx_bytes(matmul_rank3_model(), "matmul3.onnx");
  ASSERT_EQ(g.layers.size(), 2u);
  ASSERT_EQ(g.nodes[g.layers[0].node].op, OpType::kMatMul);
  CpuBackend cpu;
  Executor exec(g, cpu);
  const Dataset calib = random_dataset(300, 2, 6, 6, 3, 79);
  const Normalization norm{{0.5f, 0.5f}, {0.25f, 0.25f}};
  check_bias_correction(exec, 0, 3, calib, norm, 300, 0.01, "/mm (MatMul, (N, 12, 6) x (6, 5))");
}

// A 1x2x2 image flattened into Gemm 'fc' (4 -> 3), with a random C when `with_c`.
Graph flatten_gemm(std::mt19937& rng, bool with_c, const std::vector<onnx::AttributeProto>& attrs = {}) {
  OnnxBuilder b;
  b.input("x", {1, 2, 2}).initializer("w", uniform(rng, 4 * 3), {4, 3});
  if (with_c) b.initializer("c", uniform(rng, 3), {3});
  b.node("Flatten", {"x"}, {"f"}, {}, "flatten");
  b.node("Gemm", with_c ? std::vector<std::string>{"f", "w", "c"} : std::vector<std::string>{"f", "w"}, {"y"}, attrs, "fc");
  b.output("y");
  return import_onnx_bytes(b.serialize(), "gemm.onnx");
}

// flatten_gemm() on the CPU backend, with `images` random calibration images.
struct GemmOnCpu {
  GemmOnCpu(uint32_t seed, bool with_c, int64_t images, uint32_t data_seed,
            const std::vector<onnx::AttributeProto>& attrs = {})
      : rng(seed), g(flatten_gemm(rng, with_c, attrs)), exec(g, cpu), calib(random_dataset(images, 1, 2, 2, 3, data_seed)) {}
  std::mt19937 rng;
  Graph g;
  CpuBackend cpu;
  Executor exec;
  Dataset calib;
  Normalization norm{{0.5f}, {0.25f}};
};

// A stop during calibration skips the remaining batches (the run then ends before its grid);
// without one, every value's range is seen.
TEST(Calibration, AStopSkipsTheRemainingBatches) {
  const GemmOnCpu m(5, false, 40, 6);
  const auto& [g, exec, calib, norm] = std::tie(m.g, m.exec, m.calib, m.norm);
  const ActivationRanges all = calibrate(exec, calib, norm, 40, 10, 2);
  std::atomic<bool> stop{true};
  const ActivationRanges none = calibrate(exec, calib, norm, 40, 10, 2, &stop);
  int seen = 0;
  for (size_t v = 0; v < g.values.size(); ++v) {
    if (g.values[v].is_constant) continue;
    EXPECT_TRUE(std::isfinite(all.lo[v]) && std::isfinite(all.hi[v])) << g.values[v].name;
    EXPECT_EQ(none.lo[v], std::numeric_limits<float>::infinity()) << g.values[v].name;
    ++seen;
  }
  EXPECT_EQ(seen, 3);  // x, f, y
}

// A stop while the layers are quantized (MSE or SAWB searches, the bias correction's pass over
// the calibration images) ends the run with RunInterrupted; the bias pass skips its batches.
TEST(QuantizeLayers, AStopEndsQuantizationWithRunInterrupted) {
  const GemmOnCpu m(9, true, 40, 7);
  const auto& [g, exec, calib, norm] = std::tie(m.g, m.exec, m.calib, m.norm);
  const ActivationRanges ranges = calibrate(exec, calib, norm, 40, 10, 1);
  const BiasCorrectionSource bc{&calib, norm, 40};
  const std::vector<QuantSpec> specs(g.layers.size());
  const std::vector<std::pair<int, int>> layer_bits{{0, 4}, {0, 8}};
  std::atomic<bool> stop{false};
  EXPECT_EQ(quantize_layers(exec, layer_bits, specs, ranges, &bc, 10, 1, &stop).size(), 2u);
  stop = true;
  for (const BiasCorrectionSource* with : {static_cast<const BiasCorrectionSource*>(nullptr), &bc}) {
    EXPECT_THROW(quantize_layers(exec, layer_bits, specs, ranges, with, 10, 1, &stop), RunInterrupted);
  }
  const LayerQuantization q = make_layer_quantization(g.layers[0], ranges, specs[0]);
  const std::pair<int, const LayerQuantization*> cells[] = {{0, &q}};
  EXPECT_TRUE(bias_corrections(exec, cells, calib, norm, 40, 10, 1, &stop).empty());
  EXPECT_EQ(bias_corrections(exec, cells, calib, norm, 40, 10, 1).size(), 1u);
}

// A stop during one layer's MSE clip search (here 10,000 candidates over 524,288 weights,
// seconds of work) ends it: RunInterrupted, not the search run to its end and the layer
// returned as quantized.
TEST(QuantizeLayers, AStopEndsAnMseSearchInProgress) {
  std::mt19937 rng(11);
  OnnxBuilder b;
  b.input("x", {1, 32, 32}).initializer("w", uniform(rng, 1024 * 512), {1024, 512});
  b.node("Flatten", {"x"}, {"f"}, {}, "flatten").node("Gemm", {"f", "w"}, {"y"}, {}, "fc").output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "wide.onnx");
  CpuBackend cpu;
  Executor exec(g, cpu);
  const Dataset calib = random_dataset(4, 1, 32, 32, 3, 12);
  const ActivationRanges ranges = calibrate(exec, calib, Normalization{{0.5f}, {0.25f}}, 4, 4, 1);
  std::vector<QuantSpec> specs(g.layers.size());
  specs[0].clip = ClipMethod::kMse;
  specs[0].mse_grid = 10000;
  const std::vector<std::pair<int, int>> layer_bits{{0, 3}};
  std::atomic<bool> stop{false};
  std::thread signal([&stop] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop = true;
  });
  EXPECT_THROW(quantize_layers(exec, layer_bits, specs, ranges, nullptr, 4, 1, &stop), RunInterrupted);
  signal.join();
  // And the search itself ends at the stop (review: the throw above would come after a whole
  // search too): with the flag set, quantize_weights takes a small part of a full search's time
  // (one candidate of 200 here).
  specs[0].mse_grid = 200;
  const auto timed = [&](const std::atomic<bool>* flag) {
    const auto t0 = std::chrono::steady_clock::now();
    (void)quantize_weights(g, g.layers[0], specs[0], 3, flag);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const double full = timed(nullptr);
  std::atomic<bool> stopped{true};
  const double cut = timed(&stopped);
  EXPECT_LT(10 * cut, full) << "full search " << full << " s, stopped " << cut << " s";
}

// A Gemm with beta != 1 would scale a corrected C: one clear error instead of a wrong bias.
TEST(BiasCorrection, GemmWithBetaOtherThanOneIsRefused) {
  const GemmOnCpu m(3, true, 20, 5, {test::attr_f("beta", 2.0f)});
  const auto& [exec, calib, norm] = std::tie(m.exec, m.calib, m.norm);
  const ActivationRanges ranges = calibrate(exec, calib, norm, 20, 10, 1);
  const BiasCorrectionSource bc{&calib, norm, 20};
  try {
    quantize_layer(exec, 0, QuantSpec{}, 4, ranges, &bc, 10, 1);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("node 'fc' (Gemm) has beta = 2; empirical bias correction"), std::string::npos)
        << e.what();
  }
}

TEST(BiasCorrection, RemovesTheMeanShiftOnShippedResnet) {
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const auto models = testing::shipped_models();
  ASSERT_FALSE(models.empty());
  const Graph g = import_onnx(models[0].onnx);
  CpuBackend cpu;
  Executor exec(g, cpu);
  const Dataset train = load_idx_split(kFashionMnistDir, "train");
  const Normalization norm{{0.2860f}, {0.3530f}};
  ASSERT_EQ(g.layers[1].name, "/layer1/conv1/Conv");
  check_bias_correction(exec, 1, 3, train, norm, 200, 0.1, "/layer1/conv1/Conv");
}

// quantize_layers() computes every bias from one float forward per calibration batch; each
// equals the one-layer-at-a-time result bit for bit (layers with and without a bias, two
// bit-widths, per-tensor and per-channel weights).
TEST(BiasCorrection, OnePassForManyLayersEqualsOneLayerAtATime) {
  const Graph g = import_onnx_bytes(unbalanced_model(), "unbalanced.onnx");
  CpuBackend cpu;
  Executor exec(g, cpu);
  const Dataset calib = random_dataset(130, 2, 6, 6, 3, 78);
  const Normalization norm{{0.5f, 0.5f}, {0.25f, 0.25f}};
  const ActivationRanges ranges = calibrate(exec, calib, norm, 130, 40, 2);
  const BiasCorrectionSource bc{&calib, norm, 130};
  for (Granularity gr : {Granularity::kPerTensor, Granularity::kPerChannel}) {
    std::vector<QuantSpec> specs(g.layers.size());
    for (auto& s : specs) s.granularity = gr;
    std::vector<std::pair<int, int>> layer_bits;
    for (int bits : {3, 8}) {
      for (const Layer& L : g.layers) layer_bits.emplace_back(L.index, bits);
    }
    const auto batched = quantize_layers(exec, layer_bits, specs, ranges, &bc, 40, 2);
    ASSERT_EQ(batched.size(), layer_bits.size());
    for (size_t i = 0; i < layer_bits.size(); ++i) {
      const auto [layer, bits] = layer_bits[i];
      const auto single = quantize_layer(exec, layer, specs[layer], bits, ranges, &bc, 40, 2);
      ASSERT_TRUE(batched[i]->corrected_bias);
      EXPECT_EQ(batched[i]->layer, layer);
      EXPECT_EQ(batched[i]->bits, bits);
      EXPECT_EQ(batched[i]->bias.data, single->bias.data) << g.layers[layer].name << " at " << bits << " bits";
      EXPECT_EQ(batched[i]->weights.weights.data, single->weights.weights.data) << g.layers[layer].name;
      EXPECT_EQ(batched[i]->q.bias, &batched[i]->bias);
      EXPECT_EQ(batched[i]->q.weights, &batched[i]->weights.weights);
    }
  }
}

// ---------------------------------------------------------------- (d) statistics

TEST(PairedBootstrap, IdenticalOutcomesGiveExactlyZero) {
  std::mt19937 rng(1);
  std::vector<uint8_t> ref(1000);
  for (auto& v : ref) v = rng() % 10 < 9;
  const PairedBootstrap boot(ref.size(), 500, 3, 0.95);
  ASSERT_TRUE(boot.enabled());
  const Interval ci = boot.degradation_interval(ref, ref);
  EXPECT_EQ(ci.lo, 0.0);
  EXPECT_EQ(ci.hi, 0.0);
}

// The mirrored interval's quantile positions q (R - 1) and (R - 1) - (1 - q)(R - 1) agree
// up to double rounding.
constexpr double kMirrorTol = 1e-9;

TEST(PairedBootstrap, KnownShiftIsCoveredAndReproducible) {
  // 2000 images, the reference right on 90%; `other` is wrong on 100 more (5 points) and,
  // separately, right on 20 the reference gets wrong and wrong on 20 others: net +5.00.
  constexpr size_t kImages = 2000;
  std::vector<uint8_t> ref(kImages), other;
  std::mt19937 rng(9);
  for (auto& v : ref) v = rng() % 10 < 9;
  other = ref;
  std::vector<size_t> right, wrong;
  for (size_t i = 0; i < kImages; ++i) (ref[i] ? right : wrong).push_back(i);
  std::shuffle(right.begin(), right.end(), rng);
  std::shuffle(wrong.begin(), wrong.end(), rng);
  for (size_t k = 0; k < 120; ++k) other[right[k]] = 0;
  for (size_t k = 0; k < 20; ++k) other[wrong[k]] = 1;
  int64_t delta = 0;
  for (size_t i = 0; i < kImages; ++i) delta += static_cast<int>(ref[i]) - static_cast<int>(other[i]);
  ASSERT_EQ(delta, 100);
  const double truth = 5.0;

  const PairedBootstrap boot(kImages, 2000, 42, 0.95);
  const Interval ci = boot.degradation_interval(ref, other);
  std::printf("[bootstrap] true degradation %.2f, 95%% interval [%.3f, %.3f]\n", truth, ci.lo, ci.hi);
  EXPECT_LT(ci.lo, truth);
  EXPECT_GT(ci.hi, truth);
  EXPECT_GT(ci.lo, 0.0);  // a 5-point loss on 2000 images is significant
  // Width against the normal approximation: the per-image difference d has variance
  // E[d^2] - E[d]^2 with E[d^2] = 140 / 2000, so the 95% half-width is 1.96 * sd / sqrt(n).
  const double var = 140.0 / kImages - std::pow(100.0 / kImages, 2);
  const double half = 1.96 * 100.0 * std::sqrt(var / kImages);
  EXPECT_GT(ci.hi - ci.lo, 0.7 * 2 * half);
  EXPECT_LT(ci.hi - ci.lo, 1.3 * 2 * half);
  // Reproducible with the same seed, and the same draws serve every comparison.
  const PairedBootstrap again(kImages, 2000, 42, 0.95);
  const Interval ci2 = again.degradation_interval(ref, other);
  EXPECT_EQ(ci.lo, ci2.lo);
  EXPECT_EQ(ci.hi, ci2.hi);
  const Interval ci3 = boot.degradation_interval(ref, other);
  EXPECT_EQ(ci.lo, ci3.lo);
  EXPECT_EQ(ci.hi, ci3.hi);
  // Other seeds draw other resamples. (The statistic moves in steps of 100 / 2000 points,
  // so two seeds can give the same interval; ten cannot all do so.)
  bool differs = false;
  for (uint64_t seed = 43; seed < 53; ++seed) {
    const Interval c = PairedBootstrap(kImages, 2000, seed, 0.95).degradation_interval(ref, other);
    EXPECT_LT(c.lo, truth);
    EXPECT_GT(c.hi, truth);
    differs = differs || c.lo != ci.lo || c.hi != ci.hi;
  }
  EXPECT_TRUE(differs);
  // Swapping the roles mirrors the interval (same draws).
  const Interval mirrored = boot.degradation_interval(other, ref);
  EXPECT_NEAR(mirrored.lo, -ci.hi, kMirrorTol);
  EXPECT_NEAR(mirrored.hi, -ci.lo, kMirrorTol);
}

// Outcome bits: the top-1 interval reads bit 0 only, the top-5 one bit 1 only.
TEST(PairedBootstrap, ReadsTheOutcomeBitItIsGiven) {
  // 10 images, all top-1 and top-5 correct in the reference; the other keeps top-5 on all
  // but image 0 and top-1 on none of 0..3: top-1 loses 4 of 10 (40 points), top-5 1 (10).
  const std::vector<uint8_t> ref(10, 3);
  std::vector<uint8_t> other(10, 3);
  other[0] = 0;
  other[1] = other[2] = other[3] = 2;
  const PairedBootstrap boot(10, 400, 5, 0.95);
  const Interval all_same = boot.degradation_interval(ref, ref, 2);
  EXPECT_EQ(all_same.lo, 0.0);
  EXPECT_EQ(all_same.hi, 0.0);
  // With every image drawn from {1 lost, 9 kept} the top-5 statistic is 10 * (draws of
  // image 0) / 10 per resample: a multiple of 10 points, between 0 and 100.
  const Interval top5 = boot.degradation_interval(ref, other, 2);
  const Interval top1 = boot.degradation_interval(ref, other);
  EXPECT_GE(top5.lo, 0.0);
  EXPECT_LE(top5.lo, 10.0);
  EXPECT_GE(top5.hi, 10.0);
  EXPECT_LT(top5.hi, top1.hi);
  EXPECT_LE(top1.lo, 40.0);
  EXPECT_GE(top1.hi, 40.0);
  EXPECT_GE(top1.lo, top5.lo);  // per resample, top-1 loses images 1..3 on top of image 0
}

TEST(PairedBootstrap, ZeroResamplesDisablesIntervals) {
  const PairedBootstrap boot(10, 0, 0, 0.95);
  EXPECT_FALSE(boot.enabled());
  const std::vector<uint8_t> a(10, 1), b(10, 0);
  const Interval ci = boot.degradation_interval(a, b);
  EXPECT_TRUE(std::isnan(ci.lo));
  EXPECT_TRUE(std::isnan(ci.hi));
}

// Pearson r and slope worked by hand.
constexpr double kStatsTol = 1e-12;

TEST(Stats, PearsonAndSlopeOnHandComputedData) {
  // x = 1..5, y = (2, 4, 5, 4, 5): means 3 and 4; Sxy = 4 + 0 + 0 + 0 + 2 = 6, Sxx = 10,
  // Syy = 4 + 0 + 1 + 0 + 1 = 6: r = 6 / sqrt(60), slope = 0.6.
  const std::vector<double> x{1, 2, 3, 4, 5}, y{2, 4, 5, 4, 5};
  EXPECT_NEAR(pearson_r(x, y), 6.0 / std::sqrt(60.0), kStatsTol);
  EXPECT_NEAR(ls_slope(x, y), 0.6, kStatsTol);
  // Exactly linear: r = +-1, slope = the coefficient; the intercept does not matter.
  const std::vector<double> lin{3, 5, 7, 9, 11}, neg{10, 7.5, 5, 2.5, 0};
  EXPECT_NEAR(pearson_r(x, lin), 1.0, kStatsTol);
  EXPECT_NEAR(ls_slope(x, lin), 2.0, kStatsTol);
  EXPECT_NEAR(pearson_r(x, neg), -1.0, kStatsTol);
  EXPECT_NEAR(ls_slope(x, neg), -2.5, kStatsTol);
  // Degenerate inputs.
  EXPECT_TRUE(std::isnan(pearson_r({1, 1, 1}, {1, 2, 3})));
  EXPECT_TRUE(std::isnan(ls_slope({2, 2}, {1, 2})));
  EXPECT_TRUE(std::isnan(pearson_r({1}, {1})));
}

}  // namespace
}  // namespace qsweep

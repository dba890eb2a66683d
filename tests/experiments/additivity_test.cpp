// The additivity study (method.md, "Additivity") on a network whose layers' contributions
// are additive by construction: parallel Gemm layers each read the input and write their
// own slice of the logits, so one layer's quantization noise lands on coordinates no other
// layer touches and the noise of any configuration is exactly the sum of its layers'.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "experiments/studies.h"
#include "runtime/cpu_backend.h"
#include "runtime/onnx_import.h"
#include "tests/runtime/onnx_builder.h"

namespace qsweep {
namespace {

using test::attr_i;
using test::OnnxBuilder;

// Measured and predicted noise differ only by the order of double additions.
constexpr double kAdditiveNoiseRelTol = 1e-12;
constexpr double kAdditiveRTol = 1e-9;      // |r - 1|
constexpr double kAdditiveSlopeTol = 1e-9;  // |slope - 1|

constexpr int kLayers = 5;
constexpr int kOutsPerLayer = 2;
// A multiple of 4, so that every top-1 and degradation (100 * k / 400 = k / 4) is exact in
// double whichever way it is computed.
constexpr int64_t kImages = 400;

// x (N, 1, 4, 4) -> Flatten -> branch_l: Gemm (2 x 16, transB) for l = 0..4 -> Concat -> (N, 10)
std::string parallel_model() {
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  OnnxBuilder b;
  b.input("x", {1, 4, 4});
  b.node("Flatten", {"x"}, {"f"}, {}, "flatten");
  std::vector<std::string> outs;
  for (int l = 0; l < kLayers; ++l) {
    // Different scales per layer, so that configurations differ in noise.
    const float scale = 0.3f * static_cast<float>(l + 1);
    std::vector<float> w(kOutsPerLayer * 16), bias(kOutsPerLayer);
    for (auto& v : w) v = scale * u(rng);
    for (auto& v : bias) v = 0.1f * u(rng);
    const std::string id = std::to_string(l);
    b.initializer("w" + id, w, {kOutsPerLayer, 16}).initializer("b" + id, bias, {kOutsPerLayer});
    b.node("Gemm", {"f", "w" + id, "b" + id}, {"y" + id}, {attr_i("transB", 1)}, "branch" + id);
    outs.push_back("y" + id);
  }
  b.node("Concat", outs, {"logits"}, {attr_i("axis", 1)}, "concat").output("logits");
  return b.serialize();
}

// kImages random 4x4 images; labels: the float32 network's argmax, except every fifth
// image gets a random label (so the float accuracy is ~80% and quantization can flip
// decisions both ways).
Dataset labelled_dataset(const Executor& exec, const Normalization& norm) {
  std::mt19937 rng(8);
  std::uniform_int_distribution<int> px(0, 255), lab(0, kLayers * kOutsPerLayer - 1);
  Dataset d;
  d.name = "synthetic";
  d.count = kImages;
  d.channels = 1;
  d.height = 4;
  d.width = 4;
  for (int64_t i = 0; i < kImages * 16; ++i) d.pixels.push_back(static_cast<uint8_t>(px(rng)));
  d.labels.assign(kImages, 0);
  d.num_classes = kLayers * kOutsPerLayer;
  Tensor x;
  load_batch(d, norm, 0, kImages, x);
  auto ws = exec.make_workspace();
  const Tensor& y = exec.forward(ws, x);
  const int64_t k = y.dim(1);
  for (int64_t i = 0; i < kImages; ++i) {
    d.labels[i] = static_cast<int32_t>(std::max_element(y.ptr() + i * k, y.ptr() + (i + 1) * k) - (y.ptr() + i * k));
    if (i % 5 == 0) d.labels[i] = lab(rng);
  }
  return d;
}

struct Fixture {
  Graph g = import_onnx_bytes(parallel_model(), "parallel.onnx");
  CpuBackend cpu;
  Executor exec{g, cpu};
  Normalization norm{{0.5f}, {0.25f}};
  Dataset data = labelled_dataset(exec, norm);
  ActivationRanges ranges;
  StudyContext ctx;

  Fixture() {
    ranges = calibrate(exec, data, norm, kImages, 100, 2);
    ctx.exec = &exec;
    ctx.calib = &data;
    ctx.eval = &data;
    ctx.norm = norm;
    ctx.calib_count = kImages;
    ctx.eval_count = kImages;
    ctx.ranges = &ranges;
    ctx.options.batch_size = 100;
    ctx.options.threads = 2;
    ctx.options.progress = false;
  }
};

Config additivity_config(int low_bits, int high_bits) {
  Config cfg;
  cfg.kind = "additivity";
  cfg.low_bits = low_bits;
  cfg.high_bits = high_bits;
  cfg.additivity_configs = 8;
  cfg.additivity_seed = 5;
  return cfg;
}

void expect_noise_additive(const AdditivityResult& r, const char* what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(r.rows.size(), 8u);
  for (size_t k = 0; k < r.rows.size(); ++k) {
    const auto& row = r.rows[k];
    EXPECT_GT(row.measured_noise, 0.0) << "row " << k;
    EXPECT_NEAR(row.measured_noise, row.predicted_noise, kAdditiveNoiseRelTol * row.predicted_noise) << "row " << k;
  }
  std::printf("[additivity] %s: noise r = %.15f slope = %.15f; degradation r = %.4f slope = %.4f\n", what, r.r_noise,
              r.slope_noise, r.r_degradation, r.slope_degradation);
  EXPECT_NEAR(r.r_noise, 1.0, kAdditiveRTol);
  EXPECT_NEAR(r.slope_noise, 1.0, kAdditiveSlopeTol);
}

TEST(Additivity, DisjointOutputsAreExactlyAdditive) {
  Fixture f;
  ASSERT_EQ(f.g.layers.size(), static_cast<size_t>(kLayers));
  const Config cfg = additivity_config(3, 0);  // the other layers stay float32
  const PairedBootstrap boot(kImages, 200, 0, 0.95);
  const AdditivityResult r = run_additivity(f.ctx, cfg, boot);

  // The grid: one column (3 bits), every layer adds noise.
  ASSERT_EQ(r.grid.cells.size(), static_cast<size_t>(kLayers));
  const double float_top1 = r.grid.float_top1();
  std::printf("[additivity] float32 top-1 %.2f%% on %lld images\n", float_top1, static_cast<long long>(kImages));
  EXPECT_GT(float_top1, 60.0);
  EXPECT_LT(float_top1, 100.0);
  for (const auto& c : r.grid.cells) EXPECT_GT(c.noise_sum, 0.0) << "layer " << c.layer;
  // The predictions vary across configurations (otherwise r and the slope mean nothing).
  double pmin = 1e300, pmax = 0.0;
  for (const auto& row : r.rows) {
    pmin = std::min(pmin, row.predicted_noise);
    pmax = std::max(pmax, row.predicted_noise);
  }
  EXPECT_GT(pmax, 2.0 * pmin);
  expect_noise_additive(r, "high_bits = 0");

  // A single-layer configuration is the grid's cell: the full forward with one layer
  // planned and the grid's suffix compute the same ops, so the numbers are identical.
  ASSERT_EQ(r.rows.front().low_layers.size(), 1u);
  const auto& one = r.rows.front();
  const CellStats& cell = r.grid.cells[one.low_layers[0]];
  EXPECT_EQ(one.measured_noise, one.predicted_noise);
  EXPECT_EQ(one.measured_noise, r.grid.noise(cell));
  EXPECT_EQ(one.measured_degradation, one.predicted_degradation);
  EXPECT_EQ(one.measured_top1, r.grid.top1(cell));
  // The all-layer configuration's noise is the sum of the whole column.
  ASSERT_EQ(r.rows.back().low_layers.size(), static_cast<size_t>(kLayers));
  double column = 0.0;
  for (const auto& c : r.grid.cells) column += r.grid.noise(c);
  EXPECT_NEAR(r.rows.back().measured_noise, column, kAdditiveNoiseRelTol * column);
  // 3-bit weights change some decisions.
  bool some_degradation = false;
  for (const auto& row : r.rows) some_degradation = some_degradation || row.measured_degradation != 0.0;
  EXPECT_TRUE(some_degradation);
  for (const auto& row : r.rows) {
    EXPECT_LE(row.ci.lo, row.measured_degradation);
    EXPECT_GE(row.ci.hi, row.measured_degradation);
  }
}

TEST(Additivity, DisjointOutputsAreAdditiveWithHighBitsToo) {
  Fixture f;
  const PairedBootstrap boot(kImages, 0, 0, 0.95);
  const AdditivityResult r = run_additivity(f.ctx, additivity_config(3, 8), boot);
  ASSERT_EQ(r.grid.cells.size(), static_cast<size_t>(2 * kLayers));  // {3, 8} per layer
  expect_noise_additive(r, "high_bits = 8");
  // Every configuration's prediction includes the 8-bit layers' (smaller) noise.
  for (const auto& row : r.rows) {
    double expected = 0.0;
    for (int l = 0; l < kLayers; ++l) {
      const bool low = std::binary_search(row.low_layers.begin(), row.low_layers.end(), l);
      expected += r.grid.noise(r.grid.cells[l * 2 + (low ? 0 : 1)]);
    }
    EXPECT_NEAR(row.predicted_noise, expected, kAdditiveNoiseRelTol * expected);
  }
  for (int l = 0; l < kLayers; ++l) EXPECT_GT(r.grid.cells[l * 2].noise_sum, r.grid.cells[l * 2 + 1].noise_sum);
}

TEST(Additivity, SubsetsSpreadFromOneLayerToAllSortedAndSeeded) {
  for (const auto& [layers, configs] : std::vector<std::pair<int, int>>{{10, 20}, {10, 4}, {53, 20}, {3, 7}}) {
    SCOPED_TRACE(::testing::Message() << layers << " layers, " << configs << " configs");
    const auto s = additivity_subsets(layers, configs, 1);
    ASSERT_EQ(s.size(), static_cast<size_t>(configs));
    EXPECT_EQ(s.front().size(), 1u);
    EXPECT_EQ(s.back().size(), static_cast<size_t>(layers));
    std::set<int> seen;
    const size_t max_step = static_cast<size_t>(std::ceil(static_cast<double>(layers - 1) / (configs - 1))) + 1;
    for (size_t k = 0; k < s.size(); ++k) {
      ASSERT_FALSE(s[k].empty());
      EXPECT_GE(s[k].front(), 0);
      EXPECT_LT(s[k].back(), layers);
      // Sorted, no duplicates.
      for (size_t i = 1; i < s[k].size(); ++i) EXPECT_LT(s[k][i - 1], s[k][i]) << "subset " << k;
      if (k > 0) {
        EXPECT_GE(s[k].size(), s[k - 1].size());
        EXPECT_LE(s[k].size() - s[k - 1].size(), max_step);
      }
      seen.insert(s[k].begin(), s[k].end());
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(layers));
    // No configuration twice (10 layers, 20 configurations: "all 10" once, a third of size 9).
    EXPECT_EQ(std::set<std::vector<int>>(s.begin(), s.end()).size(), s.size());
    // Reproducible with the seed; another seed draws other subsets.
    EXPECT_EQ(additivity_subsets(layers, configs, 1), s);
    EXPECT_NE(additivity_subsets(layers, configs, 2), s);
  }
  // More configurations than non-empty subsets: each subset once.
  const auto all = additivity_subsets(3, 10, 1);
  EXPECT_EQ(std::set<std::vector<int>>(all.begin(), all.end()).size(), 7u);
  EXPECT_EQ(all.size(), 7u);
  const auto ten = additivity_subsets(10, 20, 1);
  EXPECT_EQ(std::count_if(ten.begin(), ten.end(), [](const auto& v) { return v.size() == 9; }), 3);
  const auto single = additivity_subsets(6, 1, 3);
  ASSERT_EQ(single.size(), 1u);
  EXPECT_EQ(single[0], (std::vector<int>{0, 1, 2, 3, 4, 5}));
}

}  // namespace
}  // namespace qsweep

// A planted outlier: one layer of the shipped ResNet gets a weight-range problem that does
// not change the float32 network, the layer-wise grid must point at it, and a local fix
// applied to that layer alone must recover most of the damage (the paper's Section 4.2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "experiments/studies.h"
#include "runtime/cpu_backend.h"
#include "runtime/onnx_import.h"
#include "tests/shipped_models.h"

namespace qsweep {
namespace {

// Scaling by 64 and 1/64 is exact in float32, and a ReLU commutes with positive scaling:
// the planted network computes the same logits up to (at most) reassociation.
constexpr double kPlantRelTol = 1e-5;
constexpr float kPlant = 64.0f;
constexpr int kBits = 4;
constexpr int64_t kEvalImages = 2000;
constexpr int64_t kCalibImages = 256;
// The local fix must take back at least this share of the excess degradation.
constexpr double kMinRecovered = 0.5;

struct Variants {
  std::vector<Variant> list;
  void add(std::string name, QuantConfig q) { list.push_back(Variant{std::move(name), "", std::move(q)}); }
};

QuantConfig weights_only_base() {
  QuantConfig q;
  q.weight_bits = {kBits};
  q.base.weight_bits = kBits;
  // Weights only: the planted channel also makes layer j's output activation range 64x
  // wider; with activations quantized that would be a second, activation-range problem
  // that no weight fix can touch. Leaving activations in float32 makes it purely a
  // weight-range one.
  q.base.quantize_input = false;
  q.base.quantize_output = false;
  return q;
}

TEST(PlantedOutlier, GridFindsItAndALocalFixRecoversIt) {
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const auto models = testing::shipped_models();
  ASSERT_FALSE(models.empty());
  const Graph original = import_onnx(models[0].onnx);

  // Layer j: a Conv with a fused Relu whose output feeds only the next Conv, directly.
  const std::string name_j = "/layer1/conv1/Conv";
  int j = -1;
  for (const Layer& L : original.layers) j = L.name == name_j ? L.index : j;
  ASSERT_GE(j, 0);
  ASSERT_LT(j + 1, static_cast<int>(original.layers.size()));
  const Layer& Lj = original.layers[j];
  const Layer& Ln = original.layers[j + 1];
  ASSERT_EQ(original.nodes[Lj.node].op, OpType::kConv);
  ASSERT_GE(Lj.act_node, 0);
  ASSERT_EQ(original.nodes[Lj.act_node].op, OpType::kRelu);
  ASSERT_GE(Lj.bias_value, 0) << "BatchNorm folding gives the conv a bias";
  ASSERT_EQ(original.nodes[Ln.node].op, OpType::kConv);
  ASSERT_EQ(Ln.input_value, Lj.output_value);
  ASSERT_EQ(original.consumers()[Lj.output_value], (std::vector<int>{Ln.node}));
  ASSERT_EQ(original.nodes[Ln.node].attrs.group, 1);

  // Plant: output channel 0 of layer j (weights and bias) x 64, input channel 0 of j+1 / 64.
  Graph planted = original;
  {
    Tensor& wj = planted.values[Lj.weight_value].constant;  // (C, I, kh, kw)
    const int64_t per = wj.numel() / wj.dim(0);
    for (int64_t i = 0; i < per; ++i) wj.data[i] *= kPlant;
    planted.values[Lj.bias_value].constant.data[0] *= kPlant;
    Tensor& wn = planted.values[Ln.weight_value].constant;  // (O, C, kh, kw)
    const int64_t O = wn.dim(0), C = wn.dim(1), k = wn.dim(2) * wn.dim(3);
    for (int64_t o = 0; o < O; ++o) {
      for (int64_t t = 0; t < k; ++t) wn.data[(o * C + 0) * k + t] /= kPlant;
    }
  }

  const Dataset train = load_idx_split(kFashionMnistDir, "train");
  const Dataset test = load_idx_split(kFashionMnistDir, "test");
  const Normalization norm{{0.2860f}, {0.3530f}};
  CpuBackend cpu;
  Executor exec0(original, cpu), exec1(planted, cpu);

  // The float32 network is unchanged.
  {
    Tensor x;
    load_batch(test, norm, 0, 250, x);
    auto ws0 = exec0.make_workspace(), ws1 = exec1.make_workspace();
    const Tensor y0 = exec0.forward(ws0, x);
    const Tensor& y1 = exec1.forward(ws1, x);
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < y0.data.size(); ++i) {
      diff = std::max(diff, std::fabs(static_cast<double>(y0.data[i]) - y1.data[i]));
      scale = std::max(scale, std::fabs(static_cast<double>(y0.data[i])));
    }
    std::printf("[outlier] planted vs original float32 logits: max |diff| %.3g of max |y| %.3g\n", diff, scale);
    EXPECT_LE(diff, kPlantRelTol * scale);
  }

  GridOptions opt;
  opt.batch_size = 250;
  opt.threads = 2;
  opt.progress = false;
  const ActivationRanges r0 = calibrate(exec0, train, norm, kCalibImages, opt.batch_size, opt.threads);
  const ActivationRanges r1 = calibrate(exec1, train, norm, kCalibImages, opt.batch_size, opt.threads);
  const QuantConfig base = weights_only_base();

  // The grid at 4 bits ranks layer j worst, by degradation and by noise.
  const GridResult grid =
      run_layerwise_grid(exec1, test, norm, kEvalImages, r1, resolve_layer_specs(planted, base), {kBits}, opt);
  ASSERT_EQ(grid.cells.size(), planted.layers.size());
  int worst_deg = 0, worst_noise = 0;
  for (const CellStats& c : grid.cells) {
    std::printf("[outlier] grid %d-bit layer %d %-40s degradation %+6.2f noise %.4g\n", kBits, c.layer,
                planted.layers[c.layer].name.c_str(), grid.degradation(c), grid.noise(c));
    if (grid.degradation(c) > grid.degradation(grid.cells[worst_deg])) worst_deg = c.layer;
    if (grid.noise(c) > grid.noise(grid.cells[worst_noise])) worst_noise = c.layer;
  }
  EXPECT_EQ(worst_deg, j);
  EXPECT_EQ(worst_noise, j);
  // Strictly worst: no other layer ties it.
  for (const CellStats& c : grid.cells) {
    if (c.layer != j) EXPECT_LT(grid.degradation(c), grid.degradation(grid.cells[j])) << "layer " << c.layer;
  }

  // Full-network comparisons at 4 bits.
  const PairedBootstrap boot(static_cast<size_t>(std::min<int64_t>(kEvalImages, test.count)), 1000, 0, 0.95);
  StudyContext ctx;
  ctx.calib = &train;
  ctx.eval = &test;
  ctx.norm = norm;
  ctx.calib_count = kCalibImages;
  ctx.eval_count = kEvalImages;
  ctx.options = opt;

  Config cfg;
  cfg.kind = "full";
  cfg.quant = base;
  Variants v;
  v.add("baseline", base);
  auto local = [&](auto set) {
    QuantConfig q = base;
    LayerOverride o;
    o.selectors = {name_j};
    o.where = "outlier_test";
    set(o);
    q.layers.push_back(o);
    return q;
  };
  auto global = [&](auto set) {
    QuantConfig q = base;
    set(q.base);
    return q;
  };
  // The fixes, tried in this order (2000 test images, 256 calibration images, weights only at
  // 4 bits; degradation in points with its 95% paired-bootstrap interval, noise E||y - y^||^2):
  //
  //   un-planted network, minmax everywhere      +7.75 [6.35, 9.05]
  //   planted, minmax everywhere (baseline)     +83.50 [81.60, 85.30]   noise 476.8
  //   per-channel on layer j only                +3.55 [ 2.45,  4.70]   noise 33.81
  //   per-channel everywhere                     +2.45 [ 1.60,  3.30]   noise 10.72
  //   weight_clip mse, layer j / everywhere     +83.45 / +83.50          noise 488.3 / 356.9
  //   weight_clip sawb, layer j / everywhere    +83.45 / +83.50          noise 478.9 / 352.4
  //   weight_clip percentile (99.99), j / all   +83.50 / +83.50          noise 477.8 / 477.8
  //
  // No clipping method helps: the planted problem is a per-channel scale imbalance, and a
  // per-tensor clip chosen from the whole tensor (MSE, SAWB's moments, the 99.99th
  // percentile) is dominated by the 64x channel, so the other 15 channels still fall below
  // one quantization step. Per-channel on layer j alone recovers all of the excess (about
  // 106%: it ends below the un-planted baseline), but per-channel everywhere is better still:
  // +3.55 lies outside global's interval [1.60, 3.30], and the paired interval of local minus
  // global is [0.00, 2.25] (+1.10), significant only at its edge. Global per-channel also
  // removes the per-tensor losses the un-planted network has in its other layers. So "local
  // beats global" holds for no fix here, and only "local recovers >= 50%" is asserted, for
  // the first fix in the order, per-channel.
  v.add("per-channel-local", local([](LayerOverride& o) { o.granularity = Granularity::kPerChannel; }));
  v.add("per-channel-global", global([](QuantSpec& s) { s.granularity = Granularity::kPerChannel; }));
  cfg.variants = v.list;

  ctx.exec = &exec1;
  ctx.ranges = &r1;
  const ComparisonResult planted_cmp = run_comparison(ctx, cfg, boot);

  Config cfg0 = cfg;
  cfg0.variants = {Variant{"baseline", "", base}};
  ctx.exec = &exec0;
  ctx.ranges = &r0;
  const ComparisonResult original_cmp = run_comparison(ctx, cfg0, boot);

  const double clean = original_cmp.rows[0].degradation;
  std::printf("[outlier] un-planted network, %d-bit minmax everywhere: degradation %+.2f [%.2f, %.2f]\n", kBits, clean,
              original_cmp.rows[0].ci.lo, original_cmp.rows[0].ci.hi);
  for (const auto& row : planted_cmp.rows) {
    std::printf("[outlier] planted %-20s degradation %+6.2f [%6.2f, %6.2f] noise %.4g\n", row.name.c_str(),
                row.degradation, row.ci.lo, row.ci.hi, row.noise);
  }
  ASSERT_EQ(planted_cmp.rows.size(), 3u);
  const VariantRow& baseline = planted_cmp.rows[0];
  const VariantRow& fixed_local = planted_cmp.rows[1];
  const VariantRow& fixed_global = planted_cmp.rows[2];
  const double excess = baseline.degradation - clean;
  EXPECT_GT(excess, 20.0) << "the planted outlier must hurt the 4-bit network";
  const double recovered = (baseline.degradation - fixed_local.degradation) / excess;
  // local - global, paired over the same images.
  const Interval diff =
      boot.degradation_interval(planted_cmp.eval.cells[2].correct_images, planted_cmp.eval.cells[1].correct_images);
  std::printf(
      "[outlier] per-channel on layer %d only recovers %.0f%% of the excess %.2f points; local - global "
      "%+.2f points, paired 95%% interval [%.4f, %.4f]\n",
      j, 100.0 * recovered, excess, fixed_local.degradation - fixed_global.degradation, diff.lo, diff.hi);
  EXPECT_GE(recovered, kMinRecovered);
  for (const auto& row : planted_cmp.rows) {
    EXPECT_LE(row.ci.lo, row.degradation) << row.name;
    EXPECT_GE(row.ci.hi, row.degradation) << row.name;
    EXPECT_LE(row.ci5.lo, row.top5_degradation) << row.name;
    EXPECT_GE(row.ci5.hi, row.top5_degradation) << row.name;
  }
}

}  // namespace
}  // namespace qsweep

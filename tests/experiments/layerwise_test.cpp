// The layer-wise grid: one pass equals the naive way, cell by cell; results do not depend
// on threads; and a hand-built one-layer network matches an independent computation.
#include "experiments/layerwise.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include "experiments/progress.h"
#include "kernels/cpu/winograd.h"
#include "runtime/cpu_backend.h"
#include "runtime/error.h"
#include "runtime/onnx_import.h"
#include "tests/partly_nan.h"
#include "tests/reference_quant.h"
#include "tests/runtime/onnx_builder.h"
#include "tests/shipped_models.h"

namespace qsweep {
namespace {

GridResult run_grid(const Graph& g, const Dataset& calib, const Dataset& eval, const Normalization& norm,
                    const Config& cfg, int64_t count, bool naive, int threads, int64_t batch,
                    bool conv_transforms = false) {
  CpuBackend cpu(conv_transforms);
  Executor exec(g, cpu);
  const ActivationRanges r = calibrate(exec, calib, norm, cfg.calibration_count, batch, threads);
  GridOptions o;
  o.batch_size = batch;
  o.threads = threads;
  o.naive = naive;
  o.progress = false;
  return run_layerwise_grid(exec, eval, norm, count, r, resolve_layer_specs(g, cfg.quant), cfg.quant.weight_bits, o);
}

void expect_identical(const GridResult& a, const GridResult& b) {
  ASSERT_EQ(a.cells.size(), b.cells.size());
  EXPECT_EQ(a.float_correct, b.float_correct);
  EXPECT_EQ(a.output_energy, b.output_energy);
  for (size_t c = 0; c < a.cells.size(); ++c) {
    EXPECT_EQ(a.cells[c].layer, b.cells[c].layer);
    EXPECT_EQ(a.cells[c].weight_bits, b.cells[c].weight_bits);
    EXPECT_EQ(a.cells[c].noise_sum, b.cells[c].noise_sum) << "cell " << c;  // bit-identical
    EXPECT_EQ(a.cells[c].correct, b.cells[c].correct) << "cell " << c;
  }
}

// Each shipped model (the parameter) with the Fashion-MNIST test split and its normalization.
class ShippedGrid : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    const auto models = testing::shipped_models();
    if (static_cast<size_t>(GetParam()) >= models.size()) GTEST_SKIP() << "model not shipped";
    const auto& m = models[GetParam()];
    g_ = import_onnx(m.onnx);
    test_ = load_idx_split(kFashionMnistDir, "test");
    norm_ = Normalization{m.card["mean"].get<std::vector<float>>(), m.card["std"].get<std::vector<float>>()};
  }
  Graph g_;
  Dataset test_;
  Normalization norm_;
};

TEST_P(ShippedGrid, OnePassEqualsNaiveCellByCell) {
  const Graph& g = g_;
  const Dataset& test = test_;
  const Normalization& norm = norm_;
  const Dataset train = load_idx_split(kFashionMnistDir, "train");
  Config cfg;
  cfg.calibration_count = 256;
  // A subset of the test set; batches of 100 with a ragged last batch.
  const GridResult one = run_grid(g, train, test, norm, cfg, 450, false, 2, 100);
  const GridResult naive = run_grid(g, train, test, norm, cfg, 450, true, 2, 100);
  ASSERT_EQ(one.cells.size(), g.layers.size() * 6);
  expect_identical(one, naive);
  // Quantization must actually do something: 3-bit cells add noise, and more bits less.
  double noise3 = 0, noise8 = 0;
  for (const auto& c : one.cells) {
    if (c.weight_bits == 3) noise3 += c.noise_sum;
    if (c.weight_bits == 8) noise8 += c.noise_sum;
  }
  EXPECT_GT(noise3, 4 * noise8);
  EXPECT_GT(noise8, 0.0);
}

TEST_P(ShippedGrid, ResultsDoNotDependOnThreads) {
  Config cfg;
  cfg.quant.weight_bits = {4};
  cfg.calibration_count = 100;
  expect_identical(run_grid(g_, test_, test_, norm_, cfg, 300, false, 1, 50),
                   run_grid(g_, test_, test_, norm_, cfg, 300, false, 2, 50));
}

// Nor on the batch size: every image's outcome is the same, and the noise sums differ only
// by the order in which the per-batch double sums are added.
TEST_P(ShippedGrid, ResultsDoNotDependOnTheBatchSize) {
  if (!__builtin_cpu_supports("avx512f")) {
    GTEST_SKIP() << "this CPU has no AVX-512: its convolutions run on oneDNN, which may block by batch";
  }
  Config cfg;
  cfg.quant.weight_bits = {3, 8};
  cfg.calibration_count = 100;
  const GridResult a = run_grid(g_, test_, test_, norm_, cfg, 300, false, 2, 300);
  const GridResult b = run_grid(g_, test_, test_, norm_, cfg, 300, false, 2, 7);
  EXPECT_EQ(a.float_correct_images, b.float_correct_images);
  EXPECT_NEAR(a.output_energy, b.output_energy, 1e-13 * a.output_energy);
  ASSERT_EQ(a.cells.size(), b.cells.size());
  for (size_t c = 0; c < a.cells.size(); ++c) {
    EXPECT_EQ(a.cells[c].correct_images, b.cells[c].correct_images) << "cell " << c;
    EXPECT_NEAR(a.cells[c].noise_sum, b.cells[c].noise_sum, 1e-13 * a.cells[c].noise_sum) << "cell " << c;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ShippedGrid, ::testing::Values(0, 1));

// A float32 network that is not finite on the calibration images (here: a data.std so small
// that the normalized pixels overflow) is refused by the calibration, naming the first layer
// value concerned, instead of a run whose every number is NaN or infinite.
TEST(Calibration, NonFiniteFloatNetworkIsRefused) {
  const auto m = testing::shipped_models().at(0);
  const Graph g = import_onnx(m.onnx);
  Dataset d;
  d.name = "synthetic";
  d.count = 8, d.channels = 1, d.height = 28, d.width = 28, d.num_classes = 10;
  d.pixels.resize(8 * 28 * 28);
  for (size_t i = 0; i < d.pixels.size(); ++i) d.pixels[i] = static_cast<uint8_t>(i * 37 % 256);
  d.labels.assign(8, 0);
  CpuBackend cpu;
  Executor exec(g, cpu);
  EXPECT_NO_THROW(calibrate(exec, d, Normalization{{0.286f}, {0.353f}}, 8, 4, 1));
  try {
    calibrate(exec, d, Normalization{{0.286f}, {1e-45f}}, 8, 4, 1);
    ADD_FAILURE() << "a non-finite network was calibrated";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("calibration: the input of layer 0 '" + g.layers[0].name + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("not finite"), std::string::npos) << msg;
    EXPECT_NE(msg.find("data.mean / data.std"), std::string::npos) << msg;
  }
}

// A network that is NaN on some calibration images only (x * 1e38 + x * -1e38 is inf - inf
// where |x| > 3.4, 0 elsewhere): min_max() skips NaNs, so the ranges alone look finite; it is
// refused all the same, naming the layer input concerned.
TEST(Calibration, PartlyNanFloatNetworkIsRefused) {
  const Graph g = testing::partly_nan_network();
  const Dataset d = testing::partly_nan_images();
  CpuBackend cpu;
  Executor exec(g, cpu);
  const Normalization norm{{0.0f}, {0.1f}};
  EXPECT_NO_THROW(calibrate(exec, d, norm, 5, 2, 1));  // images 0-4: finite throughout
  for (int threads : {1, 2}) {
    try {
      calibrate(exec, d, norm, 8, 2, threads);
      ADD_FAILURE() << "a network that is NaN on image 5 was calibrated";
    } catch (const UserError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("calibration: the input of layer 0 'conv' ('s') is NaN on some of them"), std::string::npos)
          << msg;
      EXPECT_NE(msg.find("its other values in [0, 0]"), std::string::npos) << msg;
    }
  }
}

// Finite on the calibration images, NaN on an evaluation image: the grid stops at that batch
// with one sentence naming its images (it ran to the end, every cell's noise NaN), the one
// pass and the naive way alike.
TEST(Grid, NonFiniteFloatOutputOnEvaluationIsRefused) {
  const Graph g = testing::partly_nan_network();
  const Dataset d = testing::partly_nan_images();
  CpuBackend cpu;
  Executor exec(g, cpu);
  const Normalization norm{{0.0f}, {0.1f}};
  const ActivationRanges r = calibrate(exec, d, norm, 5, 5, 1);
  Config cfg;
  cfg.quant.weight_bits = {4};
  for (bool naive : {false, true}) {
    GridOptions o;
    o.batch_size = 2;
    o.threads = 2;
    o.naive = naive;
    o.progress = false;
    try {
      run_layerwise_grid(exec, d, norm, 8, r, resolve_layer_specs(g, cfg.quant), cfg.quant.weight_bits, o);
      ADD_FAILURE() << "a grid with a NaN float output ran (naive " << naive << ")";
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()),
                "the float32 network's output is not finite (NaN or infinite) on evaluation images 4..5; qsweep needs "
                "a finite float32 network (check the model's weights and data.mean / data.std)");
    }
  }
}

// A constant whose first dimension meets the batch (Add of a (2, 1, 2, 2) constant) runs on a
// batch of 2 images, giving each image its position's slice: refused before any work, as the
// batch of 3 does not run (audit: with run.batch_size = 2 such a run exited 0).
TEST(OutputsPerImage, ConstantAlongTheBatchIsRefused) {
  // conv (N, 1, 2, 2) + k, flattened: 4 outputs per image.
  auto model = [](const std::vector<int64_t>& k_shape) {
    test::OnnxBuilder b;
    b.input("x", {1, 4, 4}).initializer("w", std::vector<float>(9, 0.5f), {1, 1, 3, 3});
    b.initializer("k", std::vector<float>(static_cast<size_t>(k_shape[0]) * 4, 0.1f), k_shape);
    b.node("Conv", {"x", "w"}, {"c"}, {}, "conv").node("Add", {"c", "k"}, {"a"}, {}, "add");
    b.node("Flatten", {"a"}, {"y"}, {}, "flat").output("y");
    return import_onnx_bytes(b.serialize(), "k.onnx");
  };
  CpuBackend cpu;
  const Graph g = model({2, 1, 2, 2});
  Executor exec(g, cpu);
  try {
    outputs_per_image(exec);
    ADD_FAILURE() << "a constant along the batch was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("runs on a batch of 2 images but not of 3"), std::string::npos) << e.what();
  }
  // The same constant with a first dimension of 1 is fine.
  const Graph g1 = model({1, 1, 2, 2});
  Executor exec1(g1, cpu);
  EXPECT_EQ(outputs_per_image(exec1), 4);
}

TEST(ShippedGridConvTransforms, OnePassEqualsNaiveAndTracksTheDirectGrid) {
  // run.conv_transforms (Winograd on the ResNet's 3x3 convolutions): the one pass still equals
  // the naive way bit for bit, and the grid differs from the direct-convolution one by
  // rounding only: per cell, within 2 images of top-1 and 1% of noise.
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  WinogradConv probe;
  probe.N = probe.H = probe.W = probe.out_h = probe.out_w = 1;
  probe.C = probe.K = 32;
  if (!winograd_available(probe)) GTEST_SKIP() << "this CPU has no AVX-512: run.conv_transforms changes nothing here";
  const auto m = testing::shipped_models().at(0);
  const Graph g = import_onnx(m.onnx);
  const Dataset train = load_idx_split(kFashionMnistDir, "train");
  const Dataset test = load_idx_split(kFashionMnistDir, "test");
  const Normalization norm{m.card["mean"].get<std::vector<float>>(), m.card["std"].get<std::vector<float>>()};
  Config cfg;
  cfg.calibration_count = 256;
  const GridResult one = run_grid(g, train, test, norm, cfg, 450, false, 2, 100, true);
  const GridResult naive = run_grid(g, train, test, norm, cfg, 450, true, 2, 100, true);
  expect_identical(one, naive);
  const GridResult direct = run_grid(g, train, test, norm, cfg, 450, false, 2, 100, false);
  ASSERT_EQ(one.cells.size(), direct.cells.size());
  EXPECT_NE(one.output_energy, direct.output_energy) << "the transforms changed nothing: were they used?";
  EXPECT_LE(std::llabs(one.float_correct - direct.float_correct), 2);
  for (size_t c = 0; c < one.cells.size(); ++c) {
    EXPECT_LE(std::llabs(one.cells[c].correct - direct.cells[c].correct), 2) << "cell " << c;
    EXPECT_NEAR(one.cells[c].noise_sum, direct.cells[c].noise_sum, 0.01 * direct.cells[c].noise_sum) << "cell " << c;
  }
}

// --- A one-layer network computed independently from method.md --------------------------


// A one-Gemm network, input (N, 6) -> Gemm(W (classes, 6), transB, bias) [-> Relu] -> logits,
// on `images` random 1x1x6 "images" with random labels, and its logits computed in double
// from method.md's formulas: the float ones and, per weight bit-width, the quantized ones.
struct OneGemm {
  static constexpr int kIn = 6;
  int classes, images;
  bool relu;
  Graph g;
  Tensor w, b;
  Dataset d;
  const Normalization norm{{0.5f}, {0.25f}};

  OneGemm(int classes_, int images_, bool relu_) : classes(classes_), images(images_), relu(relu_) {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    g.input = g.add_value("x");
    g.input_shape = {1, 1, kIn};
    w = Tensor(Shape{classes, kIn});
    b = Tensor(Shape{classes});
    for (auto& v : w.data) v = u(rng);
    for (auto& v : b.data) v = u(rng) * 0.1f;
    const int wv = g.add_constant("w", w), bv = g.add_constant("b", b);
    const int flat = g.add_value("flat"), gemm_out = g.add_value("gemm");
    Node fl;
    fl.name = "flatten";
    fl.op = OpType::kFlatten;
    fl.inputs = {g.input};
    fl.output = flat;
    Node gm;
    gm.name = "fc";
    gm.op = OpType::kGemm;
    gm.attrs.trans_b = true;
    gm.inputs = {flat, wv, bv};
    gm.output = gemm_out;
    g.nodes = {fl, gm};
    g.output = gemm_out;
    if (relu) {
      Node rl;
      rl.name = "relu";
      rl.op = OpType::kRelu;
      rl.inputs = {gemm_out};
      rl.output = g.add_value("y");
      g.nodes.push_back(rl);
      g.output = rl.output;
    }
    g.enumerate_layers();

    d.name = "synthetic";
    d.count = images;
    d.channels = 1;
    d.height = 1;
    d.width = kIn;
    std::uniform_int_distribution<int> px(0, 255), lab(0, classes - 1);
    for (int i = 0; i < images * kIn; ++i) d.pixels.push_back(static_cast<uint8_t>(px(rng)));
    for (int i = 0; i < images; ++i) d.labels.push_back(lab(rng));
    d.num_classes = classes;
  }

  float input(int i, int k) const { return (static_cast<float>(d.pixels[i * kIn + k]) / 255.0f - 0.5f) / 0.25f; }

  // Logits of image i; with qx/qw/qy the layer quantized (method.md's steps 1-4).
  std::vector<double> logits(int i, const testing::RefQuant* qx = nullptr, const testing::RefQuant* qw = nullptr,
                             const testing::RefQuant* qy = nullptr) const {
    std::vector<double> y(classes);
    for (int o = 0; o < classes; ++o) {
      double s = b.data[o];
      for (int k = 0; k < kIn; ++k) {
        const float x = input(i, k), wk = w.data[o * kIn + k];
        s += qx ? static_cast<double>((*qx)(x)) * (*qw)(wk) : static_cast<double>(x) * wk;
      }
      if (relu) s = std::max(0.0, s);
      y[o] = qy ? (*qy)(static_cast<float>(s)) : s;
    }
    return y;
  }

  // The reference quantizers of the float network's ranges (calibration on every image).
  std::pair<testing::RefQuant, testing::RefQuant> activation_quantizers() const {
    float xmin = 1e30f, xmax = -1e30f, ymin = 1e30f, ymax = -1e30f;
    for (int i = 0; i < images; ++i) {
      for (int k = 0; k < kIn; ++k) {
        xmin = std::min(xmin, input(i, k));
        xmax = std::max(xmax, input(i, k));
      }
      for (double v : logits(i)) {
        ymin = std::min(ymin, static_cast<float>(v));
        ymax = std::max(ymax, static_cast<float>(v));
      }
    }
    return {testing::RefQuant(xmin, xmax, 8), testing::RefQuant(ymin, ymax, 8)};
  }

  testing::RefQuant weight_quantizer(int bits) const {
    return testing::RefQuant(*std::min_element(w.data.begin(), w.data.end()),
                             *std::max_element(w.data.begin(), w.data.end()), bits);
  }
};

TEST(LayerwiseGrid, OneGemmLayerMatchesIndependentComputation) {
  const OneGemm net(3, 40, true);
  ASSERT_EQ(net.g.layers.size(), 1u);
  ASSERT_EQ(net.g.layers[0].act_node, 2);
  Config cfg;
  cfg.quant.weight_bits = {3, 8};
  cfg.calibration_count = 40;
  const GridResult r = run_grid(net.g, net.d, net.d, net.norm, cfg, 40, false, 1, 16);

  const auto [qx, qy] = net.activation_quantizers();
  auto am = [](const std::vector<double>& v) { return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin()); };
  for (size_t bi = 0; bi < cfg.quant.weight_bits.size(); ++bi) {
    const int bits = cfg.quant.weight_bits[bi];
    const testing::RefQuant qw = net.weight_quantizer(bits);
    double noise = 0.0;
    int correct = 0, float_correct = 0;
    for (int i = 0; i < 40; ++i) {
      const std::vector<double> y = net.logits(i), yq = net.logits(i, &qx, &qw, &qy);
      for (int o = 0; o < 3; ++o) noise += (y[o] - yq[o]) * (y[o] - yq[o]);
      correct += am(yq) == net.d.labels[i];
      float_correct += am(y) == net.d.labels[i];
    }
    const CellStats& c = r.cells[bi];
    EXPECT_EQ(c.weight_bits, bits);
    // float32 vs double summation of 6 products: far below one quantization step.
    EXPECT_NEAR(c.noise_sum, noise, 1e-4 * noise + 1e-9) << bits << " bits";
    EXPECT_EQ(c.correct, correct) << bits << " bits";
    EXPECT_EQ(r.float_correct, float_correct);
  }
  // 3-bit weights are much noisier than 8-bit ones.
  EXPECT_GT(r.cells[0].noise_sum, 10 * r.cells[1].noise_sum);
}

// Top-5 with 12 classes: the label among the 5 largest logits, equal (quantized) logits
// ordered by class index. The reference sorts each image's logits.
TEST(LayerwiseGrid, TopFiveOfOneGemmLayerMatchesSortedLogits) {
  const OneGemm net(12, 300, false);
  Config cfg;
  cfg.quant.weight_bits = {3, 8};
  cfg.calibration_count = 300;
  const GridResult r = run_grid(net.g, net.d, net.d, net.norm, cfg, 300, false, 1, 64);

  auto in_top5 = [](const std::vector<double>& v, int label) {
    std::vector<int> order(v.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
    return std::find(order.begin(), order.begin() + 5, label) != order.begin() + 5;
  };
  const auto [qx, qy] = net.activation_quantizers();
  int float_correct5 = 0;
  for (int i = 0; i < net.images; ++i) float_correct5 += in_top5(net.logits(i), net.d.labels[i]);
  EXPECT_EQ(r.float_correct5(), float_correct5);
  for (size_t bi = 0; bi < cfg.quant.weight_bits.size(); ++bi) {
    const testing::RefQuant qw = net.weight_quantizer(cfg.quant.weight_bits[bi]);
    int correct5 = 0, ties = 0;
    for (int i = 0; i < net.images; ++i) {
      const std::vector<double> yq = net.logits(i, &qx, &qw, &qy);
      correct5 += in_top5(yq, net.d.labels[i]);
      for (int o = 0; o < net.classes; ++o) ties += o != net.d.labels[i] && yq[o] == yq[net.d.labels[i]];
    }
    EXPECT_EQ(r.cells[bi].correct5(), correct5) << cfg.quant.weight_bits[bi] << " bits";
    // Not trivial: top-5 of 12 classes is far from every image, and more than top-1.
    EXPECT_GT(correct5, net.images / 5);
    EXPECT_LT(correct5, net.images * 4 / 5);
    EXPECT_GT(correct5, r.cells[bi].correct);
    if (bi == 0) EXPECT_GT(ties, 0) << "3-bit weights should make some logits equal to the label's";
  }
}

}  // namespace
}  // namespace qsweep

namespace qsweep {
namespace {

// The peer: bench/torch_grid.py ran every cell of the shipped ResNet's grid in PyTorch
// (torch's MinMaxObserver, fake_quantize_per_tensor_affine, fuse_conv_bn_weights, its own
// convolutions) on the first 1,000 test images; see tests/data/README.md.
constexpr double kMaxPeerNoiseRelDiff = 5e-3;  // float32 summation order and BN-fold rounding
constexpr int64_t kMaxPeerTop1Diff = 1;        // images, of 1,000

TEST(LayerwiseGrid, MatchesPyTorchPeerOnShippedResnet) {
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const auto models = testing::shipped_models();
  ASSERT_FALSE(models.empty());
  std::ifstream in(std::string(QSWEEP_SOURCE_DIR) + "/tests/data/resnet_grid_torch_1000.json");
  ASSERT_TRUE(in.good());
  const auto peer = nlohmann::json::parse(in);
  const Graph g = import_onnx(models[0].onnx);
  const Dataset train = load_idx_split(kFashionMnistDir, "train");
  const Dataset test = load_idx_split(kFashionMnistDir, "test");
  const Normalization norm{{0.2860f}, {0.3530f}};
  Config cfg;  // method.md defaults: bits 3..8, 8-bit activations, 512 calibration images
  const GridResult r = run_grid(g, train, test, norm, cfg, 1000, false, 2, 250);
  EXPECT_NEAR(r.float_top1(), peer["float_top1"].get<double>(), 1e-9);
  EXPECT_NEAR(r.float_top5(), peer["float_top5"].get<double>(), 1e-9);  // torch.topk(5) holds the label
  ASSERT_EQ(peer["cells"].size(), r.cells.size());
  for (const auto& pc : peer["cells"]) {
    const int layer = pc["layer"], bits = pc["bits"];
    const CellStats& c = r.cells[layer * 6 + (bits - 3)];
    ASSERT_EQ(c.layer, layer);
    ASSERT_EQ(c.weight_bits, bits);
    const double noise = pc["noise"];
    EXPECT_LE(std::abs(r.noise(c) - noise), kMaxPeerNoiseRelDiff * noise) << "layer " << layer << " bits " << bits;
    const int64_t peer_correct = std::llround(pc["top1"].get<double>() * 10.0);
    EXPECT_LE(std::llabs(c.correct - peer_correct), kMaxPeerTop1Diff) << "layer " << layer << " bits " << bits;
    const int64_t peer_correct5 = std::llround(pc["top5"].get<double>() * 10.0);
    EXPECT_LE(std::llabs(c.correct5() - peer_correct5), kMaxPeerTop1Diff) << "layer " << layer << " bits " << bits;
  }
}


// run.batch_size = "auto" on the CPU: 250 on a few cores (the default grid's batches are
// unchanged here), smaller on many cores so that every worker gets about 4 batches, never
// below 32 images.
TEST(AutoBatch, CpuRuleKeepsEveryWorkerBusy) {
  EXPECT_EQ(cpu_auto_batch_size(10000, 2), 250);
  EXPECT_EQ(cpu_auto_batch_size(10000, 8), 250);      // 10000 / 32 = 312.5: capped
  EXPECT_EQ(cpu_auto_batch_size(10000, 16), 156);     // floor(10000 / 64): 65 batches for 16 workers
  EXPECT_EQ(cpu_auto_batch_size(10000, 64), 39);      // 257 batches for 64 workers
  EXPECT_EQ(cpu_auto_batch_size(100, 2), 32);         // floor
  EXPECT_EQ(cpu_auto_batch_size(10000, 0), 250);      // no threads given: as one
  for (int threads : {1, 2, 3, 8, 24, 64, 128}) {
    const int64_t b = cpu_auto_batch_size(10000, threads);
    EXPECT_GE(b, 32);
    EXPECT_LE(b, 250);
    const int64_t batches = (10000 + b - 1) / b;
    if (b > 32 && b < 250) EXPECT_GE(batches, 4 * threads) << threads << " threads";
  }
}

// Progress counts images, whatever order the work comes in: the one-pass grid finishes images
// (each through every cell), the naive way (image, cell) pairs; whole-network runs count
// configurations, not cells.
TEST(Progress, CountsImagesOfEveryCellAndNamesWhatItCounts) {
  auto final_line = [](const std::function<void(Progress&)>& work, const std::string& noun) {
    ::testing::internal::CaptureStderr();
    {
      Progress p("x", 300, 20, true, noun);
      work(p);
    }
    return ::testing::internal::GetCapturedStderr();
  };
  const std::string one_pass = final_line([](Progress& p) { p.add_images(300); }, "cells");
  EXPECT_NE(one_pass.find("[x] 100.0% | images 300/300 | 20 cells |"), std::string::npos) << one_pass;
  const std::string naive = final_line([](Progress& p) {
    for (int c = 0; c < 20; ++c) p.add_image_cells(300);
  }, "cells");
  EXPECT_NE(naive.find("[x] 100.0% | images 300/300 | 20 cells |"), std::string::npos) << naive;
  const std::string half = final_line([](Progress& p) { p.add_image_cells(3000); }, "configs");
  EXPECT_NE(half.find("[x]  50.0% | images 150/300 | 20 configs |"), std::string::npos) << half;
  EXPECT_NE(half.find("img*configs/s"), std::string::npos) << half;
}

}  // namespace
}  // namespace qsweep

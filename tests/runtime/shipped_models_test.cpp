// The shipped models against their PyTorch golden logits and their model cards.
#include <cmath>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "kernels/cpu/metrics.h"
#include "runtime/cpu_backend.h"
#include "runtime/data.h"
#include "runtime/executor.h"
#include "runtime/onnx_import.h"
#include "runtime/sha256.h"
#include "tests/shipped_models.h"

namespace qsweep {
namespace {

// PyTorch and oneDNN sum convolutions in different orders; the bound.
constexpr float kMaxGoldenAbsDiff = 1e-4f;
// Images whose predicted class may flip between PyTorch and us on near-ties (of 10,000).
constexpr int64_t kMaxTop1Flips = 2;

TEST(ShippedModels, BothModelsAreShipped) {
  EXPECT_EQ(testing::shipped_models().size(), 2u) << "models/qsweep_resnet.json and models/qsweep_mobilenetv2.json";
}

TEST(ShippedModels, CardHashMatchesFile) {
  for (const auto& m : testing::shipped_models()) {
    EXPECT_EQ(sha256_file(m.onnx), m.card["sha256"].get<std::string>()) << m.name;
  }
}

Normalization card_norm(const testing::ShippedModel& m) {
  return Normalization{m.card["mean"].get<std::vector<float>>(), m.card["std"].get<std::vector<float>>()};
}

TEST(ShippedModels, LogitsMatchPyTorchGolden) {
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const Dataset test = load_idx_split(kFashionMnistDir, "test");
  for (const auto& m : testing::shipped_models()) {
    const Graph g = import_onnx(m.onnx);
    CpuBackend cpu;
    Executor exec(g, cpu);
    auto ws = exec.make_workspace();
    const int64_t n = m.card["golden_count"];
    const int64_t k = m.card["num_classes"];
    std::ifstream in(m.golden, std::ios::binary);
    std::vector<float> golden(n * k);
    in.read(reinterpret_cast<char*>(golden.data()), static_cast<std::streamsize>(golden.size() * 4));
    ASSERT_EQ(in.gcount(), static_cast<std::streamsize>(golden.size() * 4)) << m.golden;
    Tensor x;
    load_batch(test, card_norm(m), 0, n, x);
    const Tensor& y = exec.forward(ws, x);
    ASSERT_EQ(y.shape, (Shape{n, k}));
    float worst = 0.0f;
    for (int64_t i = 0; i < n * k; ++i) worst = std::max(worst, std::abs(y.data[i] - golden[i]));
    EXPECT_LE(worst, kMaxGoldenAbsDiff) << m.name;
  }
}

TEST(ShippedModels, Top1MatchesModelCard) {
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const Dataset test = load_idx_split(kFashionMnistDir, "test");
  for (const auto& m : testing::shipped_models()) {
    const Graph g = import_onnx(m.onnx);
    CpuBackend cpu;
    Executor exec(g, cpu);
    auto ws = exec.make_workspace();
    int64_t correct = 0;
    Tensor x;
    for (int64_t b = 0; b < test.count; b += 500) {
      load_batch(test, card_norm(m), b, 500, x);
      const Tensor& y = exec.forward(ws, x);
      correct += count_top1(y.ptr(), test.labels.data() + b, 500, y.dim(1));
    }
    const int64_t card = m.card["test_correct"];
    EXPECT_LE(std::llabs(correct - card), kMaxTop1Flips) << m.name << ": " << correct << " vs card " << card;
    EXPECT_GE(correct, 9000) << m.name << " should be ~90%+ accurate";
  }
}

}  // namespace
}  // namespace qsweep

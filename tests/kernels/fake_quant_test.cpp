// Fake quantization against hand-computed values and against PyTorch, bit for bit.
#include "kernels/cpu/fake_quant.h"

#include <bit>
#include <cmath>
#include <fstream>
#include <limits>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace qsweep {
namespace {

constexpr float kEps = std::numeric_limits<float>::epsilon();

std::vector<float> fq(const std::vector<float>& x, const QuantParams& p) {
  std::vector<float> y(x.size());
  fake_quantize_per_tensor(x.data(), y.data(), x.size(), p);
  return y;
}

// 3-bit asymmetric over [-1, 0.75]: scale = 1.75 / 7 = 0.25 exactly, zero point 4.
TEST(FakeQuant, AsymmetricParamsHandComputed) {
  const QuantParams p = choose_quant_params(-1.0f, 0.75f, 3, Scheme::kAsymmetric);
  EXPECT_EQ(p.qmin, 0);
  EXPECT_EQ(p.qmax, 7);
  EXPECT_EQ(p.scale, 0.25f);
  EXPECT_EQ(p.inv_scale, 4.0f);
  EXPECT_EQ(p.zero_point, 4);
}

TEST(FakeQuant, GridPointsMapExactly) {
  const QuantParams p = choose_quant_params(-1.0f, 0.75f, 3, Scheme::kAsymmetric);
  for (int q = 0; q <= 7; ++q) {
    const float x = static_cast<float>(q - 4) * 0.25f;
    EXPECT_EQ(quantize_value(x, p), q) << x;
    EXPECT_EQ(fq({x}, p)[0], x);
  }
}

TEST(FakeQuant, TiesRoundToEven) {
  const QuantParams p = choose_quant_params(-1.0f, 0.75f, 3, Scheme::kAsymmetric);
  // x * inv_scale = 0.5 -> 0, 1.5 -> 2, -0.5 -> 0, -1.5 -> -2, 2.5 -> 2 (then + zero point 4).
  EXPECT_EQ(quantize_value(0.125f, p), 4);
  EXPECT_EQ(quantize_value(0.375f, p), 6);
  EXPECT_EQ(quantize_value(-0.125f, p), 4);
  EXPECT_EQ(quantize_value(-0.375f, p), 2);
  EXPECT_EQ(quantize_value(0.625f, p), 6);
  EXPECT_EQ(fq({0.125f, 0.375f, -0.375f, 0.625f}, p), (std::vector<float>{0.0f, 0.5f, -0.5f, 0.5f}));
  // Just above a tie rounds up.
  EXPECT_EQ(quantize_value(std::nextafter(0.125f, 1.0f), p), 5);
}

TEST(FakeQuant, ClampsToTheIntegerRange) {
  const QuantParams p = choose_quant_params(-1.0f, 0.75f, 3, Scheme::kAsymmetric);
  EXPECT_EQ(quantize_value(5.0f, p), 7);
  EXPECT_EQ(quantize_value(-5.0f, p), 0);
  EXPECT_EQ(quantize_value(std::numeric_limits<float>::infinity(), p), 7);
  EXPECT_EQ(quantize_value(-std::numeric_limits<float>::infinity(), p), 0);
  EXPECT_EQ(fq({5.0f, -5.0f, 1e30f}, p), (std::vector<float>{0.75f, -1.0f, 0.75f}));
}

TEST(FakeQuant, RangeIsWidenedToContainZero) {
  // [2, 6] becomes [0, 6]: 8 bits -> scale 6/255, zero point 0.
  const QuantParams pos = choose_quant_params(2.0f, 6.0f, 8, Scheme::kAsymmetric);
  EXPECT_EQ(pos.scale, 6.0f / 255.0f);
  EXPECT_EQ(pos.zero_point, 0);
  // [-6, -2] becomes [-6, 0]: zero point at the top.
  const QuantParams neg = choose_quant_params(-6.0f, -2.0f, 8, Scheme::kAsymmetric);
  EXPECT_EQ(neg.zero_point, 255);
  EXPECT_EQ(fq({0.0f}, neg)[0], 0.0f);  // zero is always exactly representable
}

TEST(FakeQuant, ZeroWidthRangeUsesEpsilon) {
  const QuantParams p = choose_quant_params(0.0f, 0.0f, 8, Scheme::kAsymmetric);
  EXPECT_EQ(p.scale, kEps);
  EXPECT_EQ(p.zero_point, 0);
  EXPECT_EQ(fq({0.0f}, p)[0], 0.0f);
  EXPECT_EQ(quantize_value(1.0f, p), 255);  // clamped
  EXPECT_EQ(fq({1.0f}, p)[0], 255.0f * kEps);
  const QuantParams s = choose_quant_params(0.0f, 0.0f, 4, Scheme::kSymmetric);
  EXPECT_EQ(s.scale, kEps);
  EXPECT_EQ(s.zero_point, 0);
}

TEST(FakeQuant, SymmetricHandComputed) {
  // 4 bits symmetric: [-7, 7]; max(|-3.5|, |1|) / 7 = 0.5.
  const QuantParams p = choose_quant_params(-3.5f, 1.0f, 4, Scheme::kSymmetric);
  EXPECT_EQ(p.qmin, -7);
  EXPECT_EQ(p.qmax, 7);
  EXPECT_EQ(p.scale, 0.5f);
  EXPECT_EQ(p.zero_point, 0);
  EXPECT_EQ(quantize_value(1.25f, p), 2);    // 2.5 -> 2
  EXPECT_EQ(quantize_value(-1.75f, p), -4);  // -3.5 -> -4
  EXPECT_EQ(fq({1.25f, -1.75f, 10.0f, -10.0f, 0.5f}, p), (std::vector<float>{1.0f, -2.0f, 3.5f, -3.5f, 0.5f}));
}

TEST(FakeQuant, PerChannelUsesEachChannelsParams) {
  // (outer 2, channels 2, inner 2): channel 0 has scale 0.25, channel 1 scale 1.
  const QuantParams p0 = choose_quant_params(-1.0f, 0.75f, 3, Scheme::kAsymmetric);
  const QuantParams p1 = choose_quant_params(-4.0f, 3.0f, 3, Scheme::kAsymmetric);
  ASSERT_EQ(p1.scale, 1.0f);
  const QuantParams params[] = {p0, p1};
  const std::vector<float> x = {0.3f, 0.1f, 0.3f, 1.6f, -0.6f, 9.0f, 2.5f, -9.0f};
  std::vector<float> y(8);
  fake_quantize_per_channel(x.data(), y.data(), 2, 2, 2, params);
  EXPECT_EQ(y, (std::vector<float>{0.25f, 0.0f, 0.0f, 2.0f, -0.5f, 0.75f, 2.0f, -4.0f}));

  float lo[2], hi[2];
  min_max_per_channel(x.data(), 2, 2, 2, lo, hi);
  EXPECT_EQ(lo[0], -0.6f);
  EXPECT_EQ(hi[0], 9.0f);
  EXPECT_EQ(lo[1], -9.0f);
  EXPECT_EQ(hi[1], 2.5f);
}

TEST(FakeQuant, MinMaxIgnoresNaN) {
  const std::vector<float> x = {std::nanf(""), 3.0f, -2.0f, std::nanf("")};
  float lo, hi;
  min_max(x.data(), x.size(), &lo, &hi);
  EXPECT_EQ(lo, -2.0f);
  EXPECT_EQ(hi, 3.0f);
}

// any_nan() finds what min_max() skips, at every position of a vector longer than one
// AVX-512 register, and not infinities.
TEST(FakeQuant, AnyNanFindsEachPosition) {
  std::vector<float> x(37);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) - 18.5f;
  EXPECT_FALSE(any_nan(x.data(), x.size()));
  x[5] = std::numeric_limits<float>::infinity();
  x[6] = -std::numeric_limits<float>::infinity();
  EXPECT_FALSE(any_nan(x.data(), x.size()));
  EXPECT_FALSE(any_nan(x.data(), 0));
  for (size_t i = 0; i < x.size(); ++i) {
    std::vector<float> y = x;
    y[i] = std::nanf("");
    EXPECT_TRUE(any_nan(y.data(), y.size())) << "NaN at " << i;
    EXPECT_EQ(any_nan(y.data(), i), false) << "before " << i;
  }
}

nlohmann::json load_torch_golden() {
  std::ifstream in(std::string(QSWEEP_SOURCE_DIR) + "/tests/data/fake_quant_torch.json");
  EXPECT_TRUE(in.good()) << "tests/data/fake_quant_torch.json is missing";
  return nlohmann::json::parse(in);
}

float f(uint32_t bits) { return std::bit_cast<float>(bits); }

// Every parameter and every output bit-identical to torch's MinMaxObserver and
// fake_quantize_per_tensor_affine, including values on and next to rounding ties.
TEST(FakeQuant, MatchesPyTorchPerTensorBitForBit) {
  const auto golden = load_torch_golden();
  ASSERT_GE(golden["per_tensor"].size(), 70u);
  for (const auto& c : golden["per_tensor"]) {
    const int bits = c["bits"];
    const Scheme scheme = c["symmetric"] ? Scheme::kSymmetric : Scheme::kAsymmetric;
    const QuantParams p = choose_quant_params(f(c["min"]), f(c["max"]), bits, scheme);
    const std::string what = std::string(c["kind"]) + " bits=" + std::to_string(bits) +
                             (c["symmetric"] ? " symmetric" : " asymmetric");
    ASSERT_EQ(std::bit_cast<uint32_t>(p.scale), c["scale"].get<uint32_t>()) << what;
    ASSERT_EQ(p.zero_point, c["zero_point"].get<int>()) << what;
    ASSERT_EQ(p.qmin, c["qmin"].get<int>()) << what;
    ASSERT_EQ(p.qmax, c["qmax"].get<int>()) << what;
    const auto xs = c["x"].get<std::vector<uint32_t>>();
    const auto ys = c["y"].get<std::vector<uint32_t>>();
    std::vector<float> x(xs.size()), y(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) x[i] = f(xs[i]);
    fake_quantize_per_tensor(x.data(), y.data(), x.size(), p);
    for (size_t i = 0; i < xs.size(); ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(y[i]), ys[i]) << what << " x=" << x[i] << " ours=" << y[i] << " torch=" << f(ys[i]);
    }
  }
}

TEST(FakeQuant, MatchesPyTorchPerChannelBitForBit) {
  const auto golden = load_torch_golden();
  for (const auto& c : golden["per_channel"]) {
    const int bits = c["bits"];
    const auto shape = c["shape"].get<std::vector<int64_t>>();
    const size_t channels = shape[0];
    const auto xs = c["x"].get<std::vector<uint32_t>>();
    const auto ys = c["y"].get<std::vector<uint32_t>>();
    const size_t inner = xs.size() / channels;
    std::vector<float> x(xs.size()), y(xs.size()), lo(channels), hi(channels);
    for (size_t i = 0; i < xs.size(); ++i) x[i] = f(xs[i]);
    min_max_per_channel(x.data(), 1, channels, inner, lo.data(), hi.data());
    std::vector<QuantParams> p(channels);
    for (size_t ch = 0; ch < channels; ++ch) {
      p[ch] = choose_quant_params(lo[ch], hi[ch], bits, Scheme::kAsymmetric);
      ASSERT_EQ(std::bit_cast<uint32_t>(p[ch].scale), c["scale"][ch].get<uint32_t>()) << "channel " << ch;
      ASSERT_EQ(p[ch].zero_point, c["zero_point"][ch].get<int>()) << "channel " << ch;
    }
    fake_quantize_per_channel(x.data(), y.data(), 1, channels, inner, p.data());
    for (size_t i = 0; i < xs.size(); ++i) ASSERT_EQ(std::bit_cast<uint32_t>(y[i]), ys[i]) << "bits " << bits << " i " << i;
  }
}

}  // namespace
}  // namespace qsweep

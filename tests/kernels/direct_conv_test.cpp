// qsweep's direct convolutions (kernels/cpu/direct_conv.h and the 16-channel strips of
// kernels/cpu/strip_conv.h) against a double-precision sum on random shapes: kernel sizes,
// strides, dilations, paddings (including pixels whose every tap is on padding), channel
// counts, bias and the fused clamp.
#include "kernels/cpu/direct_conv.h"
#include "kernels/cpu/strip_conv.h"

#include <algorithm>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "tests/kernels/conv_reference.h"

namespace qsweep {
namespace {

using testing::normal;

bool cpu_takes_it() {
  DirectConv probe;
  probe.N = probe.H = probe.W = probe.C = probe.kh = probe.kw = probe.out_h = probe.out_w = 1;
  probe.K = 16;
  return direct_conv_available(probe);
}

TEST(DirectConv, AgainstDoubleSumOnRandomShapes) {
  if (!cpu_takes_it()) GTEST_SKIP() << "this CPU has no AVX-512: the direct kernel is not used here";
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> pick(0, 1 << 20);
  DirectConvScratch scratch;  // reused across shapes, as a worker thread does
  double worst = 0.0;
  int cases = 0;
  for (int i = 0; i < 60; ++i) {
    DirectConv p;
    p.N = 1 + pick(rng) % 3;
    p.H = 1 + pick(rng) % 12;
    p.W = 1 + pick(rng) % 12;
    p.C = 1 + pick(rng) % 70;
    p.K = 16 * (1 + pick(rng) % 5);  // 16 .. 80: every column-block width of the kernel
    p.kh = 1 + pick(rng) % 4;
    p.kw = 1 + pick(rng) % 4;
    p.stride_h = 1 + pick(rng) % 3;
    p.stride_w = 1 + pick(rng) % 3;
    p.dil_h = 1 + pick(rng) % 2;
    p.dil_w = 1 + pick(rng) % 2;
    const int64_t span_h = (p.kh - 1) * p.dil_h + 1, span_w = (p.kw - 1) * p.dil_w + 1;
    p.pad_t = pick(rng) % span_h;
    p.pad_l = pick(rng) % span_w;
    const int64_t pad_b = pick(rng) % span_h, pad_r = pick(rng) % span_w;
    if (p.H + p.pad_t + pad_b < span_h || p.W + p.pad_l + pad_r < span_w) continue;
    p.out_h = (p.H + p.pad_t + pad_b - span_h) / p.stride_h + 1;
    p.out_w = (p.W + p.pad_l + pad_r - span_w) / p.stride_w + 1;
    const int act = pick(rng) % 3;
    testing::set_activation(act, p.clamp, p.lo, p.hi);
    const bool with_bias = pick(rng) % 2 == 0;
    ASSERT_TRUE(direct_conv_available(p));
    SCOPED_TRACE(::testing::Message() << "N " << p.N << " H " << p.H << " W " << p.W << " C " << p.C << " K " << p.K
                                    << " kernel " << p.kh << "x" << p.kw << " stride " << p.stride_h << ","
                                    << p.stride_w << " dilation " << p.dil_h << "," << p.dil_w << " pads " << p.pad_t
                                    << "," << p.pad_l << "," << pad_b << "," << pad_r << " act " << act);
    const double case_worst = testing::random_case_error(
        rng, p, with_bias,
        [&](const float* x, const float* w, const float* b, float* y) { direct_conv(p, x, w, b, y, scratch); });
    // A float32 sum of n terms: well under n * 2^-24 of sum |x w| in practice.
    EXPECT_LE(case_worst, 1e-6);
    worst = std::max(worst, case_worst);
    ++cases;
  }
  EXPECT_GE(cases, 40);
  RecordProperty("worst_error_over_sum_abs", (::testing::Message() << worst).GetString());
}

TEST(DirectConv, PixelsWithEveryTapOnPaddingGetTheBias) {
  // A 2x2 kernel dilated by 2 over a 1x2 input padded by 1: at x = 0 the taps read x = -1 and
  // 1, at x = 1 they read 0 and 2. Vertically both taps (rows -1 and 1) are always outside,
  // so every output is bias only, clamped.
  if (!cpu_takes_it()) GTEST_SKIP() << "this CPU has no AVX-512: the direct kernel is not used here";
  DirectConv p;
  p.N = 2, p.H = 1, p.W = 2, p.C = 8, p.K = 32, p.kh = p.kw = 2, p.dil_h = p.dil_w = 2;
  p.pad_t = p.pad_l = 1, p.out_h = 1, p.out_w = 2;
  p.clamp = true, p.lo = -0.25f, p.hi = 0.25f;
  std::mt19937 rng(9);
  const auto x = normal(rng, p.N * p.H * p.W * p.C, 1.0f);
  const auto w = normal(rng, p.K * p.C * 4, 1.0f);
  const auto b = normal(rng, p.K, 1.0f);
  std::vector<float> y(p.N * p.out_h * p.out_w * p.K, std::numeric_limits<float>::quiet_NaN());
  DirectConvScratch s;
  direct_conv(p, x.data(), w.data(), b.data(), y.data(), s);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], std::clamp(b[i % p.K], p.lo, p.hi)) << i;
}

TEST(DirectConv, EachImageIsComputedAsIfAlone) {
  if (!cpu_takes_it()) GTEST_SKIP() << "this CPU has no AVX-512: the direct kernel is not used here";
  DirectConv p;
  p.N = 5, p.H = 7, p.W = 7, p.C = 32, p.K = 64, p.kh = p.kw = 3, p.stride_h = p.stride_w = 2;
  p.pad_t = p.pad_l = 1, p.out_h = p.out_w = 4;
  std::mt19937 rng(5);
  const auto x = normal(rng, p.N * p.H * p.W * p.C, 1.0f);
  const auto w = normal(rng, p.K * p.C * 9, 0.2f);
  DirectConvScratch s;
  testing::expect_images_computed_as_if_alone(
      p.N, p.H * p.W * p.C, p.out_h * p.out_w * p.K, x, [&](int64_t images, const float* xi, float* yi) {
        DirectConv q = p;
        q.N = images;
        direct_conv(q, xi, w.data(), nullptr, yi, s);
      });
}

TEST(DirectConv, KeptWeightsFollowTheWeightsValues) {
  // The scratch keeps each weight tensor rearranged between calls: a buffer refilled with new
  // values must be rearranged again (a fresh scratch gives the reference result).
  if (!cpu_takes_it()) GTEST_SKIP() << "this CPU has no AVX-512: the direct kernel is not used here";
  DirectConv p;
  p.N = 2, p.H = 7, p.W = 7, p.C = 32, p.K = 32, p.kh = p.kw = 3, p.stride_h = p.stride_w = 2;
  p.pad_t = p.pad_l = 1, p.out_h = p.out_w = 4;
  std::mt19937 rng(6);
  const auto x = normal(rng, p.N * p.H * p.W * p.C, 1.0f);
  std::vector<float> w(p.K * p.C * 9);
  DirectConvScratch kept;
  for (int round = 0; round < 3; ++round) {
    w = normal(rng, w.size(), 0.2f);  // same address, new values
    std::vector<float> y_kept(p.N * 16 * p.K), y_fresh(y_kept.size());
    DirectConvScratch fresh;
    direct_conv(p, x.data(), w.data(), nullptr, y_kept.data(), kept);
    direct_conv(p, x.data(), w.data(), nullptr, y_fresh.data(), fresh);
    ASSERT_EQ(y_kept, y_fresh) << "round " << round;
  }
}

TEST(DirectConv, RefusesWhatItDoesNotTake) {
  if (!cpu_takes_it()) GTEST_SKIP() << "this CPU has no AVX-512: the direct kernel is not used here";
  DirectConv p;
  p.N = 1, p.H = 8, p.W = 8, p.C = 3, p.K = 24, p.kh = p.kw = 3, p.out_h = p.out_w = 6;
  EXPECT_FALSE(direct_conv_available(p));  // K not a multiple of 16
  p.K = 32;
  EXPECT_TRUE(direct_conv_available(p));
  p.stride_h = 0;
  EXPECT_FALSE(direct_conv_available(p));
}

TEST(StripConv, AgainstDoubleSumOnRandomShapes) {
  // 16 input channels; widths from 1 to 33 put strips at both borders, inside, and over a
  // whole row (every compile-time and run-time border variant of the kernel).
  if (!cpu_takes_it()) GTEST_SKIP() << "this CPU has no AVX-512: the strip kernel is not used here";
  std::mt19937 rng(12);
  std::uniform_int_distribution<int> pick(0, 1 << 20);
  DirectConvScratch scratch;
  double worst = 0.0;
  int cases = 0;
  for (int i = 0; i < 80; ++i) {
    DirectConv p;
    p.N = 1 + pick(rng) % 3;
    p.H = 1 + pick(rng) % 9;
    p.W = 1 + pick(rng) % 33;
    p.C = 16;
    p.K = 16 * (1 + pick(rng) % 2);
    p.kh = 1 + pick(rng) % 3;
    p.kw = 1 + pick(rng) % 3;
    p.stride_h = 1 + pick(rng) % 3;
    p.stride_w = 1 + pick(rng) % 2;
    p.dil_h = 1 + pick(rng) % 2;
    const int64_t span_h = (p.kh - 1) * p.dil_h + 1;
    p.pad_t = pick(rng) % span_h;
    p.pad_l = pick(rng) % p.kw;
    const int64_t pad_b = pick(rng) % span_h, pad_r = pick(rng) % p.kw;
    if (p.H + p.pad_t + pad_b < span_h || p.W + p.pad_l + pad_r < p.kw) continue;
    p.out_h = (p.H + p.pad_t + pad_b - span_h) / p.stride_h + 1;
    p.out_w = (p.W + p.pad_l + pad_r - p.kw) / p.stride_w + 1;
    const int act = pick(rng) % 3;
    testing::set_activation(act, p.clamp, p.lo, p.hi);
    const bool with_bias = pick(rng) % 2 == 0;
    ASSERT_TRUE(strip_conv_available(p));
    SCOPED_TRACE(::testing::Message() << "N " << p.N << " H " << p.H << " W " << p.W << " K " << p.K << " kernel "
                                    << p.kh << "x" << p.kw << " stride " << p.stride_h << "," << p.stride_w
                                    << " dilation_h " << p.dil_h << " pads " << p.pad_t << "," << p.pad_l << ","
                                    << pad_b << "," << pad_r << " act " << act);
    const double case_worst = testing::random_case_error(
        rng, p, with_bias,
        [&](const float* x, const float* w, const float* b, float* y) { strip_conv(p, x, w, b, y, scratch); });
    EXPECT_LE(case_worst, 1e-6);
    worst = std::max(worst, case_worst);
    ++cases;
  }
  EXPECT_GE(cases, 50);
  RecordProperty("worst_error_over_sum_abs", (::testing::Message() << worst).GetString());
}

TEST(StripConv, EachImageIsComputedAsIfAlone) {
  if (!cpu_takes_it()) GTEST_SKIP() << "this CPU has no AVX-512: the strip kernel is not used here";
  DirectConv p;
  p.N = 4, p.H = 14, p.W = 14, p.C = 16, p.K = 16, p.kh = p.kw = 3, p.pad_t = p.pad_l = 1;
  p.out_h = p.out_w = 14;
  std::mt19937 rng(13);
  const auto x = normal(rng, p.N * p.H * p.W * p.C, 1.0f);
  const auto w = normal(rng, p.K * p.C * 9, 0.2f);
  DirectConvScratch s;
  testing::expect_images_computed_as_if_alone(
      p.N, p.H * p.W * p.C, p.out_h * p.out_w * p.K, x, [&](int64_t images, const float* xi, float* yi) {
        DirectConv q = p;
        q.N = images;
        strip_conv(q, xi, w.data(), nullptr, yi, s);
      });
}

TEST(StripConv, RefusesWhatItDoesNotTake) {
  if (!cpu_takes_it()) GTEST_SKIP() << "this CPU has no AVX-512: the strip kernel is not used here";
  DirectConv p;
  p.N = 1, p.H = 8, p.W = 8, p.C = 16, p.K = 16, p.kh = p.kw = 3, p.out_h = p.out_w = 6;
  EXPECT_TRUE(strip_conv_available(p));
  DirectConv q = p;
  q.C = 32;
  EXPECT_FALSE(strip_conv_available(q));
  q = p;
  q.K = 48;
  EXPECT_FALSE(strip_conv_available(q));
  q = p;
  q.kw = 5;
  EXPECT_FALSE(strip_conv_available(q));
  q = p;
  q.stride_w = 3;
  EXPECT_FALSE(strip_conv_available(q));
  q = p;
  q.dil_w = 2;
  EXPECT_FALSE(strip_conv_available(q));
}

}  // namespace
}  // namespace qsweep

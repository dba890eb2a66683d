// Winograd F(4x4, 3x3) (kernels/cpu/winograd.h) against a direct convolution summed in
// double precision: random shapes, every padding it accepts, partial edge tiles, bias and the
// fused clamp. Its rounding differs from a direct float32 sum, so the bound is on the error
// relative to the sum of |x * w| over each output's taps (the scale of its rounding error).
#include "kernels/cpu/winograd.h"

#include <algorithm>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "tests/kernels/conv_reference.h"

namespace qsweep {
namespace {

using testing::normal;

// The same convolution as DirectConv parameters, for the double-precision reference.
DirectConv as_direct(const WinogradConv& p) {
  DirectConv d;
  d.N = p.N, d.H = p.H, d.W = p.W, d.C = p.C, d.K = p.K, d.kh = d.kw = 3;
  d.pad_t = p.pad_t, d.pad_l = p.pad_l, d.out_h = p.out_h, d.out_w = p.out_w;
  d.clamp = p.clamp, d.lo = p.lo, d.hi = p.hi;
  return d;
}

TEST(Winograd, AgainstDirectSumOnRandomShapes) {
  WinogradConv probe;
  probe.N = probe.H = probe.W = probe.out_h = probe.out_w = 1;
  probe.C = probe.K = 32;
  if (!winograd_available(probe)) GTEST_SKIP() << "this CPU has no AVX-512: the Winograd path is not used here";
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> pick(0, 1 << 20);
  WinogradScratch scratch;  // one scratch for every shape, as a worker thread reuses it
  double worst = 0.0;
  int cases = 0;
  const int64_t channels[] = {16, 32, 48, 64};
  for (int i = 0; i < 40; ++i) {
    WinogradConv p;
    p.N = 1 + pick(rng) % 3;
    p.H = 1 + pick(rng) % 15;
    p.W = 1 + pick(rng) % 15;
    p.C = channels[pick(rng) % 4];
    p.K = channels[pick(rng) % 4];
    if (p.C + p.K < 64) p.K = 64 - p.C;  // the smallest channel total the kernel takes
    p.pad_t = pick(rng) % 3;
    p.pad_l = pick(rng) % 3;
    const int64_t pad_b = pick(rng) % 3, pad_r = pick(rng) % 3;
    p.out_h = p.H + p.pad_t + pad_b - 2;
    p.out_w = p.W + p.pad_l + pad_r - 2;
    if (p.out_h < 1 || p.out_w < 1) continue;
    const int act = pick(rng) % 3;
    testing::set_activation(act, p.clamp, p.lo, p.hi);
    const bool with_bias = pick(rng) % 2 == 0;
    ASSERT_TRUE(winograd_available(p));
    SCOPED_TRACE(::testing::Message() << "N " << p.N << " H " << p.H << " W " << p.W << " C " << p.C << " K " << p.K
                                    << " pads " << p.pad_t << "," << p.pad_l << "," << pad_b << "," << pad_r
                                    << " act " << act << " bias " << with_bias);
    const double case_worst = testing::random_case_error(
        rng, as_direct(p), with_bias,
        [&](const float* x, const float* w, const float* b, float* y) {
          winograd_conv_f43(p, x, w, b, y, scratch);
        });
    // Measured up to 3e-6 here; a direct float32 sum stays near 1e-7.
    EXPECT_LE(case_worst, 1e-5);
    worst = std::max(worst, case_worst);
    ++cases;
  }
  EXPECT_GE(cases, 30);
  RecordProperty("worst_error_over_sum_abs", (::testing::Message() << worst).GetString());
}

TEST(Winograd, EachImageIsComputedAsIfAlone) {
  // Tiles are independent and each one's sums run in a fixed order, so an image's output is
  // bit for bit the same whatever else shares its batch (and whatever block its tiles fall
  // in): what keeps the grid's numbers independent of the batch split and the threads.
  WinogradConv p;
  p.N = 5, p.H = 7, p.W = 9, p.C = 32, p.K = 48, p.pad_t = 1, p.pad_l = 1, p.out_h = 7, p.out_w = 9;
  if (!winograd_available(p)) GTEST_SKIP() << "this CPU has no AVX-512: the Winograd path is not used here";
  std::mt19937 rng(3);
  const auto x = normal(rng, p.N * p.H * p.W * p.C, 1.0f);
  const auto w = normal(rng, p.K * p.C * 9, 0.2f);
  const auto b = normal(rng, p.K, 0.5f);
  WinogradScratch s;
  testing::expect_images_computed_as_if_alone(
      p.N, p.H * p.W * p.C, p.out_h * p.out_w * p.K, x, [&](int64_t images, const float* xi, float* yi) {
        WinogradConv q = p;
        q.N = images;
        winograd_conv_f43(q, xi, w.data(), b.data(), yi, s);
      });
}

TEST(Winograd, KeptWeightTransformsFollowTheWeightsValues) {
  // The scratch keeps weight transforms between calls. A buffer refilled with new values
  // (as the grid refills a layer's quantized weights) must be transformed again, and a full
  // cache must still give the right answer: every result equals a fresh scratch's.
  WinogradConv p;
  p.N = 2, p.H = 5, p.W = 6, p.C = 32, p.K = 32, p.pad_t = 1, p.pad_l = 1, p.out_h = 5, p.out_w = 6;
  if (!winograd_available(p)) GTEST_SKIP() << "this CPU has no AVX-512: the Winograd path is not used here";
  std::mt19937 rng(4);
  const auto x = normal(rng, p.N * p.H * p.W * p.C, 1.0f);
  const size_t out = p.N * p.out_h * p.out_w * p.K;
  WinogradScratch kept;
  std::vector<float> buffer(p.K * p.C * 9);
  std::vector<std::vector<float>> others;
  for (int i = 0; i < 70; ++i) others.push_back(normal(rng, buffer.size(), 0.2f));  // more than the cache holds
  for (int round = 0; round < 3; ++round) {
    buffer = normal(rng, buffer.size(), 0.2f);  // same address, new values
    for (int i = 0; i < 70; i += 1 + round) {
      for (const std::vector<float>* w : {&buffer, &others[i]}) {
        std::vector<float> y_kept(out), y_fresh(out);
        WinogradScratch fresh;
        winograd_conv_f43(p, x.data(), w->data(), nullptr, y_kept.data(), kept);
        winograd_conv_f43(p, x.data(), w->data(), nullptr, y_fresh.data(), fresh);
        ASSERT_EQ(y_kept, y_fresh) << "round " << round << " weights " << i;
      }
    }
  }
}

TEST(Winograd, RefusesWhatItDoesNotTake) {
  WinogradConv p;
  p.N = 1, p.H = 8, p.W = 8, p.C = 32, p.K = 32, p.pad_t = 1, p.pad_l = 1, p.out_h = 8, p.out_w = 8;
  if (!winograd_available(p)) GTEST_SKIP() << "this CPU has no AVX-512: the Winograd path is not used here";
  WinogradConv q = p;
  q.C = 24;  // not a multiple of 16
  EXPECT_FALSE(winograd_available(q));
  q = p;
  q.K = 8;
  EXPECT_FALSE(winograd_available(q));
  q = p;
  q.C = q.K = 16;  // 16 -> 16: the transforms cost more than they save
  EXPECT_FALSE(winograd_available(q));
  q = p;
  q.pad_t = 3;
  EXPECT_FALSE(winograd_available(q));
  q = p;
  q.out_w = 0;
  EXPECT_FALSE(winograd_available(q));
}

}  // namespace
}  // namespace qsweep

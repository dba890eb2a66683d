// Winograd F(4x4, 3x3) (kernels/cpu/winograd.h) against a direct convolution summed in
// double precision: random shapes, every padding it accepts, partial edge tiles, bias and the
// fused clamp. Its rounding differs from a direct float32 sum, so the bound is on the error
// relative to the sum of |x * w| over each output's taps (the scale of its rounding error).
#include "kernels/cpu/winograd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace qsweep {
namespace {

struct Ref {
  std::vector<double> y, scale;  // the exact result and sum |x w| + |b| per output
};

Ref direct(const WinogradConv& p, const std::vector<float>& x, const std::vector<float>& w,
           const std::vector<float>* b) {
  Ref r;
  r.y.resize(p.N * p.out_h * p.out_w * p.K);
  r.scale.resize(r.y.size());
  for (int64_t n = 0; n < p.N; ++n) {
    for (int64_t oy = 0; oy < p.out_h; ++oy) {
      for (int64_t ox = 0; ox < p.out_w; ++ox) {
        for (int64_t k = 0; k < p.K; ++k) {
          double acc = b ? (*b)[k] : 0.0, mag = b ? std::abs((*b)[k]) : 0.0;
          for (int64_t ky = 0; ky < 3; ++ky) {
            for (int64_t kx = 0; kx < 3; ++kx) {
              const int64_t iy = oy + ky - p.pad_t, ix = ox + kx - p.pad_l;
              if (iy < 0 || iy >= p.H || ix < 0 || ix >= p.W) continue;
              for (int64_t c = 0; c < p.C; ++c) {
                const double t = static_cast<double>(x[((n * p.H + iy) * p.W + ix) * p.C + c]) *
                                 w[((k * p.C + c) * 3 + ky) * 3 + kx];
                acc += t;
                mag += std::abs(t);
              }
            }
          }
          if (p.clamp) acc = std::min<double>(std::max<double>(acc, p.lo), p.hi);
          const size_t o = ((n * p.out_h + oy) * p.out_w + ox) * p.K + k;
          r.y[o] = acc;
          r.scale[o] = mag;
        }
      }
    }
  }
  return r;
}

std::vector<float> normal(std::mt19937& rng, size_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& e : v) e = d(rng);
  return v;
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
    const int act = pick(rng) % 3;  // none, ReLU, clip to [-0.5, 0.75]
    p.clamp = act != 0;
    p.lo = act == 1 ? 0.0f : -0.5f;
    p.hi = act == 1 ? std::numeric_limits<float>::infinity() : 0.75f;
    const bool with_bias = pick(rng) % 2 == 0;
    ASSERT_TRUE(winograd_available(p));
    SCOPED_TRACE(testing::Message() << "N " << p.N << " H " << p.H << " W " << p.W << " C " << p.C << " K " << p.K
                                    << " pads " << p.pad_t << "," << p.pad_l << "," << pad_b << "," << pad_r
                                    << " act " << act << " bias " << with_bias);
    const auto x = normal(rng, p.N * p.H * p.W * p.C, 1.0f);
    const auto w = normal(rng, p.K * p.C * 9, 0.2f);
    const auto b = normal(rng, p.K, 0.5f);
    // Filled with NaN: every output must be written.
    std::vector<float> y(p.N * p.out_h * p.out_w * p.K, std::numeric_limits<float>::quiet_NaN());
    winograd_conv_f43(p, x.data(), w.data(), with_bias ? b.data() : nullptr, y.data(), scratch);
    const Ref ref = direct(p, x, w, with_bias ? &b : nullptr);
    double case_worst = 0.0;
    for (size_t o = 0; o < y.size(); ++o) {
      ASSERT_FALSE(std::isnan(y[o])) << "output " << o << " not written";
      const double err = std::abs(y[o] - ref.y[o]) / std::max(ref.scale[o], 1e-30);
      case_worst = std::max(case_worst, err);
      if (p.clamp) {
        ASSERT_GE(y[o], p.lo);
        ASSERT_LE(y[o], p.hi);
      }
    }
    // Measured up to 3e-6 here; a direct float32 sum stays near 1e-7.
    EXPECT_LE(case_worst, 1e-5);
    worst = std::max(worst, case_worst);
    ++cases;
  }
  EXPECT_GE(cases, 30);
  RecordProperty("worst_error_over_sum_abs", (testing::Message() << worst).GetString());
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
  const int64_t in_image = p.H * p.W * p.C, out_image = p.out_h * p.out_w * p.K;
  std::vector<float> all(p.N * out_image);
  WinogradScratch s;
  winograd_conv_f43(p, x.data(), w.data(), b.data(), all.data(), s);
  WinogradConv one = p;
  one.N = 1;
  for (int64_t n = 0; n < p.N; ++n) {
    std::vector<float> alone(out_image);
    winograd_conv_f43(one, x.data() + n * in_image, w.data(), b.data(), alone.data(), s);
    for (int64_t i = 0; i < out_image; ++i) ASSERT_EQ(alone[i], all[n * out_image + i]) << "image " << n << " " << i;
  }
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

// Weight clipping methods (kernels/cpu/clipping.h) against computations written out here:
// SAWB from Choi et al. 2018's formula and coefficients, the MSE clip against a brute-force
// search over the same candidate grid, percentiles against NumPy's linear interpolation
// worked by hand.
#include "kernels/cpu/clipping.h"
#include "tests/reference_quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

namespace qsweep {
namespace {

using testing::RefQuant;

// sawb_clip accumulates in double and rounds once to float32.
constexpr double kSawbRelTol = 1e-6;
// Percentiles interpolate in double and round once to float32.
constexpr float kPercentileAbsTol = 1e-5f;
// Two MSE candidates whose errors differ by less than this (relative) count as a tie.
constexpr double kMseTieRelTol = 1e-12;

// ---------------------------------------------------------------- SAWB

struct SawbRef {
  int bits;
  double c1, c2;
};
// Choi et al. 2018 (arXiv:1807.06964) and IBM's reference implementation; 6 bits is the
// midpoint of 5 and 7 (no published pair).
const SawbRef kSawbTable[] = {
    {2, 3.212, 2.178},
    {3, 7.509, 6.892},
    {4, 12.68, 12.80},
    {5, 17.74, 18.64},
    {6, (17.74 + 28.24) / 2, (18.64 + 30.81) / 2},
    {7, 28.24, 30.81},
    {8, 31.76, 35.04},
};

// A fixed small tensor: a bulk near zero and two large values, so that E[w^2] and E[|w|]
// differ enough for every bit-width's clip to be positive.
const std::vector<float> kSawbTensor = {-0.31f, 0.12f, -0.05f, 0.44f, 0.02f,  -0.18f, 0.27f, -0.09f,
                                        0.06f,  -0.4f, 0.15f,  1.9f,  -0.22f, 0.08f,  -1.3f, 0.33f};

TEST(Sawb, CoefficientsMatchThePaper) {
  for (const SawbRef& r : kSawbTable) {
    const auto c = sawb_coefficients(r.bits);
    ASSERT_TRUE(c.has_value()) << r.bits << " bits";
    EXPECT_DOUBLE_EQ(c->c1, r.c1) << r.bits << " bits";
    EXPECT_DOUBLE_EQ(c->c2, r.c2) << r.bits << " bits";
    EXPECT_EQ(c->interpolated, r.bits == 6) << r.bits << " bits";
  }
  for (int bits : {0, 1, 9, 16}) EXPECT_FALSE(sawb_coefficients(bits).has_value()) << bits << " bits";
}

TEST(Sawb, ClipMatchesHandComputation) {
  // E[w^2] and E[|w|] by hand (double).
  double sq = 0.0, ab = 0.0;
  for (float v : kSawbTensor) {
    sq += static_cast<double>(v) * v;
    ab += std::fabs(static_cast<double>(v));
  }
  const double n = static_cast<double>(kSawbTensor.size());
  const double rms = std::sqrt(sq / n), mean_abs = ab / n;
  float max_abs = 0.0f;
  for (float v : kSawbTensor) max_abs = std::max(max_abs, std::fabs(v));
  for (const SawbRef& r : kSawbTable) {
    const double expected = r.c1 * rms - r.c2 * mean_abs;
    ASSERT_GT(expected, 0.0) << "the test tensor must give a positive clip at " << r.bits << " bits";
    const float got = sawb_clip(kSawbTensor.data(), kSawbTensor.size(), r.bits);
    EXPECT_NEAR(got, expected, kSawbRelTol * expected) << r.bits << " bits";
  }
  // The clip grows with the bit-width on this tensor and clips at 2 bits.
  EXPECT_LT(sawb_clip(kSawbTensor.data(), kSawbTensor.size(), 2), max_abs);
  EXPECT_LT(sawb_clip(kSawbTensor.data(), kSawbTensor.size(), 2), sawb_clip(kSawbTensor.data(), kSawbTensor.size(), 4));
}

TEST(Sawb, NoClipOutsideTwoToEightBits) {
  EXPECT_TRUE(std::isnan(sawb_clip(kSawbTensor.data(), kSawbTensor.size(), 9)));
  EXPECT_TRUE(std::isnan(sawb_clip(kSawbTensor.data(), kSawbTensor.size(), 1)));
}

// ---------------------------------------------------------------- MSE


// Squared quantization error of w under the clip alpha: range [max(min, -a), min(max, a)].
double clip_error(const std::vector<float>& w, float alpha, int bits, Scheme scheme) {
  const float mn = *std::min_element(w.begin(), w.end()), mx = *std::max_element(w.begin(), w.end());
  const RefQuant q(std::max(mn, -alpha), std::min(mx, alpha), bits, scheme);
  double e = 0.0;
  for (float v : w) {
    const double d = static_cast<double>(v) - q(v);
    e += d * d;
  }
  return e;
}

struct BruteForce {
  float alpha;  // the smallest candidate with the least error
  double error;
};

BruteForce brute_force_mse(const std::vector<float>& w, int bits, Scheme scheme, int grid) {
  float max_abs = 0.0f;
  for (float v : w) max_abs = std::max(max_abs, std::fabs(v));
  BruteForce best{max_abs, std::numeric_limits<double>::infinity()};
  for (int k = 1; k <= grid; ++k) {
    const float a = max_abs * static_cast<float>(k) / static_cast<float>(grid);
    const double e = clip_error(w, a, bits, scheme);
    if (e < best.error) best = {a, e};
  }
  return best;
}

// 4096 weights N(0, 0.1) plus one far outlier at +2.
std::vector<float> outlier_tensor() {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  std::vector<float> w(4096);
  for (auto& v : w) v = nd(rng);
  w[1234] = 2.0f;
  return w;
}

TEST(MseClip, MinimizesErrorOverTheCandidateGrid) {
  const std::vector<float> w = outlier_tensor();
  for (Scheme scheme : {Scheme::kAsymmetric, Scheme::kSymmetric}) {
    for (int bits : {2, 3, 4, 6, 8}) {
      for (int grid : {20, 100}) {
        SCOPED_TRACE(::testing::Message() << bits << " bits, grid " << grid
                                          << (scheme == Scheme::kSymmetric ? ", symmetric" : ", asymmetric"));
        const BruteForce ref = brute_force_mse(w, bits, scheme, grid);
        const float got = mse_clip(w.data(), w.size(), bits, scheme, grid);
        // The returned alpha is a candidate of the grid ...
        bool on_grid = false;
        for (int k = 1; k <= grid; ++k)
          on_grid = on_grid || got == 2.0f * static_cast<float>(k) / static_cast<float>(grid);
        EXPECT_TRUE(on_grid) << "alpha " << got;
        // ... and no candidate has a smaller error.
        EXPECT_LE(clip_error(w, got, bits, scheme), ref.error * (1.0 + kMseTieRelTol)) << "alpha " << got;
        EXPECT_FLOAT_EQ(got, ref.alpha);
      }
    }
  }
}

TEST(MseClip, ClipsAFarOutlierAtLowBitsButNotAtSixteen) {
  const std::vector<float> w = outlier_tensor();
  const float max_abs = 2.0f;
  const float a3 = mse_clip(w.data(), w.size(), 3, Scheme::kAsymmetric, 100);
  std::printf("[mse clip] 3 bits: alpha %.4g of max|w| %.4g\n", a3, max_abs);
  EXPECT_LT(a3, 0.5f * max_abs) << "3 bits: the outlier should be clipped";
  // Clipping pays off: the clipped tensor's error is well below min/max's.
  EXPECT_LT(clip_error(w, a3, 3, Scheme::kAsymmetric), 0.5 * clip_error(w, max_abs, 3, Scheme::kAsymmetric));
  // At 16 bits the rounding error is negligible next to clipping the outlier by 1%.
  EXPECT_EQ(mse_clip(w.data(), w.size(), 16, Scheme::kAsymmetric, 100), max_abs);
}

// A stop (a signal) ends the search before its next candidate: NaN, for the caller to
// discard; an unset flag changes nothing.
TEST(MseClip, AStopEndsTheSearchWithNaN) {
  const std::vector<float> w = outlier_tensor();
  std::atomic<bool> stop{false};
  EXPECT_EQ(mse_clip(w.data(), w.size(), 3, Scheme::kAsymmetric, 100, &stop),
            mse_clip(w.data(), w.size(), 3, Scheme::kAsymmetric, 100));
  stop = true;
  EXPECT_TRUE(std::isnan(mse_clip(w.data(), w.size(), 3, Scheme::kAsymmetric, 100, &stop)));
}

TEST(MseClip, AllZeroTensorGivesZero) {
  const std::vector<float> z(10, 0.0f);
  EXPECT_EQ(mse_clip(z.data(), z.size(), 4, Scheme::kAsymmetric, 100), 0.0f);
}

// ---------------------------------------------------------------- percentile

TEST(Percentile, IntegerPositions) {
  // 0..100 shuffled: P(q) is q itself (n - 1 = 100, positions are integers).
  std::vector<float> v(101);
  for (int i = 0; i <= 100; ++i) v[i] = static_cast<float>(i);
  std::shuffle(v.begin(), v.end(), std::mt19937(3));
  float lo, hi;
  percentile_range(v.data(), v.size(), 90.0, &lo, &hi);
  EXPECT_NEAR(lo, 10.0f, kPercentileAbsTol);
  EXPECT_NEAR(hi, 90.0f, kPercentileAbsTol);
  percentile_range(v.data(), v.size(), 100.0, &lo, &hi);
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 100.0f);
  // 99.99: position 99.99 between 99 and 100 -> 99.99; low side 0.01.
  percentile_range(v.data(), v.size(), 99.99, &lo, &hi);
  EXPECT_NEAR(lo, 0.01f, kPercentileAbsTol);
  EXPECT_NEAR(hi, 99.99f, kPercentileAbsTol);
}

TEST(Percentile, NonIntegerPositionsInterpolateLinearly) {
  // numpy.percentile([1, 2, 4, 8, 16], 70) = 7.2: position 0.7 * 4 = 2.8 -> 4 + 0.8 * (8 - 4).
  // The low side, P(30): position 1.2 -> 2 + 0.2 * (4 - 2) = 2.4.
  const std::vector<float> v = {16.0f, 2.0f, 8.0f, 1.0f, 4.0f};
  float lo, hi;
  percentile_range(v.data(), v.size(), 70.0, &lo, &hi);
  EXPECT_NEAR(lo, 2.4f, kPercentileAbsTol);
  EXPECT_NEAR(hi, 7.2f, kPercentileAbsTol);
  // numpy.percentile([-3, -1, 0.5, 2], [12.5, 87.5]): positions 0.375 and 2.625 ->
  // -3 + 0.375 * 2 = -2.25 and 0.5 + 0.625 * 1.5 = 1.4375.
  const std::vector<float> u = {0.5f, -3.0f, 2.0f, -1.0f};
  percentile_range(u.data(), u.size(), 87.5, &lo, &hi);
  EXPECT_NEAR(lo, -2.25f, kPercentileAbsTol);
  EXPECT_NEAR(hi, 1.4375f, kPercentileAbsTol);
}

// ---------------------------------------------------------------- clipped fraction

TEST(ClippedFraction, CountsValuesStrictlyOutside) {
  const std::vector<float> v = {-3.0f, -1.0f, 0.0f, 1.0f, 2.0f, 5.0f};
  // The bounds themselves are inside.
  EXPECT_DOUBLE_EQ(clipped_fraction(v.data(), v.size(), -1.0f, 2.0f), 2.0 / 6.0);
  EXPECT_DOUBLE_EQ(clipped_fraction(v.data(), v.size(), -3.0f, 5.0f), 0.0);
  EXPECT_DOUBLE_EQ(clipped_fraction(v.data(), v.size(), 0.5f, 0.75f), 1.0);
  EXPECT_DOUBLE_EQ(clipped_fraction(v.data(), v.size(), -0.5f, 10.0f), 2.0 / 6.0);
  EXPECT_DOUBLE_EQ(clipped_fraction(v.data(), 0, 0.0f, 1.0f), 0.0);
}

}  // namespace
}  // namespace qsweep

#include "kernels/cpu/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace qsweep {
namespace {

TEST(Metrics, ArgmaxTiesBreakToLowestIndex) {
  const std::vector<float> x = {1.0f, 3.0f, 3.0f, 2.0f};
  EXPECT_EQ(argmax(x.data(), 4), 1u);
  const std::vector<float> all_equal = {5.0f, 5.0f, 5.0f};
  EXPECT_EQ(argmax(all_equal.data(), 3), 0u);
}

TEST(Metrics, ArgmaxSkipsNaN) {
  const std::vector<float> x = {std::nanf(""), -1.0f, 2.0f, std::nanf("")};
  EXPECT_EQ(argmax(x.data(), 4), 2u);
}

TEST(Metrics, SquaredErrorHandComputed) {
  // Rows: (1,2) vs (0,0) -> 5; (3,-1) vs (3,1) -> 4.
  const std::vector<float> y = {1.0f, 2.0f, 3.0f, -1.0f};
  const std::vector<float> yh = {0.0f, 0.0f, 3.0f, 1.0f};
  EXPECT_EQ(squared_error_sum(y.data(), yh.data(), 2, 2), 9.0);
  EXPECT_EQ(squared_norm_sum(y.data(), 2, 2), 15.0);
  EXPECT_EQ(squared_error_sum(y.data(), y.data(), 2, 2), 0.0);
}

TEST(Metrics, CountTop1) {
  const std::vector<float> y = {0.1f, 0.9f, 0.0f,   // argmax 1
                                0.5f, 0.5f, 0.2f,   // tie -> 0
                                0.0f, 0.0f, 1.0f};  // argmax 2
  const std::vector<int32_t> labels = {1, 1, 2};
  EXPECT_EQ(count_top1(y.data(), labels.data(), 3, 3), 2);
}

TEST(Metrics, LabelRankHandComputed) {
  const float nan = std::nanf("");
  //                            0     1     2     3    4     5     6
  const std::vector<float> x = {0.2f, 0.9f, 0.5f, 0.9f, nan, -1.0f, 0.1f};
  EXPECT_EQ(label_rank(x.data(), 7, 1), 0u);  // the first of the tied maxima
  EXPECT_EQ(label_rank(x.data(), 7, 3), 1u);  // the tie goes to class 1
  EXPECT_EQ(label_rank(x.data(), 7, 0), 3u);  // 0.9, 0.9, 0.5
  EXPECT_EQ(label_rank(x.data(), 7, 6), 4u);  // 0.9, 0.9, 0.5, 0.2
  EXPECT_EQ(label_rank(x.data(), 7, 5), 5u);  // every number but itself
  EXPECT_EQ(label_rank(x.data(), 7, 4), 6u);  // NaN after every number
  EXPECT_EQ(row_outcome(x.data(), 7, 1), kTop1Bit | kTop5Bit);
  EXPECT_EQ(row_outcome(x.data(), 7, 3), kTop5Bit);
  EXPECT_EQ(row_outcome(x.data(), 7, 6), kTop5Bit);
  EXPECT_EQ(row_outcome(x.data(), 7, 5), 0);
  EXPECT_EQ(row_outcome(x.data(), 7, 4), 0);
  EXPECT_EQ(row_outcome(x.data(), 7, 7), 0);   // a label outside the classes
  EXPECT_EQ(row_outcome(x.data(), 7, -1), 0);
  // Two NaNs in a row of NaNs: by index, as argmax() picks class 0.
  const std::vector<float> all_nan = {nan, nan, nan};
  EXPECT_EQ(row_outcome(all_nan.data(), 3, 0), kTop1Bit | kTop5Bit);
  EXPECT_EQ(label_rank(all_nan.data(), 3, 2), 2u);
  // With fewer classes than 5 every label is in the top 5.
  const std::vector<float> three = {3.0f, 2.0f, 1.0f};
  EXPECT_EQ(row_outcome(three.data(), 3, 2), kTop5Bit);
}

// Against a naive reference: sort the classes (a stable sort by value, largest first, NaN
// last) and find the label's position; the first class must be argmax()'s.
TEST(Metrics, LabelRankMatchesASortedRow) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> level(0, 5);  // few distinct values: many ties
  for (int trial = 0; trial < 500; ++trial) {
    const size_t k = 1 + trial % 13;
    std::vector<float> x(k);
    for (float& v : x) {
      const int l = level(rng);
      v = l == 5 ? std::nanf("") : 0.25f * static_cast<float>(l) - 0.5f;
    }
    std::vector<size_t> order(k);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      if (std::isnan(x[a]) || std::isnan(x[b])) return !std::isnan(x[a]) && std::isnan(x[b]);
      return x[a] > x[b];
    });
    ASSERT_EQ(order[0], argmax(x.data(), k)) << "trial " << trial;
    for (size_t pos = 0; pos < k; ++pos) {
      const size_t label = order[pos];
      ASSERT_EQ(label_rank(x.data(), k, label), pos) << "trial " << trial << " label " << label;
      const uint8_t want = static_cast<uint8_t>((pos == 0 ? kTop1Bit : 0) | (pos < 5 ? kTop5Bit : 0));
      ASSERT_EQ(row_outcome(x.data(), k, static_cast<int32_t>(label)), want);
    }
  }
}

TEST(Metrics, CountOutcomesByBit) {
  const std::vector<uint8_t> o = {0, kTop1Bit | kTop5Bit, kTop5Bit, kTop5Bit, 0};
  EXPECT_EQ(count_outcomes(o.data(), o.size(), kTop1Bit), 1);
  EXPECT_EQ(count_outcomes(o.data(), o.size(), kTop5Bit), 3);
}

}  // namespace
}  // namespace qsweep

#include "kernels/cpu/metrics.h"

#include <cmath>
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

}  // namespace
}  // namespace qsweep

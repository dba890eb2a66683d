// Metric reductions over a batch of logits (N, K), row-major.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define QSWEEP_HOST_DEVICE __host__ __device__
#else
#define QSWEEP_HOST_DEVICE
#endif

namespace qsweep {

// The bits of a per-image outcome (CellStats::correct_images and every per-image flag):
// top-1 correct, and the label among the kTopK highest logits.
inline constexpr uint8_t kTop1Bit = 1;
inline constexpr uint8_t kTop5Bit = 2;
inline constexpr size_t kTopK = 5;

// The order of logits that argmax() and the top-5 rank follow: whether value a of class i
// comes before value b of class j (i != j). Larger values first; NaN after every number;
// equal values, and two NaNs, by the lower class index.
QSWEEP_HOST_DEVICE inline bool ranks_before(float a, size_t i, float b, size_t j) {
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan || b_nan) return a_nan && b_nan ? i < j : b_nan;
  return a > b || (a == b && i < j);
}

// How many classes of row x[0..k) come before class `label` in that order: 0 when argmax is
// the label, below kTopK when the label is among the top 5. label must be in [0, k).
size_t label_rank(const float* x, size_t k, size_t label);

// The outcome bits of one row: kTop1Bit when argmax is the label, kTop5Bit when its rank is
// below kTopK (with fewer than kTopK classes, always). 0 for a label outside [0, k).
uint8_t row_outcome(const float* x, size_t k, int32_t label);

// Index of the largest value of row x[0..k); ties break to the lowest index and NaN never
// wins over a number.
size_t argmax(const float* x, size_t k);

// Sum over the n rows of ||y - y_hat||_2^2, accumulated in double.
double squared_error_sum(const float* y, const float* y_hat, size_t n, size_t k);

// Sum over the n rows of ||y||_2^2 (the SQNR numerator), accumulated in double.
double squared_norm_sum(const float* y, size_t n, size_t k);

// Number of rows whose argmax equals labels[i].
int64_t count_top1(const float* y, const int32_t* labels, size_t n, size_t k);

// Number of outcomes (row_outcome() values) with `bit` set.
int64_t count_outcomes(const uint8_t* outcomes, size_t n, uint8_t bit);

}  // namespace qsweep

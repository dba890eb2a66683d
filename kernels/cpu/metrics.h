// Metric reductions over a batch of logits (N, K), row-major.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qsweep {

// Index of the largest value of row x[0..k); ties break to the lowest index and NaN never
// wins over a number.
size_t argmax(const float* x, size_t k);

// Sum over the n rows of ||y - y_hat||_2^2, accumulated in double.
double squared_error_sum(const float* y, const float* y_hat, size_t n, size_t k);

// Sum over the n rows of ||y||_2^2 (the SQNR numerator), accumulated in double.
double squared_norm_sum(const float* y, size_t n, size_t k);

// Number of rows whose argmax equals labels[i].
int64_t count_top1(const float* y, const int32_t* labels, size_t n, size_t k);

}  // namespace qsweep

#include "kernels/cpu/metrics.h"

namespace qsweep {

size_t argmax(const float* x, size_t k) {
  size_t best = 0;
  for (size_t i = 1; i < k; ++i) {
    // Strictly greater keeps the lowest index on ties; x[best] != x[best] replaces a NaN.
    if (x[i] > x[best] || (x[best] != x[best] && x[i] == x[i])) best = i;
  }
  return best;
}

size_t label_rank(const float* x, size_t k, size_t label) {
  size_t rank = 0;
  for (size_t i = 0; i < k; ++i) rank += i != label && ranks_before(x[i], i, x[label], label);
  return rank;
}

uint8_t row_outcome(const float* x, size_t k, int32_t label) {
  if (label < 0 || static_cast<size_t>(label) >= k) return 0;
  const size_t rank = label_rank(x, k, static_cast<size_t>(label));
  return static_cast<uint8_t>((rank == 0 ? kTop1Bit : 0) | (rank < kTopK ? kTop5Bit : 0));
}

int64_t count_outcomes(const uint8_t* outcomes, size_t n, uint8_t bit) {
  int64_t c = 0;
  for (size_t i = 0; i < n; ++i) c += (outcomes[i] & bit) != 0;
  return c;
}

double squared_error_sum(const float* y, const float* y_hat, size_t n, size_t k) {
  double total = 0.0;
  for (size_t r = 0; r < n; ++r) {
    double row = 0.0;
    for (size_t i = 0; i < k; ++i) {
      const double d = static_cast<double>(y[r * k + i]) - static_cast<double>(y_hat[r * k + i]);
      row += d * d;
    }
    total += row;
  }
  return total;
}

double squared_norm_sum(const float* y, size_t n, size_t k) {
  double total = 0.0;
  for (size_t i = 0; i < n * k; ++i) total += static_cast<double>(y[i]) * y[i];
  return total;
}

int64_t count_top1(const float* y, const int32_t* labels, size_t n, size_t k) {
  int64_t correct = 0;
  for (size_t r = 0; r < n; ++r) {
    if (static_cast<int32_t>(argmax(y + r * k, k)) == labels[r]) ++correct;
  }
  return correct;
}

}  // namespace qsweep

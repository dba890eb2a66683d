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

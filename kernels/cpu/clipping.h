// Weight clipping methods: where to put a weight tensor's quantization range when plain
// min/max wastes levels on outliers (method.md, "Weight range").
#pragma once

#include <atomic>
#include <cstddef>
#include <optional>

#include "kernels/cpu/fake_quant.h"

namespace qsweep {

// SAWB (Choi et al. 2018, "Bridging the Accuracy Gap for 2-bit Quantized Neural Networks
// (QNN)", arXiv:1807.06964): clip = c1 * sqrt(E[w^2]) - c2 * E[|w|], with the coefficients
// that paper fits per bit-width (2..4 bits, Section 3 / Table 1) and those IBM's reference
// implementation (the same authors' group) uses for 5, 7 and 8 bits. 6 bits has no published
// pair; it is interpolated linearly between 5 and 7. Returns nothing for other bit-widths.
struct SawbCoefficients {
  double c1, c2;
  bool interpolated;
};
std::optional<SawbCoefficients> sawb_coefficients(int bits);
// The clip magnitude alpha (the range becomes [-alpha, alpha] intersected with [min, max]).
float sawb_clip(const float* w, size_t n, int bits);

// The clip magnitude alpha minimizing sum (w - fake_quant(w))^2 over the grid
// alpha_k = max|w| * k / grid_points, k = 1..grid_points (the smallest alpha on ties).
// With `stop` set (a signal), the search ends before its next candidate and returns NaN:
// the caller must check the flag and discard the result.
float mse_clip(const float* w, size_t n, int bits, Scheme scheme, int grid_points = 100,
               const std::atomic<bool>* stop = nullptr);

// Two-sided percentile range: lo = P(100 - pct), hi = P(pct), with NumPy's default linear
// interpolation between order statistics.
void percentile_range(const float* w, size_t n, double pct, float* lo, float* hi);

// Fraction of values outside [lo, hi].
double clipped_fraction(const float* w, size_t n, float lo, float hi);

}  // namespace qsweep

#include "kernels/cpu/clipping.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace qsweep {

std::optional<SawbCoefficients> sawb_coefficients(int bits) {
  switch (bits) {
    case 2: return SawbCoefficients{3.212, 2.178, false};
    case 3: return SawbCoefficients{7.509, 6.892, false};
    case 4: return SawbCoefficients{12.68, 12.80, false};
    case 5: return SawbCoefficients{17.74, 18.64, false};
    case 6: return SawbCoefficients{(17.74 + 28.24) / 2, (18.64 + 30.81) / 2, true};
    case 7: return SawbCoefficients{28.24, 30.81, false};
    case 8: return SawbCoefficients{31.76, 35.04, false};
    default: return std::nullopt;
  }
}

float sawb_clip(const float* w, size_t n, int bits) {
  const auto c = sawb_coefficients(bits);
  if (!c || n == 0) return NAN;
  double sq = 0.0, ab = 0.0;
  for (size_t i = 0; i < n; ++i) {
    sq += static_cast<double>(w[i]) * w[i];
    ab += std::fabs(static_cast<double>(w[i]));
  }
  const double clip = c->c1 * std::sqrt(sq / n) - c->c2 * (ab / n);
  return static_cast<float>(clip);
}

float mse_clip(const float* w, size_t n, int bits, Scheme scheme, int grid_points, const std::atomic<bool>* stop) {
  float lo, hi;
  min_max(w, n, &lo, &hi);
  const float max_abs = std::max(std::fabs(lo), std::fabs(hi));
  if (max_abs == 0.0f) return 0.0f;
  double best_err = INFINITY;
  float best = max_abs;
  for (int k = 1; k <= grid_points; ++k) {
    if (stop != nullptr && stop->load(std::memory_order_relaxed)) return NAN;
    const float alpha = max_abs * static_cast<float>(k) / static_cast<float>(grid_points);
    const QuantParams p = choose_quant_params(std::max(lo, -alpha), std::min(hi, alpha), bits, scheme);
    double err = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const double d = static_cast<double>(w[i]) - dequantize_value(quantize_value(w[i], p), p);
      err += d * d;
    }
    if (err < best_err) {
      best_err = err;
      best = alpha;
    }
  }
  return best;
}

void percentile_range(const float* w, size_t n, double pct, float* lo, float* hi) {
  std::vector<float> v(w, w + n);
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    const double pos = q / 100.0 * static_cast<double>(n - 1);
    const size_t i = static_cast<size_t>(std::floor(pos));
    const double frac = pos - static_cast<double>(i);
    if (i + 1 >= n) return v[n - 1];
    return static_cast<float>(v[i] + frac * (static_cast<double>(v[i + 1]) - v[i]));
  };
  *lo = at(100.0 - pct);
  *hi = at(pct);
}

double clipped_fraction(const float* w, size_t n, float lo, float hi) {
  size_t out = 0;
  for (size_t i = 0; i < n; ++i) out += (w[i] < lo || w[i] > hi);
  return n ? static_cast<double>(out) / static_cast<double>(n) : 0.0;
}

}  // namespace qsweep

#include "experiments/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace qsweep {

PairedBootstrap::PairedBootstrap(size_t images, int resamples, uint64_t seed, double confidence)
    : n_(images), resamples_(resamples), confidence_(confidence) {
  if (resamples_ <= 0 || n_ == 0) {
    resamples_ = 0;
    return;
  }
  counts_.assign(static_cast<size_t>(resamples_) * n_, 0);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, n_ - 1);
  for (int b = 0; b < resamples_; ++b) {
    uint8_t* row = counts_.data() + static_cast<size_t>(b) * n_;
    for (size_t i = 0; i < n_; ++i) {
      uint8_t& c = row[pick(rng)];
      if (c < 255) ++c;  // an image drawn 255+ times in one resample of thousands: never in practice
    }
  }
}

Interval PairedBootstrap::degradation_interval(const std::vector<uint8_t>& reference,
                                               const std::vector<uint8_t>& other, uint8_t bit) const {
  if (!enabled()) return {NAN, NAN};
  // Only images whose outcome differs contribute; all others add 0 to every resample.
  std::vector<size_t> idx;
  std::vector<int> diff;
  for (size_t i = 0; i < n_; ++i) {
    const int d = static_cast<int>((reference[i] & bit) != 0) - static_cast<int>((other[i] & bit) != 0);
    if (d != 0) {
      idx.push_back(i);
      diff.push_back(d);
    }
  }
  std::vector<double> stats(resamples_);
  for (int b = 0; b < resamples_; ++b) {
    const uint8_t* row = counts_.data() + static_cast<size_t>(b) * n_;
    int64_t s = 0;
    for (size_t k = 0; k < idx.size(); ++k) s += static_cast<int64_t>(row[idx[k]]) * diff[k];
    stats[b] = 100.0 * static_cast<double>(s) / static_cast<double>(n_);
  }
  std::sort(stats.begin(), stats.end());
  auto quantile = [&](double q) {
    const double pos = q * (resamples_ - 1);
    const size_t i = static_cast<size_t>(std::floor(pos));
    const double f = pos - i;
    return i + 1 < stats.size() ? stats[i] + f * (stats[i + 1] - stats[i]) : stats.back();
  };
  const double tail = (1.0 - confidence_) / 2.0;
  return {quantile(tail), quantile(1.0 - tail)};
}

namespace {

// Centered sums of x and y: sxx, syy, sxy.
struct Moments {
  double sxx = 0, syy = 0, sxy = 0;
};

Moments centered(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = x.size();
  double mx = 0, my = 0;
  for (size_t i = 0; i < n; ++i) {
    mx += x[i];
    my += y[i];
  }
  mx /= n;
  my /= n;
  Moments m;
  for (size_t i = 0; i < n; ++i) {
    m.sxy += (x[i] - mx) * (y[i] - my);
    m.sxx += (x[i] - mx) * (x[i] - mx);
    m.syy += (y[i] - my) * (y[i] - my);
  }
  return m;
}

}  // namespace

double pearson_r(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() < 2) return NAN;
  const Moments m = centered(x, y);
  if (m.sxx == 0 || m.syy == 0) return NAN;
  return m.sxy / std::sqrt(m.sxx * m.syy);
}

double ls_slope(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() < 2) return NAN;
  const Moments m = centered(x, y);
  return m.sxx == 0 ? NAN : m.sxy / m.sxx;
}

}  // namespace qsweep

// Statistics over images: paired bootstrap intervals for degradations, Pearson r, slopes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qsweep {

struct Interval {
  double lo = 0.0, hi = 0.0;
};

// Paired bootstrap over images (Efron): every resample draws n images with replacement, the
// same draws for every comparison, seeded, so intervals are reproducible. The interval of
// 100 * mean(reference_correct - other_correct) is the percentile interval at `confidence`.
class PairedBootstrap {
 public:
  PairedBootstrap(size_t images, int resamples, uint64_t seed, double confidence);
  // reference/other: per image, outcome bits (kernels/cpu/metrics.h); an image counts as
  // correct where `bit` is set (default: top-1).
  Interval degradation_interval(const std::vector<uint8_t>& reference, const std::vector<uint8_t>& other,
                                uint8_t bit = 1) const;
  bool enabled() const { return resamples_ > 0; }

 private:
  size_t n_;
  int resamples_;
  double confidence_;
  std::vector<uint8_t> counts_;  // resamples x images: how often each image is drawn
};

double pearson_r(const std::vector<double>& x, const std::vector<double>& y);
// Least-squares slope of y on x (with intercept).
double ls_slope(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace qsweep

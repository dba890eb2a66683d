// method.md's quantizer written out again, independently of kernels/cpu/fake_quant, for
// tests that check qsweep's quantization against it.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/fake_quant.h"  // Scheme only

namespace qsweep::testing {

struct RefQuant {
  float scale;
  int zp, qmin, qmax;
  RefQuant(float mn, float mx, int bits, Scheme scheme = Scheme::kAsymmetric) {
    const float lo = std::min(mn, 0.0f), hi = std::max(mx, 0.0f);
    if (scheme == Scheme::kAsymmetric) {
      qmin = 0;
      qmax = (1 << bits) - 1;
      scale = std::max((hi - lo) / static_cast<float>(qmax - qmin), std::numeric_limits<float>::epsilon());
      zp = std::clamp(qmin - static_cast<int>(std::nearbyint(lo / scale)), qmin, qmax);
    } else {
      qmax = (1 << (bits - 1)) - 1;
      qmin = -qmax;
      scale = std::max(std::max(-lo, hi) / static_cast<float>(qmax), std::numeric_limits<float>::epsilon());
      zp = 0;
    }
  }
  // PyTorch's order: round x / scale, then add the zero point, then clamp.
  float operator()(float x) const {
    const float r = std::nearbyint(x * (1.0f / scale)) + static_cast<float>(zp);
    const int q = static_cast<int>(std::clamp(r, static_cast<float>(qmin), static_cast<float>(qmax)));
    return static_cast<float>(q - zp) * scale;
  }
};

}  // namespace qsweep::testing

#include "kernels/cpu/fake_quant.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace qsweep {

void quant_range(int bits, Scheme scheme, int32_t* qmin, int32_t* qmax) {
  if (scheme == Scheme::kAsymmetric) {
    *qmin = 0;
    *qmax = (int32_t{1} << bits) - 1;
  } else {
    *qmax = (int32_t{1} << (bits - 1)) - 1;
    *qmin = -*qmax;
  }
}

QuantParams choose_quant_params(float min_x, float max_x, int bits, Scheme scheme) {
  QuantParams p;
  quant_range(bits, scheme, &p.qmin, &p.qmax);
  const float eps = std::numeric_limits<float>::epsilon();
  const float lo = std::min(min_x, 0.0f);
  const float hi = std::max(max_x, 0.0f);
  if (scheme == Scheme::kAsymmetric) {
    // float32 throughout, as torch.ao.quantization.MinMaxObserver computes it.
    float scale = (hi - lo) / static_cast<float>(p.qmax - p.qmin);
    scale = std::max(scale, eps);
    const float zp = static_cast<float>(p.qmin) - std::nearbyint(lo / scale);
    p.zero_point = static_cast<int32_t>(std::clamp(zp, static_cast<float>(p.qmin),
                                                   static_cast<float>(p.qmax)));
    p.scale = scale;
  } else {
    const float absmax = std::max(-lo, hi);
    // (qmax - qmin) / 2 == qmax for the restricted symmetric range.
    float scale = absmax / (static_cast<float>(p.qmax - p.qmin) / 2.0f);
    p.scale = std::max(scale, eps);
    p.zero_point = 0;
  }
  p.inv_scale = 1.0f / p.scale;
  return p;
}

// Compiled for several instruction sets, picked at load time: with SSE4.1 and later the
// compiler vectorizes nearbyintf as roundps in the current (round-half-to-even) mode, so
// every clone computes exactly what the scalar default does.
__attribute__((target_clones("avx512f", "avx2", "default")))
void fake_quantize_per_tensor(const float* x, float* y, size_t n, const QuantParams& p) {
  const float inv = p.inv_scale, scale = p.scale, zp = static_cast<float>(p.zero_point);
  const float lo = static_cast<float>(p.qmin), hi = static_cast<float>(p.qmax);
  for (size_t i = 0; i < n; ++i) {
    float q = __builtin_nearbyintf(x[i] * inv) + zp;
    q = q >= lo ? q : lo;  // NaN -> qmin, as quantize_value
    q = q > hi ? hi : q;
    y[i] = (q - zp) * scale;  // exact: q and zp are small integers in float
  }
}

void fake_quantize_per_channel(const float* x, float* y, size_t outer, size_t channels,
                               size_t inner, const QuantParams* params) {
  for (size_t o = 0; o < outer; ++o) {
    for (size_t c = 0; c < channels; ++c) {
      const size_t base = (o * channels + c) * inner;
      fake_quantize_per_tensor(x + base, y + base, inner, params[c]);
    }
  }
}

// `x < a ? x : a` is exactly minps/maxps (a NaN x compares false and is skipped), so the
// clones vectorize while keeping NaN-skipping semantics.
__attribute__((target_clones("avx512f", "avx2", "default")))
void min_max(const float* x, size_t n, float* lo, float* hi) {
  float a = std::numeric_limits<float>::infinity();
  float b = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) {
    a = x[i] < a ? x[i] : a;
    b = x[i] > b ? x[i] : b;
  }
  *lo = a;
  *hi = b;
}

__attribute__((target_clones("avx512f", "avx2", "default")))
bool any_nan(const float* x, size_t n) {
  int nan = 0;  // an integer OR over a compare mask: vectorizes, with no early exit
  for (size_t i = 0; i < n; ++i) nan |= x[i] != x[i];
  return nan != 0;
}

void min_max_per_channel(const float* x, size_t outer, size_t channels, size_t inner,
                         float* lo, float* hi) {
  for (size_t c = 0; c < channels; ++c) {
    lo[c] = std::numeric_limits<float>::infinity();
    hi[c] = -std::numeric_limits<float>::infinity();
  }
  for (size_t o = 0; o < outer; ++o) {
    for (size_t c = 0; c < channels; ++c) {
      float a, b;
      min_max(x + (o * channels + c) * inner, inner, &a, &b);
      lo[c] = std::fmin(lo[c], a);
      hi[c] = std::fmax(hi[c], b);
    }
  }
}

}  // namespace qsweep

// What qsweep's AVX-512 convolution kernels (direct_conv, strip_conv, winograd) share: the
// CPU check and the output epilogue. Internal to kernels/cpu.
#pragma once

#include <immintrin.h>

namespace qsweep::avx512 {

// Whether this CPU runs AVX-512 (F) code.
inline bool cpu_supported() {
  static const bool has = __builtin_cpu_supports("avx512f") != 0;
  return has;
}

// One output vector: min(max((v + bias) + residual, lo), hi), each step rounded as the
// separate ops (conv bias, residual Add, Relu/Clip) would; bias and residual may be null.
// max/min as _mm512_max_ps/_mm512_min_ps: a NaN gives lo, as the Relu/Clip loops do.
#pragma GCC push_options
#pragma GCC target("avx512f")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 on _mm512_min_ps / _mm512_max_ps
__attribute__((target("avx512f"), always_inline)) inline void store_output(float* y, __m512 v, const float* bias,
                                                                            const float* residual, bool clamp,
                                                                            __m512 lo, __m512 hi) {
  if (bias != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(bias));
  if (residual != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(residual));
  if (clamp) v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
  _mm512_storeu_ps(y, v);
}
#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace qsweep::avx512

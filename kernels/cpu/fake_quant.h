// Fake quantization (quantize, then de-quantize) on the CPU.
//
// The numeric contract is ../shared/docs/method.md: PyTorch's MinMaxObserver for the
// parameters and fake_quantize_per_tensor_affine for the values, bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qsweep {

enum class Scheme { kAsymmetric, kSymmetric };
enum class Granularity { kPerTensor, kPerChannel };

// Parameters of one affine quantizer.
struct QuantParams {
  float scale = 1.0f;
  float inv_scale = 1.0f;  // 1.0f / scale, computed once in float32
  int32_t zero_point = 0;
  int32_t qmin = 0;
  int32_t qmax = 255;
};

// Integer range of a b-bit quantizer: asymmetric [0, 2^b - 1], symmetric
// [-(2^(b-1) - 1), 2^(b-1) - 1].
void quant_range(int bits, Scheme scheme, int32_t* qmin, int32_t* qmax);

// MinMaxObserver: the range is widened to contain 0, scale = max(range / levels, eps),
// zero_point = clamp(qmin - round(lo / scale)) (asymmetric) or 0 (symmetric).
QuantParams choose_quant_params(float min_x, float max_x, int bits, Scheme scheme);

// PyTorch's rounding: q = clamp(nearbyint(x * inv_scale) + zero_point, qmin, qmax),
// x_hat = (q - zero_point) * scale. (method.md writes round(x * inv_scale + zero_point);
// the two differ when x * inv_scale is exactly half-way and zero_point is odd, as
// half-to-even then picks the other neighbour, and when adding the zero point in float32
// moves a value onto a half-way point. PyTorch rounds first, so we do too: the contract is
// bit-exactness with PyTorch. README.md, "numeric contract".)
inline int32_t quantize_value(float x, const QuantParams& p) {
  float r = __builtin_nearbyintf(x * p.inv_scale);
  // Clamp in float before converting so huge values and infinities cannot overflow.
  float q = r + static_cast<float>(p.zero_point);
  if (!(q >= static_cast<float>(p.qmin))) q = static_cast<float>(p.qmin);  // NaN -> qmin
  if (q > static_cast<float>(p.qmax)) q = static_cast<float>(p.qmax);
  return static_cast<int32_t>(q);
}

inline float dequantize_value(int32_t q, const QuantParams& p) {
  return static_cast<float>(q - p.zero_point) * p.scale;
}

// y[i] = dequantize(quantize(x[i])). x and y may alias.
void fake_quantize_per_tensor(const float* x, float* y, size_t n, const QuantParams& p);

// Per-channel along one axis of a tensor laid out as (outer, channels, inner):
// element (o, c, i) uses params[c]. Conv weights (O, I/g, kH, kW) have outer = 1,
// channels = O; Gemm weights (K, N) quantized per output column have outer = K,
// channels = N, inner = 1.
void fake_quantize_per_channel(const float* x, float* y, size_t outer, size_t channels,
                               size_t inner, const QuantParams* params);

// Min and max of n values (n > 0). NaNs are ignored.
void min_max(const float* x, size_t n, float* lo, float* hi);

// Whether any of n values is NaN (what min_max() skips).
bool any_nan(const float* x, size_t n);

// Per-channel min/max over a (outer, channels, inner) layout.
void min_max_per_channel(const float* x, size_t outer, size_t channels, size_t inner,
                         float* lo, float* hi);

}  // namespace qsweep

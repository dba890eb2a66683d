// Fake quantization on the GPU: the CUDA twin of kernels/cpu/fake_quant.h, with the same
// rounding (nearbyint then add the zero point, as PyTorch's kernel does).
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "kernels/cpu/fake_quant.h"

namespace qsweep::cuda {

#ifdef __CUDACC__
// One value through the quantizer, in device code, with the rounding of
// kernels/cpu/fake_quant.h: nearbyint, add the zero point, clamp (NaN goes to qmin),
// subtract the zero point, scale. Every CUDA kernel that fake-quantizes calls this.
__device__ __forceinline__ float fake_quant_value(float x, const QuantParams& p) {
  float q = rintf(__fmul_rn(x, p.inv_scale)) + static_cast<float>(p.zero_point);
  if (!(q >= static_cast<float>(p.qmin))) q = static_cast<float>(p.qmin);
  if (q > static_cast<float>(p.qmax)) q = static_cast<float>(p.qmax);
  return __fmul_rn(static_cast<float>(static_cast<int>(q) - p.zero_point), p.scale);
}
#endif

// y[i] = dequantize(quantize(x[i])) for n device floats; x and y may alias.
void fake_quantize_per_tensor(const float* x, float* y, size_t n, const QuantParams& p, cudaStream_t stream);

// fake_quantize_per_channel() of kernels/cpu/fake_quant.h on the device: x and y laid out
// (outer, channels, inner), `params` holds `channels` QuantParams in device memory.
void fake_quantize_per_channel(const float* x, float* y, size_t outer, size_t channels, size_t inner,
                               const QuantParams* params, cudaStream_t stream);

// min_max_per_channel() of kernels/cpu/fake_quant.h on the device, with CUB block
// reductions: lo[c] and hi[c] (device arrays of `channels` floats) receive the min and max of
// channel c of x (outer, channels, inner), NaNs ignored, +inf / -inf for a channel of NaNs
// only. A per-tensor range is channels = 1, inner = n. Asynchronous on `stream`.
void min_max_per_channel(const float* x, size_t outer, size_t channels, size_t inner, float* lo, float* hi,
                         cudaStream_t stream);

}  // namespace qsweep::cuda

// Fake quantization on the GPU: the CUDA twin of kernels/cpu/fake_quant.h, with the same
// rounding (nearbyint then add the zero point, as PyTorch's kernel does).
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "kernels/cpu/fake_quant.h"

namespace qsweep::cuda {

// y[i] = dequantize(quantize(x[i])) for n device floats; x and y may alias.
void fake_quantize_per_tensor(const float* x, float* y, size_t n, const QuantParams& p, cudaStream_t stream);

}  // namespace qsweep::cuda

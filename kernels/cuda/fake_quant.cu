#include "kernels/cuda/fake_quant.cuh"

#include <stdexcept>
#include <string>

namespace qsweep::cuda {

static __global__ void fake_quantize_per_tensor_kernel(const float* x, float* y, size_t n, float scale,
                                                       float inv_scale, int zero_point, int qmin, int qmax) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float q = rintf(x[i] * inv_scale) + static_cast<float>(zero_point);
  q = fminf(fmaxf(q, static_cast<float>(qmin)), static_cast<float>(qmax));
  y[i] = static_cast<float>(static_cast<int>(q) - zero_point) * scale;
}

void fake_quantize_per_tensor(const float* x, float* y, size_t n, const QuantParams& p, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  fake_quantize_per_tensor_kernel<<<blocks, kThreads, 0, stream>>>(x, y, n, p.scale, p.inv_scale, p.zero_point,
                                                                   p.qmin, p.qmax);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(__FILE__) + ": fake_quantize_per_tensor_kernel launch failed: " +
                             cudaGetErrorString(err));
  }
}

}  // namespace qsweep::cuda

#include "kernels/cuda/fake_quant.cuh"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include <cub/block/block_reduce.cuh>

namespace qsweep::cuda {

namespace {

void launched(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("kernels/cuda/fake_quant.cu: ") + what + " launch failed: " +
                             cudaGetErrorString(err));
  }
}

__global__ void fake_quantize_per_channel_kernel(const float* x, float* y, size_t n, size_t channels, size_t inner,
                                                 const QuantParams* params) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[i] = fake_quant_value(x[i], params[(i / inner) % channels]);
  }
}

// `v < a ? v : a`, as the CPU's min_max: a NaN v compares false and is skipped.
struct MinSkipNaN {
  __device__ __forceinline__ float operator()(float a, float v) const { return v < a ? v : a; }
};
struct MaxSkipNaN {
  __device__ __forceinline__ float operator()(float a, float v) const { return v > a ? v : a; }
};

// One block per channel.
template <int kThreads>
__global__ void min_max_per_channel_kernel(const float* x, size_t outer, size_t channels, size_t inner, float* lo,
                                           float* hi) {
  const size_t c = blockIdx.x;
  float a = INFINITY, b = -INFINITY;
  const size_t n = outer * inner;
  for (size_t i = threadIdx.x; i < n; i += kThreads) {
    const size_t o = i / inner, r = i - o * inner;
    const float v = x[(o * channels + c) * inner + r];
    a = MinSkipNaN()(a, v);
    b = MaxSkipNaN()(b, v);
  }
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage t_lo, t_hi;
  const float mn = Reduce(t_lo).Reduce(a, MinSkipNaN());
  const float mx = Reduce(t_hi).Reduce(b, MaxSkipNaN());
  if (threadIdx.x == 0) {
    lo[c] = mn;
    hi[c] = mx;
  }
}

}  // namespace

void fake_quantize_per_channel(const float* x, float* y, size_t outer, size_t channels, size_t inner,
                               const QuantParams* params, cudaStream_t stream) {
  const size_t n = outer * channels * inner;
  if (n == 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((n + kThreads - 1) / kThreads, size_t{1} << 20));
  fake_quantize_per_channel_kernel<<<blocks, kThreads, 0, stream>>>(x, y, n, channels, inner, params);
  launched("fake_quantize_per_channel_kernel");
}

void min_max_per_channel(const float* x, size_t outer, size_t channels, size_t inner, float* lo, float* hi,
                         cudaStream_t stream) {
  if (channels == 0) return;
  if (channels >= (size_t{1} << 31)) throw std::runtime_error("min_max_per_channel: too many channels");
  constexpr int kThreads = 256;
  min_max_per_channel_kernel<kThreads><<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(x, outer, channels,
                                                                                                 inner, lo, hi);
  launched("min_max_per_channel_kernel");
}

static __global__ void fake_quantize_per_tensor_kernel(const float* x, float* y, size_t n, const QuantParams p) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  y[i] = fake_quant_value(x[i], p);
}

void fake_quantize_per_tensor(const float* x, float* y, size_t n, const QuantParams& p, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  fake_quantize_per_tensor_kernel<<<blocks, kThreads, 0, stream>>>(x, y, n, p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(__FILE__) + ": fake_quantize_per_tensor_kernel launch failed: " +
                             cudaGetErrorString(err));
  }
}

}  // namespace qsweep::cuda

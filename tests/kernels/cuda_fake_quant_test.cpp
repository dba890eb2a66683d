// The CUDA fake-quant kernel against its CPU twin, bit for bit, including rounding ties.
// Skips with a reason where no CUDA device is present (CI, development machines).
#include <cmath>
#include <random>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/cpu/fake_quant.h"
#include "kernels/cuda/fake_quant.cuh"

namespace qsweep {
namespace {

bool have_device(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    *why = err != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(err) : "no CUDA device";
    return false;
  }
  return true;
}

// Runs the CUDA kernel on x and returns its output.
std::vector<float> on_device(const std::vector<float>& x, const QuantParams& p) {
  float* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, x.size() * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  cuda::fake_quantize_per_tensor(d, d, x.size(), p, nullptr);
  std::vector<float> y(x.size());
  EXPECT_EQ(cudaMemcpy(y.data(), d, x.size() * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d);
  return y;
}

TEST(CudaFakeQuant, MatchesCpuTwinBitForBit) {
  std::string why;
  if (!have_device(&why)) GTEST_SKIP() << why;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  for (int bits : {3, 4, 8}) {
    for (Scheme scheme : {Scheme::kAsymmetric, Scheme::kSymmetric}) {
      const QuantParams p = choose_quant_params(-3.0f, 5.0f, bits, scheme);
      std::vector<float> x(1 << 16);
      for (auto& v : x) v = dist(rng);
      // Exact ties and their neighbours.
      for (int q = p.qmin; q < p.qmax; ++q) {
        const float tie = (static_cast<float>(q - p.zero_point) + 0.5f) * p.scale;
        x.push_back(tie);
        x.push_back(std::nextafter(tie, 1e9f));
        x.push_back(std::nextafter(tie, -1e9f));
      }
      std::vector<float> cpu(x.size());
      fake_quantize_per_tensor(x.data(), cpu.data(), x.size(), p);
      const std::vector<float> gpu = on_device(x, p);
      for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(gpu[i], cpu[i]) << "x=" << x[i] << " bits=" << bits;
    }
  }
}

}  // namespace
}  // namespace qsweep

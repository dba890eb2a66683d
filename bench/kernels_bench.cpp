// Throughput of the CPU fake-quant, metric and Gemm kernels (Google Benchmark). The Gemm rows
// time qsweep's batch-independent product next to oneDNN's sgemm, which it replaced, on the
// fully connected layers of ResNet-50 (M=250 images, K=2048, N=1000) and VGG-16's fc6 (M=64,
// K=25088, N=4096), weights as PyTorch stores them (transB).
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include <oneapi/dnnl/dnnl.h>

#include "kernels/cpu/fake_quant.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/metrics.h"

namespace {

std::vector<float> random_values(size_t n) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void BM_FakeQuantizePerTensor(benchmark::State& state) {
  const auto x = random_values(state.range(0));
  std::vector<float> y(x.size());
  const auto p = qsweep::choose_quant_params(-3.0f, 3.0f, 8, qsweep::Scheme::kAsymmetric);
  for (auto _ : state) {
    qsweep::fake_quantize_per_tensor(x.data(), y.data(), x.size(), p);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * x.size() * 8);
}
BENCHMARK(BM_FakeQuantizePerTensor)->Arg(1 << 12)->Arg(1 << 16)->Arg(1 << 20);

void BM_MinMax(benchmark::State& state) {
  const auto x = random_values(state.range(0));
  for (auto _ : state) {
    float lo, hi;
    qsweep::min_max(x.data(), x.size(), &lo, &hi);
    benchmark::DoNotOptimize(lo);
    benchmark::DoNotOptimize(hi);
  }
  state.SetBytesProcessed(state.iterations() * x.size() * 4);
}
BENCHMARK(BM_MinMax)->Arg(1 << 16)->Arg(1 << 20);

void BM_SquaredErrorSum(benchmark::State& state) {
  const auto a = random_values(state.range(0) * 10), b = random_values(state.range(0) * 10);
  for (auto _ : state) benchmark::DoNotOptimize(qsweep::squared_error_sum(a.data(), b.data(), state.range(0), 10));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_SquaredErrorSum)->Arg(250)->Arg(4096);

// Args: M, K, N.
void BM_GemmRows(benchmark::State& state) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const auto a = random_values(M * K), b = random_values(N * K);
  std::vector<float> y(M * N);
  for (auto _ : state) {
    qsweep::gemm_rows(a.data(), b.data(), true, M, N, K, 1.0f, 0.0f, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GemmRows)->Args({250, 2048, 1000})->Args({64, 25088, 4096})->Unit(benchmark::kMillisecond);

void BM_DnnlSgemm(benchmark::State& state) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const auto a = random_values(M * K), b = random_values(N * K);
  std::vector<float> y(M * N);
  for (auto _ : state) {
    dnnl_sgemm('N', 'T', M, N, K, 1.0f, a.data(), K, b.data(), K, 0.0f, y.data(), N);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DnnlSgemm)->Args({250, 2048, 1000})->Args({64, 25088, 4096})->Unit(benchmark::kMillisecond);

}  // namespace

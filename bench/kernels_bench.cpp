// Throughput of the CPU fake-quant and metric kernels (Google Benchmark).
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "kernels/cpu/fake_quant.h"
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

}  // namespace

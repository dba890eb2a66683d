// FLOP accounting the benchmarks share: the multiply-adds of every Conv/Gemm/MatMul node
// for one image, the FLOPs of a one-pass grid (the float forward plus every cell's suffix),
// and this CPU's measured FP32 FMA peak, so a benchmark can say how far its time is from
// what the arithmetic alone needs.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include <omp.h>

#include "runtime/cpu_backend.h"
#include "runtime/data.h"
#include "runtime/executor.h"
#include "runtime/graph.h"

namespace qsweep::bench {

// The shape of every value for one image, from a CPU forward.
inline std::vector<Shape> one_image_shapes(const Graph& g, const Normalization& norm, const Dataset& d) {
  CpuBackend cpu;
  Executor exec(g, cpu);
  auto ws = exec.make_workspace();
  ws.keep_all_values = true;
  Tensor x;
  load_batch(d, norm, 0, 1, x);
  exec.forward(ws, x);
  std::vector<Shape> shapes;
  for (const Tensor& t : ws.values) shapes.push_back(t.shape);
  return shapes;
}

// Kernel taps that land inside the input, summed over the outputs of one spatial dimension.
inline int64_t inside_taps(int64_t in, int64_t out, int64_t pad_begin, int64_t k, int64_t stride, int64_t dil) {
  int64_t taps = 0;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t t = 0; t < k; ++t) {
      const int64_t i = o * stride - pad_begin + t * dil;
      taps += (i >= 0 && i < in) ? 1 : 0;
    }
  }
  return taps;
}

// 2 x multiply-adds per image of every Conv/Gemm/MatMul node. With `inside_only`, a Conv
// counts only the taps that read the input, not its zero padding: the arithmetic no
// implementation can skip.
inline std::vector<double> node_flops(const Graph& g, const std::vector<Shape>& shapes, bool inside_only = false) {
  std::vector<double> f(g.nodes.size(), 0.0);
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const Node& n = g.nodes[k];
    const Shape& ys = shapes[n.output];
    if (n.op == OpType::kConv) {
      const Shape& w = g.values[n.inputs[1]].constant.shape;
      if (!inside_only) {
        f[k] = 2.0 * static_cast<double>(shape_numel(ys)) * w[1] * w[2] * w[3];
        continue;
      }
      const Shape& xs = shapes[n.inputs[0]];
      const NodeAttrs& a = n.attrs;
      const SpatialPlan sp = plan_spatial(a, xs[2], xs[3]);
      const int64_t th = inside_taps(xs[2], sp.out_h, sp.pad_t, a.kernel[0], a.strides[0], a.dilations[0]);
      const int64_t tw = inside_taps(xs[3], sp.out_w, sp.pad_l, a.kernel[1], a.strides[1], a.dilations[1]);
      f[k] = 2.0 * static_cast<double>(ys[0]) * ys[1] * w[1] * static_cast<double>(th) * tw;
    } else if (n.op == OpType::kGemm || n.op == OpType::kMatMul) {
      const Shape& xs = shapes[n.inputs[0]];
      f[k] = 2.0 * static_cast<double>(shape_numel(ys)) * xs.back();
    }
  }
  return f;
}

// FLOPs per image of the one-pass grid: the float forward once, plus, for every layer and
// bit-width, the layer's suffix (the nodes that depend on it, the layer included).
struct GridFlops {
  double grid = 0.0;   // the one-pass grid: the float forward + the suffixes
  double naive = 0.0;  // the naive grid: a full forward per cell, plus the float one
};
inline GridFlops grid_flops(const Graph& g, const std::vector<double>& nf, size_t bit_widths) {
  double forward = 0.0;
  for (double f : nf) forward += f;
  GridFlops r;
  r.grid = forward;
  for (const Layer& L : g.layers) {
    double s = 0.0;
    for (int k : g.suffix_nodes(L.index)) s += nf[k];
    r.grid += s * static_cast<double>(bit_widths);
  }
  r.naive = forward * static_cast<double>(g.layers.size() * bit_widths + 1);
  return r;
}

namespace detail {
// Independent FMA chains: enough to cover the FMA latency on both FMA ports. The loops over
// them are unrolled so that the chains live in registers at any optimization level.
constexpr int kChains = 16;

__attribute__((target("avx512f"))) inline double fma_loop_avx512(int64_t iters) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(1.0f + 1e-7f * c);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  }
  __m512 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
  return static_cast<double>(_mm512_reduce_add_ps(s));
}

__attribute__((target("avx2,fma"))) inline double fma_loop_avx2(int64_t iters) {
  __m256 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(1.0f + 1e-7f * c);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  }
  __m256 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm256_add_ps(s, acc[c]);
  float v[8];
  _mm256_storeu_ps(v, s);
  double t = 0.0;
  for (float x : v) t += x;
  return t;
}
}  // namespace detail

// This CPU's FP32 peak in FLOP/s on `threads` threads at once, measured: each thread runs
// independent FMA chains (AVX-512 where the CPU has it, else AVX2) for about `seconds`; the
// best of three rounds. 0 when the CPU has neither.
inline double measured_fma_peak(int threads, double seconds = 0.3) {
  const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!avx512 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return 0.0;
  const int lanes = avx512 ? 16 : 8;
  auto run = [&](int64_t iters) {
    double sink = 0.0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += avx512 ? detail::fma_loop_avx512(iters) : detail::fma_loop_avx2(iters);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (sink == 42.0) std::abort();  // keeps the loops' results alive
    return s;
  };
  // Size the loop to about `seconds`, then keep the best of three rounds.
  int64_t iters = 1 << 20;
  double s = run(iters);
  iters = std::max<int64_t>(iters, static_cast<int64_t>(iters * seconds / std::max(s, 1e-6)));
  double best = 1e300;
  for (int r = 0; r < 3; ++r) best = std::min(best, run(iters));
  return 2.0 * lanes * detail::kChains * static_cast<double>(iters) * threads / best;
}

}  // namespace qsweep::bench

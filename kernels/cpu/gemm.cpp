#include "kernels/cpu/gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/avx512_common.h"

// This file is compiled with -ffp-contract=off (CMakeLists.txt): a multiply and the add that
// follows are two roundings on every path, never one fused multiply-add, so the AVX-512 path
// gives the portable path's bits.

namespace qsweep {

namespace {

constexpr int64_t kLanes = 16;

// The 16 partial sums added as a tree: j + 8, then + 4, + 2, + 1.
float tree(float* acc) {
  for (int64_t w = kLanes / 2; w > 0; w /= 2) {
    for (int64_t j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0];
}

// sum over k of a[k] * b[k] in the order gemm.h states.
float dot(const float* a, const float* b, int64_t K) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += a[k + j] * b[k + j];
  }
  for (int64_t j = 0; k + j < K; ++j) acc[j] += a[k + j] * b[k + j];
  return tree(acc);
}

// alpha * s + beta * y, with one NaN for every NaN result: which of two NaN operands x86 passes
// on depends on the operand order the compiler chose for each copy of the code.
void finish(float s, float alpha, float beta, float& y) {
  const float v = beta == 0.0f ? alpha * s : alpha * s + beta * y;
  y = v == v ? v : std::numeric_limits<float>::quiet_NaN();
}

// ---------------------------------------------------------------- AVX-512
// The same sums, 16 lanes at a time, for blocks of rows that share each load of B.

#pragma GCC push_options
#pragma GCC target("avx512f")

// Rows r0 .. r0 + R of the transB product: per output, lane j sums k = j, j + 16, ... (a
// masked add for the tail, so lanes past K keep their value: -0 stays -0), then the tree.
template <int R>
void trans_b_rows(const float* A, const float* B, int64_t r0, int64_t N, int64_t K, float alpha, float beta, float* Y) {
  const int64_t full = K / kLanes * kLanes;
  const __mmask16 tail = static_cast<__mmask16>((1u << (K - full)) - 1u);
  for (int64_t c = 0; c < N; ++c) {
    const float* b = B + c * K;
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < full; k += kLanes) {
      const __m512 bv = _mm512_loadu_ps(b + k);
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_loadu_ps(A + (r0 + r) * K + k), bv));
      }
    }
    if (tail != 0) {
      const __m512 bv = _mm512_maskz_loadu_ps(tail, b + full);
      for (int r = 0; r < R; ++r) {
        const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, A + (r0 + r) * K + full), bv);
        acc[r] = _mm512_mask_add_ps(acc[r], tail, acc[r], p);
      }
    }
    for (int r = 0; r < R; ++r) {
      alignas(64) float lanes[kLanes];
      _mm512_store_ps(lanes, acc[r]);
      finish(tree(lanes), alpha, beta, Y[(r0 + r) * N + c]);
    }
  }
}

// Rows r0 .. r0 + R of the plain product: each output a sum over k in increasing order, 16
// outputs per vector.
template <int R>
void plain_rows(const float* A, const float* B, int64_t r0, int64_t N, int64_t K, float alpha, float beta, float* Y) {
  for (int64_t c = 0; c < N; c += kLanes) {
    const int64_t n = std::min(kLanes, N - c);
    const __mmask16 mask = static_cast<__mmask16>(n == kLanes ? 0xFFFFu : (1u << n) - 1u);
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      const __m512 bv = _mm512_maskz_loadu_ps(mask, B + k * N + c);
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_set1_ps(A[(r0 + r) * K + k]), bv));
    }
    for (int r = 0; r < R; ++r) {
      alignas(64) float lanes[kLanes];
      _mm512_store_ps(lanes, acc[r]);
      for (int64_t j = 0; j < n; ++j) finish(lanes[j], alpha, beta, Y[(r0 + r) * N + c + j]);
    }
  }
}

// Rows in blocks of 16, then 4, then 1: each block reads B once (VGG-16's fc6 at 64 images
// streams its 411 MB of weights 4 times instead of 64).
template <int R>
int64_t rows_in_blocks(const float* A, const float* B, bool trans_b, int64_t r, int64_t M, int64_t N, int64_t K,
                       float alpha, float beta, float* Y) {
  for (; r + R <= M; r += R) {
    if (trans_b) {
      trans_b_rows<R>(A, B, r, N, K, alpha, beta, Y);
    } else {
      plain_rows<R>(A, B, r, N, K, alpha, beta, Y);
    }
  }
  return r;
}

void gemm_rows_avx512(const float* A, const float* B, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      float beta, float* Y) {
  int64_t r = rows_in_blocks<16>(A, B, trans_b, 0, M, N, K, alpha, beta, Y);
  r = rows_in_blocks<4>(A, B, trans_b, r, M, N, K, alpha, beta, Y);
  rows_in_blocks<1>(A, B, trans_b, r, M, N, K, alpha, beta, Y);
}

#pragma GCC pop_options

}  // namespace

void gemm_rows_portable(const float* A, const float* B, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                        float beta, float* Y) {
  if (trans_b) {
    for (int64_t r = 0; r < M; ++r) {
      const float* a = A + r * K;
      float* y = Y + r * N;
      for (int64_t c = 0; c < N; ++c) finish(dot(a, B + c * K, K), alpha, beta, y[c]);
    }
    return;
  }
  std::vector<float> acc(static_cast<size_t>(N));
  for (int64_t r = 0; r < M; ++r) {
    const float* a = A + r * K;
    float* y = Y + r * N;
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const float ak = a[k];
      const float* b = B + k * N;
      for (int64_t c = 0; c < N; ++c) acc[c] += ak * b[c];
    }
    for (int64_t c = 0; c < N; ++c) finish(acc[c], alpha, beta, y[c]);
  }
}

void gemm_rows(const float* A, const float* B, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, float beta,
               float* Y) {
  if (avx512::cpu_supported()) return gemm_rows_avx512(A, B, trans_b, M, N, K, alpha, beta, Y);
  gemm_rows_portable(A, B, trans_b, M, N, K, alpha, beta, Y);
}

}  // namespace qsweep

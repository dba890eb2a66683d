#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <vector>

namespace qsweep {

namespace {

constexpr int64_t kLanes = 16;

// sum over k of a[k] * b[k] in the order gemm.h states.
float dot(const float* a, const float* b, int64_t K) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += a[k + j] * b[k + j];
  }
  for (int64_t j = 0; k + j < K; ++j) acc[j] += a[k + j] * b[k + j];
  for (int64_t w = kLanes / 2; w > 0; w /= 2) {
    for (int64_t j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0];
}

void finish(float s, float alpha, float beta, float& y) { y = beta == 0.0f ? alpha * s : alpha * s + beta * y; }

}  // namespace

void gemm_rows(const float* A, const float* B, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, float beta,
               float* Y) {
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

}  // namespace qsweep

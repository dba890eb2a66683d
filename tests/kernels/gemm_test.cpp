// The CPU's Gemm/MatMul product (kernels/cpu/gemm.h) against a double-precision sum, its
// alpha/beta semantics worked by hand, and what it exists for: a row's outputs are the same
// bits whatever rows it is computed with.
#include "kernels/cpu/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace qsweep {
namespace {

// A float32 dot product of K terms differs from the exact one by about sqrt(K) roundings.
constexpr double kRelTol = 1e-5;

std::vector<float> random_values(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// op(B)[k][c] of either layout.
float b_at(const std::vector<float>& B, bool trans_b, int64_t N, int64_t K, int64_t k, int64_t c) {
  return trans_b ? B[c * K + k] : B[k * N + c];
}

TEST(Gemm, MatchesADoubleSumOnEveryLayoutAndTail) {
  std::mt19937 rng(3);
  for (const bool trans_b : {true, false}) {
    for (const int64_t K : {1, 7, 16, 17, 64, 300}) {
      const int64_t M = 5, N = 11;
      const auto A = random_values(rng, M * K), B = random_values(rng, K * N), C = random_values(rng, M * N);
      for (const float beta : {0.0f, 0.5f}) {
        std::vector<float> Y = C;
        gemm_rows(A.data(), B.data(), trans_b, M, N, K, 1.5f, beta, Y.data());
        for (int64_t r = 0; r < M; ++r) {
          for (int64_t c = 0; c < N; ++c) {
            double s = 0.0, mag = 0.0;
            for (int64_t k = 0; k < K; ++k) {
              const double p = static_cast<double>(A[r * K + k]) * b_at(B, trans_b, N, K, k, c);
              s += p;
              mag += std::abs(p);
            }
            const double want = 1.5 * s + beta * static_cast<double>(C[r * N + c]);
            EXPECT_NEAR(Y[r * N + c], want, kRelTol * (1.5 * mag + std::abs(beta * C[r * N + c])) + 1e-7)
                << "trans_b " << trans_b << " K " << K << " beta " << beta << " at " << r << "," << c;
          }
        }
      }
    }
  }
}

TEST(Gemm, HandWorkedAlphaBeta) {
  // A = [1 2; 3 4], B (K x N) = [1 0 2; 0 1 3]: A B = [1 2 8; 3 4 18].
  const std::vector<float> A = {1, 2, 3, 4}, B = {1, 0, 2, 0, 1, 3};
  std::vector<float> Y = {10, 10, 10, 10, 10, NAN};
  gemm_rows(A.data(), B.data(), false, 2, 3, 2, 2.0f, 0.5f, Y.data());
  EXPECT_EQ(Y[0], 7.0f);   // 2 * 1 + 0.5 * 10
  EXPECT_EQ(Y[2], 21.0f);  // 2 * 8 + 5
  EXPECT_EQ(Y[4], 13.0f);  // 2 * 4 + 5
  EXPECT_TRUE(std::isnan(Y[5]));
  // beta = 0: Y's former contents, NaN included, are not read.
  std::vector<float> Z(6, NAN);
  gemm_rows(A.data(), B.data(), false, 2, 3, 2, 1.0f, 0.0f, Z.data());
  EXPECT_EQ(Z, (std::vector<float>{1, 2, 8, 3, 4, 18}));
  // The transposed layout: Bt (N x K).
  const std::vector<float> Bt = {1, 0, 0, 1, 2, 3};
  gemm_rows(A.data(), Bt.data(), true, 2, 3, 2, 1.0f, 0.0f, Z.data());
  EXPECT_EQ(Z, (std::vector<float>{1, 2, 8, 3, 4, 18}));
}

TEST(Gemm, ARowIsTheSameBitsInAnyBatch) {
  std::mt19937 rng(5);
  for (const bool trans_b : {true, false}) {
    const int64_t M = 9, N = 10, K = 515;
    const auto A = random_values(rng, M * K), B = random_values(rng, K * N);
    std::vector<float> all(M * N);
    gemm_rows(A.data(), B.data(), trans_b, M, N, K, 1.0f, 0.0f, all.data());
    for (int64_t r = 0; r < M; ++r) {
      // The row alone, from a copy at another address (alignment must not matter either).
      std::vector<float> a(A.begin() + r * K, A.begin() + (r + 1) * K), one(N);
      gemm_rows(a.data(), B.data(), trans_b, 1, N, K, 1.0f, 0.0f, one.data());
      EXPECT_EQ(std::memcmp(one.data(), all.data() + r * N, N * sizeof(float)), 0)
          << "trans_b " << trans_b << " row " << r;
    }
  }
}

// The AVX-512 path (blocks of 4 rows, masked tails) gives the portable path's bits,
// infinities and NaN included.
TEST(Gemm, Avx512EqualsThePortablePathBitForBit) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "this CPU has no AVX-512: gemm_rows is the portable path";
  std::mt19937 rng(17);
  for (const bool trans_b : {true, false}) {
    for (const int64_t K : {1, 15, 16, 33, 200}) {
      for (const int64_t M : {1, 3, 4, 9, 21}) {  // 21: a block of 16, one of 4, one row
        const int64_t N = trans_b ? 7 : 37;       // 37: two full vectors and a masked one
        auto A = random_values(rng, M * K), B = random_values(rng, K * N);
        A[0] = -0.0f;
        if (K > 3) A[3] = INFINITY;
        if (M * K > 5) A[5] = NAN;
        for (const float beta : {0.0f, 0.25f}) {
          std::vector<float> y(M * N, 0.5f), z(M * N, 0.5f);
          gemm_rows(A.data(), B.data(), trans_b, M, N, K, 1.25f, beta, y.data());
          gemm_rows_portable(A.data(), B.data(), trans_b, M, N, K, 1.25f, beta, z.data());
          EXPECT_EQ(std::memcmp(y.data(), z.data(), y.size() * sizeof(float)), 0)
              << "trans_b " << trans_b << " M " << M << " K " << K << " beta " << beta;
        }
      }
    }
  }  // Two NaNs of different sign meet (inf * 0 gives -NaN, NAN is +NaN): one NaN, whichever
  // path and whichever row block computes it.
  std::vector<float> a(21 * 2), b = {1.0f, 0.0f};
  for (int64_t r = 0; r < 21; ++r) a[r * 2] = NAN, a[r * 2 + 1] = INFINITY;
  std::vector<float> y(21), z(21);
  gemm_rows(a.data(), b.data(), true, 21, 1, 2, 1.0f, 0.0f, y.data());
  gemm_rows_portable(a.data(), b.data(), true, 21, 1, 2, 1.0f, 0.0f, z.data());
  EXPECT_EQ(std::memcmp(y.data(), z.data(), y.size() * sizeof(float)), 0);
  for (int64_t r = 1; r < 21; ++r) EXPECT_EQ(std::memcmp(&y[r], &y[0], sizeof(float)), 0) << "row " << r;
}

}  // namespace
}  // namespace qsweep

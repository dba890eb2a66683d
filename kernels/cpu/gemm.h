// Row-wise matrix products for Gemm and MatMul nodes on the CPU.
//
// Each output row is computed on its own, with its sums over k in one fixed order that
// depends on K only, so an image's outputs do not depend on the batch it is in (oneDNN's
// sgemm picks its blocking by M: the same image's logits moved by an ulp between batches of
// 1 and 2, and with them noise sums and, on ties, top-1).
#pragma once

#include <cstdint>

namespace qsweep {

// Y (M x N, row-major) = alpha * A (M x K) * op(B) + beta * Y, where op(B) is B (K x N) or,
// with trans_b, the transpose of B (N x K). beta = 0 ignores Y's contents (NaN included).
//
// The order of the sums, per output element: with trans_b, 16 partial sums, partial j taking
// k = j, j + 16, j + 32, ... in increasing k, then added as a tree (j + 8 into j, then + 4,
// + 2, + 1); without, one sum over k in increasing order.
//
// AVX-512 where the CPU has it (blocks of rows share each load of B), else
// gemm_rows_portable: the same bits either way.
void gemm_rows(const float* A, const float* B, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, float beta,
               float* Y);
void gemm_rows_portable(const float* A, const float* B, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                        float beta, float* Y);

}  // namespace qsweep

// The CUDA twins of kernels/cpu: element-wise ops, data movement, pooling, the metric
// reductions and the activation range reduction. (Weight ranges and weight fake-quant stay
// on the host, once per layer and bit-width, where every clipping method lives.) Every
// launcher is asynchronous on `stream` unless it says otherwise, takes device pointers, and
// throws std::runtime_error on a launch failure. Semantics follow the CPU functions named
// in each comment exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include <cuda_runtime.h>

#include "kernels/cpu/eltwise.h"
#include "kernels/cpu/fake_quant.h"

namespace qsweep::cuda {

#ifdef __CUDACC__
// One value through an activation, in device code, with the expressions of the CPU twin
// (kernels/cpu/eltwise.cpp) written out: std::max(x, lo) is (x < lo ? lo : x) and
// std::min(x, hi) is (hi < x ? hi : x). fmaxf/fminf differ from them on signed zeros
// (Clip(-0, 0, 6): the CPU keeps -0) and on NaN (the CPU's Clip keeps it). Every CUDA kernel
// that applies an activation calls this.
__device__ __forceinline__ float activation_value(Activation act, float alpha, float beta, float x) {
  switch (act) {
    case Activation::kRelu:
      return x > 0.0f ? x : 0.0f;
    case Activation::kClip: {
      const float t = x < alpha ? alpha : x;
      return beta < t ? beta : t;
    }
    case Activation::kLeakyRelu:
      return x >= 0.0f ? x : __fmul_rn(alpha, x);
    case Activation::kSigmoid:
      return 1.0f / (1.0f + expf(-x));
    case Activation::kHardSigmoid: {
      const float v = __fadd_rn(__fmul_rn(alpha, x), beta);
      const float m = v < 1.0f ? v : 1.0f;
      return 0.0f < m ? m : 0.0f;
    }
    case Activation::kHardSwish: {
      const float v = __fadd_rn(__fmul_rn(x, 1.0f / 6.0f), 0.5f);
      const float m = v < 1.0f ? v : 1.0f;
      return __fmul_rn(x, 0.0f < m ? m : 0.0f);
    }
  }
  return x;
}
#endif

// Throws std::runtime_error naming `what` when err is not cudaSuccess.
void check(cudaError_t err, const char* what);

// activation() of kernels/cpu/eltwise.h.
void activation(Activation act, float alpha, float beta, const float* x, float* y, size_t n, cudaStream_t stream);

// broadcast_binary() (rank <= 8).
void broadcast_binary(BinaryOp op, const float* a, std::span<const int64_t> a_shape, const float* b,
                      std::span<const int64_t> b_shape, float* out, std::span<const int64_t> out_shape,
                      cudaStream_t stream);

// add_clamp() of kernels/cpu/eltwise.h: y = relu(a + b) (relu) or min(max(a + b, lo), hi),
// bit for bit Add then Relu/Clip, in one pass.
void add_clamp(const float* a, const float* b, float* y, size_t n, float lo, float hi, bool relu, cudaStream_t stream);

// channel_affine(): scale and shift are device arrays of c values.
void channel_affine(const float* x, float* y, size_t n, size_t c, size_t inner, const float* scale,
                    const float* shift, cudaStream_t stream);

// softmax() over the middle dimension of (outer, k, inner).
void softmax(const float* x, float* y, size_t outer, size_t k, size_t inner, cudaStream_t stream);

// pad() (rank <= 8).
void pad(const float* x, std::span<const int64_t> in_shape, std::span<const int64_t> pads, PadMode mode,
         float value, float* y, std::span<const int64_t> out_shape, cudaStream_t stream);

// 2-D max or average pooling of NCHW x (N*C planes of H x W) into OH x OW. pad_t/pad_l are
// the leading pads. Average pooling divides by the taps inside [-decl_t, H + decl_b) x
// [-decl_l, W + decl_r) when include_pad (the declared pads, as PyTorch and ONNX do when
// ceil_mode widens the last window), else by the taps inside the input.
struct Pool2d {
  bool max = true;
  int64_t planes = 0, H = 0, W = 0, OH = 0, OW = 0;
  int64_t KH = 1, KW = 1, SH = 1, SW = 1, pad_t = 0, pad_l = 0;
  bool include_pad = false;
  int64_t decl_t = 0, decl_l = 0, decl_b = 0, decl_r = 0;
};
void pool2d(const Pool2d& p, const float* x, float* y, cudaStream_t stream);

// Mean over each of `planes` rows of hw values, accumulated in double (as the CPU does).
void global_avg_pool(const float* x, float* y, size_t planes, size_t hw, cudaStream_t stream);

// Per image of a batch of logits (n rows of k): the squared error ||y - y_hat||^2 in
// double (y_hat = nullptr: ||y||^2) and the outcome bits of y_hat (or y) against the label,
// as row_outcome() of kernels/cpu/metrics.h (top-1: argmax, lowest index on ties, NaN never
// wins; top-5). labels are device int32.
void row_metrics(const float* y, const float* y_hat, const int32_t* labels, size_t n, size_t k, double* sq,
                 uint8_t* correct, cudaStream_t stream);

// Device-side totals of row_metrics: out_sum[0] = sum of sq[0..n), out_count[0] = number of
// outcomes with the top-1 bit, with CUB (deterministic for a given n). `temp` is scratch of at least
// reduce_temp_bytes(n) bytes.
size_t reduce_temp_bytes(size_t n);
void reduce_rows(const double* sq, const uint8_t* correct, size_t n, double* out_sum, int64_t* out_count, void* temp,
                 size_t temp_bytes, cudaStream_t stream);

// Per channel c of two device arrays laid out (outer, channels, inner): sums[c] = the sum over
// (o, i) of double(a) - double(b), the sums written to `sums` (device, `channels` doubles).
// One block per channel, reduced in a fixed order: deterministic for given sizes. Empirical
// bias correction's statistic (experiments/quant_plan.cpp sums the same differences).
void channel_difference_sums(const float* a, const float* b, size_t outer, size_t channels, size_t inner,
                             double* sums, cudaStream_t stream);

// Min and max of n device values, NaNs ignored (min_max() of kernels/cpu/fake_quant.h);
// synchronous (Thrust), returns to the host.
void min_max(const float* x, size_t n, float* lo, float* hi, cudaStream_t stream);

// Whether any of n device values is NaN (any_nan() of kernels/cpu/fake_quant.h); synchronous.
bool any_nan(const float* x, size_t n, cudaStream_t stream);

// out (rows, cols) = transpose of in (cols, rows).
void transpose(const float* in, float* out, size_t rows, size_t cols, cudaStream_t stream);

}  // namespace qsweep::cuda

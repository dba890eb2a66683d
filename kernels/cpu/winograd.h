// Winograd F(4x4, 3x3) convolution on the CPU (float32, NHWC), for run.conv_transforms.
//
// A 3x3, stride-1, undilated, ungrouped convolution computed as Lavin & Gray (2016): every
// 4x4 output tile is A^T [(G g G^T) . (B^T d B)] A over a 6x6 input tile. Per output it does
// 36/16 = 2.25 multiplies per tap row instead of 9 (4x fewer multiply-adds), at the price of
// a different rounding from a direct sum: the result is float32 arithmetic throughout, but
// not the same float32 numbers. Against a double-precision sum its error stays below 3e-6 of
// the output's sum of |x * w| (tests/kernels/winograd_test.cpp); a direct float32 sum's stays
// near 1e-7.
//
// The input and weight transforms, the 36 channel GEMMs and the output transform run on one
// thread over blocks of tiles small enough to stay in the core's L2 cache. AVX-512 only;
// winograd_available() says whether this CPU and this shape can use it.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/weight_cache.h"

namespace qsweep {

struct WinogradConv {
  int64_t N = 0, H = 0, W = 0, C = 0;  // input, NHWC
  int64_t K = 0;                       // output channels
  int64_t pad_t = 0, pad_l = 0;        // leading padding (the trailing one only sets out_h/out_w)
  int64_t out_h = 0, out_w = 0;
  // Fused epilogue, as DirectConv's: y = min(max((conv + bias) + residual, lo), hi);
  // residual (NHWC like y) may be null.
  const float* residual = nullptr;
  bool clamp = false;
  float lo = 0.0f, hi = 0.0f;
};

// Whether this CPU has AVX-512 (without it run.conv_transforms changes nothing).
bool winograd_cpu_supported();

// Whether this CPU has AVX-512 and the shape is one the kernel takes: C and K multiples of
// 16 with C + K >= 64 (below that the transforms cost more than the multiplies they save),
// leading pads below 3, an output of at least one pixel.
bool winograd_available(const WinogradConv& p);

// Per-thread scratch (tile blocks, transformed weights); reused across calls.
struct WinogradScratch {
  WeightCache weights;  // G w G^T per weight tensor
  std::vector<float> v, m, zeros;
};

// y (N, out_h, out_w, K; NHWC) = conv(x (N, H, W, C; NHWC), w (K, C, 3, 3; OIHW)) + bias (K),
// then the clamp if asked for. bias may be null (zero).
void winograd_conv_f43(const WinogradConv& p, const float* x, const float* w, const float* bias, float* y,
                       WinogradScratch& s);

}  // namespace qsweep

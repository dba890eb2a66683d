// A direct convolution on the CPU (float32, NHWC, ungrouped) that sums only the kernel taps
// that fall inside the input.
//
// Output pixels are grouped by which taps of theirs fall inside the input (every interior
// pixel alike; the borders by the side they touch), and each group is one dense GEMM over its
// taps: rows = output pixels of every image, columns = output channels, reduction = taps x
// input channels. A register-blocked AVX-512 kernel runs it; the sum over (tap, input
// channel) goes in the same order for every pixel, so an image's result does not depend on
// its batch. That order (taps, then channels, one accumulator per output) is also the one
// oneDNN's brgconv kernels use here: on the shipped models the results are bit for bit
// oneDNN's. tests/kernels/direct_conv_test.cpp bounds them against a double-precision sum.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "kernels/cpu/weight_cache.h"

namespace qsweep {

struct DirectConv {
  int64_t N = 0, H = 0, W = 0, C = 0;  // input, NHWC
  int64_t K = 0;                       // output channels
  int64_t kh = 0, kw = 0;
  int64_t stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  int64_t pad_t = 0, pad_l = 0;  // leading padding (the trailing one only sets out_h/out_w)
  int64_t out_h = 0, out_w = 0;
  // Fused epilogue: y = min(max((conv + bias) + residual, lo), hi), each step rounded as the
  // separate ops would: residual (same shape and layout as y, may be null) is a residual join's
  // other operand, the clamp a Relu (lo = 0, hi = inf) or Clip.
  const float* residual = nullptr;
  bool clamp = false;
  float lo = 0.0f, hi = 0.0f;
};

// Whether this CPU has AVX-512 and the shape is one the kernel takes (K a multiple of 16).
bool direct_conv_available(const DirectConv& p);

struct DirectConvScratch {
  WeightCache weights;        // each weight tensor as [kh][kw][C][K] (direct_conv)
  WeightCache strip_weights;  // and as [kh][C][kw][K] (strip_conv, kernels/cpu/strip_conv.h)
  // Output pixels (oy, ox) grouped by their box of inside taps {ky0, ky1, kx0, kx1}, per
  // geometry (input size, kernel, strides, dilations, leading pads, output size): the same
  // few shapes come back on every call of a grid.
  using PixelGroups = std::vector<std::pair<std::array<int64_t, 4>, std::vector<std::pair<int64_t, int64_t>>>>;
  std::map<std::array<int64_t, 12>, PixelGroups> groups;
};

// y (N, out_h, out_w, K; NHWC) = conv(x (N, H, W, C; NHWC), w (K, C, kh, kw; OIHW)) + bias,
// then the clamp if asked for. bias may be null (zero).
void direct_conv(const DirectConv& p, const float* x, const float* w, const float* bias, float* y,
                 DirectConvScratch& s);

}  // namespace qsweep

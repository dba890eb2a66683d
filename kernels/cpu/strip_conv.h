// A direct convolution for 16-channel inputs that reuses each input value across the kernel
// columns (float32, NHWC, ungrouped, stride 1 or 2 and no dilation along the width, kernel
// width up to 3; part of run.conv_transforms on the CPU).
//
// With 16 input channels and 16 or 32 output channels a tap-by-tap GEMM (kernels/cpu/
// direct_conv.h, oneDNN's brgconv) has one broadcast load per multiply-add, and the CPU's
// load ports, not its FMA units, set the pace. Here a strip of output pixels along a row
// is computed at once: for each kernel row and input channel, every input pixel under the
// strip is broadcast once and multiplied into each output of the strip it reaches (up to 3),
// so a load feeds up to 3 (6 with 32 output channels) multiply-adds; with stride 2, 1.5 on
// average (3).
//
// Each output is summed over (kernel row, input channel, kernel column) in that order: a
// direct sum, but not in the (kernel row, kernel column, channel) order of oneDNN and
// direct_conv, so results differ from theirs in the last bits. The order depends only on the
// pixel, not on its batch or strip. tests/kernels/strip_conv_test.cpp bounds the results
// against a double-precision sum.
#pragma once

#include "kernels/cpu/direct_conv.h"

namespace qsweep {

// Whether this CPU has AVX-512 and the shape is one the kernel takes: C = 16, K = 16 or 32,
// kernel width 1..3 with stride 1 or 2 and dilation 1 along the width.
bool strip_conv_available(const DirectConv& p);

// As direct_conv (same parameters, same scratch type; the weights are kept as
// [kh][C][kw][K]).
void strip_conv(const DirectConv& p, const float* x, const float* w, const float* bias, float* y,
                DirectConvScratch& s);

}  // namespace qsweep

// The fused fake-quant convolution (method.md, "Quantizing one layer j", steps 1-4 in one
// kernel): the layer's input is fake-quantized as it is loaded, the weights arrive already
// fake-quantized (once per layer, bit-width and method), and the epilogue adds the bias,
// applies the fused activation and fake-quantizes the output.
//
// Its CPU twin is the CPU backend's path: fake_quantize(x) -> Conv (oneDNN) -> activation
// -> fake_quantize(y) (tests/kernels/cuda_ops_test.cpp compares the two).
//
// Layouts: x (N, C, H, W), w (O, C/G, KH, KW), y (N, O, OH, OW), all NCHW float32. A Gemm
// y = alpha * x @ w^T + bias is the same kernel with H = W = KH = KW = 1 and w (O, K).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/cpu/eltwise.h"
#include "kernels/cpu/fake_quant.h"

namespace qsweep::cuda {

struct FqConv {
  const float* x = nullptr;
  const float* w = nullptr;
  const float* bias = nullptr;  // O values, or nullptr
  float* y = nullptr;
  int64_t N = 0, C = 0, H = 0, W = 0, O = 0, KH = 1, KW = 1, OH = 0, OW = 0;
  int64_t stride_h = 1, stride_w = 1, pad_t = 0, pad_l = 0, dil_h = 1, dil_w = 1, groups = 1;
  float alpha = 1.0f;  // scales the product before the bias (Gemm's alpha)
  bool quantize_input = false;
  QuantParams input;
  bool has_activation = false;
  Activation act = Activation::kRelu;
  float act_alpha = 0.0f, act_beta = 0.0f;
  bool quantize_output = false;
  QuantParams output;
};

// Launches the fused kernel on `stream`: a register-tiled implicit GEMM for dense and
// grouped convolutions and Gemm, a direct kernel for depthwise ones (C/G = O/G = 1).
void fq_conv2d(const FqConv& p, cudaStream_t stream);

// Implementation variants of the implicit-GEMM kernel, kept side by side so a GPU run can
// measure them (bench/gpu_bench.cpp) and the tests check every one. Variants 0-10 compute
// the same sums in the same order (bit-identical results); 11-13 sum in another order (see
// below):
//   0  the first one, measured on an H200: each thread's pixel columns strided across the
//      tile, read from shared memory one float at a time;
//   1  each thread's pixel columns in groups of 4 adjacent ones, read as float4 (a quarter
//      of the shared-memory load instructions of the inner loop);
//   2  the next step's input values fake-quantized just before they go to shared memory,
//      not as they arrive, so the global loads stay in flight during the multiplications.
//      The fastest of 0-3 in three H100 runs (bench/RESULTS.md): ResNet18's conv shapes
//      1.62-1.77x cuDNN's time (geometric mean), variant 0 1.75-1.92x;
//   3  both 1 and 2;
//   4  the tiles of 0 and 2 copied global -> shared by cp.async in a 3-stage pipeline (no
//      staging registers; each thread fake-quantizes its copied input values in shared
//      memory once they land), so two steps' loads are in flight during the
//      multiplications. On an H200 (bench/RESULTS.md, 2026-11-27) as fast as or faster than
//      variant 2 on every one of the 19 shapes timed: ResNet18's 1.61-1.64x cuDNN's time
//      (geometric mean; variant 2 1.69-1.73x), the shipped model's 0.59-0.69x;
//   5  4 with 4 stages;
//   6  4 with 32-deep steps (half the barriers; 100 KB of shared memory at the 128x128 tile);
//   7  4 with the register budget of the 64- and 32-row tiles cut for three blocks per SM
//      (79 registers, occupancy 37.5% instead of 25%; the 128-row tile as in 4). On an H200
//      ResNet18's 64-channel shapes took 1.11x and 1.89x cuDNN's time (variant 4 1.32x, 2.39x);
//   8  4 with the pixel columns read as float4, as in 1. On an H200 faster than 4 on
//      ResNet18's 3x3 shapes of 128+ output channels (e.g. 1.19x cuDNN's time, 4 1.35x),
//      slower on its 1x1 ones and on the shipped model's 16-channel shapes;
//   9  7's small tiles, and 8's 128-row tile for kernels larger than 1x1 (4's for 1x1
//      ones), each the faster on those shapes;
//   10 9 with the 64x128 tile at three blocks per SM for 1x1 kernels of 128+
//      output channels and at most 256 input channels per group (ResNet18's 1x1 stride-2
//      downsamples took 1.0-2.3x cuDNN's time with 9, 0.73-1.25x with 10). On an H200
//      (bench/RESULTS.md, 2026-11-27, two runs) ResNet18's 11 conv shapes at 1.24x / 1.28x
//      cuDNN's time (geometric mean; 9: 1.42x / 1.53x), qsweep_resnet's shapes unchanged.
//      The shipped MobileNetV2's two 1x1 32 -> 128 layers also take the new tile (not timed).
//      Measured beside it and removed: the 32x128 tile at three blocks per SM (1.31x) and a
//      64x64 tile at four (1.25x: faster on the 64-channel shape only), and an earlier
//      variant 10 with 128-thread blocks and 8x16 or 8x8 accumulators per thread (2.08x).
//   11 10 with the reduction in tap-major order, k = (kh, kw, c), for kernels larger than 1x1
//      whose channels per group are a multiple of 16 (ResNet18's 3x3 layers): each 16-deep
//      step reads 16 channels of one tap, so a thread tests its pixel's bounds once per step
//      and needs no k-table, and the weights, transposed once per call to [k][o], arrive in
//      16-byte copies. Written after the profile of variant 10, whose 3x3 shapes of 56x56 and
//      28x28 inputs took 1.63-1.85x cuDNN's time with long_scoreboard stalls (the k-table
//      loads each element's address waits on). The input is fake-quantized in 6
//      instructions instead of about 10 (the same values);
//   12 11 with 32-deep steps where the channels per group are a multiple of 32;
//   13 the default: 11 with float4 B fragments in the 64- and 32-row tiles too. On an H200
//      (bench/RESULTS.md, 2026-11-27 18:44 session) every one of ResNet18's 11 conv shapes
//      within 1.36x of cuDNN's conv + bias + ReLU (geometric mean 0.90x; variant 10 1.32x,
//      worst 1.99x; 11 0.92x, 12 0.97x), its 3x3 shapes at 0.45-1.14x.
// 11-13 sum in another order than 0-10, so their results differ from variant 0's by
// rounding (fq_conv_variant_keeps_order() is false for them).
// Variants 4-13 run only when the input quantizer maps +0 to +0 bit for bit (every quantizer
// from choose_quant_params() does); otherwise they fall back to variant 2.
// The process-wide choice starts at $QSWEEP_FQCONV_VARIANT when set, else 13.
constexpr int kFqConvVariants = 14;
void set_fq_conv_variant(int variant);  // throws std::invalid_argument outside [0, kFqConvVariants)
int fq_conv_variant();
// Whether `variant` sums every output in variant 0's order (bit-identical results).
constexpr bool fq_conv_variant_keeps_order(int variant) { return variant <= 10; }

// Variant 13's tap-major kernel alone, whatever variant is chosen: the CUDA backend's direct
// FP32 convolution for the float network (quantize_input and quantize_output false, bias and
// activation fused). Runs `p` and returns true when the kernel applies (a kernel larger than
// 1x1, a multiple of 16 input channels per group, an input quantizer, if any, that maps +0 to
// +0, index products below 2^31); returns false, launching nothing, otherwise.
bool fq_conv2d_direct(const FqConv& p, cudaStream_t stream);
bool tap_major_applies(const FqConv& p);

}  // namespace qsweep::cuda

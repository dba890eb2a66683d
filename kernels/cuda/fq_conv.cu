#include "kernels/cuda/fq_conv.cuh"

#include "kernels/cuda/fake_quant.cuh"
#include "kernels/cuda/ops.cuh"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <charconv>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

namespace qsweep::cuda {

namespace {

__device__ __forceinline__ float epilogue(const FqConv& p, float acc, int64_t oc) {
  float v = p.alpha == 1.0f ? acc : __fmul_rn(acc, p.alpha);
  if (p.bias) v = __fadd_rn(v, p.bias[oc]);
  if (p.has_activation) v = activation_value(p.act, p.act_alpha, p.act_beta, v);
  if (p.quantize_output) v = fake_quant_value(v, p.output);
  return v;
}

// The reduction index k = (c, kh, kw) of a group decoded once per convolution shape: the
// offset of tap k from an output pixel's window origin in one image's input, and the tap's
// row/column offsets for the bounds check. One 16-byte load replaces two integer divisions
// per loaded element.
__global__ void k_table_kernel(int4* tab, int K, int KHW, int KW, int HW, int W, int dil_h, int dil_w) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  const int c = k / KHW, r = k - c * KHW;
  const int kh = r / KW, kw = r - kh * KW;
  tab[k] = make_int4(c * HW + kh * dil_h * W + kw * dil_w, kh * dil_h, kw * dil_w, 0);
}

// Tile column of a thread's j-th accumulator column: strided by kCols (kVecB false), or in
// groups of 4 adjacent columns strided by 4 * kCols (kVecB true).
template <bool kVecB, int kCols>
__device__ __forceinline__ int col_of(int tx, int j) {
  if constexpr (kVecB) {
    return (j / 4) * (4 * kCols) + tx * 4 + (j % 4);
  } else {
    return tx + j * kCols;
  }
}

template <int TM, int TP>
__device__ __forceinline__ void zero_tile(float (&acc)[TM][TP]) {
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int j = 0; j < TP; ++j) acc[i][j] = 0.0f;
  }
}

// One BK-deep step of a thread's TM x TP accumulators from a shared-memory A tile
// ([BK][BM + 4], output channels along rows) and B tile ([BK][BP], pixels along rows).
template <int BM, int BP, int BK, int TM, int TP, bool kVecB>
__device__ __forceinline__ void tile_step(const float* __restrict__ As, const float* __restrict__ Bs, int tx, int ty,
                                          float (&acc)[TM][TP]) {
  constexpr int kCols = BP / TP;
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    float a[TM], b[TP];
#pragma unroll
    for (int i = 0; i < TM; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(&As[kk * (BM + 4) + ty * TM + i]);
      a[i] = v.x, a[i + 1] = v.y, a[i + 2] = v.z, a[i + 3] = v.w;
    }
    if constexpr (kVecB) {
#pragma unroll
      for (int j = 0; j < TP; j += 4) {
        const float4 v = *reinterpret_cast<const float4*>(&Bs[kk * BP + col_of<true, kCols>(tx, j)]);
        b[j] = v.x, b[j + 1] = v.y, b[j + 2] = v.z, b[j + 3] = v.w;
      }
    } else {
#pragma unroll
      for (int j = 0; j < TP; ++j) b[j] = Bs[kk * BP + col_of<false, kCols>(tx, j)];
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TP; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }
}

// The epilogue of a thread's accumulators: bias, activation, output fake-quant, stores.
template <int BP, int TM, int TP, bool kVecB>
__device__ __forceinline__ void store_tile(const FqConv& p, const float (&acc)[TM][TP], int tx, int ty, int m0, int p0,
                                           int P, int OHW, int Og, int g) {
  constexpr int kCols = BP / TP;
#pragma unroll
  for (int j = 0; j < TP; ++j) {
    const int pp = p0 + col_of<kVecB, kCols>(tx, j);
    if (pp >= P) continue;
    const int n = pp / OHW, r = pp - n * OHW;
    float* yn = p.y + static_cast<int64_t>(n) * p.O * OHW + r;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int m = m0 + ty * TM + i;
      if (m >= Og) continue;
      const int oc = g * Og + m;
      yn[static_cast<int64_t>(oc) * OHW] = epilogue(p, acc[i][j], oc);
    }
  }
}

// What both implicit-GEMM kernels decode once per thread: the group's sizes, the block's
// tile origin, and the pixel column this thread loads B elements for (rows b_row0,
// b_row0 + threads / BP, ...), with its window origin and base pointers. 32-bit index math
// (64-bit division is slow on GPUs): one image's C*H*W, the weights' O*K and N*OH*OW stay
// below 2^31 (fq_conv2d checks).
struct TileSetup {
  int Cg, Og, K, H, W, HW, OHW, P, g, m0, p0, b_col, b_row0, ih0, iw0;
  bool col_ok;
  const float* xbase;
  const float* wbase;
};

template <int BM, int BP>
__device__ __forceinline__ TileSetup tile_setup(const FqConv& p, int tid) {
  TileSetup t;
  t.Cg = static_cast<int>(p.C / p.groups), t.Og = static_cast<int>(p.O / p.groups);
  t.K = t.Cg * static_cast<int>(p.KH * p.KW);
  t.H = static_cast<int>(p.H), t.W = static_cast<int>(p.W), t.HW = t.H * t.W;
  const int OW = static_cast<int>(p.OW);
  t.OHW = static_cast<int>(p.OH * p.OW), t.P = static_cast<int>(p.N) * t.OHW;
  t.g = blockIdx.z;
  t.m0 = blockIdx.y * BM;
  t.p0 = blockIdx.x * BP;
  t.b_col = tid % BP;
  t.b_row0 = tid / BP;
  const int pc = t.p0 + t.b_col;
  t.col_ok = pc < t.P;
  t.ih0 = 0, t.iw0 = 0;
  t.xbase = p.x;
  if (t.col_ok) {
    const int n = pc / t.OHW, r = pc % t.OHW;
    const int oh = r / OW, ow = r % OW;
    t.ih0 = oh * static_cast<int>(p.stride_h) - static_cast<int>(p.pad_t);
    t.iw0 = ow * static_cast<int>(p.stride_w) - static_cast<int>(p.pad_l);
    t.xbase = p.x + (static_cast<int64_t>(n) * p.C + static_cast<int64_t>(t.g) * t.Cg) * t.HW + t.ih0 * t.W + t.iw0;
  }
  t.wbase = p.w + static_cast<int64_t>(t.g) * t.Og * t.K;
  return t;
}

// Implicit GEMM per group: rows m = output channel of the group (M = O/G), columns
// p = (n, oh, ow) (P = N*OH*OW), reduction k = (c, kh, kw) (K = C/G*KH*KW). Each block
// computes a BM x BP tile with BK-deep steps through shared memory (double-buffered: the
// next step's tiles are fetched into registers while the current one is multiplied); each
// thread a TM x TP sub-tile in registers, its TP columns strided by BP/TP so that
// neighbouring threads read neighbouring shared-memory words and write neighbouring pixels
// (variant bit 0 clear), or in TP/4 groups of 4 adjacent columns read as one float4 each,
// the groups strided by 4*BP/TP (bit 0 set). The next step's input values are fake-quantized
// as they arrive (bit 1 clear: the thread waits for its loads before the current step's
// multiplications), or just before they are stored to shared memory (bit 1 set: the loads
// stay in flight during the multiplications). Every variant sums k in the same order.
template <int BM, int BP, int BK, int TM, int TP, int kVariant>
__global__ void __launch_bounds__((BM / TM) * (BP / TP), 2)
    implicit_gemm_kernel(const FqConv p, const int4* __restrict__ ktab) {
  constexpr bool kVecB = (kVariant & 1) != 0;
  constexpr bool kDeferQuant = (kVariant & 2) != 0;
  constexpr int kThreads = (BM / TM) * (BP / TP);
  constexpr int kCols = BP / TP;  // threads along the pixel dimension
  constexpr int kALoads = BM * BK / kThreads;
  constexpr int kBLoads = BK * BP / kThreads;
  static_assert(BM * BK % kThreads == 0 && BK * BP % kThreads == 0, "tile loads must divide evenly");
  static_assert(kThreads % BP == 0, "each thread loads B elements of one column");
  static_assert(!kVecB || TP % 4 == 0, "float4 B fragments need TP a multiple of 4");
  // A rows padded by 4 floats: the transposing store hits at most 2 threads per bank while
  // rows stay 16-byte aligned for vector loads.
  __shared__ __align__(16) float As[2][BK][BM + 4];
  __shared__ __align__(16) float Bs[2][BK][BP];

  const int tid = threadIdx.x;
  constexpr int kBRowStep = kThreads / BP;
  const TileSetup t = tile_setup<BM, BP>(p, tid);
  const int Og = t.Og, K = t.K, H = t.H, W = t.W, OHW = t.OHW, P = t.P, g = t.g;
  const int m0 = t.m0, p0 = t.p0, b_col = t.b_col, b_row0 = t.b_row0, ih0 = t.ih0, iw0 = t.iw0;
  const bool col_ok = t.col_ok;
  const float* const xbase = t.xbase;
  const float* const wbase = t.wbase;

  float a_reg[kALoads], b_reg[kBLoads];
  static_assert(kBLoads <= 32, "the in-bounds mask is 32 bits");
  uint32_t b_in = 0;  // kDeferQuant: which b_reg hold a loaded (not padding) value
  auto load_tiles = [&](int k0) {
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      const int idx = tid + i * kThreads;
      const int m = m0 + idx / BK, k = k0 + idx % BK;
      a_reg[i] = (m < Og && k < K) ? __ldg(wbase + m * K + k) : 0.0f;
    }
    if constexpr (kDeferQuant) b_in = 0;
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
      const int k = k0 + b_row0 + i * kBRowStep;
      float v = 0.0f;
      if (col_ok && k < K) {
        const int4 e = __ldg(ktab + k);
        const int ih = ih0 + e.y, iw = iw0 + e.z;
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
          v = __ldg(xbase + e.x);
          if constexpr (kDeferQuant) {
            b_in |= 1u << i;
          } else {
            if (p.quantize_input) v = fake_quant_value(v, p.input);
          }
        }
      }
      b_reg[i] = v;
    }
  };
  auto store_tiles = [&](int buf) {
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      const int idx = tid + i * kThreads;
      As[buf][idx % BK][idx / BK] = a_reg[i];
    }
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
      float v = b_reg[i];
      if constexpr (kDeferQuant) {
        if (p.quantize_input && ((b_in >> i) & 1u)) v = fake_quant_value(v, p.input);  // padding stays 0
      }
      Bs[buf][b_row0 + i * kBRowStep][b_col] = v;
    }
  };

  const int tx = tid % kCols, ty = tid / kCols;
  float acc[TM][TP];
  zero_tile(acc);

  load_tiles(0);
  store_tiles(0);
  __syncthreads();
  int buf = 0;
  for (int k0 = 0; k0 < K; k0 += BK) {
    const bool more = k0 + BK < K;
    if (more) load_tiles(k0 + BK);
    tile_step<BM, BP, BK, TM, TP, kVecB>(&As[buf][0][0], &Bs[buf][0][0], tx, ty, acc);
    if (more) {
      store_tiles(buf ^ 1);
      __syncthreads();
      buf ^= 1;
    }
  }

  store_tile<BP, TM, TP, kVecB>(p, acc, tx, ty, m0, p0, P, OHW, Og, g);
}

// Asynchronous 4-byte global -> shared copies (cp.async, sm_80 and later): `valid` false
// zero-fills the word without reading `src`. Before sm_80 a plain load and store.
__device__ __forceinline__ void copy4_async(float* dst, const float* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0) : "memory");
#else
  *dst = valid ? __ldg(src) : 0.0f;
#endif
}
__device__ __forceinline__ void copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most kPending of this thread's committed copy groups are still in flight.
template <int kPending>
__device__ __forceinline__ void copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// The implicit GEMM of implicit_gemm_kernel with a kStages-deep copy pipeline: the tiles of
// step t + kStages - 1 are copied global -> shared with cp.async (no staging registers)
// while step t is multiplied. Each thread fake-quantizes, in shared memory, the input
// values it copied itself, once they have landed, so padding and out-of-range elements
// (zero-filled) go through the quantizer too: launch_gemm_async() only runs it when the
// input quantizer maps +0 to +0 bit for bit, so the sums equal variant 0's.
//
// kMinBlocks is the blocks per SM the register budget is cut for (__launch_bounds__), kVecB
// the thread's pixel columns as in implicit_gemm_kernel (groups of 4 read as float4).
template <int BM, int BP, int BK, int TM, int TP, int kStages, int kMinBlocks, bool kVecB>
__global__ void __launch_bounds__((BM / TM) * (BP / TP), kMinBlocks)
    implicit_gemm_async_kernel(const FqConv p, const int4* __restrict__ ktab) {
  constexpr int kThreads = (BM / TM) * (BP / TP);
  constexpr int kCols = BP / TP;
  constexpr int kALoads = BM * BK / kThreads;
  constexpr int kBLoads = BK * BP / kThreads;
  constexpr int kAStage = BK * (BM + 4), kBStage = BK * BP;
  static_assert(BM * BK % kThreads == 0 && BK * BP % kThreads == 0, "tile loads must divide evenly");
  static_assert(kThreads % BP == 0, "each thread loads B elements of one column");
  static_assert(kStages >= 2, "a pipeline needs two stages");
  static_assert(!kVecB || TP % 4 == 0, "float4 B fragments need TP a multiple of 4");
  extern __shared__ __align__(16) float smem[];
  float* const As = smem;                      // [kStages][BK][BM + 4]
  float* const Bs = smem + kStages * kAStage;  // [kStages][BK][BP]

  const int tid = threadIdx.x;
  constexpr int kBRowStep = kThreads / BP;
  const TileSetup t = tile_setup<BM, BP>(p, tid);
  const int Og = t.Og, K = t.K, H = t.H, W = t.W, HW = t.HW, OHW = t.OHW, P = t.P, g = t.g;
  const int m0 = t.m0, p0 = t.p0, b_col = t.b_col, b_row0 = t.b_row0, ih0 = t.ih0, iw0 = t.iw0;
  const bool col_ok = t.col_ok;
  const float* const xbase = t.xbase;
  const float* const wbase = t.wbase;
  // A 1x1 kernel whose every output pixel reads inside the image (no top/left padding, and
  // none at the bottom/right either: the last output row and column map into the image)
  // reads channel k at xbase + k * HW: no k-table load and no bounds test per element (a
  // grid-uniform branch). Gemm is such a case.
  const bool pointwise = p.KH == 1 && p.KW == 1 && p.pad_t == 0 && p.pad_l == 0 &&
                         (p.OH - 1) * p.stride_h < p.H && (p.OW - 1) * p.stride_w < p.W;

  auto issue = [&](int stage, int k0) {
    float* a = As + stage * kAStage;
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      const int idx = tid + i * kThreads;
      const int m = idx / BK, k = idx % BK;
      const bool ok = m0 + m < Og && k0 + k < K;
      copy4_async(a + k * (BM + 4) + m, ok ? wbase + (m0 + m) * K + k0 + k : wbase, ok);
    }
    float* b = Bs + stage * kBStage;
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
      const int row = b_row0 + i * kBRowStep, k = k0 + row;
      const float* src = p.x;
      bool ok = false;
      if (pointwise) {
        ok = col_ok && k < K;
        if (ok) src = xbase + k * HW;
      } else if (col_ok && k < K) {
        const int4 e = __ldg(ktab + k);
        const int ih = ih0 + e.y, iw = iw0 + e.z;
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
          ok = true;
          src = xbase + e.x;
        }
      }
      copy4_async(b + row * BP + b_col, src, ok);
    }
  };

  const int tx = tid % kCols, ty = tid / kCols;
  float acc[TM][TP];
  zero_tile(acc);

  const int steps = (K + BK - 1) / BK;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < steps) issue(st, st * BK);
    copy_commit();  // possibly empty: every thread commits one group per step
  }
  for (int t = 0; t < steps; ++t) {
    const int stage = t % kStages;
    copy_wait<kStages - 2>();  // this thread's copies of step t have landed
    if (p.quantize_input) {
      float* b = Bs + stage * kBStage;
#pragma unroll
      for (int i = 0; i < kBLoads; ++i) {
        float* v = b + (b_row0 + i * kBRowStep) * BP + b_col;
        *v = fake_quant_value(*v, p.input);
      }
    }
    // Step t's tiles are complete and quantized, and every thread is done with step t - 1,
    // whose buffers the next copies overwrite.
    __syncthreads();
    const int next = t + kStages - 1;
    if (next < steps) issue(next % kStages, next * BK);
    copy_commit();
    tile_step<BM, BP, BK, TM, TP, kVecB>(As + stage * kAStage, Bs + stage * kBStage, tx, ty, acc);
  }
  copy_wait<0>();

  store_tile<BP, TM, TP, kVecB>(p, acc, tx, ty, m0, p0, P, OHW, Og, g);
}

// Asynchronous 16-byte global -> shared copy (both 16-byte aligned), zero-filled when !valid.
__device__ __forceinline__ void copy16_async(float* dst, const float* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
#else
  *reinterpret_cast<float4*>(dst) = valid ? __ldg(reinterpret_cast<const float4*>(src)) : make_float4(0.f, 0.f, 0.f, 0.f);
#endif
}

// The weights of a group in tap-major order for implicit_gemm_tap_kernel: wt[g][k'][m], rows
// of Ogp >= Og floats (zero beyond Og, so each row is a whole number of 16-byte chunks), with
// k' = (kh * KW + kw) * Cg + c, from w[g * Og + m][c][kh][kw].
__global__ void tap_major_weights_kernel(float* __restrict__ wt, const float* __restrict__ w, int64_t total, int Og,
                                         int Ogp, int Cg, int KHW) {
  const int K = Cg * KHW;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int m = static_cast<int>(i % Ogp);
    const int64_t rest = i / Ogp;
    const int kp = static_cast<int>(rest % K);
    const int64_t g = rest / K;
    const int tap = kp / Cg, c = kp - tap * Cg;
    wt[i] = m < Og ? w[((g * Og + m) * Cg + c) * KHW + tap] : 0.0f;
  }
}

// fake_quant_value() in 6 instructions instead of about 10: clamp(rint(x / s), qmin - z,
// qmax - z) * s equals (clamp(rint(x / s) + z, qmin, qmax) - z) * s bit for bit while |z|,
// |qmin| and |qmax| stay below 2^20 (rint(x / s) + z is exact below 2^23, and beyond it both
// clamp to the same end); NaN goes to qmin in both (fmaxf returns its other operand), and
// the + 0 turns a -0 into the +0 the integer path gives. The launcher checks the bounds.
struct FastQuant {
  float inv_scale, scale, lo, hi;
};
__device__ __forceinline__ FastQuant fast_quant(const QuantParams& q) {
  return {q.inv_scale, q.scale, static_cast<float>(q.qmin - q.zero_point), static_cast<float>(q.qmax - q.zero_point)};
}
__device__ __forceinline__ float fast_quant_value(float x, const FastQuant& q) {
  const float r = fminf(fmaxf(rintf(__fmul_rn(x, q.inv_scale)), q.lo), q.hi);
  return __fmul_rn(__fadd_rn(r, 0.0f), q.scale);
}

// The pipelined implicit GEMM of implicit_gemm_async_kernel with the reduction in tap-major
// order, k' = (kh, kw, c) instead of (c, kh, kw), for kernels larger than 1x1 whose channels
// per group are a multiple of BK: every BK-deep step then reads BK consecutive channels of
// one tap (kh, kw), so a thread tests its pixel's bounds once per step (not once per element)
// and needs no k-table, and the weights, transposed to [k'][m] by tap_major_weights_kernel,
// arrive in 16-byte copies (a quarter of the copy instructions). The sums run in another
// order than variant 0's: results differ from it by rounding (the tests compare them with
// the references, not bit for bit).
template <int BM, int BP, int BK, int TM, int TP, int kStages, int kMinBlocks, bool kVecB>
__global__ void __launch_bounds__((BM / TM) * (BP / TP), kMinBlocks)
    implicit_gemm_tap_kernel(const FqConv p, const float* __restrict__ wt, int Ogp) {
  constexpr int kThreads = (BM / TM) * (BP / TP);
  constexpr int kCols = BP / TP;
  constexpr int kBLoads = BK * BP / kThreads;
  constexpr int kAChunks = BK * BM / 4;  // 16-byte chunks of an A tile
  constexpr int kAIters = (kAChunks + kThreads - 1) / kThreads;
  constexpr int kAStage = BK * (BM + 4), kBStage = BK * BP;
  static_assert(BK * BP % kThreads == 0, "tile loads must divide evenly");
  static_assert(kThreads % BP == 0, "each thread loads B elements of one column");
  static_assert(kStages >= 2, "a pipeline needs two stages");
  static_assert(!kVecB || TP % 4 == 0, "float4 B fragments need TP a multiple of 4");
  static_assert(BM % 4 == 0 && (BM + 4) % 4 == 0, "A rows are whole 16-byte chunks");
  extern __shared__ __align__(16) float smem[];
  float* const As = smem;                      // [kStages][BK][BM + 4]
  float* const Bs = smem + kStages * kAStage;  // [kStages][BK][BP]

  const int tid = threadIdx.x;
  constexpr int kBRowStep = kThreads / BP;
  const TileSetup t = tile_setup<BM, BP>(p, tid);
  const int Cg = t.Cg, Og = t.Og, K = t.K, H = t.H, W = t.W, HW = t.HW, OHW = t.OHW, P = t.P, g = t.g;
  const int m0 = t.m0, p0 = t.p0, b_col = t.b_col, b_row0 = t.b_row0, ih0 = t.ih0, iw0 = t.iw0;
  const bool col_ok = t.col_ok;
  const float* const xbase = t.xbase;
  const float* const wg = wt + static_cast<int64_t>(g) * K * Ogp;
  const int KW = static_cast<int>(p.KW), dil_h = static_cast<int>(p.dil_h), dil_w = static_cast<int>(p.dil_w);
  const FastQuant qin = fast_quant(p.input);

  // The next step to issue: its first channel and its tap. Steps are issued in order.
  int i_c0 = 0, i_kh = 0, i_kw = 0;
  auto issue = [&](int stage, int k0) {
    float* a = As + stage * kAStage;
#pragma unroll
    for (int i = 0; i < kAIters; ++i) {
      const int idx = tid + i * kThreads;
      if (kAChunks % kThreads == 0 || idx < kAChunks) {
        const int row = idx / (BM / 4), col = (idx % (BM / 4)) * 4;
        const bool ok = m0 + col < Og;  // rows are padded to Ogp: a chunk is wholly in or out
        copy16_async(a + row * (BM + 4) + col, ok ? wg + (k0 + row) * Ogp + m0 + col : wg, ok);
      }
    }
    float* b = Bs + stage * kBStage;
    const int dh = i_kh * dil_h, dw = i_kw * dil_w;
    const int ih = ih0 + dh, iw = iw0 + dw;
    const bool ok = col_ok && ih >= 0 && ih < H && iw >= 0 && iw < W;
    const float* src = ok ? xbase + (i_c0 + b_row0) * HW + dh * W + dw : p.x;
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
      copy4_async(b + (b_row0 + i * kBRowStep) * BP + b_col, ok ? src + i * kBRowStep * HW : src, ok);
    }
    i_c0 += BK;
    if (i_c0 == Cg) {
      i_c0 = 0;
      if (++i_kw == KW) i_kw = 0, ++i_kh;
    }
  };

  const int tx = tid % kCols, ty = tid / kCols;
  float acc[TM][TP];
  zero_tile(acc);

  // The pipeline below is implicit_gemm_async_kernel's, with fast_quant_value() as the
  // quantizer. It is kept as a copy so the kernels stay exactly as measured on the GPU until a
  // device session can time a shared version (bench/RESULTS.md).
  const int steps = K / BK;  // the launcher checks Cg % BK == 0
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < steps) issue(st, st * BK);
    copy_commit();
  }
  for (int s = 0; s < steps; ++s) {
    const int stage = s % kStages;
    copy_wait<kStages - 2>();
    if (p.quantize_input) {
      float* b = Bs + stage * kBStage;
#pragma unroll
      for (int i = 0; i < kBLoads; ++i) {
        float* v = b + (b_row0 + i * kBRowStep) * BP + b_col;
        *v = fast_quant_value(*v, qin);
      }
    }
    __syncthreads();
    const int next = s + kStages - 1;
    if (next < steps) issue(next % kStages, next * BK);
    copy_commit();
    tile_step<BM, BP, BK, TM, TP, kVecB>(As + stage * kAStage, Bs + stage * kBStage, tx, ty, acc);
  }
  copy_wait<0>();

  store_tile<BP, TM, TP, kVecB>(p, acc, tx, ty, m0, p0, P, OHW, Og, g);
}

// Depthwise (one input and one output channel per group): one thread per output value.
__global__ void depthwise_kernel(const FqConv p) {
  const int64_t total = p.N * p.O * p.OH * p.OW;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ow = i % p.OW, oh = (i / p.OW) % p.OH, c = (i / (p.OW * p.OH)) % p.O, n = i / (p.OW * p.OH * p.O);
    const float* xp = p.x + (n * p.C + c) * p.H * p.W;
    const float* wp = p.w + c * p.KH * p.KW;
    float acc = 0.0f;
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      const int64_t ih = oh * p.stride_h - p.pad_t + kh * p.dil_h;
      if (ih < 0 || ih >= p.H) continue;
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        const int64_t iw = ow * p.stride_w - p.pad_l + kw * p.dil_w;
        if (iw < 0 || iw >= p.W) continue;
        float v = __ldg(xp + ih * p.W + iw);
        if (p.quantize_input) v = fake_quant_value(v, p.input);
        acc = fmaf(v, wp[kh * p.KW + kw], acc);
      }
    }
    p.y[i] = epilogue(p, acc, c);
  }
}

// The k-table of a convolution shape (k_table_kernel), in a per-thread grow-only device
// buffer (one per host thread, reused by every call on it; stream order keeps a call's table
// alive until its kernel is done).
const int4* k_table(const FqConv& p, int K, cudaStream_t stream) {
  thread_local int4* tab = nullptr;
  thread_local int cap = 0;
  if (K > cap) {
    if (tab) {
      cudaStreamSynchronize(stream);
      cudaFree(tab);
    }
    check(cudaMalloc(&tab, static_cast<size_t>(K) * sizeof(int4)), "cudaMalloc (fused conv k-table)");
    cap = K;
  }
  k_table_kernel<<<(K + 255) / 256, 256, 0, stream>>>(tab, K, static_cast<int>(p.KH * p.KW), static_cast<int>(p.KW),
                                                      static_cast<int>(p.H * p.W), static_cast<int>(p.W),
                                                      static_cast<int>(p.dil_h), static_cast<int>(p.dil_w));
  return tab;
}

// The weights of `p` in tap-major order (tap_major_weights_kernel), in a grow-only device
// buffer per host thread and stream (stream order keeps a call's weights until its kernel
// is done; another stream of the same thread gets its own buffer).
const float* tap_major_weights(const FqConv& p, int64_t Cg, int64_t Og, int64_t Ogp, cudaStream_t stream) {
  struct Buf {
    float* ptr = nullptr;
    int64_t cap = 0;
  };
  thread_local std::unordered_map<cudaStream_t, Buf> bufs;
  if (bufs.size() >= 4 && bufs.find(stream) == bufs.end()) {
    // Streams come and go with contexts: past four, the buffers are freed once the device
    // is idle (a destroyed stream's buffer would otherwise stay until the thread ends).
    cudaDeviceSynchronize();
    for (auto& [st, old] : bufs) cudaFree(old.ptr);
    bufs.clear();
  }
  Buf& b = bufs[stream];
  const int64_t KHW = p.KH * p.KW, total = p.groups * Cg * KHW * Ogp;
  if (total > b.cap) {
    if (b.ptr) {
      cudaStreamSynchronize(stream);
      cudaFree(b.ptr);
      b = Buf{};
    }
    check(cudaMalloc(&b.ptr, static_cast<size_t>(total) * sizeof(float)), "cudaMalloc (fused conv tap-major weights)");
    b.cap = total;
  }
  float* const buf = b.ptr;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 4096);
  tap_major_weights_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
      buf, p.w, total, static_cast<int>(Og), static_cast<int>(Ogp), static_cast<int>(Cg), static_cast<int>(KHW));
  return buf;
}

template <int BM, int BP>
dim3 gemm_grid(const FqConv& p) {
  const int64_t Og = p.O / p.groups, P = p.N * p.OH * p.OW;
  return dim3(static_cast<unsigned>((P + BP - 1) / BP), static_cast<unsigned>((Og + BM - 1) / BM),
              static_cast<unsigned>(p.groups));
}

template <int BM, int BP, int BK, int TM, int TP, int kVariant>
void launch_gemm(const FqConv& p, cudaStream_t stream) {
  const int K = static_cast<int>((p.C / p.groups) * p.KH * p.KW);
  const int4* tab = k_table(p, K, stream);
  implicit_gemm_kernel<BM, BP, BK, TM, TP, kVariant><<<gemm_grid<BM, BP>(p), (BM / TM) * (BP / TP), 0, stream>>>(p, tab);
}

template <int BM, int BP, int BK, int TM, int TP, int kStages, int kMinBlocks = 2, bool kVecB = false>
void launch_gemm_async(const FqConv& p, cudaStream_t stream) {
  const int K = static_cast<int>((p.C / p.groups) * p.KH * p.KW);
  const int4* tab = k_table(p, K, stream);
  constexpr size_t kSmem = sizeof(float) * kStages * (BK * (BM + 4) + BK * BP);
  auto* kernel = implicit_gemm_async_kernel<BM, BP, BK, TM, TP, kStages, kMinBlocks, kVecB>;
  if constexpr (kSmem > 48 * 1024) {  // above the default limit of dynamic shared memory
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)),
          "cudaFuncSetAttribute (fused conv shared memory)");
  }
  kernel<<<gemm_grid<BM, BP>(p), (BM / TM) * (BP / TP), kSmem, stream>>>(p, tab);
}

template <int BM, int BP, int BK, int TM, int TP, int kStages, int kMinBlocks, bool kVecB>
void launch_gemm_tap(const FqConv& p, cudaStream_t stream) {
  const int64_t Cg = p.C / p.groups, Og = p.O / p.groups, Ogp = (Og + 3) / 4 * 4;
  const float* wt = tap_major_weights(p, Cg, Og, Ogp, stream);
  constexpr size_t kSmem = sizeof(float) * kStages * (BK * (BM + 4) + BK * BP);
  auto* kernel = implicit_gemm_tap_kernel<BM, BP, BK, TM, TP, kStages, kMinBlocks, kVecB>;
  if constexpr (kSmem > 48 * 1024) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)),
          "cudaFuncSetAttribute (fused conv shared memory)");
  }
  kernel<<<gemm_grid<BM, BP>(p), (BM / TM) * (BP / TP), kSmem, stream>>>(p, wt, static_cast<int>(Ogp));
}

// Variants 11-13 (tap-major) on the tile sizes of variant 10: BK the step depth, kVecSmall
// float4 B fragments in the 64- and 32-row tiles too (the 128-row tile always has them).
template <int BK, bool kVecSmall>
void launch_dense_tap(const FqConv& p, int64_t Og, cudaStream_t stream) {
  if (Og >= 128) {
    launch_gemm_tap<128, 128, BK, 8, 8, 3, 2, true>(p, stream);
  } else if (Og >= 64) {
    launch_gemm_tap<64, 128, BK, 4, 8, 3, 3, kVecSmall>(p, stream);
  } else {
    launch_gemm_tap<32, 128, BK, 4, 4, 3, 3, kVecSmall>(p, stream);
  }
}

// Whether the input quantizer maps +0 to +0 bit for bit (the async kernel quantizes the
// zero-filled padding; quantizers from choose_quant_params() always do, since their range
// holds 0 and their zero point lies in [qmin, qmax]).
bool zero_stays_zero(const FqConv& p) {
  if (!p.quantize_input) return true;
  const float zero = 0.0f;
  float y = 1.0f;
  fake_quantize_per_tensor(&zero, &y, 1, p.input);
  return std::signbit(y) == false && y == 0.0f;
}

// Whether the tap-major kernels (variants 11-13) run `p`: a dense or grouped kernel larger
// than 1x1 with a multiple of 16 channels per group, an input quantizer (if any) that maps
// +0 to +0 and suits fast_quant_value(), and transposed weights below 2^31 elements.
bool tap_major_ok(const FqConv& p) {
  const int64_t Cg = p.C / p.groups, Og = p.O / p.groups;
  if (p.KH * p.KW <= 1 || Cg % 16 != 0 || (Cg == 1 && Og == 1)) return false;
  constexpr int32_t kQ = 1 << 20;
  const auto small = [&](int32_t v) { return v > -kQ && v < kQ; };
  if (p.quantize_input && !(small(p.input.zero_point) && small(p.input.qmin) && small(p.input.qmax))) return false;
  return zero_stays_zero(p) && p.groups * Cg * p.KH * p.KW * ((Og + 3) / 4 * 4) < (int64_t{1} << 31);
}

// launch_gemm_async with kVecB chosen at run time.
template <int BM, int BP, int BK, int TM, int TP, int kStages, int kMinBlocks>
void launch_gemm_async_vec(bool vec, const FqConv& p, cudaStream_t stream) {
  if (vec) {
    launch_gemm_async<BM, BP, BK, TM, TP, kStages, kMinBlocks, true>(p, stream);
  } else {
    launch_gemm_async<BM, BP, BK, TM, TP, kStages, kMinBlocks, false>(p, stream);
  }
}

template <int kVariant>
void launch_dense(const FqConv& p, int64_t Og, cudaStream_t stream) {
  if constexpr (kVariant >= 11) {
    // 11-13: tap-major sums for kernels larger than 1x1 whose channels per group are a
    // multiple of the step depth (16, or 32 for 12, which falls back to 16 when only that
    // divides them; 13: 11 with float4 B fragments in every tile); everything else as
    // variant 10.
    const int64_t Cg = p.C / p.groups;
    if (tap_major_ok(p)) {
      if (kVariant == 12 && Cg % 32 == 0) return launch_dense_tap<32, false>(p, Og, stream);
      return launch_dense_tap<16, kVariant == 13>(p, Og, stream);
    }
    return launch_dense<10>(p, Og, stream);
  } else if constexpr (kVariant >= 4) {
    // 4: a 3-stage cp.async pipeline, 5: 4 stages, 6: 3 stages of BK = 32, 7: 4 with three
    // blocks per SM for the 64- and 32-row tiles, 8: 4 with float4 B fragments, 9: 7 with the
    // float4 B fragments of 8 in the 128-row tile unless the kernel is 1x1 (each the faster
    // on those shapes in one H200 run), 10: 9 with the 64x128 tile at three blocks per SM for
    // 1x1 kernels of 128+ output channels and at most 256 input channels per group, whose
    // few reduction steps leave the 128x128 tile's set-up, pipeline fill and epilogue
    // uncovered (ncu: 36% SM throughput, instruction-fetch stalls).
    if (zero_stays_zero(p)) {
      const bool wide_kernel = p.KH * p.KW > 1;  // 9 and 10: float4 B fragments unless 1x1
      if constexpr (kVariant == 10) {
        if (!wide_kernel && p.C / p.groups <= 256 && Og >= 128) {
          return launch_gemm_async<64, 128, 16, 4, 8, 3, 3>(p, stream);
        }
      }
      constexpr int kStages = kVariant == 5 ? 4 : 3;
      constexpr int kBK = kVariant == 6 ? 32 : 16;
      constexpr int kSmallTileBlocks = kVariant == 7 || kVariant >= 9 ? 3 : 2;
      constexpr bool kVecB = kVariant == 8;
      if (Og >= 128) {
        if constexpr (kVariant >= 9) {
          launch_gemm_async_vec<128, 128, kBK, 8, 8, kStages, 2>(wide_kernel, p, stream);
        } else {
          launch_gemm_async<128, 128, kBK, 8, 8, kStages, 2, kVecB>(p, stream);
        }
      } else if (Og >= 64) {
        launch_gemm_async<64, 128, kBK, 4, 8, kStages, kSmallTileBlocks, kVecB>(p, stream);
      } else {
        launch_gemm_async<32, 128, kBK, 4, 4, kStages, kSmallTileBlocks, kVecB>(p, stream);
      }
      return;
    }
    launch_dense<2>(p, Og, stream);  // the fastest of the synchronous kernels
  } else if (Og >= 128) {  // tile shapes measured on an H200 (bench/RESULTS.md); 64x256 tiles were no faster
    launch_gemm<128, 128, 16, 8, 8, kVariant>(p, stream);
  } else if (Og >= 64) {
    launch_gemm<64, 128, 16, 4, 8, kVariant>(p, stream);
  } else {
    launch_gemm<32, 128, 16, 4, 4, kVariant>(p, stream);
  }
}

// launch_dense<v>() for the run-time variant v (checked to lie in [0, kFqConvVariants)).
template <int... V>
void launch_variant(int v, const FqConv& p, int64_t Og, cudaStream_t stream, std::integer_sequence<int, V...>) {
  (void)((v == V && (launch_dense<V>(p, Og, stream), true)) || ...);
}

int initial_variant() {
  const char* env = std::getenv("QSWEEP_FQCONV_VARIANT");
  if (env == nullptr || *env == '\0') return 13;  // the fastest measured (fq_conv.cuh)
  const std::string s(env);
  int v = -1;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 0 || v >= kFqConvVariants) {
    throw std::invalid_argument("QSWEEP_FQCONV_VARIANT='" + s + "': accepted values are 0.." +
                                std::to_string(kFqConvVariants - 1));
  }
  return v;
}

std::atomic<int>& variant_slot() {
  static std::atomic<int> v{initial_variant()};
  return v;
}

}  // namespace

void set_fq_conv_variant(int variant) {
  if (variant < 0 || variant >= kFqConvVariants) {
    throw std::invalid_argument("fused conv variant " + std::to_string(variant) + ": accepted values are 0.." +
                                std::to_string(kFqConvVariants - 1));
  }
  variant_slot().store(variant);
}

int fq_conv_variant() { return variant_slot().load(); }

namespace {
// Whether the kernels' 32-bit index math holds: one image's C*H*W, the weights' O*K and
// N*OH*OW below 2^31.
bool sizes_fit(const FqConv& p) {
  const int64_t Cg = p.C / p.groups;
  constexpr int64_t kMax = int64_t{1} << 31;
  return p.C * p.H * p.W < kMax && p.O * Cg * p.KH * p.KW < kMax && p.N * p.OH * p.OW < kMax;
}
void check_sizes(const FqConv& p) {
  if (!sizes_fit(p)) {
    throw std::runtime_error("fused fake-quant convolution: a tensor dimension product exceeds 2^31; use a smaller batch");
  }
}
}  // namespace

bool tap_major_applies(const FqConv& p) { return tap_major_ok(p); }

bool fq_conv2d_direct(const FqConv& p, cudaStream_t stream) {
  if (!tap_major_ok(p) || !sizes_fit(p)) return false;  // e.g. cuDNN runs it
  if (p.N * p.O * p.OH * p.OW == 0) return true;
  launch_dense_tap<16, true>(p, p.O / p.groups, stream);
  check(cudaGetLastError(), "direct convolution");
  return true;
}

void fq_conv2d(const FqConv& p, cudaStream_t stream) {
  if (p.N * p.O * p.OH * p.OW == 0) return;
  const int64_t Cg = p.C / p.groups, Og = p.O / p.groups;
  check_sizes(p);
  if (Cg == 1 && Og == 1) {
    const int64_t total = p.N * p.O * p.OH * p.OW;
    const int64_t blocks = std::min<int64_t>((total + 255) / 256, int64_t{1} << 30);
    depthwise_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p);
  } else {
    launch_variant(fq_conv_variant(), p, Og, stream, std::make_integer_sequence<int, kFqConvVariants>{});
  }
  check(cudaGetLastError(), "fused fake-quant convolution");
}

}  // namespace qsweep::cuda

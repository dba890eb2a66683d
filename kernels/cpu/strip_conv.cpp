// Input-stationary strips for 16-channel convolutions: see strip_conv.h.
#include "kernels/cpu/strip_conv.h"

#include <immintrin.h>

#include "kernels/cpu/avx512_common.h"

#include <algorithm>

namespace qsweep {

namespace {

constexpr int64_t kC = 16;  // input channels the kernel is built for

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
// GCC 12 warns about the deliberately undefined operand inside _mm512_min_ps/_mm512_max_ps.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Outputs ox0 .. ox0 + R - 1 of row oy of image n (the first `valid` of them stored), output
// channels 0 .. 16 NV. Input column ix = ox0 - pad_l + j for j in [0, R + KW - 1); only
// j in [jlo, jhi) lies inside the input. LO >= 0 and HI >= 0 fix jlo = LO and
// jhi = J - HI at compile time (no test per j: the common strips, a whole row padded by 0
// or 1 on each side, or by 1 with stride 2 over an odd width); LO = -1 tests jlo and jhi
// for every j.
template <int NV, int R, int KW, int SW, int LO, int HI>
__attribute__((target("avx512f,fma"))) void strip(const DirectConv& p, const float* x, const float* wt,
                                                  const float* bias, float* y, int64_t n, int64_t oy, int64_t ox0,
                                                  int valid, int jlo, int jhi) {
  constexpr int J = SW * (R - 1) + KW;
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int o = 0; o < R; ++o) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[o][v] = _mm512_setzero_ps();
  }
  const int64_t K = p.K;
  for (int64_t ky = 0; ky < p.kh; ++ky) {
    const int64_t iy = oy * p.stride_h - p.pad_t + ky * p.dil_h;
    if (iy < 0 || iy >= p.H) continue;
    // Offset of input column ox0 - pad_l (j = 0): a border strip's j < jlo are never read.
    const int64_t row = ((n * p.H + iy) * p.W + ox0 * SW - p.pad_l) * kC;
    const float* wk = wt + ky * kC * KW * K;
    for (int64_t c = 0; c < kC; ++c) {
      __m512 wv[KW][NV];
#pragma GCC unroll 3
      for (int kx = 0; kx < KW; ++kx) {
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) wv[kx][v] = _mm512_loadu_ps(wk + (c * KW + kx) * K + 16 * v);
      }
#pragma GCC unroll 20
      for (int j = 0; j < J; ++j) {
        if constexpr (LO >= 0) {
          if (j < LO || j >= J - HI) continue;  // known at compile time
        } else {
          if (j < jlo || j >= jhi) continue;  // the same for every c: predicted
        }
        const __m512 b = _mm512_set1_ps(x[row + j * kC + c]);
#pragma GCC unroll 3
        for (int kx = 0; kx < KW; ++kx) {
          if ((j - kx) % SW != 0) continue;  // known at compile time, as the rest
          const int o = (j - kx) / SW;
          if (j - kx < 0 || o >= R) continue;
#pragma GCC unroll 2
          for (int v = 0; v < NV; ++v) acc[o][v] = _mm512_fmadd_ps(b, wv[kx][v], acc[o][v]);
        }
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
  const int64_t at = ((n * p.out_h + oy) * p.out_w + ox0) * K;
  float* out = y + at;
  const float* res = p.residual != nullptr ? p.residual + at : nullptr;
#pragma GCC unroll 16
  for (int o = 0; o < R; ++o) {
    if (o >= valid) break;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      avx512::store_output(out + o * K + 16 * v, acc[o][v], bias != nullptr ? bias + 16 * v : nullptr,
                           res != nullptr ? res + o * K + 16 * v : nullptr, p.clamp, lo, hi);
    }
  }
}

// Every strip of the output; R outputs per strip (14 accumulators with 16 output channels,
// 8 x 2 with 32).
template <int NV, int R, int KW, int SW>
__attribute__((target("avx512f,fma"))) void all_strips(const DirectConv& p, const float* x, const float* wt,
                                                       const float* bias, float* y) {
  constexpr int J = SW * (R - 1) + KW;
  for (int64_t n = 0; n < p.N; ++n) {
    for (int64_t oy = 0; oy < p.out_h; ++oy) {
      for (int64_t ox0 = 0; ox0 < p.out_w; ox0 += R) {
        const int64_t ix0 = ox0 * SW - p.pad_l;
        const int jlo = static_cast<int>(std::clamp<int64_t>(-ix0, 0, J));
        const int jhi = static_cast<int>(std::clamp<int64_t>(p.W - ix0, 0, J));
        const int valid = static_cast<int>(std::min<int64_t>(R, p.out_w - ox0));
        const int lo = jlo, hi = J - jhi;
        if (lo == 0 && hi == 0) {
          strip<NV, R, KW, SW, 0, 0>(p, x, wt, bias, y, n, oy, ox0, valid, jlo, jhi);
        } else if (lo == 1 && hi == 1) {
          strip<NV, R, KW, SW, 1, 1>(p, x, wt, bias, y, n, oy, ox0, valid, jlo, jhi);
        } else if (lo == 1 && hi == 0) {
          strip<NV, R, KW, SW, 1, 0>(p, x, wt, bias, y, n, oy, ox0, valid, jlo, jhi);
        } else if (lo == 0 && hi == 1) {
          strip<NV, R, KW, SW, 0, 1>(p, x, wt, bias, y, n, oy, ox0, valid, jlo, jhi);
        } else if (lo == 1 && hi == 2) {  // stride 2 over an odd width padded by 1
          strip<NV, R, KW, SW, 1, 2>(p, x, wt, bias, y, n, oy, ox0, valid, jlo, jhi);
        } else {
          strip<NV, R, KW, SW, -1, -1>(p, x, wt, bias, y, n, oy, ox0, valid, jlo, jhi);
        }
      }
    }
  }
}

template <int KW, int SW>
__attribute__((target("avx512f,fma"))) void dispatch_k(const DirectConv& p, const float* x, const float* wt,
                                                       const float* bias, float* y) {
  if (p.K == 16) {
    all_strips<1, 14, KW, SW>(p, x, wt, bias, y);
  } else {
    all_strips<2, 8, KW, SW>(p, x, wt, bias, y);
  }
}

template <int SW>
__attribute__((target("avx512f,fma"))) void dispatch_kw(const DirectConv& p, const float* x, const float* wt,
                                                        const float* bias, float* y) {
  switch (p.kw) {
    case 1: dispatch_k<1, SW>(p, x, wt, bias, y); break;
    case 2: dispatch_k<2, SW>(p, x, wt, bias, y); break;
    default: dispatch_k<3, SW>(p, x, wt, bias, y); break;
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace

bool strip_conv_available(const DirectConv& p) {
  return avx512::cpu_supported() && p.N > 0 && p.C == kC && (p.K == 16 || p.K == 32) && p.kh > 0 && p.kw >= 1 &&
         p.kw <= 3 && (p.stride_w == 1 || p.stride_w == 2) && p.dil_w == 1 && p.stride_h > 0 && p.dil_h > 0 && p.out_h > 0 &&
         p.out_w > 0;
}

void strip_conv(const DirectConv& p, const float* x, const float* w, const float* bias, float* y,
                DirectConvScratch& s) {
  const int64_t K = p.K, KW = p.kw, KH = p.kh;
  // Weights as [ky][c][kx][k]: for one kernel row and channel, the kx vectors are adjacent.
  const float* wt = s.strip_weights
                        .get(w, static_cast<size_t>(K * kC * KH * KW), (KH << 8) | KW,
                             [&](const float* src, std::vector<float>& out) {
                               out.resize(KH * kC * KW * K);
                               for (int64_t k = 0; k < K; ++k) {
                                 for (int64_t c = 0; c < kC; ++c) {
                                   for (int64_t ky = 0; ky < KH; ++ky) {
                                     for (int64_t kx = 0; kx < KW; ++kx) {
                                       out[((ky * kC + c) * KW + kx) * K + k] = src[((k * kC + c) * KH + ky) * KW + kx];
                                     }
                                   }
                                 }
                               }
                             })
                        .data();
  if (p.stride_w == 1) {
    dispatch_kw<1>(p, x, wt, bias, y);
  } else {
    dispatch_kw<2>(p, x, wt, bias, y);
  }
}

}  // namespace qsweep

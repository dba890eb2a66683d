// Winograd F(4x4, 3x3): see winograd.h. The matrices are Lavin & Gray's (2016):
//
//   B^T = [4  0 -5  0 1 0]   G = [ 1/4     0    0 ]   A^T = [1 1  1 1  1 0]
//         [0 -4 -4  1 1 0]       [-1/6  -1/6 -1/6 ]         [0 1 -1 2 -2 0]
//         [0  4 -4 -1 1 0]       [-1/6   1/6 -1/6 ]         [0 1  1 4  4 0]
//         [0 -2 -1  2 1 0]       [1/24  1/12  1/6 ]         [0 1 -1 8 -8 1]
//         [0  2 -1 -2 1 0]       [1/24 -1/12  1/6 ]
//         [0  4  0 -5 0 1]       [ 0     0     1  ]
//
// Layout: the transformed inputs of a block of `tiles` tiles are V[tiles][36][C] (tile-major,
// so that a tile's 36 transformed vectors are written to consecutive lines), the transformed
// weights U[36][C][K], their products M[tiles][36][K]; every vector holds 16 consecutive
// channels. The functions are compiled for AVX-512 and only entered after
// winograd_available() has checked the CPU.
#include "kernels/cpu/winograd.h"

#include <immintrin.h>

#include "kernels/cpu/avx512_common.h"

#include <algorithm>
#include <cstring>

namespace qsweep {

namespace {

// Tiles per block: a multiple of every row count of the GEMM kernels below (12, 6), small
// enough that a block's V and M stay in L2 next to U. Measured on the shipped ResNet's shapes
// (Xeon, AVX-512): 12 for 32 -> 32 channels, 24 for 64 -> 64.
int64_t block_tiles(int64_t C, int64_t K) { return C + K <= 64 ? 12 : C + K <= 128 ? 24 : 48; }

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
// GCC 12 warns about the deliberately undefined operand inside _mm512_min_ps/_mm512_max_ps.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// U[p][c][k] = (G g G^T)[p] for g = w[k][c] (3x3), 16 output channels at a time.
__attribute__((target("avx512f,fma"))) void transform_weights(const float* w, int64_t C, int64_t K, float* U) {
  const __m512 q = _mm512_set1_ps(0.25f), s6 = _mm512_set1_ps(1.0f / 6.0f), s12 = _mm512_set1_ps(1.0f / 12.0f),
               s24 = _mm512_set1_ps(1.0f / 24.0f);
  alignas(64) float g[9][16];
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    for (int64_t c = 0; c < C; ++c) {
      for (int l = 0; l < 16; ++l) {
        const float* src = w + ((k0 + l) * C + c) * 9;
        for (int t = 0; t < 9; ++t) g[t][l] = src[t];
      }
      // G applied to a 3-vector (a, b, c) gives 6 values.
      auto apply_g = [&](__m512 a, __m512 b, __m512 c3, __m512* o) {
        const __m512 ac = _mm512_add_ps(a, c3);
        o[0] = _mm512_mul_ps(a, q);
        o[1] = _mm512_mul_ps(_mm512_add_ps(ac, b), _mm512_set1_ps(-1.0f / 6.0f));
        o[2] = _mm512_mul_ps(_mm512_sub_ps(ac, b), _mm512_set1_ps(-1.0f / 6.0f));
        const __m512 e = _mm512_add_ps(_mm512_mul_ps(a, s24), _mm512_mul_ps(c3, s6));
        o[3] = _mm512_add_ps(e, _mm512_mul_ps(b, s12));
        o[4] = _mm512_sub_ps(e, _mm512_mul_ps(b, s12));
        o[5] = c3;
      };
      __m512 t[6][3];  // G g: rows i, columns of g
      for (int col = 0; col < 3; ++col) {
        __m512 o[6];
        apply_g(_mm512_load_ps(g[col]), _mm512_load_ps(g[3 + col]), _mm512_load_ps(g[6 + col]), o);
        for (int i = 0; i < 6; ++i) t[i][col] = o[i];
      }
      for (int i = 0; i < 6; ++i) {
        __m512 o[6];
        apply_g(t[i][0], t[i][1], t[i][2], o);
        for (int j = 0; j < 6; ++j) _mm512_storeu_ps(U + ((i * 6 + j) * C + c) * K + k0, o[j]);
      }
    }
  }
}

// B^T applied to 6 vectors, in 12 operations.
__attribute__((target("avx512f,fma"), always_inline)) inline void apply_bt(const __m512* d, __m512* r) {
  const __m512 four = _mm512_set1_ps(4.0f), five = _mm512_set1_ps(5.0f), two = _mm512_set1_ps(2.0f);
  r[0] = _mm512_fmadd_ps(four, d[0], _mm512_fnmadd_ps(five, d[2], d[4]));  // 4 d0 - 5 d2 + d4
  const __m512 a = _mm512_fnmadd_ps(four, d[2], d[4]);                       // d4 - 4 d2
  const __m512 b = _mm512_fnmadd_ps(four, d[1], d[3]);                       // d3 - 4 d1
  r[1] = _mm512_add_ps(a, b);
  r[2] = _mm512_sub_ps(a, b);
  const __m512 e = _mm512_sub_ps(d[4], d[2]);
  const __m512 f = _mm512_sub_ps(d[3], d[1]);
  r[3] = _mm512_fmadd_ps(two, f, e);                                         // e + 2 f
  r[4] = _mm512_fnmadd_ps(two, f, e);                                        // e - 2 f
  r[5] = _mm512_fmadd_ps(four, d[1], _mm512_fnmadd_ps(five, d[3], d[5]));  // 4 d1 - 5 d3 + d5
}

// A^T applied to 6 vectors.
__attribute__((target("avx512f,fma"), always_inline)) inline void apply_at(const __m512* m, __m512* o) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
  const __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
  const __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
  o[1] = _mm512_fmadd_ps(two, d34, d12);
  o[2] = _mm512_fmadd_ps(four, s34, s12);
  o[3] = _mm512_add_ps(_mm512_fmadd_ps(eight, d34, d12), m[5]);
}

// V[t][p][c] for the tiles [t0, t0 + tiles) of the whole tile grid (zeros past its end).
__attribute__((target("avx512f,fma"))) void transform_input(const WinogradConv& p, const float* x, int64_t t0,
                                                            int64_t tiles, int64_t tiles_h, int64_t tiles_w,
                                                            const float* zeros, float* V) {
  const int64_t C = p.C, T = p.N * tiles_h * tiles_w;
  for (int64_t tb = 0; tb < tiles; ++tb) {
    const int64_t t = t0 + tb;
    if (t >= T) {
      std::memset(V + tb * 36 * C, 0, sizeof(float) * 36 * C);
      continue;
    }
    const int64_t n = t / (tiles_h * tiles_w), r = t % (tiles_h * tiles_w);
    const int64_t iy0 = (r / tiles_w) * 4 - p.pad_t, ix0 = (r % tiles_w) * 4 - p.pad_l;
    // Where each of the 36 input pixels comes from: the image, or (outside it) a row of zeros.
    const float* img = x + n * p.H * p.W * C;
    const float* src[36];
    for (int i = 0; i < 6; ++i) {
      const bool vy = iy0 + i >= 0 && iy0 + i < p.H;
      for (int j = 0; j < 6; ++j) {
        const bool vx = ix0 + j >= 0 && ix0 + j < p.W;
        src[i * 6 + j] = vy && vx ? img + ((iy0 + i) * p.W + ix0 + j) * C : zeros;
      }
    }
    // The next tile's input, which usually comes from L3 or memory (a grid's cached layer
    // inputs exceed L2): prefetched while this one is transformed.
    if (t + 1 < T) {
      const int64_t n1 = (t + 1) / (tiles_h * tiles_w), r1 = (t + 1) % (tiles_h * tiles_w);
      const int64_t y1 = (r1 / tiles_w) * 4 - p.pad_t, x1 = (r1 % tiles_w) * 4 - p.pad_l;
      const int64_t xa = std::max<int64_t>(x1, 0), xb = std::min<int64_t>(x1 + 6, p.W);
      for (int64_t i = std::max<int64_t>(y1, 0); i < std::min<int64_t>(y1 + 6, p.H) && xa < xb; ++i) {
        const char* row = reinterpret_cast<const char*>(x + ((n1 * p.H + i) * p.W + xa) * C);
        const int64_t bytes = (xb - xa) * C * static_cast<int64_t>(sizeof(float));
        for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
      }
    }
    for (int64_t c = 0; c < C; c += 16) {
      __m512 d[6][6];
#pragma GCC unroll 6
      for (int i = 0; i < 6; ++i) {
#pragma GCC unroll 6
        for (int j = 0; j < 6; ++j) d[i][j] = _mm512_loadu_ps(src[i * 6 + j] + c);
      }
      __m512 col[6], r6[6], tmp[6][6];
      for (int j = 0; j < 6; ++j) {  // B^T d: along the rows of each column
        for (int i = 0; i < 6; ++i) col[i] = d[i][j];
        apply_bt(col, r6);
        for (int i = 0; i < 6; ++i) tmp[i][j] = r6[i];
      }
      for (int i = 0; i < 6; ++i) {  // (B^T d) B: along each row
        apply_bt(tmp[i], r6);
        for (int j = 0; j < 6; ++j) _mm512_storeu_ps(V + (tb * 36 + i * 6 + j) * C + c, r6[j]);
      }
    }
  }
}

// M[t][k0 .. k0 + 16 NV) = sum_c V[t][c] U[c][k] for R consecutive tiles.
template <int R, int NV>
__attribute__((target("avx512f,fma"))) void gemm_rows(const float* V, const float* U, float* M, int64_t C, int64_t K,
                                                      int64_t k0) {
  // The loops over r and v are unrolled so that the R x NV accumulators live in registers.
  __m512 acc[R][NV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < C; ++c) {
    __m512 u[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) u[v] = _mm512_loadu_ps(U + c * K + k0 + 16 * v);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(V[r * 36 * C + c]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(b, u[v], acc[r][v]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(M + r * 36 * K + k0 + 16 * v, acc[r][v]);
  }
}

template <int R, int NV>
__attribute__((target("avx512f,fma"))) void gemm_block(const float* V, const float* U, float* M, int64_t tiles,
                                                       int64_t C, int64_t K, int64_t k0) {
  for (int64_t t = 0; t < tiles; t += R) gemm_rows<R, NV>(V + t * 36 * C, U, M + t * 36 * K, C, K, k0);
}

// M[t][p] = V[t][p] U[p] for every tile of the block and every position p.
__attribute__((target("avx512f,fma"))) void multiply(const float* V, const float* U, float* M, int64_t tiles,
                                                     int64_t C, int64_t K) {
  for (int pos = 0; pos < 36; ++pos) {
    const float* Vp = V + pos * C;
    const float* Up = U + pos * C * K;
    float* Mp = M + pos * K;
    int64_t k0 = 0;
    for (; k0 + 64 <= K; k0 += 64) gemm_block<6, 4>(Vp, Up, Mp, tiles, C, K, k0);
    switch ((K - k0) / 16) {
      case 3: gemm_block<6, 3>(Vp, Up, Mp, tiles, C, K, k0); break;
      case 2: gemm_block<12, 2>(Vp, Up, Mp, tiles, C, K, k0); break;
      case 1: gemm_block<12, 1>(Vp, Up, Mp, tiles, C, K, k0); break;
      default: break;
    }
  }
}

// y for the tiles [t0, t0 + tiles): A^T M A + bias, clamped, the parts inside the output.
__attribute__((target("avx512f,fma"))) void transform_output(const WinogradConv& p, const float* M, const float* bias,
                                                             int64_t t0, int64_t tiles, int64_t tiles_h,
                                                             int64_t tiles_w, float* y) {
  const int64_t K = p.K, T = p.N * tiles_h * tiles_w;
  const __m512 lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
  for (int64_t tb = 0; tb < tiles && t0 + tb < T; ++tb) {
    const int64_t t = t0 + tb;
    const int64_t n = t / (tiles_h * tiles_w), r = t % (tiles_h * tiles_w);
    const int64_t oy0 = (r / tiles_w) * 4, ox0 = (r % tiles_w) * 4;
    const int rows = static_cast<int>(std::min<int64_t>(4, p.out_h - oy0));
    const int cols = static_cast<int>(std::min<int64_t>(4, p.out_w - ox0));
    float* img = y + n * p.out_h * p.out_w * K;
    const float* res = p.residual != nullptr ? p.residual + n * p.out_h * p.out_w * K : nullptr;
    for (int64_t k = 0; k < K; k += 16) {
      const __m512 b = bias != nullptr ? _mm512_loadu_ps(bias + k) : _mm512_setzero_ps();
      __m512 col[6], o4[4], tmp[4][6];
      for (int j = 0; j < 6; ++j) {  // A^T m: along the rows of each column
        for (int i = 0; i < 6; ++i) col[i] = _mm512_loadu_ps(M + (tb * 36 + i * 6 + j) * K + k);
        apply_at(col, o4);
        for (int i = 0; i < 4; ++i) tmp[i][j] = o4[i];
      }
      for (int i = 0; i < rows; ++i) {  // (A^T m) A: along each row
        apply_at(tmp[i], o4);
        for (int j = 0; j < cols; ++j) {
          const int64_t at = ((oy0 + i) * p.out_w + ox0 + j) * K + k;
          avx512::store_output(img + at, _mm512_add_ps(o4[j], b), nullptr, res != nullptr ? res + at : nullptr,
                               p.clamp, lo, hi);
        }
      }
    }
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace

bool winograd_cpu_supported() { return avx512::cpu_supported(); }

bool winograd_available(const WinogradConv& p) {
  // Below 64 channels in and out together the transforms cost more than the multiplies they
  // save (16 -> 16 channels on 14x14 maps ran 4% slower than oneDNN's direct convolution
  // in the shipped ResNet's grid).
  return avx512::cpu_supported() && p.C > 0 && p.C % 16 == 0 && p.K > 0 && p.K % 16 == 0 && p.C + p.K >= 64 &&
         p.pad_t >= 0 && p.pad_t < 3 && p.pad_l >= 0 && p.pad_l < 3 && p.out_h > 0 && p.out_w > 0 && p.N > 0;
}

void winograd_conv_f43(const WinogradConv& p, const float* x, const float* w, const float* bias, float* y,
                       WinogradScratch& s) {
  const int64_t tiles_h = (p.out_h + 3) / 4, tiles_w = (p.out_w + 3) / 4;
  const int64_t T = p.N * tiles_h * tiles_w;
  const int64_t tiles = block_tiles(p.C, p.K);
  s.zeros.assign(p.C, 0.0f);
  s.v.resize(tiles * 36 * p.C);
  s.m.resize(tiles * 36 * p.K);
  const float* U = s.weights
                       .get(w, static_cast<size_t>(p.K * p.C * 9), p.C,
                            [&](const float* src, std::vector<float>& u) {
                              u.resize(36 * p.C * p.K);
                              transform_weights(src, p.C, p.K, u.data());
                            })
                       .data();
  for (int64_t t0 = 0; t0 < T; t0 += tiles) {
    transform_input(p, x, t0, tiles, tiles_h, tiles_w, s.zeros.data(), s.v.data());
    multiply(s.v.data(), U, s.m.data(), tiles, p.C, p.K);
    transform_output(p, s.m.data(), bias, t0, tiles, tiles_h, tiles_w, y);
  }
}

}  // namespace qsweep

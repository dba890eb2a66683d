// Direct convolution over the inside taps only: see direct_conv.h.
#include "kernels/cpu/direct_conv.h"

#include <immintrin.h>

#include "kernels/cpu/avx512_common.h"

#include <algorithm>
#include <map>

namespace qsweep {

namespace {

// min(max(v, lo), hi) as _mm512_max_ps / _mm512_min_ps compute it (a NaN v gives lo), for
// the scalar path of pixels without inside taps.
float clamp_like_relu(float v, float lo, float hi) {
  const float m = v > lo ? v : lo;
  return m < hi ? m : hi;
}

std::pair<int64_t, int64_t> inside(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t k, int64_t in) {
  int64_t a = 0, b = k;
  while (a < k && o * stride - pad + a * dil < 0) ++a;
  while (b > a && o * stride - pad + (b - 1) * dil >= in) --b;
  return {a, b};
}

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
// GCC 12 warns about the deliberately undefined operand inside _mm512_min_ps/_mm512_max_ps.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

struct Rows {
  const float* x;
  int64_t x_off[8];  // each row's input pixel at tap (0, 0), as an offset into x: outside the
                     // input for a border pixel, whose inside taps' offsets bring it back in
  float* y[8];       // each row's output pixel
  const float* res[8];  // and its residual operand (when the epilogue adds one)
};

// y[r][k0 .. k0 + 16 NV) = act(bias + sum over taps t, channels c of x[r][t][c] w[t][c][k]) for
// R rows (the first `valid` of them stored).
template <int R, int NV>
__attribute__((target("avx512f,fma"))) void rows_kernel(const DirectConv& p, const Rows& rows, int valid,
                                                        const int64_t* tap_off, const float* const* tap_w, int taps,
                                                        const float* bias, int64_t k0) {
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  const int64_t C = p.C, K = p.K;
  for (int t = 0; t < taps; ++t) {
    const float* xr[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) xr[r] = rows.x + (rows.x_off[r] + tap_off[t]);
    const float* wt = tap_w[t] + k0;
    for (int64_t c = 0; c < C; ++c) {
      __m512 u[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) u[v] = _mm512_loadu_ps(wt + c * K + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 b = _mm512_set1_ps(xr[r][c]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(b, u[v], acc[r][v]);
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if (r >= valid) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      avx512::store_output(rows.y[r] + k0 + 16 * v, acc[r][v], bias != nullptr ? bias + k0 + 16 * v : nullptr,
                           p.residual != nullptr ? rows.res[r] + k0 + 16 * v : nullptr, p.clamp, lo, hi);
    }
  }
}

template <int R>
__attribute__((target("avx512f,fma"))) void all_columns(const DirectConv& p, const Rows& rows, int valid,
                                                        const int64_t* tap_off, const float* const* tap_w, int taps,
                                                        const float* bias) {
  int64_t k0 = 0;
  for (; k0 + 64 <= p.K; k0 += 64) rows_kernel<R, 4>(p, rows, valid, tap_off, tap_w, taps, bias, k0);
  switch ((p.K - k0) / 16) {
    case 3: rows_kernel<R, 3>(p, rows, valid, tap_off, tap_w, taps, bias, k0); break;
    case 2: rows_kernel<R, 2>(p, rows, valid, tap_off, tap_w, taps, bias, k0); break;
    case 1: rows_kernel<R, 1>(p, rows, valid, tap_off, tap_w, taps, bias, k0); break;
    default: break;
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace

bool direct_conv_available(const DirectConv& p) {
  return avx512::cpu_supported() && p.N > 0 && p.C > 0 && p.K > 0 && p.K % 16 == 0 && p.kh > 0 && p.kw > 0 &&
         p.stride_h > 0 && p.stride_w > 0 && p.dil_h > 0 && p.dil_w > 0 && p.out_h > 0 && p.out_w > 0;
}

void direct_conv(const DirectConv& p, const float* x, const float* w, const float* bias, float* y,
                 DirectConvScratch& s) {
  const int64_t C = p.C, K = p.K, taps_all = p.kh * p.kw;
  // Weights as [tap][c][k]: a tap's (c, k) block is a dense GEMM operand.
  const float* wt = s.weights
                        .get(w, static_cast<size_t>(K * C * taps_all), (C << 20) | taps_all,
                             [&](const float* src, std::vector<float>& out) {
                               out.resize(taps_all * C * K);
                               for (int64_t k = 0; k < K; ++k) {
                                 for (int64_t c = 0; c < C; ++c) {
                                   for (int64_t t = 0; t < taps_all; ++t) {
                                     out[(t * C + c) * K + k] = src[(k * C + c) * taps_all + t];
                                   }
                                 }
                               }
                             })
                        .data();
  // Output pixels grouped by their box of inside taps, made once per geometry.
  const std::array<int64_t, 12> geometry = {p.H,     p.W,     p.kh,    p.kw,    p.stride_h, p.stride_w,
                                            p.dil_h, p.dil_w, p.pad_t, p.pad_l, p.out_h,    p.out_w};
  auto found = s.groups.find(geometry);
  if (found == s.groups.end()) {
    std::map<std::array<int64_t, 4>, std::vector<std::pair<int64_t, int64_t>>> by_box;
    for (int64_t oy = 0; oy < p.out_h; ++oy) {
      const auto [ky0, ky1] = inside(oy, p.stride_h, p.pad_t, p.dil_h, p.kh, p.H);
      for (int64_t ox = 0; ox < p.out_w; ++ox) {
        const auto [kx0, kx1] = inside(ox, p.stride_w, p.pad_l, p.dil_w, p.kw, p.W);
        by_box[{ky0, ky1, kx0, kx1}].emplace_back(oy, ox);
      }
    }
    found = s.groups.emplace(geometry, DirectConvScratch::PixelGroups(by_box.begin(), by_box.end())).first;
  }
  const DirectConvScratch::PixelGroups& groups = found->second;
  // Rows per kernel call: enough accumulators to hide the FMA latency, few enough row
  // pointers to stay in registers.
  const int R = K % 64 == 0 || K % 48 == 0 ? 6 : 8;
  std::vector<int64_t> tap_off;
  std::vector<const float*> tap_w;
  for (const auto& [box, pixels] : groups) {
    const auto [ky0, ky1, kx0, kx1] = box;
    tap_off.clear();
    tap_w.clear();
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      for (int64_t kx = kx0; kx < kx1; ++kx) {
        tap_off.push_back((ky * p.dil_h * p.W + kx * p.dil_w) * C);
        tap_w.push_back(wt + (ky * p.kw + kx) * C * K);
      }
    }
    const int taps = static_cast<int>(tap_off.size());
    const int64_t m = static_cast<int64_t>(pixels.size()), rows_total = p.N * m;
    for (int64_t r0 = 0; r0 < rows_total; r0 += R) {
      Rows rows;
      rows.x = x;
      const int valid = static_cast<int>(std::min<int64_t>(R, rows_total - r0));
      for (int r = 0; r < R; ++r) {
        const int64_t row = r0 + std::min(r, valid - 1);  // a short block repeats its last row, unstored
        const int64_t n = row / m;
        const auto [oy, ox] = pixels[row % m];
        rows.x_off[r] = ((n * p.H + oy * p.stride_h - p.pad_t) * p.W + ox * p.stride_w - p.pad_l) * C;
        const int64_t at = ((n * p.out_h + oy) * p.out_w + ox) * K;
        rows.y[r] = y + at;
        rows.res[r] = p.residual != nullptr ? p.residual + at : nullptr;
      }
      if (taps == 0) {  // every tap on padding: the output is the bias
        for (int r = 0; r < valid; ++r) {
          for (int64_t k = 0; k < K; ++k) {
            float o = bias != nullptr ? bias[k] : 0.0f;
            if (p.residual != nullptr) o += rows.res[r][k];
            if (p.clamp) o = clamp_like_relu(o, p.lo, p.hi);
            rows.y[r][k] = o;
          }
        }
        continue;
      }
      if (R == 6) {
        all_columns<6>(p, rows, valid, tap_off.data(), tap_w.data(), taps, bias);
      } else {
        all_columns<8>(p, rows, valid, tap_off.data(), tap_w.data(), taps, bias);
      }
    }
  }
}

}  // namespace qsweep

// What the CPU convolution kernel tests share: a convolution summed in double precision
// (NHWC input, OIHW weights, the DirectConv parameters), the check of a kernel's output
// against it, and the check that each image comes out as if computed alone.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/direct_conv.h"

namespace qsweep::testing {

struct ConvReference {
  std::vector<double> y, scale;  // the exact result and sum |x w| + |b| per output
};

inline ConvReference conv_reference(const DirectConv& p, const std::vector<float>& x, const std::vector<float>& w,
                                    const std::vector<float>* b) {
  ConvReference r;
  r.y.resize(p.N * p.out_h * p.out_w * p.K);
  r.scale.resize(r.y.size());
  for (int64_t n = 0; n < p.N; ++n) {
    for (int64_t oy = 0; oy < p.out_h; ++oy) {
      for (int64_t ox = 0; ox < p.out_w; ++ox) {
        for (int64_t k = 0; k < p.K; ++k) {
          double acc = b ? (*b)[k] : 0.0, mag = b ? std::abs((*b)[k]) : 0.0;
          for (int64_t ky = 0; ky < p.kh; ++ky) {
            for (int64_t kx = 0; kx < p.kw; ++kx) {
              const int64_t iy = oy * p.stride_h - p.pad_t + ky * p.dil_h;
              const int64_t ix = ox * p.stride_w - p.pad_l + kx * p.dil_w;
              if (iy < 0 || iy >= p.H || ix < 0 || ix >= p.W) continue;
              for (int64_t c = 0; c < p.C; ++c) {
                const double t = static_cast<double>(x[((n * p.H + iy) * p.W + ix) * p.C + c]) *
                                 w[((k * p.C + c) * p.kh + ky) * p.kw + kx];
                acc += t;
                mag += std::abs(t);
              }
            }
          }
          if (p.clamp) acc = std::min<double>(std::max<double>(acc, p.lo), p.hi);
          const size_t o = ((n * p.out_h + oy) * p.out_w + ox) * p.K + k;
          r.y[o] = acc;
          r.scale[o] = mag;
        }
      }
    }
  }
  return r;
}

inline std::vector<float> normal(std::mt19937& rng, size_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& e : v) e = d(rng);
  return v;
}

// The fused activation of random test case number `act`: 0 none, 1 ReLU, 2 clip to
// [-0.5, 0.75].
inline void set_activation(int act, bool& clamp, float& lo, float& hi) {
  clamp = act != 0;
  lo = act == 1 ? 0.0f : -0.5f;
  hi = act == 1 ? std::numeric_limits<float>::infinity() : 0.75f;
}

// Runs kernel(y) on an output prefilled with NaN and compares every output with the
// reference: each must be written and within the clamp; where every tap is on padding and
// there is no bias, exactly the (clamped) zero. Returns the largest error over sum |x w|.
template <typename Kernel>
double worst_error_against_reference(const DirectConv& p, const std::vector<float>& x, const std::vector<float>& w,
                                     const std::vector<float>* b, Kernel&& kernel) {
  std::vector<float> y(p.N * p.out_h * p.out_w * p.K, std::numeric_limits<float>::quiet_NaN());
  kernel(y.data());
  const ConvReference ref = conv_reference(p, x, w, b);
  double worst = 0.0;
  for (size_t o = 0; o < y.size(); ++o) {
    if (std::isnan(y[o])) {
      ADD_FAILURE() << "output " << o << " not written";
      return std::numeric_limits<double>::infinity();
    }
    if (p.clamp && (y[o] < p.lo || y[o] > p.hi)) ADD_FAILURE() << "output " << o << " outside the clamp: " << y[o];
    if (ref.scale[o] == 0.0) {
      EXPECT_EQ(y[o], static_cast<float>(ref.y[o])) << "output " << o;
      continue;
    }
    worst = std::max(worst, std::abs(y[o] - ref.y[o]) / ref.scale[o]);
  }
  return worst;
}

// A random case of shape p (inputs ~ N(0, 1), weights ~ N(0, 0.2), bias ~ N(0, 0.5) or
// none) run through kernel(x, w, bias or null, y) and checked as above.
template <typename Kernel>
double random_case_error(std::mt19937& rng, const DirectConv& p, bool with_bias, Kernel&& kernel) {
  const auto x = normal(rng, p.N * p.H * p.W * p.C, 1.0f);
  const auto w = normal(rng, p.K * p.C * p.kh * p.kw, 0.2f);
  const auto b = normal(rng, p.K, 0.5f);
  return worst_error_against_reference(p, x, w, with_bias ? &b : nullptr, [&](float* y) {
    kernel(x.data(), w.data(), with_bias ? b.data() : nullptr, y);
  });
}

// kernel(images, x, y) on the whole batch and on each image alone: the same bits.
template <typename Kernel>
void expect_images_computed_as_if_alone(int64_t images, int64_t in_image, int64_t out_image,
                                        const std::vector<float>& x, Kernel&& kernel) {
  std::vector<float> all(images * out_image);
  kernel(images, x.data(), all.data());
  for (int64_t n = 0; n < images; ++n) {
    std::vector<float> alone(out_image);
    kernel(1, x.data() + n * in_image, alone.data());
    for (int64_t i = 0; i < out_image; ++i) ASSERT_EQ(alone[i], all[n * out_image + i]) << "image " << n << " " << i;
  }
}

}  // namespace qsweep::testing

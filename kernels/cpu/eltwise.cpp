#include "kernels/cpu/eltwise.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace qsweep {

void activation(Activation act, float alpha, float beta, const float* x, float* y, size_t n) {
  switch (act) {
    case Activation::kRelu:
      for (size_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
      break;
    case Activation::kClip:
      for (size_t i = 0; i < n; ++i) y[i] = std::min(std::max(x[i], alpha), beta);
      break;
    case Activation::kLeakyRelu:
      for (size_t i = 0; i < n; ++i) y[i] = x[i] >= 0.0f ? x[i] : alpha * x[i];
      break;
    case Activation::kSigmoid:
      for (size_t i = 0; i < n; ++i) y[i] = 1.0f / (1.0f + std::exp(-x[i]));
      break;
    case Activation::kHardSigmoid:
      for (size_t i = 0; i < n; ++i) y[i] = std::max(0.0f, std::min(1.0f, alpha * x[i] + beta));
      break;
    case Activation::kHardSwish:
      for (size_t i = 0; i < n; ++i) {
        y[i] = x[i] * std::max(0.0f, std::min(1.0f, x[i] * (1.0f / 6.0f) + 0.5f));
      }
      break;
  }
}

// Cloned for AVX-512 and AVX2 like the fake-quant loops (no multiply, so no FMA contraction
// can change its bits): a residual join of the grid's suffixes runs it on every call.
__attribute__((target_clones("avx512f", "avx2", "default")))
void add_clamp(const float* a, const float* b, float* y, size_t n, float lo, float hi, bool relu) {
  // The same expressions as activation() applied to the rounded sum, so the result is that of
  // Add then Relu/Clip bit for bit (NaN included).
  if (relu) {
    for (size_t i = 0; i < n; ++i) {
      const float s = a[i] + b[i];
      y[i] = s > 0.0f ? s : 0.0f;
    }
  } else {
    for (size_t i = 0; i < n; ++i) y[i] = std::min(std::max(a[i] + b[i], lo), hi);
  }
}

std::vector<int64_t> broadcast_shape(std::span<const int64_t> a, std::span<const int64_t> b) {
  const size_t r = std::max(a.size(), b.size());
  std::vector<int64_t> out(r);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da != db && da != 1 && db != 1) throw std::invalid_argument("shapes do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

// Element strides of `shape` aligned to the right of out_shape, 0 on broadcast dims.
std::vector<int64_t> broadcast_strides(std::span<const int64_t> shape,
                                       std::span<const int64_t> out_shape) {
  const size_t r = out_shape.size();
  std::vector<int64_t> strides(r, 0);
  int64_t s = 1;
  for (size_t k = shape.size(); k-- > 0;) {
    const size_t i = k + (r - shape.size());
    strides[i] = shape[k] == 1 ? 0 : s;
    s *= shape[k];
  }
  return strides;
}

template <typename F>
void broadcast_apply(const float* a, std::span<const int64_t> a_shape, const float* b,
                     std::span<const int64_t> b_shape, float* out,
                     std::span<const int64_t> out_shape, F f) {
  int64_t total = 1;
  for (int64_t d : out_shape) total *= d;
  const bool same = std::equal(a_shape.begin(), a_shape.end(), out_shape.begin(), out_shape.end()) &&
                    std::equal(b_shape.begin(), b_shape.end(), out_shape.begin(), out_shape.end());
  if (same) {
    for (int64_t i = 0; i < total; ++i) out[i] = f(a[i], b[i]);
    return;
  }
  const size_t r = out_shape.size();
  const auto sa = broadcast_strides(a_shape, out_shape);
  const auto sb = broadcast_strides(b_shape, out_shape);
  std::vector<int64_t> idx(r, 0);
  int64_t ia = 0, ib = 0;
  for (int64_t i = 0; i < total; ++i) {
    out[i] = f(a[ia], b[ib]);
    for (size_t d = r; d-- > 0;) {  // odometer increment
      ++idx[d];
      ia += sa[d];
      ib += sb[d];
      if (idx[d] < out_shape[d]) break;
      ia -= sa[d] * out_shape[d];
      ib -= sb[d] * out_shape[d];
      idx[d] = 0;
    }
  }
}

}  // namespace

void broadcast_binary(BinaryOp op, const float* a, std::span<const int64_t> a_shape,
                      const float* b, std::span<const int64_t> b_shape, float* out,
                      std::span<const int64_t> out_shape) {
  if (op == BinaryOp::kAdd) {
    broadcast_apply(a, a_shape, b, b_shape, out, out_shape, [](float u, float v) { return u + v; });
  } else {
    broadcast_apply(a, a_shape, b, b_shape, out, out_shape, [](float u, float v) { return u * v; });
  }
}

void channel_affine(const float* x, float* y, size_t n, size_t c, size_t inner,
                    const float* scale, const float* shift) {
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < c; ++j) {
      const size_t base = (i * c + j) * inner;
      for (size_t k = 0; k < inner; ++k) y[base + k] = x[base + k] * scale[j] + shift[j];
    }
  }
}

void softmax(const float* x, float* y, size_t outer, size_t k, size_t inner) {
  for (size_t o = 0; o < outer; ++o) {
    for (size_t in = 0; in < inner; ++in) {
      const float* xr = x + o * k * inner + in;
      float* yr = y + o * k * inner + in;
      float m = xr[0];
      for (size_t i = 1; i < k; ++i) m = std::max(m, xr[i * inner]);
      float sum = 0.0f;
      for (size_t i = 0; i < k; ++i) {
        yr[i * inner] = std::exp(xr[i * inner] - m);
        sum += yr[i * inner];
      }
      for (size_t i = 0; i < k; ++i) yr[i * inner] /= sum;
    }
  }
}

void concat(std::span<const float* const> inputs, std::span<const size_t> axis_sizes,
            size_t outer, size_t inner, float* out) {
  size_t total_axis = 0;
  for (size_t s : axis_sizes) total_axis += s;
  for (size_t o = 0; o < outer; ++o) {
    float* dst = out + o * total_axis * inner;
    for (size_t t = 0; t < inputs.size(); ++t) {
      const size_t len = axis_sizes[t] * inner;
      std::copy_n(inputs[t] + o * len, len, dst);
      dst += len;
    }
  }
}

void pad(const float* x, std::span<const int64_t> in_shape, std::span<const int64_t> pads,
         PadMode mode, float value, float* y) {
  const size_t r = in_shape.size();
  std::vector<int64_t> out_shape(r), in_strides(r, 1);
  int64_t total = 1;
  for (size_t d = 0; d < r; ++d) {
    out_shape[d] = in_shape[d] + pads[d] + pads[d + r];
    total *= out_shape[d];
  }
  for (size_t d = r - 1; d-- > 0;) in_strides[d] = in_strides[d + 1] * in_shape[d + 1];
  std::vector<int64_t> idx(r, 0);
  for (int64_t i = 0; i < total; ++i) {
    int64_t offset = 0;
    bool inside = true;
    for (size_t d = 0; d < r; ++d) {
      int64_t s = idx[d] - pads[d];
      if (s < 0 || s >= in_shape[d]) {
        if (mode == PadMode::kConstant) {
          inside = false;
          break;
        }
        if (mode == PadMode::kEdge) {
          s = std::clamp<int64_t>(s, 0, in_shape[d] - 1);
        } else {  // reflect, without repeating the edge
          const int64_t n = in_shape[d];
          if (n == 1) {
            s = 0;
          } else {
            const int64_t period = 2 * (n - 1);
            s = ((s % period) + period) % period;
            if (s >= n) s = period - s;
          }
        }
      }
      offset += s * in_strides[d];
    }
    y[i] = inside ? x[offset] : value;
    for (size_t d = r; d-- > 0;) {
      if (++idx[d] < out_shape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace qsweep

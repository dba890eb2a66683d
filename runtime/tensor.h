// A dense float32 host tensor, row-major (NCHW for images).
#pragma once

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace qsweep {

using Shape = std::vector<int64_t>;

inline int64_t shape_numel(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<>());
}

std::string shape_str(const Shape& s);

struct Tensor {
  Shape shape;  // logical shape, always (N, C, H, W) order for images
  std::vector<float> data;
  // Physical layout of a rank-4 tensor: false = NCHW, true = NHWC (channels innermost, what
  // oneDNN's fast convolutions read and write). Ops that need NCHW convert first.
  bool nhwc = false;

  Tensor() = default;
  explicit Tensor(Shape s) : shape(std::move(s)), data(shape_numel(shape)) {}
  Tensor(Shape s, std::vector<float> d) : shape(std::move(s)), data(std::move(d)) {}

  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  int64_t dim(size_t i) const { return shape[i]; }
  size_t rank() const { return shape.size(); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
  // Resizes without releasing capacity, so buffers reused across batches do not reallocate.
  void reshape_to(const Shape& s) {
    shape = s;
    nhwc = false;
    data.resize(shape_numel(shape));
  }
};

// out = x in NCHW layout (a copy; x may already be NCHW).
inline void to_nchw(const Tensor& x, Tensor& out) {
  out.reshape_to(x.shape);
  if (!x.nhwc) {
    out.data = x.data;
    return;
  }
  const int64_t N = x.shape[0], C = x.shape[1], HW = x.shape[2] * x.shape[3];
  for (int64_t n = 0; n < N; ++n) {
    const float* src = x.data.data() + n * HW * C;
    float* dst = out.data.data() + n * C * HW;
    for (int64_t k = 0; k < HW; ++k) {
      for (int64_t c = 0; c < C; ++c) dst[c * HW + k] = src[k * C + c];
    }
  }
}

}  // namespace qsweep

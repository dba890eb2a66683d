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
  Shape shape;
  std::vector<float> data;

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
    data.resize(shape_numel(shape));
  }
};

}  // namespace qsweep

// A network that is NaN on some calibration images only, for the calibration tests of both
// backends: x * 1e38 + x * -1e38 is inf - inf where |x| > 3.4 and 0 elsewhere, read by a Conv
// ('conv', its input 's'). With mean 0 and std 0.1, pixel 10 gives 0.39 (finite) and pixel 250
// gives 9.8 (NaN).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/data.h"
#include "runtime/onnx_import.h"
#include "tests/runtime/onnx_builder.h"

namespace qsweep::testing {

inline Graph partly_nan_network() {
  test::OnnxBuilder b;
  b.input("x", {1, 4, 4}).initializer("big", {1e38f}, {}).initializer("neg", {-1e38f}, {});
  b.initializer("w", std::vector<float>(9, 0.5f), {1, 1, 3, 3});
  b.node("Mul", {"x", "big"}, {"p"}, {}, "mul_p").node("Mul", {"x", "neg"}, {"m"}, {}, "mul_m");
  b.node("Add", {"p", "m"}, {"s"}, {}, "add").node("Conv", {"s", "w"}, {"c"}, {}, "conv");
  b.node("Flatten", {"c"}, {"y"}, {}, "flat").output("y");
  return import_onnx_bytes(b.serialize(), "nan.onnx");
}

// 8 images of 4 x 4 pixels of 10, but image 5, which holds 250s among its pixels.
inline Dataset partly_nan_images() {
  Dataset d;
  d.name = "synthetic";
  d.count = 8, d.channels = 1, d.height = 4, d.width = 4, d.num_classes = 4;
  d.pixels.assign(8 * 16, 10);
  for (int i = 0; i < 16; ++i) d.pixels[5 * 16 + i] = static_cast<uint8_t>(i % 2 ? 250 : 0);
  d.labels.assign(8, 0);
  return d;
}

}  // namespace qsweep::testing

// Image classification data: IDX files (MNIST / Fashion-MNIST layout), gzipped or not.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace qsweep {

// Where the Debian package dataset-fashion-mnist puts the files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// A split held in memory as uint8 pixels (N, C, H, W) and int32 labels.
struct Dataset {
  std::string name;         // e.g. "fashion-mnist/test"
  std::string images_path;  // the files it came from
  std::string labels_path;
  int64_t count = 0, channels = 0, height = 0, width = 0;
  std::vector<uint8_t> pixels;
  std::vector<int32_t> labels;
  int num_classes = 0;  // max label + 1

  int64_t sample_size() const { return channels * height * width; }
};

// Reads an IDX image file (magic 0x00000803, u8 (N, H, W)) and its label file (0x00000801).
// `.gz` files are read through zlib. Throws UserError naming the file on any mismatch.
Dataset load_idx(const std::string& images_path, const std::string& labels_path, const std::string& name);

// The split of an IDX folder: "train" -> train-images-idx3-ubyte[.gz], "test" -> t10k-*.
Dataset load_idx_split(const std::string& folder, const std::string& split);

// Normalization: x = (pixel / 255 - mean[c]) / std[c], in float32, as torchvision's
// ToTensor + Normalize compute it.
struct Normalization {
  std::vector<float> mean, std;
};

// Fills `out` with images [begin, begin + n) as float32 (n, C, H, W).
void load_batch(const Dataset& d, const Normalization& norm, int64_t begin, int64_t n, Tensor& out);

}  // namespace qsweep

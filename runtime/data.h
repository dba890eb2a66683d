// Image classification data: IDX files (MNIST / Fashion-MNIST layout), gzipped or not, and
// image folders (torchvision's ImageFolder layout) of JPEG and PNG files.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace qsweep {

// Where the Debian package dataset-fashion-mnist puts the files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// torchvision's evaluation transforms of an image folder, before ToTensor + Normalize:
// [Grayscale() for a 1-channel model,] Resize(resize) if resize > 0, CenterCrop(crop) if
// crop > 0 (runtime/image.h, bit for bit as on PIL images).
struct ImageTransforms {
  int resize = 0;
  int crop = 0;
};

// The order of a split's images, which decides what "the first N images" are.
enum class ImageOrder {
  kFile,         // as read: IDX order, or ImageFolder's (class by class)
  kInterleaved,  // class by class in turn: round r holds the r-th image (in file order) of
                 // every class that has one, classes by label
  kShuffled,     // a seeded shuffle of the file order (see image_order)
};

// A split: IDX data held in memory as uint8 pixels (N, C, H, W), or an image folder's files,
// decoded and transformed by load_batch (pixels stays empty); int32 labels either way.
struct Dataset {
  std::string name;         // e.g. "fashion-mnist/test"
  std::string images_path;  // the files it came from
  std::string labels_path;
  int64_t count = 0, channels = 0, height = 0, width = 0;
  std::vector<uint8_t> pixels;
  std::vector<int32_t> labels;
  int num_classes = 0;  // max label + 1

  // Image folders: the files in ImageFolder's order, the class folder names (label = index),
  // and the transforms that bring every image to (channels, height, width).
  std::vector<std::string> files;
  std::vector<std::string> classes;
  ImageTransforms transforms;
  ImageOrder order = ImageOrder::kFile;  // reorder_split()'s

  int64_t sample_size() const { return channels * height * width; }
  bool image_folder() const { return !files.empty(); }
};

// Reads an IDX image file (magic 0x00000803, u8 (N, H, W)) and its label file (0x00000801).
// `.gz` files are read through zlib. Throws UserError naming the file on any mismatch.
Dataset load_idx(const std::string& images_path, const std::string& labels_path, const std::string& name);

// The split of an IDX folder: "train" -> train-images-idx3-ubyte[.gz], "test" -> t10k-*.
Dataset load_idx_split(const std::string& folder, const std::string& split);

// The split `split` of an image folder: <folder>/<split>/<class>/**/<image>.jpg, read as
// torchvision's ImageFolder does (classes sorted by name, labels 0.. in that order; files in
// sorted order within each class, subfolders included). JPEG and PNG files only (.jpg, .jpeg, .png, any
// case); other image formats are refused, other files ignored. `channels` 3 reads RGB, 1
// grayscale. The first image fixes the sample shape after the transforms; load_batch refuses
// an image that comes out otherwise.
Dataset load_image_folder_split(const std::string& folder, const std::string& split, int channels,
                                const ImageTransforms& transforms);

// "file", "interleaved", "shuffled" -> the order; false for anything else.
bool parse_image_order(const std::string& name, ImageOrder& out);
const char* image_order_name(ImageOrder order);

// The permutation of a split with these labels: element i is the file-order index of the
// i-th image. kShuffled is Fisher-Yates from the last position down, each index drawn from
// std::mt19937_64(seed) by rejection (the largest multiple of the range below 2^64), so the
// same seed gives the same order on every platform.
std::vector<int64_t> image_order(const std::vector<int32_t>& labels, ImageOrder order, uint64_t seed);

// Puts split d in `order` (pixels or files, and labels); kFile leaves it as it is.
void reorder_split(Dataset& d, ImageOrder order, uint64_t seed);

// Identity of a split for manifests and shard checks: the sha256 of the IDX files. For an
// image folder, of one line per file, sorted by path (so not by data.*.order): its path and
// size, and for the images a run reads (the first `used` in the split's order) the sha256 of
// the file's bytes; the labels' of the files' paths and classes. `stop` set while the files
// are read: the rest are skipped and "" is returned (the caller ends the run).
std::string images_sha256(const Dataset& d, int64_t used, const std::atomic<bool>* stop = nullptr);
std::string labels_sha256(const Dataset& d);

// Normalization: x = (pixel / 255 - mean[c]) / std[c], in float32, as torchvision's
// ToTensor + Normalize compute it.
struct Normalization {
  std::vector<float> mean, std;
};

// Fills `out` with images [begin, begin + n) as float32 (n, C, H, W).
void load_batch(const Dataset& d, const Normalization& norm, int64_t begin, int64_t n, Tensor& out);

}  // namespace qsweep

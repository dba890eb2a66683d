#include "runtime/data.h"

#include <filesystem>

#include <zlib.h>

#include "runtime/error.h"

namespace qsweep {
namespace {

std::vector<uint8_t> read_maybe_gzipped(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) user_error("data file '{}' does not exist", path);
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files transparently too
  if (!f) user_error("data file '{}' cannot be opened", path);
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string message = msg ? msg : "";
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
    user_error("data file '{}' is corrupt ({})", path, message);
  }
  return out;
}

uint32_t be32(const std::vector<uint8_t>& b, size_t off) {
  return (uint32_t{b[off]} << 24) | (uint32_t{b[off + 1]} << 16) | (uint32_t{b[off + 2]} << 8) | b[off + 3];
}

std::string first_existing(const std::string& folder, const std::string& stem) {
  for (const char* ext : {".gz", ""}) {
    const std::string p = folder + "/" + stem + ext;
    if (std::filesystem::exists(p)) return p;
  }
  user_error("data folder '{}' has no '{}' or '{}.gz' (expected the IDX layout of MNIST/Fashion-MNIST; "
             "Fashion-MNIST comes with the Debian package dataset-fashion-mnist)", folder, stem, stem);
}

}  // namespace

Dataset load_idx(const std::string& images_path, const std::string& labels_path, const std::string& name) {
  Dataset d;
  d.name = name;
  d.images_path = images_path;
  d.labels_path = labels_path;
  const auto img = read_maybe_gzipped(images_path);
  if (img.size() < 16 || be32(img, 0) != 0x00000803) {
    user_error("data file '{}' is not an IDX image file (magic 0x00000803, unsigned bytes, N x H x W)", images_path);
  }
  d.count = be32(img, 4);
  d.channels = 1;
  d.height = be32(img, 8);
  d.width = be32(img, 12);
  if (img.size() != 16 + static_cast<size_t>(d.count * d.height * d.width)) {
    user_error("data file '{}' holds {} bytes of pixels; its header promises {} images of {}x{}", images_path,
               img.size() - 16, d.count, d.height, d.width);
  }
  d.pixels.assign(img.begin() + 16, img.end());
  const auto lab = read_maybe_gzipped(labels_path);
  if (lab.size() < 8 || be32(lab, 0) != 0x00000801) {
    user_error("data file '{}' is not an IDX label file (magic 0x00000801)", labels_path);
  }
  const int64_t nl = be32(lab, 4);
  if (nl != d.count || lab.size() != 8 + static_cast<size_t>(nl)) {
    user_error("data file '{}' has {} labels for {} images in '{}'", labels_path, nl, d.count, images_path);
  }
  d.labels.assign(lab.begin() + 8, lab.end());
  for (int32_t l : d.labels) d.num_classes = std::max(d.num_classes, l + 1);
  return d;
}

Dataset load_idx_split(const std::string& folder, const std::string& split) {
  std::string prefix;
  if (split == "train") prefix = "train";
  else if (split == "test") prefix = "t10k";
  else user_error("data split '{}' is not known; accepted: \"train\", \"test\"", split);
  // Images first, so a folder missing both names the image file.
  const std::string images = first_existing(folder, prefix + "-images-idx3-ubyte");
  const std::string labels = first_existing(folder, prefix + "-labels-idx1-ubyte");
  return load_idx(images, labels, split);
}

void load_batch(const Dataset& d, const Normalization& norm, int64_t begin, int64_t n, Tensor& out) {
  out.reshape_to({n, d.channels, d.height, d.width});
  const int64_t hw = d.height * d.width;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* src = d.pixels.data() + (begin + i) * d.sample_size();
    float* dst = out.ptr() + i * d.sample_size();
    for (int64_t c = 0; c < d.channels; ++c) {
      const float m = norm.mean[c], s = norm.std[c];
      for (int64_t k = 0; k < hw; ++k) dst[c * hw + k] = (static_cast<float>(src[c * hw + k]) / 255.0f - m) / s;
    }
  }
}

}  // namespace qsweep

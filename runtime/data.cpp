#include "runtime/data.h"

#include <algorithm>
#include <cctype>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>

#include <omp.h>
#include <zlib.h>

#include "runtime/error.h"
#include "runtime/image.h"
#include "runtime/sha256.h"

namespace qsweep {
namespace {

std::vector<uint8_t> read_maybe_gzipped(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    user_error("data file '{}' {}", path,
               std::filesystem::exists(path, ec) ? "is not a regular file" : "does not exist");
  }
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

// A data.path that is not a folder at all, said as such (not as a missing file inside it).
void require_folder(const std::string& folder) {
  std::error_code ec;
  if (std::filesystem::is_directory(folder, ec)) return;
  user_error("data folder '{}' {}", folder, std::filesystem::exists(folder, ec) ? "is not a folder" : "does not exist");
}

std::string first_existing(const std::string& folder, const std::string& stem) {
  require_folder(folder);
  for (const char* ext : {".gz", ""}) {
    const std::string p = folder + "/" + stem + ext;
    std::error_code ec;  // a symlink loop or an unreadable folder reads as absent
    if (std::filesystem::exists(p, ec)) return p;
  }
  user_error("data folder '{}' has no '{}' or '{}.gz' (expected the IDX layout of MNIST/Fashion-MNIST; "
             "Fashion-MNIST comes with the Debian package dataset-fashion-mnist)", folder, stem, stem);
}

namespace fs = std::filesystem;

bool ends_with_any(const std::string& name, std::initializer_list<const char*> exts) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* e : exts) {
    const std::string ext = e;
    if (lower.size() >= ext.size() && lower.compare(lower.size() - ext.size(), ext.size(), ext) == 0) return true;
  }
  return false;
}

// One image of an image folder through the transforms (ImageTransforms).
Image8 transformed_image(const Dataset& d, const std::string& path) {
  Image8 im = decode_image(path);
  im = d.channels == 1 ? to_gray(im) : to_rgb(im);  // convert("L") of convert("RGB") of an L image is itself
  if (d.transforms.resize > 0) {
    // An extreme aspect ratio makes the longer side huge (torchvision would try it too).
    const auto [w, h] = shorter_side_size(im.width, im.height, d.transforms.resize);
    if (w * h > 2 * int64_t{89478485} || std::max(w, h) > (int64_t{1} << 20)) {
      user_error("{}: {}x{} resized to {}x{} would have {} pixels, more than the {} Pillow accepts", path, im.width,
                 im.height, w, h, w * h, 2 * int64_t{89478485});
    }
    im = resize_shorter(im, d.transforms.resize);
  }
  if (d.transforms.crop > 0) im = center_crop(im, d.transforms.crop, d.transforms.crop);
  return im;
}

}  // namespace

namespace {
Dataset scan_image_folder(const fs::path& root, const std::string& split, int channels,
                          const ImageTransforms& transforms);
}  // namespace

Dataset load_image_folder_split(const std::string& folder, const std::string& split, int channels,
                                const ImageTransforms& transforms) {
  if (channels != 1 && channels != 3) {
    user_error("image folders feed models with 1 (grayscale) or 3 (RGB) input channels; this model has {}", channels);
  }
  require_folder(folder);
  const fs::path root = fs::path(folder) / split;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    user_error("data folder '{}' has no folder '{}' (image folders: <data.path>/<split>/<class>/<image>.jpg, the "
               "split folders named by data.eval.split and data.calibration.split)",
               folder, split);
  }
  try {
    return scan_image_folder(root, split, channels, transforms);
  } catch (const fs::filesystem_error& e) {
    // An unreadable folder, a symbolic link loop: one sentence naming it.
    user_error("image folder '{}': cannot read '{}' ({})", root.string(), e.path1().string(), e.code().message());
  }
}

namespace {

Dataset scan_image_folder(const fs::path& root, const std::string& split, int channels,
                          const ImageTransforms& transforms) {
  Dataset d;
  d.name = split;
  d.images_path = d.labels_path = root.string();
  d.channels = channels;
  d.transforms = transforms;
  for (const auto& e : fs::directory_iterator(root, fs::directory_options::follow_directory_symlink)) {
    if (e.is_directory()) d.classes.push_back(e.path().filename().string());
  }
  std::sort(d.classes.begin(), d.classes.end());
  if (d.classes.empty()) user_error("image folder '{}' has no class folders (expected <class>/<image>.jpg)", root.string());
  for (size_t label = 0; label < d.classes.size(); ++label) {
    // torchvision: sorted(os.walk(class folder)), then each folder's files sorted.
    const fs::path class_dir = root / d.classes[label];
    std::vector<std::string> dirs{class_dir.string()};
    for (auto it = fs::recursive_directory_iterator(class_dir, fs::directory_options::follow_directory_symlink);
         it != fs::recursive_directory_iterator(); ++it) {
      if (it->is_directory()) dirs.push_back(it->path().string());
    }
    std::sort(dirs.begin(), dirs.end());
    const size_t before = d.files.size();
    for (const auto& dir : dirs) {
      std::vector<std::string> names;
      for (const auto& e : fs::directory_iterator(dir)) {
        if (!e.is_directory()) names.push_back(e.path().filename().string());
      }
      std::sort(names.begin(), names.end());
      for (const auto& name : names) {
        const std::string path = dir + "/" + name;
        if (ends_with_any(name, {".jpg", ".jpeg", ".png"})) {
          d.files.push_back(path);
          d.labels.push_back(static_cast<int32_t>(label));
        } else if (ends_with_any(name, {".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})) {
          user_error("{}: qsweep reads JPEG and PNG images only (libjpeg-turbo, libpng); convert this file or remove it",
                     path);
        }
      }
    }
    if (d.files.size() == before) {
      user_error("class folder '{}' holds no JPEG or PNG image (.jpg, .jpeg, .png)", class_dir.string());
    }
  }
  d.count = static_cast<int64_t>(d.files.size());
  d.num_classes = static_cast<int>(d.classes.size());
  const Image8 first = transformed_image(d, d.files[0]);
  d.height = first.height;
  d.width = first.width;
  return d;
}

}  // namespace

bool parse_image_order(const std::string& name, ImageOrder& out) {
  if (name == "file") out = ImageOrder::kFile;
  else if (name == "interleaved") out = ImageOrder::kInterleaved;
  else if (name == "shuffled") out = ImageOrder::kShuffled;
  else return false;
  return true;
}

const char* image_order_name(ImageOrder order) {
  switch (order) {
    case ImageOrder::kInterleaved:
      return "interleaved";
    case ImageOrder::kShuffled:
      return "shuffled";
    case ImageOrder::kFile:
      break;
  }
  return "file";
}

std::vector<int64_t> image_order(const std::vector<int32_t>& labels, ImageOrder order, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(labels.size());
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  if (order == ImageOrder::kInterleaved) {
    std::map<int32_t, std::vector<int64_t>> by_class;  // labels in increasing order
    for (int64_t i = 0; i < n; ++i) by_class[labels[i]].push_back(i);
    size_t k = 0;
    for (size_t round = 0; k < idx.size(); ++round) {
      for (const auto& [label, members] : by_class) {
        if (round < members.size()) idx[k++] = members[round];
      }
    }
  } else if (order == ImageOrder::kShuffled) {
    std::mt19937_64 rng(seed);
    for (int64_t i = n - 1; i > 0; --i) {
      // j uniform in [0, i] by rejection: no modulo bias, no implementation-defined distribution.
      const uint64_t range = static_cast<uint64_t>(i) + 1;
      const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % range;
      uint64_t r;
      do {
        r = rng();
      } while (r >= limit);
      std::swap(idx[i], idx[static_cast<int64_t>(r % range)]);
    }
  }
  return idx;
}

void reorder_split(Dataset& d, ImageOrder order, uint64_t seed) {
  d.order = order;
  if (order == ImageOrder::kFile) return;
  const std::vector<int64_t> idx = image_order(d.labels, order, seed);
  std::vector<int32_t> labels(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) labels[i] = d.labels[idx[i]];
  d.labels = std::move(labels);
  if (d.image_folder()) {
    std::vector<std::string> files(idx.size());
    for (size_t i = 0; i < idx.size(); ++i) files[i] = std::move(d.files[idx[i]]);
    d.files = std::move(files);
  } else {
    const size_t s = static_cast<size_t>(d.sample_size());
    std::vector<uint8_t> pixels(d.pixels.size());
    for (size_t i = 0; i < idx.size(); ++i) {
      std::copy_n(d.pixels.begin() + idx[i] * s, s, pixels.begin() + i * s);
    }
    d.pixels = std::move(pixels);
  }
}

namespace {

// The sha256 of a file's bytes, or "?" when it cannot be read (decoding it reports why).
std::string content_sha256(const std::string& path, std::vector<char>& buf) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "?";
  Sha256 s;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    s.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  return in.bad() ? "?" : s.hex_digest();
}

// One line per file of an image folder, sorted by path relative to the split folder, so the
// identity does not depend on data.*.order; `field(i)` gives what follows file i's path.
std::string sorted_lines_sha256(const Dataset& d, const std::function<std::string(size_t)>& field) {
  const size_t skip = d.images_path.size() + 1;
  std::vector<std::string> lines(d.files.size());
  for (size_t i = 0; i < d.files.size(); ++i) lines[i] = d.files[i].substr(skip) + "\t" + field(i) + "\n";
  std::sort(lines.begin(), lines.end());
  Sha256 h;
  for (const auto& line : lines) h.update(line.data(), line.size());
  return h.hex_digest();
}

}  // namespace

std::string images_sha256(const Dataset& d, int64_t used, const std::atomic<bool>* stop) {
  if (!d.image_folder()) return sha256_file(d.images_path);
  const int64_t n = std::clamp<int64_t>(used, 0, static_cast<int64_t>(d.files.size()));
  std::vector<std::string> content(static_cast<size_t>(n));
#pragma omp parallel
  {
    std::vector<char> buf(1 << 16);
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < n; ++i) {
      if (stop == nullptr || !stop->load(std::memory_order_relaxed)) content[i] = content_sha256(d.files[i], buf);
    }
  }
  if (stop != nullptr && stop->load()) return {};  // no file sizes listed either: the run ends
  return sorted_lines_sha256(d, [&](size_t i) {
    std::error_code ec;
    const auto size = fs::file_size(d.files[i], ec);
    return (ec ? std::string("?") : std::to_string(size)) + "\t" + (i < content.size() ? content[i] : "-");
  });
}

std::string labels_sha256(const Dataset& d) {
  if (!d.image_folder()) return sha256_file(d.labels_path);
  return sorted_lines_sha256(d, [&](size_t i) { return d.classes[d.labels[i]]; });
}

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
  int64_t pixels = 0;  // the header's three 32-bit counts can overflow their product
  if (__builtin_mul_overflow(d.count, d.height, &pixels) || __builtin_mul_overflow(pixels, d.width, &pixels) ||
      img.size() != 16 + static_cast<size_t>(pixels)) {
    user_error("data file '{}' holds {} bytes of pixels; its header promises {} images of {}x{}", images_path,
               img.size() - 16, d.count, d.height, d.width);
  }
  if (d.count == 0) user_error("data file '{}' holds no images (its header says 0)", images_path);
  d.pixels.assign(img.begin() + 16, img.end());
  const auto lab = read_maybe_gzipped(labels_path);
  if (lab.size() < 8 || be32(lab, 0) != 0x00000801) {
    user_error("data file '{}' is not an IDX label file (magic 0x00000801)", labels_path);
  }
  const int64_t nl = be32(lab, 4);
  if (lab.size() != 8 + static_cast<size_t>(nl)) {
    user_error("data file '{}' holds {} labels; its header promises {}", labels_path, lab.size() - 8, nl);
  }
  if (nl != d.count) {
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

namespace {

// Image i of an image folder's batch, decoded, transformed and normalized into dst.
void load_image(const Dataset& d, const Normalization& norm, int64_t index, float* dst) {
  const std::string& path = d.files[index];
  const Image8 im = transformed_image(d, path);
  if (im.height != d.height || im.width != d.width) {
    user_error("{}: {}x{} after the transforms, the first image {}x{}; set data.crop (after data.resize) so "
               "that every image comes out one size",
               path, im.width, im.height, d.width, d.height);
  }
  const int64_t C = d.channels, hw = d.height * d.width;  // interleaved (H, W, C) -> planar (C, H, W)
  for (int64_t c = 0; c < C; ++c) {
    const float m = norm.mean[c], s = norm.std[c];
    for (int64_t k = 0; k < hw; ++k) dst[c * hw + k] = (static_cast<float>(im.px[k * C + c]) / 255.0f - m) / s;
  }
}

}  // namespace

void load_batch(const Dataset& d, const Normalization& norm, int64_t begin, int64_t n, Tensor& out) {
  out.reshape_to({n, d.channels, d.height, d.width});
  const int64_t hw = d.height * d.width;
  if (d.image_folder()) {
    // Decoding is most of the work: outside any parallel region (a device's staging thread)
    // the images are decoded on every core; inside one, even a team of one (a CPU worker's
    // batch, run.threads = 1 included), by that worker. The
    // error of the first failing image (by index) is the one reported, whatever the timing.
    std::exception_ptr failure;
    int64_t failed_at = n;
#pragma omp parallel for schedule(dynamic, 1) num_threads(omp_get_num_procs()) if (n > 1 && omp_get_level() == 0)
    for (int64_t i = 0; i < n; ++i) {
      try {
        load_image(d, norm, begin + i, out.ptr() + i * d.sample_size());
      } catch (...) {
#pragma omp critical(qsweep_load_batch)
        if (i < failed_at) {
          failed_at = i;
          failure = std::current_exception();
        }
      }
    }
    if (failure) std::rethrow_exception(failure);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    float* dst = out.ptr() + i * d.sample_size();
    const uint8_t* src = d.pixels.data() + (begin + i) * d.sample_size();
    for (int64_t c = 0; c < d.channels; ++c) {
      const float m = norm.mean[c], s = norm.std[c];
      for (int64_t k = 0; k < hw; ++k) dst[c * hw + k] = (static_cast<float>(src[c * hw + k]) / 255.0f - m) / s;
    }
  }
}

}  // namespace qsweep

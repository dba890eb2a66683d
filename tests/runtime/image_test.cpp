// Image folders against PIL and torchvision: tests/data/imagefolder_torchvision.json holds what
// ImageFolder, Image.open().convert("RGB") and Grayscale/Resize/CenterCrop make of the JPEG
// files in tests/data/imagefolder (tests/data/make_imagefolder_golden.py); every byte must match.
#include "runtime/image.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/data.h"
#include "runtime/error.h"
#include "runtime/sha256.h"

namespace qsweep {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFolder = fs::path(QSWEEP_SOURCE_DIR) / "tests/data/imagefolder";

const json& golden() {
  static const json j = [] {
    std::ifstream in(fs::path(QSWEEP_SOURCE_DIR) / "tests/data/imagefolder_torchvision.json");
    return json::parse(in);
  }();
  return j;
}

std::vector<uint8_t> from_hex(const std::string& hex) {
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

// How many bytes differ, and the largest difference.
std::string diff(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
  if (got.size() != want.size()) return "sizes " + std::to_string(got.size()) + " vs " + std::to_string(want.size());
  int n = 0, worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const int d = std::abs(int(got[i]) - int(want[i]));
    n += d != 0;
    worst = std::max(worst, d);
  }
  return std::to_string(n) + " bytes differ, by up to " + std::to_string(worst);
}

// The UserError message f throws, or "no error".
std::string message(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "no error";
}

std::string path_of(size_t i) { return (kFolder / "val" / golden()["files"][i]["path"].get<std::string>()).string(); }

TEST(ImageFolder, FilesAndLabelsInImageFoldersOrder) {
  const Dataset d = load_image_folder_split(kFolder.string(), "val", 3, ImageTransforms{24, 20});
  const json& g = golden();
  EXPECT_EQ(d.classes, g["classes"].get<std::vector<std::string>>());
  ASSERT_EQ(d.files.size(), g["files"].size()) << "notes.txt is skipped, subfolders are walked";
  for (size_t i = 0; i < d.files.size(); ++i) {
    EXPECT_EQ(d.files[i], path_of(i));
    EXPECT_EQ(d.labels[i], g["files"][i]["label"].get<int>()) << d.files[i];
  }
  EXPECT_EQ(d.count, 9);
  EXPECT_EQ(d.num_classes, 3);
  EXPECT_EQ(d.channels, 3);
  EXPECT_EQ(d.height, 20);
  EXPECT_EQ(d.width, 20);
}

TEST(ImageFolder, DecodingEqualsPillowByteForByte) {
  const json& g = golden();
  for (size_t i = 0; i < g["files"].size(); ++i) {
    const Image8 im = to_rgb(decode_jpeg(path_of(i)));
    const json& want = g["decoded"][i];
    EXPECT_EQ(im.width, want["width"].get<int>()) << path_of(i);
    EXPECT_EQ(im.height, want["height"].get<int>()) << path_of(i);
    EXPECT_TRUE(im.px == from_hex(want["hex"])) << path_of(i) << ": " << diff(im.px, from_hex(want["hex"]));
  }
}

TEST(ImageFolder, TransformsEqualTorchvisionByteForByte) {
  const json& g = golden();
  for (const json& c : g["cases"]) {
    const int channels = c["channels"], resize = c["resize"], crop = c["crop"];
    for (size_t i = 0; i < g["files"].size(); ++i) {
      Image8 im = decode_jpeg(path_of(i));
      im = channels == 1 ? to_gray(im) : to_rgb(im);
      if (resize > 0) im = resize_shorter(im, resize);
      if (crop > 0) im = center_crop(im, crop, crop);
      const json& want = c["images"][i];
      const std::string what = path_of(i) + " with " + std::to_string(channels) + " channel(s), Resize(" +
                               std::to_string(resize) + "), CenterCrop(" + std::to_string(crop) + ")";
      EXPECT_EQ(im.width, want["width"].get<int>()) << what;
      EXPECT_EQ(im.height, want["height"].get<int>()) << what;
      EXPECT_TRUE(im.px == from_hex(want["hex"])) << what << ": " << diff(im.px, from_hex(want["hex"]));
    }
  }
}

TEST(ImageFolder, BatchesArePlanarAndNormalizedAsTorchvision) {
  const json& g = golden();
  for (const json& c : g["cases"]) {
    const int channels = c["channels"], resize = c["resize"], crop = c["crop"];
    if (crop == 0) continue;  // sizes differ: not a dataset
    const Dataset d = load_image_folder_split(kFolder.string(), "val", channels, ImageTransforms{resize, crop});
    Tensor x;
    // mean 0, std 1: each value is the pixel / 255, as ToTensor makes it.
    const Normalization unit{std::vector<float>(channels, 0.0f), std::vector<float>(channels, 1.0f)};
    load_batch(d, unit, 1, d.count - 1, x);
    ASSERT_EQ(x.shape, (Shape{d.count - 1, channels, crop, crop}));
    for (int64_t n = 0; n + 1 < d.count; ++n) {
      const std::vector<uint8_t> want = from_hex(c["images"][n + 1]["hex"]);
      int wrong = 0;
      for (int ch = 0; ch < channels; ++ch) {
        for (int k = 0; k < crop * crop; ++k) {
          wrong +=
              x.ptr()[(n * channels + ch) * crop * crop + k] != static_cast<float>(want[k * channels + ch]) / 255.0f;
        }
      }
      EXPECT_EQ(wrong, 0) << d.files[n + 1] << ", case resize " << resize << " crop " << crop;
    }
  }
  // The first image through Resize(24), CenterCrop(20), ToTensor(), Normalize(ImageNet's).
  const json& nz = g["normalized"];
  const Dataset d = load_image_folder_split(kFolder.string(), "val", 3, ImageTransforms{24, 20});
  Tensor x;
  load_batch(d, Normalization{nz["mean"].get<std::vector<float>>(), nz["std"].get<std::vector<float>>()}, 0, 1, x);
  const auto want = nz["values"].get<std::vector<double>>();
  ASSERT_EQ(static_cast<size_t>(x.numel()), want.size());
  int wrong = 0;
  for (size_t i = 0; i < want.size(); ++i) wrong += x.ptr()[i] != static_cast<float>(want[i]);
  EXPECT_EQ(wrong, 0) << "float32 values that differ from torchvision's";
}

class ImageFolderErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qsweep_imagefolder_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::copy(kFolder, dir_, fs::copy_options::recursive);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string load(int crop = 20) {
    return message([&] { load_image_folder_split(dir_.string(), "val", 3, ImageTransforms{24, crop}); });
  }
  std::string batch(int crop = 20) {
    return message([&] {
      const Dataset d = load_image_folder_split(dir_.string(), "val", 3, ImageTransforms{24, crop});
      Tensor x;
      load_batch(d, Normalization{{0, 0, 0}, {1, 1, 1}}, 0, d.count, x);
    });
  }
  fs::path dir_;
};

TEST_F(ImageFolderErrors, EachIsOneSentenceNamingTheFile) {
  const std::string wide = (dir_ / "val/cat/wide.jpg").string();
  // Not a JPEG at all: found when its batch is read.
  std::ofstream(wide, std::ios::trunc) << "not a jpeg";
  EXPECT_EQ(batch().rfind(wide + ": not a readable JPEG image (", 0), 0u) << batch();
  // Cut in half: libjpeg's "premature end" is an error, as Pillow's "image file is truncated".
  {
    std::ifstream in(path_of(1), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(wide, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
  }
  EXPECT_EQ(batch().rfind(wide + ": not a readable JPEG image (", 0), 0u) << batch();
  // Two bad files in one batch (decoded on several threads): the first by index is named.
  std::ofstream((dir_ / "val/ant/b.jpg").string(), std::ios::trunc) << "not a jpeg either";
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(batch().rfind((dir_ / "val/ant/b.jpg").string() + ": not a readable JPEG image (", 0), 0u) << batch();
  }
  fs::copy_file(path_of(1), dir_ / "val/ant/b.jpg", fs::copy_options::overwrite_existing);
  fs::copy_file(path_of(1), wide, fs::copy_options::overwrite_existing);
  EXPECT_EQ(batch(), "no error");
  // Without a crop the sizes differ: the first other one is named.
  EXPECT_EQ(
      batch(0).rfind((dir_ / "val/ant/b.jpg").string() + ": 30x24 after the transforms, the first image 24x30", 0), 0u)
      << batch(0);
  // Other image formats are refused, not skipped as ImageFolder would read them.
  std::ofstream(dir_ / "val/bee/extra.bmp") << "bmp";
  EXPECT_EQ(load(), (dir_ / "val/bee/extra.bmp").string() +
                        ": qsweep reads JPEG and PNG images only (libjpeg-turbo, libpng); convert this file or remove "
                        "it");
  fs::remove(dir_ / "val/bee/extra.bmp");
  // A .png that is no PNG: libpng's reason, found when its batch is read.
  std::ofstream(dir_ / "val/bee/extra.png") << "png";
  EXPECT_EQ(batch(), (dir_ / "val/bee/extra.png").string() +
                         ": not a readable PNG image (Not a PNG file: starts with 0x70 0x6e 0x67)")
      << batch();
  fs::remove(dir_ / "val/bee/extra.png");
  fs::create_directories(dir_ / "val/dog");
  EXPECT_EQ(load(), "class folder '" + (dir_ / "val/dog").string() + "' holds no JPEG or PNG image (.jpg, .jpeg, .png)");
  EXPECT_EQ(message([&] { load_image_folder_split(dir_.string(), "train", 3, {}); }),
            "data folder '" + dir_.string() +
                "' has no folder 'train' (image folders: <data.path>/<split>/<class>/<image>.jpg, the split folders "
                "named by data.eval.split and data.calibration.split)");
  EXPECT_EQ(message([&] { load_image_folder_split(dir_.string(), "val", 4, {}); }),
            "image folders feed models with 1 (grayscale) or 3 (RGB) input channels; this model has 4");
}

TEST_F(ImageFolderErrors, OversizedImagesAndFolderLoopsAreRefused) {
  // A header that promises 65000 x 65000 pixels (Pillow's limit is 178,956,970): refused before
  // any pixel is allocated.
  {
    std::ifstream in(path_of(1), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t sof = bytes.find("\xff\xc0");
    ASSERT_NE(sof, std::string::npos);
    for (size_t k : {sof + 5, sof + 7}) bytes[k] = '\xfd', bytes[k + 1] = '\xe8';  // 65000
    std::ofstream(dir_ / "val/ant/b.jpg", std::ios::binary | std::ios::trunc) << bytes;
  }
  EXPECT_EQ(batch(), (dir_ / "val/ant/b.jpg").string() +
                         ": not a readable JPEG image (65000x65000 pixels, more than the 178956970 Pillow accepts)");
  fs::copy_file(path_of(1), dir_ / "val/ant/b.jpg", fs::copy_options::overwrite_existing);
  // The shorter side of a 29 x 37 image to 16384: the longer int(16384 * 37 / 29) = 20903.
  EXPECT_EQ(message([&] {
              load_image_folder_split(dir_.string(), "val", 3, ImageTransforms{16384, 0});
            }),
            (dir_ / "val/ant/a.JPEG").string() +
                ": 29x37 resized to 16384x20903 would have 342474752 pixels, more than the 178956970 Pillow accepts");
  // A folder that links to its parent is walked until the path is too long: an error, not a hang.
  fs::create_directory_symlink("..", dir_ / "val/bee/loop");
  EXPECT_EQ(load().rfind("image folder '" + (dir_ / "val").string() + "': cannot read '", 0), 0u) << load();
}

// PNG files sit in a folder beside JPEG ones, in ImageFolder's order, through the same
// transforms: the batch holds resize + crop of the Pillow-equal decoding.
TEST_F(ImageFolderErrors, PngFilesJoinTheFolder) {
  const fs::path png = fs::path(QSWEEP_SOURCE_DIR) / "tests/data/png";
  fs::copy_file(png / "palette8_trns.png", dir_ / "val/ant/c.png");
  fs::copy_file(png / "gray4.png", dir_ / "val/cat/0.PNG");
  const Dataset d = load_image_folder_split(dir_.string(), "val", 3, ImageTransforms{24, 20});
  ASSERT_EQ(d.files.size(), golden()["files"].size() + 2);
  EXPECT_EQ(d.files[2], (dir_ / "val/ant/c.png").string());  // after a.JPEG and b.jpg
  const auto at = std::find(d.files.begin(), d.files.end(), (dir_ / "val/cat/0.PNG").string());
  ASSERT_NE(at, d.files.end());
  EXPECT_EQ(d.labels[at - d.files.begin()], 2);
  Tensor x;
  load_batch(d, Normalization{{0, 0, 0}, {1, 1, 1}}, 0, d.count, x);
  for (const size_t i : {size_t{2}, static_cast<size_t>(at - d.files.begin())}) {
    const Image8 want = center_crop(resize_shorter(to_rgb(decode_image(d.files[i])), 24), 20, 20);
    int wrong = 0;
    for (int c = 0; c < 3; ++c) {
      for (int y = 0; y < 20; ++y) {
        for (int xx = 0; xx < 20; ++xx) {
          const float v = x.ptr()[((i * 3 + c) * 20 + y) * 20 + xx];
          wrong += v != static_cast<float>(want.row(y)[xx * 3 + c]) / 255.0f;
        }
      }
    }
    EXPECT_EQ(wrong, 0) << d.files[i];
  }
}

TEST_F(ImageFolderErrors, IdentityHashesTheFileListSizesClassesAndTheImagesRead) {
  const Dataset d = load_image_folder_split(dir_.string(), "val", 3, ImageTransforms{24, 20});
  const auto& files = golden()["files"];
  ASSERT_GE(files.size(), 3u);
  const auto bytes_of = [&](const std::string& rel) {
    std::ifstream in(dir_ / "val" / rel, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // Worked out here: one line per file, sorted by path in the split, "<path>\t<bytes>\t<sha256
  // of the file, or - for a file the run does not read>\n", and "<path>\t<class>\n".
  const auto expected = [&](size_t used) {
    std::vector<std::string> images, labels;
    for (size_t i = 0; i < files.size(); ++i) {
      const std::string rel = files[i]["path"];
      const std::string b = bytes_of(rel);
      images.push_back(rel + "\t" + std::to_string(b.size()) + "\t" + (i < used ? sha256_hex(b.data(), b.size()) : "-") +
                       "\n");
      labels.push_back(rel + "\t" + golden()["classes"][files[i]["label"].get<int>()].get<std::string>() + "\n");
    }
    std::sort(images.begin(), images.end());
    std::sort(labels.begin(), labels.end());
    std::string i, l;
    for (const auto& line : images) i += line;
    for (const auto& line : labels) l += line;
    return std::make_pair(sha256_hex(i.data(), i.size()), sha256_hex(l.data(), l.size()));
  };
  const size_t n = files.size();
  const std::string labels_before = labels_sha256(d);
  EXPECT_EQ(labels_before, expected(n).second);
  EXPECT_EQ(images_sha256(d, 2), expected(2).first);
  const std::string all_before = images_sha256(d, static_cast<int64_t>(n));
  EXPECT_EQ(all_before, expected(n).first);
  EXPECT_NE(images_sha256(d, 2), all_before);
  // The order of a split is not its identity: interleaved, every file read, the same hashes.
  Dataset interleaved = d;
  reorder_split(interleaved, ImageOrder::kInterleaved, 0);
  ASSERT_NE(interleaved.files, d.files);
  EXPECT_EQ(images_sha256(interleaved, static_cast<int64_t>(n)), all_before);
  EXPECT_EQ(labels_sha256(interleaved), labels_before);
  // The last file replaced by other bytes of the same size: another identity where the run
  // reads it, the same where it does not (only the path and size of unread files count).
  const std::string last = files[n - 1]["path"];
  const std::string read_two = images_sha256(d, 2);
  std::string b = bytes_of(last);
  b[b.size() / 2] ^= 0x01;
  std::ofstream(dir_ / "val" / last, std::ios::binary) << b;
  EXPECT_NE(images_sha256(d, static_cast<int64_t>(n)), all_before);
  EXPECT_EQ(images_sha256(d, 2), read_two);
  // A file one byte longer is another list; the labels' identity does not depend on sizes.
  std::ofstream(dir_ / "val" / last, std::ios::app) << "x";
  const Dataset grown = load_image_folder_split(dir_.string(), "val", 3, ImageTransforms{24, 20});
  EXPECT_NE(images_sha256(grown, 2), read_two);
  EXPECT_EQ(labels_sha256(grown), labels_before);
}

// A stop (SIGINT/SIGTERM) while a large split is hashed: the remaining files are not read.
// A file replaced by a FIFO after loading would block its reader until a writer comes.
TEST_F(ImageFolderErrors, HashingReadsNoMoreFilesOnceAStopIsRequested) {
  const Dataset d = load_image_folder_split(dir_.string(), "val", 3, ImageTransforms{24, 20});
  ASSERT_GE(d.files.size(), 2u);
  const std::string fifo = d.files[1];
  fs::remove(fifo);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  std::atomic<bool> stop{true};
  auto hashed = std::async(std::launch::async, [&] { return images_sha256(d, static_cast<int64_t>(d.files.size()), &stop); });
  if (hashed.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    ADD_FAILURE() << "the hash opened " << fifo << " although a stop was requested";
    const int fd = open(fifo.c_str(), O_WRONLY);  // lets the blocked reader go
    if (fd >= 0) close(fd);
  }
  hashed.get();
}

// ---------------------------------------------------------------- PNG

// tests/data/png_pillow.json: what Pillow's Image.open(f).convert("RGB") (and its convert("L"))
// makes of each file in tests/data/png (tests/data/make_png_golden.py): every colour type and
// bit depth, Adam7, tRNS, Pillow-written files with adaptive filters, a PNG named .jpg.
TEST(Png, EveryFileDecodesAsPillowDoes) {
  std::ifstream in(fs::path(QSWEEP_SOURCE_DIR) / "tests/data/png_pillow.json");
  const json g = json::parse(in);
  // The one known difference: a file cut into its last IDAT's data (here only the zlib
  // stream's checksum is lost) is read by Pillow, which stops once every row is decoded; libpng
  // reads on, and qsweep refuses it rather than risk rows it could not check.
  const std::string refused_here = "no_adler.png";
  int compared = 0, refused = 0;
  for (const auto& [name, want] : g["files"].items()) {
    const std::string path = (fs::path(QSWEEP_SOURCE_DIR) / "tests/data/png" / name).string();
    if (want.value("refused", false) || name == refused_here) {
      const std::string e = message([&] { decode_image(path); });
      EXPECT_EQ(e.rfind(path + ": not a readable PNG image (", 0), 0u) << e;
      ++refused;
      continue;
    }
    const Image8 im = decode_image(path);
    ASSERT_EQ(im.width, want["width"].get<int>()) << name;
    ASSERT_EQ(im.height, want["height"].get<int>()) << name;
    // Gray files (also with alpha) decode to one channel; what counts is the RGB and L images.
    EXPECT_TRUE(im.channels == 1 || im.channels == 3) << name;
    EXPECT_EQ(to_rgb(im).px, from_hex(want["rgb"])) << name << ": " << diff(to_rgb(im).px, from_hex(want["rgb"]));
    EXPECT_EQ(to_gray(im).px, from_hex(want["gray"])) << name << ": " << diff(to_gray(im).px, from_hex(want["gray"]));
    ++compared;
  }
  EXPECT_EQ(compared, 25);  // also no_iend.png and no_idat_crc.png, which Pillow reads
  EXPECT_EQ(refused, 6);    // 16-bit gray (on purpose), truncated, bad CRCs before the image data, no_adler
  // The two refusals say why.
  const std::string gray16 = (fs::path(QSWEEP_SOURCE_DIR) / "tests/data/png/gray16.png").string();
  EXPECT_NE(message([&] { decode_image(gray16); }).find("16-bit grayscale"), std::string::npos);
  const std::string cut = (fs::path(QSWEEP_SOURCE_DIR) / "tests/data/png/truncated.png").string();
  EXPECT_NE(message([&] { decode_image(cut); }).find("truncated"), std::string::npos) << message([&] { decode_image(cut); });
}

}  // namespace
}  // namespace qsweep

#include "runtime/data.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <zlib.h>

#include "runtime/error.h"

namespace qsweep {
namespace {

namespace fs = std::filesystem;

void write_be32(std::string& s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

class IdxFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qsweep_idx_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    // 3 images of 2x2 and their labels; images gzipped, labels plain.
    std::string img;
    write_be32(img, 0x803);
    write_be32(img, 3);
    write_be32(img, 2);
    write_be32(img, 2);
    for (int i = 0; i < 12; ++i) img.push_back(static_cast<char>(i * 20));
    gzFile g = gzopen((dir_ / "t10k-images-idx3-ubyte.gz").c_str(), "wb");
    gzwrite(g, img.data(), static_cast<unsigned>(img.size()));
    gzclose(g);
    std::string lab;
    write_be32(lab, 0x801);
    write_be32(lab, 3);
    lab += std::string("\x07\x00\x02", 3);
    std::ofstream(dir_ / "t10k-labels-idx1-ubyte", std::ios::binary) << lab;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(IdxFiles, ReadsGzippedAndPlainFiles) {
  const Dataset d = load_idx_split(dir_.string(), "test");
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.height, 2);
  EXPECT_EQ(d.width, 2);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{7, 0, 2}));
  EXPECT_EQ(d.num_classes, 8);
  EXPECT_EQ(d.pixels[5], 100);
}

TEST_F(IdxFiles, NormalizesLikeToTensorThenNormalize) {
  const Dataset d = load_idx_split(dir_.string(), "test");
  Tensor x;
  load_batch(d, Normalization{{0.5f}, {0.25f}}, 1, 2, x);
  ASSERT_EQ(x.shape, (Shape{2, 1, 2, 2}));
  // image 1, pixel 0 has value 80: (80 / 255 - 0.5) / 0.25 computed in float32.
  EXPECT_EQ(x.data[0], (80.0f / 255.0f - 0.5f) / 0.25f);
  EXPECT_EQ(x.data[7], (220.0f / 255.0f - 0.5f) / 0.25f);
}

TEST_F(IdxFiles, ErrorsNameTheFile) {
  EXPECT_THROW(load_idx_split(dir_.string(), "train"), UserError);
  try {
    load_idx_split(dir_.string(), "train");
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("train-images-idx3-ubyte"), std::string::npos) << e.what();
  }
  std::ofstream(dir_ / "t10k-labels-idx1-ubyte", std::ios::binary) << "garbage!";
  try {
    load_idx_split(dir_.string(), "test");
    FAIL() << "a corrupt label file was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("not an IDX label file"), std::string::npos) << e.what();
  }
}

// A data.path that is not a folder is said to be so, not reported as a missing file inside it.
TEST_F(IdxFiles, DataPathThatIsNoFolderIsNamed) {
  for (const std::string& split : {"test", "val"}) {
    try {
      if (split == "test") load_idx_split((dir_ / "nope").string(), split);
      else load_image_folder_split((dir_ / "nope").string(), split, 1, ImageTransforms{});
      ADD_FAILURE() << "a missing data folder was read";
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()), "data folder '" + (dir_ / "nope").string() + "' does not exist");
    }
  }
  std::ofstream(dir_ / "file") << "x";
  try {
    load_idx_split((dir_ / "file").string(), "test");
    ADD_FAILURE() << "a file was read as a data folder";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), "data folder '" + (dir_ / "file").string() + "' is not a folder");
  }
}

TEST_F(IdxFiles, EmptySplitsAndShortLabelFilesAreNamed) {
  auto message = [&] {
    try {
      load_idx_split(dir_.string(), "test");
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string labels = (dir_ / "t10k-labels-idx1-ubyte").string();
  // A label file cut short: 2 of the 3 labels its header promises.
  std::string lab;
  write_be32(lab, 0x801);
  write_be32(lab, 3);
  lab += std::string("\x07\x00", 2);
  std::ofstream(labels, std::ios::binary | std::ios::trunc) << lab;
  EXPECT_EQ(message(), "data file '" + labels + "' holds 2 labels; its header promises 3");
  // No images at all (a split the grid would divide by).
  fs::remove(dir_ / "t10k-images-idx3-ubyte.gz");
  std::string img;
  write_be32(img, 0x803);
  write_be32(img, 0);
  write_be32(img, 2);
  write_be32(img, 2);
  std::ofstream(dir_ / "t10k-images-idx3-ubyte", std::ios::binary) << img;
  EXPECT_EQ(message(), "data file '" + (dir_ / "t10k-images-idx3-ubyte").string() +
                           "' holds no images (its header says 0)");
}

// ---------------------------------------------------------------- image orders

TEST(ImageOrders, InterleavedTakesOneImageOfEachClassInTurn) {
  // Classes 0: images 0, 1, 5; 1: 2, 4; 2: 3, 6. Rounds: (0, 2, 3), (1, 4, 6), (5).
  const std::vector<int32_t> labels = {0, 0, 1, 2, 1, 0, 2};
  EXPECT_EQ(image_order(labels, ImageOrder::kInterleaved, 0), (std::vector<int64_t>{0, 2, 3, 1, 4, 6, 5}));
  EXPECT_EQ(image_order(labels, ImageOrder::kFile, 9), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6}));
  // Labels need not start at 0 or be contiguous; the order of classes is by label value.
  EXPECT_EQ(image_order({7, 3, 7, 3}, ImageOrder::kInterleaved, 0), (std::vector<int64_t>{1, 0, 3, 2}));
  EXPECT_TRUE(image_order({}, ImageOrder::kInterleaved, 0).empty());
}

TEST(ImageOrders, ShuffledIsASeededPermutationWithUniformPositions) {
  const std::vector<int32_t> labels(1000, 0);
  const auto a = image_order(labels, ImageOrder::kShuffled, 42);
  EXPECT_EQ(a, image_order(labels, ImageOrder::kShuffled, 42));
  EXPECT_NE(a, image_order(labels, ImageOrder::kShuffled, 43));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, image_order(labels, ImageOrder::kFile, 0));  // every image once
  EXPECT_TRUE(image_order({}, ImageOrder::kShuffled, 1).empty());
  EXPECT_EQ(image_order({5}, ImageOrder::kShuffled, 1), (std::vector<int64_t>{0}));
  // Over 6000 seeds each of 6 images lands first about 1000 times (binomial sd ~ 29): a
  // biased index draw (e.g. the last image never moving) would be far outside 850..1150.
  std::vector<int> first(6, 0);
  for (uint64_t seed = 0; seed < 6000; ++seed) ++first[image_order(std::vector<int32_t>(6, 0), ImageOrder::kShuffled, seed)[0]];
  for (int i = 0; i < 6; ++i) {
    EXPECT_GT(first[i], 850) << "image " << i;
    EXPECT_LT(first[i], 1150) << "image " << i;
  }
}

TEST_F(IdxFiles, ReorderMovesPixelsWithTheirLabels) {
  Dataset d = load_idx_split(dir_.string(), "test");  // labels 7, 0, 2; image i's pixels 80i + 20k
  reorder_split(d, ImageOrder::kInterleaved, 0);      // classes 0, 2, 7: images 1, 2, 0
  EXPECT_EQ(d.order, ImageOrder::kInterleaved);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 2, 7}));
  EXPECT_EQ(d.pixels, (std::vector<uint8_t>{80, 100, 120, 140, 160, 180, 200, 220, 0, 20, 40, 60}));
  EXPECT_EQ(d.count, 3);
}

TEST(ImageOrders, NamesRoundTrip) {
  for (const char* n : {"file", "interleaved", "shuffled"}) {
    ImageOrder o;
    ASSERT_TRUE(parse_image_order(n, o)) << n;
    EXPECT_STREQ(image_order_name(o), n);
  }
  ImageOrder o;
  EXPECT_FALSE(parse_image_order("random", o));
}

TEST(FashionMnist, DebianPackageHasBothSplits) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const Dataset test = load_idx_split(kFashionMnistDir, "test");
  EXPECT_EQ(test.count, 10000);
  EXPECT_EQ(test.height, 28);
  EXPECT_EQ(test.num_classes, 10);
  const Dataset train = load_idx_split(kFashionMnistDir, "train");
  EXPECT_EQ(train.count, 60000);
}

}  // namespace
}  // namespace qsweep

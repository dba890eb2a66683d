#include "runtime/data.h"

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

// Tests for the IDX reader (Fashion-MNIST/MNIST), gzipped and plain.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "common/data/dataset_readers.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;

std::string test_dir(const std::string& name) {
  const std::string dir = std::string(FEDTAIL_TEST_TMP) + "/idx_reader/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void put_u32(std::vector<uint8_t>* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<uint8_t>(v >> shift));
}

// IDX bytes: magic 00 00 08 <ndims>, big-endian dims, then the payload.
std::vector<uint8_t> idx_bytes(const std::vector<uint32_t>& dims,
                               const std::vector<uint8_t>& payload, uint8_t type = 0x08) {
  std::vector<uint8_t> out = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) put_u32(&out, d);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    ASSERT_EQ(gzclose(f), Z_OK);
  } else {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
    std::fclose(f);
  }
}

// Three 2×3 images whose pixel (i, y, x) is 10·i + 3·y + x, labels 2, 0, 1.
std::vector<uint8_t> image_payload() {
  std::vector<uint8_t> px;
  for (int i = 0; i < 3; ++i)
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 3; ++x) px.push_back(static_cast<uint8_t>(10 * i + 3 * y + x));
  return px;
}
const std::vector<uint8_t> kLabels = {2, 0, 1};

void expect_small_set(const Dataset& d) {
  ASSERT_EQ(d.images.sizes(), (std::vector<int64_t>{3, 1, 2, 3}));
  EXPECT_EQ(d.images.dtype(), torch::kUInt8);
  EXPECT_EQ(d.labels.dtype(), torch::kInt64);
  EXPECT_EQ(d.label_vector(), (std::vector<int64_t>{2, 0, 1}));
  EXPECT_EQ(d.num_classes, 3);
  EXPECT_EQ(d.class_names.size(), 3u);
  auto a = d.images.accessor<uint8_t, 4>();
  for (int i = 0; i < 3; ++i)
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 3; ++x) EXPECT_EQ(a[i][0][y][x], 10 * i + 3 * y + x);
}

class IdxReaderTest : public ::testing::TestWithParam<bool> {};

TEST_P(IdxReaderTest, ReadsImagesAndLabels) {
  const bool gz = GetParam();
  const std::string dir = test_dir(gz ? "gz" : "plain");
  write_file(dir + "/images", idx_bytes({3, 2, 3}, image_payload()), gz);
  write_file(dir + "/labels", idx_bytes({3}, kLabels), gz);
  auto d = read_idx(dir + "/images", dir + "/labels", /*num_classes=*/3);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  expect_small_set(*d);
}

TEST_P(IdxReaderTest, RejectsTruncatedImages) {
  const bool gz = GetParam();
  const std::string dir = test_dir(gz ? "trunc_gz" : "trunc_plain");
  auto payload = image_payload();
  payload.resize(payload.size() - 1);
  write_file(dir + "/images", idx_bytes({3, 2, 3}, payload), gz);
  write_file(dir + "/labels", idx_bytes({3}, kLabels), gz);
  auto d = read_idx(dir + "/images", dir + "/labels", 3);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find(dir + "/images"), std::string::npos) << d.status().message();
  EXPECT_NE(d.status().message().find("truncated"), std::string::npos) << d.status().message();
}

TEST_P(IdxReaderTest, RejectsTrailingBytes) {
  const bool gz = GetParam();
  const std::string dir = test_dir(gz ? "trail_gz" : "trail_plain");
  auto payload = image_payload();
  payload.push_back(7);
  write_file(dir + "/images", idx_bytes({3, 2, 3}, payload), gz);
  write_file(dir + "/labels", idx_bytes({3}, kLabels), gz);
  auto d = read_idx(dir + "/images", dir + "/labels", 3);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find(dir + "/images"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(GzipAndPlain, IdxReaderTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Gzip" : "Plain"; });

TEST(IdxReader, ReadsGzippedImagesWithPlainLabels) {
  const std::string dir = test_dir("mixed");
  write_file(dir + "/images.gz", idx_bytes({3, 2, 3}, image_payload()), /*gzip=*/true);
  write_file(dir + "/labels", idx_bytes({3}, kLabels), /*gzip=*/false);
  auto d = read_idx(dir + "/images.gz", dir + "/labels", 3);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  expect_small_set(*d);
}

TEST(IdxReader, RejectsBadMagicNamingTheFile) {
  const std::string dir = test_dir("magic");
  // A label file where an image file belongs: one dimension, not three.
  write_file(dir + "/images", idx_bytes({3}, kLabels), false);
  write_file(dir + "/labels", idx_bytes({3}, kLabels), false);
  auto d = read_idx(dir + "/images", dir + "/labels", 3);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find(dir + "/images: bad IDX magic 0x00000801"), std::string::npos)
      << d.status().message();
  // A non-uint8 data type (0x0D = float).
  write_file(dir + "/images", idx_bytes({3, 2, 3}, image_payload(), /*type=*/0x0D), false);
  d = read_idx(dir + "/images", dir + "/labels", 3);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
}

TEST(IdxReader, RejectsImageAndLabelCountMismatch) {
  const std::string dir = test_dir("count");
  write_file(dir + "/images", idx_bytes({3, 2, 3}, image_payload()), false);
  write_file(dir + "/labels", idx_bytes({2}, {0, 1}), false);
  auto d = read_idx(dir + "/images", dir + "/labels", 3);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find("3 images"), std::string::npos) << d.status().message();
  EXPECT_NE(d.status().message().find("2 labels"), std::string::npos) << d.status().message();
}

TEST(IdxReader, RejectsLabelOutOfRange) {
  const std::string dir = test_dir("label");
  write_file(dir + "/images", idx_bytes({3, 2, 3}, image_payload()), false);
  write_file(dir + "/labels", idx_bytes({3}, {0, 9, 1}), false);
  auto d = read_idx(dir + "/images", dir + "/labels", 3);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find(dir + "/labels: label 9 at index 1"), std::string::npos)
      << d.status().message();
}

TEST(IdxReader, RejectsDamagedGzipStream) {
  const std::string dir = test_dir("damaged_gz");
  write_file(dir + "/images.gz", idx_bytes({3, 2, 3}, image_payload()), true);
  write_file(dir + "/labels", idx_bytes({3}, kLabels), false);
  // Cut the compressed stream in half.
  fs::resize_file(dir + "/images.gz", fs::file_size(dir + "/images.gz") / 2);
  auto d = read_idx(dir + "/images.gz", dir + "/labels", 3);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find(dir + "/images.gz"), std::string::npos);
}

TEST(IdxReader, MissingFileIsNotFound) {
  const std::string dir = test_dir("missing");
  auto d = read_idx(dir + "/nope", dir + "/labels", 3);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
  EXPECT_NE(d.status().message().find(dir + "/nope"), std::string::npos);
}

TEST(IdxReader, LoadDatasetFindsPlainFashionMnistFiles) {
  const std::string dir = test_dir("fmnist_plain");
  for (const std::string prefix : {"train", "t10k"}) {
    write_file(dir + "/" + prefix + "-images-idx3-ubyte", idx_bytes({3, 2, 3}, image_payload()),
               false);
    write_file(dir + "/" + prefix + "-labels-idx1-ubyte", idx_bytes({3}, kLabels), false);
  }
  DataOptions o;
  o.dataset = "fashion-mnist";
  o.root = dir;
  auto d = load_dataset(o, Split::kTest);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->size(), 3);
  EXPECT_EQ(d->num_classes, 10);
  EXPECT_EQ(d->class_names[9], "Ankle boot");
}

TEST(IdxReader, LoadsTheRealFashionMnist) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  }
  DataOptions o;  // fashion-mnist at its default root
  auto train = load_dataset(o, Split::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().to_string();
  EXPECT_EQ(train->images.sizes(), (std::vector<int64_t>{60000, 1, 28, 28}));
  EXPECT_EQ(train->class_counts(), std::vector<int64_t>(10, 6000));
  auto test = load_dataset(o, Split::kTest);
  ASSERT_TRUE(test.ok()) << test.status().to_string();
  EXPECT_EQ(test->class_counts(), std::vector<int64_t>(10, 1000));
  EXPECT_EQ(test->class_names[0], "T-shirt/top");
}

}  // namespace
}  // namespace fedtail

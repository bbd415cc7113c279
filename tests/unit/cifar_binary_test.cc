// Tests for the CIFAR-10 and CIFAR-100 binary readers and their discovery by load_dataset().
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "common/data/dataset_readers.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;

std::string test_dir(const std::string& name) {
  const std::string dir = std::string(FEDTAIL_TEST_TMP) + "/cifar_binary/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Pixel byte j of record r of file f: a pattern that differs per file, record and position.
uint8_t pixel(int f, int r, int j) { return static_cast<uint8_t>((31 * f + 17 * r + j) % 251); }

// Writes `labels.size()` records: the label bytes of each record, then 3072 pattern pixels.
void write_records(const std::string& path, int f,
                   const std::vector<std::vector<uint8_t>>& labels) {
  std::vector<uint8_t> bytes;
  for (size_t r = 0; r < labels.size(); ++r) {
    bytes.insert(bytes.end(), labels[r].begin(), labels[r].end());
    for (int j = 0; j < 3072; ++j) bytes.push_back(pixel(f, static_cast<int>(r), j));
  }
  std::FILE* out = std::fopen(path.c_str(), "wb");
  ASSERT_NE(out, nullptr);
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), out), bytes.size());
  std::fclose(out);
}

// Checks image i against record r of file f: the record's 3072 bytes are 1024 R, G, B, row-major.
void expect_record(const Dataset& d, int64_t i, int f, int r) {
  auto a = d.images.accessor<uint8_t, 4>();
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 32; y += 7)
      for (int x = 0; x < 32; x += 5)
        ASSERT_EQ(a[i][c][y][x], pixel(f, r, c * 1024 + y * 32 + x))
            << "image " << i << " channel " << c << " y " << y << " x " << x;
}

TEST(CifarBinary, ReadsCifar10BatchesInOrder) {
  const std::string dir = test_dir("c10");
  std::vector<std::string> files;
  for (int b = 1; b <= 5; ++b) {
    files.push_back(dir + "/data_batch_" + std::to_string(b) + ".bin");
    write_records(files.back(), b, {{static_cast<uint8_t>(b)}, {static_cast<uint8_t>(9 - b)}});
  }
  write_records(dir + "/test_batch.bin", 0, {{3}, {4}, {5}});

  auto d = read_cifar10_binary(files);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  ASSERT_EQ(d->images.sizes(), (std::vector<int64_t>{10, 3, 32, 32}));
  EXPECT_EQ(d->label_vector(), (std::vector<int64_t>{1, 8, 2, 7, 3, 6, 4, 5, 5, 4}));
  EXPECT_EQ(d->num_classes, 10);
  EXPECT_EQ(d->class_names.front(), "airplane");
  EXPECT_EQ(d->class_names.back(), "truck");
  for (int b = 1; b <= 5; ++b) {
    expect_record(*d, 2 * (b - 1), b, 0);
    expect_record(*d, 2 * (b - 1) + 1, b, 1);
  }

  DataOptions o;
  o.dataset = "cifar10";
  o.root = dir;
  auto train = load_dataset(o, Split::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().to_string();
  EXPECT_TRUE(torch::equal(train->images, d->images));
  auto test = load_dataset(o, Split::kTest);
  ASSERT_TRUE(test.ok()) << test.status().to_string();
  EXPECT_EQ(test->label_vector(), (std::vector<int64_t>{3, 4, 5}));
  expect_record(*test, 2, 0, 2);
}

TEST(CifarBinary, FindsTheOfficialSubfolder) {
  const std::string dir = test_dir("c10_sub");
  fs::create_directories(dir + "/cifar-10-batches-bin");
  write_records(dir + "/cifar-10-batches-bin/test_batch.bin", 0, {{7}});
  DataOptions o;
  o.dataset = "cifar10";
  o.root = dir;
  auto test = load_dataset(o, Split::kTest);
  ASSERT_TRUE(test.ok()) << test.status().to_string();
  EXPECT_EQ(test->label_vector(), std::vector<int64_t>{7});
  // The train batches are missing: NotFound naming what was looked for.
  auto train = load_dataset(o, Split::kTrain);
  ASSERT_FALSE(train.ok());
  EXPECT_EQ(train.status().code(), StatusCode::kNotFound);
  EXPECT_NE(train.status().message().find("data_batch_1.bin"), std::string::npos)
      << train.status().message();
}

TEST(CifarBinary, ReadsCifar100FineLabels) {
  const std::string dir = test_dir("c100");
  // {coarse, fine} pairs; the fine label is the class.
  write_records(dir + "/train.bin", 1, {{4, 0}, {19, 99}, {0, 42}});
  write_records(dir + "/test.bin", 2, {{1, 7}});
  DataOptions o;
  o.dataset = "cifar100";
  o.root = dir;
  auto d = load_dataset(o, Split::kTrain);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  ASSERT_EQ(d->images.sizes(), (std::vector<int64_t>{3, 3, 32, 32}));
  EXPECT_EQ(d->label_vector(), (std::vector<int64_t>{0, 99, 42}));
  EXPECT_EQ(d->num_classes, 100);
  ASSERT_EQ(d->class_names.size(), 100u);
  EXPECT_EQ(d->class_names[0], "apple");
  EXPECT_EQ(d->class_names[99], "worm");
  for (int r = 0; r < 3; ++r) expect_record(*d, r, 1, r);
  auto test = load_dataset(o, Split::kTest);
  ASSERT_TRUE(test.ok()) << test.status().to_string();
  EXPECT_EQ(test->label_vector(), std::vector<int64_t>{7});
}

TEST(CifarBinary, RejectsPartialRecordNamingTheFile) {
  const std::string dir = test_dir("partial");
  write_records(dir + "/test_batch.bin", 0, {{1}, {2}});
  fs::resize_file(dir + "/test_batch.bin", 3073 + 100);
  auto d = read_cifar10_binary({dir + "/test_batch.bin"});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find(dir + "/test_batch.bin: size 3173"), std::string::npos)
      << d.status().message();
}

TEST(CifarBinary, RejectsOutOfRangeLabels) {
  const std::string dir = test_dir("labels");
  write_records(dir + "/c10.bin", 0, {{1}, {10}});
  auto d = read_cifar10_binary({dir + "/c10.bin"});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find("record 1 has label 10"), std::string::npos);

  write_records(dir + "/c100.bin", 0, {{0, 100}});
  d = read_cifar100_binary(dir + "/c100.bin");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find("label 100"), std::string::npos);

  write_records(dir + "/c100_coarse.bin", 0, {{20, 5}});
  d = read_cifar100_binary(dir + "/c100_coarse.bin");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("coarse label 20"), std::string::npos);
}

TEST(CifarBinary, MissingRootAndUnknownDatasetAreClear) {
  DataOptions o;
  o.dataset = "cifar100";
  auto d = load_dataset(o, Split::kTrain);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("data.root"), std::string::npos);
  o.root = test_dir("empty");
  d = load_dataset(o, Split::kTrain);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
  EXPECT_NE(d.status().message().find("train.bin"), std::string::npos);
  o.dataset = "imagenet";
  d = load_dataset(o, Split::kTrain);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtail

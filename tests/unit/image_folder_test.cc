// Tests for image-folder decoding (stb_image) and its on-disk cache.
//
// libstb already exports the stb_image_write functions, so this file includes the header without
// STB_IMAGE_WRITE_IMPLEMENTATION.
#include "common/data/image_folder.h"

#include <gtest/gtest.h>
#include <stb/stb_image_write.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "common/data/dataset_readers.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;

// A per-test scratch folder; XDG_CACHE_HOME points inside it so no test writes to ~/.cache.
class ImageFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::string(FEDTAIL_TEST_TMP) + "/image_folder/" + info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    xdg_ = dir_ + "/xdg";
    setenv("XDG_CACHE_HOME", xdg_.c_str(), /*overwrite=*/1);
  }

  std::string dir_;
  std::string xdg_;
};

// The value of pixel (y, x, channel) of image `seed`: a pattern that tells images apart.
uint8_t pattern(int seed, int y, int x, int c) {
  return static_cast<uint8_t>((seed * 37 + y * 11 + x * 5 + c * 70) % 256);
}

void write_png(const std::string& path, int w, int h, int channels, int seed) {
  fs::create_directories(fs::path(path).parent_path());
  std::vector<uint8_t> px;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < channels; ++c) px.push_back(pattern(seed, y, x, c));
  ASSERT_NE(stbi_write_png(path.c_str(), w, h, channels, px.data(), w * channels), 0) << path;
}

// Checks image i of d (C×H×W) against the pattern of `seed`.
void expect_pattern(const Dataset& d, int64_t i, int seed) {
  auto a = d.images.accessor<uint8_t, 4>();
  for (int c = 0; c < d.channels(); ++c)
    for (int y = 0; y < d.height(); ++y)
      for (int x = 0; x < d.width(); ++x)
        ASSERT_EQ(a[i][c][y][x], pattern(seed, y, x, c))
            << "image " << i << " c" << c << " y" << y << " x" << x;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

// Moves a file's modification time, so a rewrite is seen even within one timestamp tick.
void touch_later(const std::string& path) {
  fs::last_write_time(path, fs::last_write_time(path) + std::chrono::seconds(10));
}

TEST_F(ImageFolderTest, DecodesPngsInClassAndFileNameOrder) {
  const std::string root = dir_ + "/root";
  write_png(root + "/dog/x.PNG", 5, 4, 3, /*seed=*/3);
  write_png(root + "/cat/b.png", 5, 4, 3, /*seed=*/2);
  write_png(root + "/cat/a.png", 5, 4, 3, /*seed=*/1);
  write_png(root + "/.hidden/z.png", 5, 4, 3, /*seed=*/9);  // not a class
  write_bytes(root + "/cat/notes.txt", "not an image");     // ignored
  ImageFolderStats stats;
  auto d = load_image_folder(root, {}, &stats);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(d->num_classes, 2);
  ASSERT_EQ(d->images.sizes(), (std::vector<int64_t>{3, 3, 4, 5}));
  EXPECT_EQ(d->label_vector(), (std::vector<int64_t>{0, 0, 1}));
  expect_pattern(*d, 0, 1);
  expect_pattern(*d, 1, 2);
  expect_pattern(*d, 2, 3);
  EXPECT_EQ(stats.images, 3);
  EXPECT_FALSE(stats.from_cache);
}

TEST_F(ImageFolderTest, DecodesJpegsAndGreyscale) {
  const std::string root = dir_ + "/root";
  fs::create_directories(root + "/flat");
  std::vector<uint8_t> rgb;
  for (int i = 0; i < 8 * 8; ++i) rgb.insert(rgb.end(), {200, 100, 50});
  ASSERT_NE(stbi_write_jpg((root + "/flat/a.jpg").c_str(), 8, 8, 3, rgb.data(), /*quality=*/100),
            0);
  ASSERT_NE(stbi_write_jpg((root + "/flat/b.JPEG").c_str(), 8, 8, 3, rgb.data(), 100), 0);
  auto d = load_image_folder(root);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  ASSERT_EQ(d->images.sizes(), (std::vector<int64_t>{2, 3, 8, 8}));
  auto mean = d->images.to(torch::kFloat).mean({0, 2, 3});
  EXPECT_NEAR(mean[0].item<float>(), 200, 3);
  EXPECT_NEAR(mean[1].item<float>(), 100, 3);
  EXPECT_NEAR(mean[2].item<float>(), 50, 3);

  const std::string grey = dir_ + "/grey";
  write_png(grey + "/a/0.png", 3, 2, 1, 5);
  auto g = load_image_folder(grey);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  EXPECT_EQ(g->images.sizes(), (std::vector<int64_t>{1, 1, 2, 3}));
  expect_pattern(*g, 0, 5);
}

TEST_F(ImageFolderTest, CacheIsUsedAndInvalidatedWhenTheFolderChanges) {
  const std::string root = dir_ + "/root";
  write_png(root + "/a/0.png", 4, 4, 3, 1);
  write_png(root + "/a/1.png", 4, 4, 3, 2);
  write_png(root + "/b/0.png", 4, 4, 3, 3);

  ImageFolderStats first;
  auto d1 = load_image_folder(root, {}, &first);
  ASSERT_TRUE(d1.ok()) << d1.status().to_string();
  EXPECT_FALSE(first.from_cache);
  EXPECT_TRUE(first.cache_written);
  EXPECT_EQ(first.cache_path, root + "/.fedtail-cache.bin");
  EXPECT_TRUE(fs::exists(root + "/.fedtail-cache.bin"));

  ImageFolderStats second;
  auto d2 = load_image_folder(root, {}, &second);
  ASSERT_TRUE(d2.ok()) << d2.status().to_string();
  EXPECT_TRUE(second.from_cache);
  EXPECT_EQ(second.cache_path, root + "/.fedtail-cache.bin");
  EXPECT_TRUE(torch::equal(d1->images, d2->images));
  EXPECT_TRUE(torch::equal(d1->labels, d2->labels));
  EXPECT_EQ(d2->class_names, d1->class_names);
  EXPECT_EQ(d2->num_classes, 2);

  // Rewriting an image invalidates the cache: the new pixels are decoded.
  write_png(root + "/a/1.png", 4, 4, 3, 7);
  touch_later(root + "/a/1.png");
  ImageFolderStats third;
  auto d3 = load_image_folder(root, {}, &third);
  ASSERT_TRUE(d3.ok()) << d3.status().to_string();
  EXPECT_FALSE(third.from_cache);
  expect_pattern(*d3, 1, 7);

  // Adding an image invalidates it too.
  write_png(root + "/b/1.png", 4, 4, 3, 8);
  ImageFolderStats fourth;
  auto d4 = load_image_folder(root, {}, &fourth);
  ASSERT_TRUE(d4.ok()) << d4.status().to_string();
  EXPECT_FALSE(fourth.from_cache);
  EXPECT_EQ(d4->size(), 4);
  expect_pattern(*d4, 3, 8);

  // And removing one.
  fs::remove(root + "/a/0.png");
  ImageFolderStats fifth;
  auto d5 = load_image_folder(root, {}, &fifth);
  ASSERT_TRUE(d5.ok()) << d5.status().to_string();
  EXPECT_FALSE(fifth.from_cache);
  EXPECT_EQ(d5->label_vector(), (std::vector<int64_t>{0, 1, 1}));

  // use_cache = false neither reads nor writes it.
  ImageFolderOptions no_cache;
  no_cache.use_cache = false;
  ImageFolderStats sixth;
  ASSERT_TRUE(load_image_folder(root, no_cache, &sixth).ok());
  EXPECT_FALSE(sixth.from_cache);
  EXPECT_FALSE(sixth.cache_written);
}

TEST_F(ImageFolderTest, DamagedCacheIsIgnoredAndRewritten) {
  const std::string root = dir_ + "/root";
  for (int i = 0; i < 3; ++i) write_png(root + "/a/" + std::to_string(i) + ".png", 6, 6, 3, i);
  ASSERT_TRUE(load_image_folder(root).ok());
  const std::string cache = root + "/.fedtail-cache.bin";
  // Flip one pixel byte near the end of the file (before the 4-byte checksum).
  {
    std::FILE* f = std::fopen(cache.c_str(), "r+b");
    ASSERT_NE(f, nullptr);
    std::fseek(f, -10, SEEK_END);
    int c = std::fgetc(f);
    std::fseek(f, -10, SEEK_END);
    std::fputc(c ^ 0xFF, f);
    std::fclose(f);
  }
  ImageFolderStats stats;
  auto d = load_image_folder(root, {}, &stats);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_FALSE(stats.from_cache);
  EXPECT_TRUE(stats.cache_written);
  for (int i = 0; i < 3; ++i) expect_pattern(*d, i, i);

  // A truncated cache is ignored as well.
  fs::resize_file(cache, fs::file_size(cache) - 100);
  ASSERT_TRUE(load_image_folder(root, {}, &stats).ok());
  EXPECT_FALSE(stats.from_cache);
  ASSERT_TRUE(load_image_folder(root, {}, &stats).ok());
  EXPECT_TRUE(stats.from_cache);
}

TEST_F(ImageFolderTest, FallsBackToTheUserCacheWhenRootRefusesTheCache) {
  const std::string root = dir_ + "/root";
  write_png(root + "/a/0.png", 4, 4, 3, 1);
  // A directory where the cache file would go makes the in-root cache unwritable, even for root
  // (chmod would not stop a test running as root).
  fs::create_directories(root + "/.fedtail-cache.bin");
  ImageFolderStats first;
  ASSERT_TRUE(load_image_folder(root, {}, &first).ok());
  EXPECT_TRUE(first.cache_written);
  EXPECT_EQ(first.cache_path.rfind(xdg_ + "/fedtail/", 0), 0u) << first.cache_path;
  ImageFolderStats second;
  auto d = load_image_folder(root, {}, &second);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_TRUE(second.from_cache);
  EXPECT_EQ(second.cache_path, first.cache_path);
  expect_pattern(*d, 0, 1);
  // No temporary files are left behind.
  for (const auto& e : fs::directory_iterator(root)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
}

TEST_F(ImageFolderTest, RejectsAnImageOfAnotherSizeOrChannelCount) {
  const std::string root = dir_ + "/root";
  write_png(root + "/a/0.png", 5, 4, 3, 1);
  write_png(root + "/a/1.png", 4, 4, 3, 2);
  auto d = load_image_folder(root);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find(root + "/a/1.png: image is 4x4x3"), std::string::npos)
      << d.status().message();

  write_png(root + "/a/1.png", 5, 4, 1, 2);  // grey among RGB
  d = load_image_folder(root);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find(root + "/a/1.png: image is 5x4x1"), std::string::npos)
      << d.status().message();
}

TEST_F(ImageFolderTest, RejectsAnUndecodableFileNamingIt) {
  const std::string root = dir_ + "/root";
  write_png(root + "/a/0.png", 5, 4, 3, 1);
  write_bytes(root + "/b/broken.jpg", "this is not a jpeg");
  auto d = load_image_folder(root);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find(root + "/b/broken.jpg: cannot decode image"),
            std::string::npos)
      << d.status().message();
}

TEST_F(ImageFolderTest, ReportsMissingAndEmptyFolders) {
  auto d = load_image_folder(dir_ + "/nope");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);

  fs::create_directories(dir_ + "/no_classes");
  d = load_image_folder(dir_ + "/no_classes");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);

  write_png(dir_ + "/empty_class/a/0.png", 2, 2, 3, 1);
  fs::create_directories(dir_ + "/empty_class/b");
  d = load_image_folder(dir_ + "/empty_class");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
  EXPECT_NE(d.status().message().find(dir_ + "/empty_class/b"), std::string::npos);
}

TEST_F(ImageFolderTest, ParallelDecodeMatchesOneThread) {
  const std::string root = dir_ + "/root";
  for (int i = 0; i < 300; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "/c%d/%04d.png", i % 3, i);
    write_png(root + name, 6, 5, 3, i);
  }
  ImageFolderOptions one;
  one.use_cache = false;
  one.threads = 1;
  ImageFolderOptions four = one;
  four.threads = 4;
  auto a = load_image_folder(root, one);
  auto b = load_image_folder(root, four);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_TRUE(torch::equal(a->images, b->images));
  EXPECT_TRUE(torch::equal(a->labels, b->labels));
  EXPECT_EQ(a->class_counts(), (std::vector<int64_t>{100, 100, 100}));
}

TEST_F(ImageFolderTest, LoadDatasetReadsTrainAndTestFolders) {
  const std::string root = dir_ + "/root";
  for (const std::string split : {"train", "test"}) {
    write_png(root + "/" + split + "/ant/0.png", 3, 3, 3, 1);
    write_png(root + "/" + split + "/bee/0.png", 3, 3, 3, 2);
  }
  write_png(root + "/train/bee/1.png", 3, 3, 3, 3);
  DataOptions o;
  o.dataset = "folder";
  o.root = root;
  auto train = load_dataset(o, Split::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().to_string();
  EXPECT_EQ(train->class_counts(), (std::vector<int64_t>{1, 2}));
  auto test = load_dataset(o, Split::kTest);
  ASSERT_TRUE(test.ok()) << test.status().to_string();
  EXPECT_EQ(test->class_names, (std::vector<std::string>{"ant", "bee"}));

  // A test split whose classes differ from the train split's is refused.
  write_png(root + "/test/cat/0.png", 3, 3, 3, 4);
  test = load_dataset(o, Split::kTest);
  ASSERT_FALSE(test.ok());
  EXPECT_EQ(test.status().code(), StatusCode::kInvalidArgument);

  // cifar10 as an image folder needs its 10 classes.
  o.dataset = "cifar10";
  train = load_dataset(o, Split::kTrain);
  ASSERT_FALSE(train.ok());
  EXPECT_NE(train.status().message().find("needs 10 class folders, found 2"), std::string::npos)
      << train.status().message();
}

}  // namespace
}  // namespace fedtail

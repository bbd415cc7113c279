// Integration test: the real CIFAR-10 (JPEG image folders from shared/data/cifar10-jpeg.tar.gz)
// through load_dataset(): class counts, published channel statistics, and decode vs cached load
// times.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/data/dataset_readers.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;

const std::string kArchive = std::string(FEDTAIL_SHARED_DATA) + "/cifar10-jpeg.tar.gz";

// Extracts the archive into FEDTAIL_TEST_TMP once (a marker file records success). Extraction goes
// to a private folder that is renamed into place, so concurrent test processes never see half a
// tree.
std::string extracted_root() {
  const std::string root = std::string(FEDTAIL_TEST_TMP) + "/cifar10-jpeg";
  if (fs::exists(root + "/.extracted")) return root;
  const std::string tmp = root + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  const std::string cmd = "tar -xzf '" + kArchive + "' -C '" + tmp + "'";
  if (std::system(cmd.c_str()) != 0) {
    fs::remove_all(tmp);
    return "";
  }
  std::ofstream(tmp + "/.extracted") << "ok\n";
  std::error_code ec;
  fs::remove_all(root, ec);  // a partial tree from an interrupted run
  fs::rename(tmp, root, ec);
  if (ec) fs::remove_all(tmp);  // another process got there first
  return fs::exists(root + "/.extracted") ? root : "";
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(Cifar10Folder, LoadsRealDataWithPublishedStatsAndCachesIt) {
  if (!fs::exists(kArchive)) GTEST_SKIP() << kArchive << " is missing";
  const std::string root = extracted_root();
  ASSERT_FALSE(root.empty()) << "could not extract " << kArchive;
  // Start from no cache, so the first load decodes.
  fs::remove(root + "/train/.fedtail-cache.bin");
  fs::remove(root + "/test/.fedtail-cache.bin");

  DataOptions o;
  o.dataset = "cifar10";
  o.root = root;
  auto start = std::chrono::steady_clock::now();
  auto train = load_dataset(o, Split::kTrain);
  const double decode_train = seconds_since(start);
  ASSERT_TRUE(train.ok()) << train.status().to_string();
  start = std::chrono::steady_clock::now();
  auto test = load_dataset(o, Split::kTest);
  const double decode_test = seconds_since(start);
  ASSERT_TRUE(test.ok()) << test.status().to_string();

  EXPECT_EQ(train->num_classes, 10);
  EXPECT_EQ(train->images.sizes(), (std::vector<int64_t>{50000, 3, 32, 32}));
  EXPECT_EQ(train->class_counts(), std::vector<int64_t>(10, 5000));
  EXPECT_EQ(test->class_counts(), std::vector<int64_t>(10, 1000));
  EXPECT_EQ(train->class_names.front(), "airplane");
  EXPECT_EQ(train->class_names.back(), "truck");

  const ChannelStats stats = channel_stats(*train);
  const double kMean[3] = {0.4913, 0.4821, 0.4465};
  const double kStd[3] = {0.2452, 0.2428, 0.2606};
  ASSERT_EQ(stats.mean.size(), 3u);
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(stats.mean[c], kMean[c], 1e-3) << "channel " << c;
    EXPECT_NEAR(stats.std[c], kStd[c], 1e-3) << "channel " << c;
  }

  // The second load reads the cache written by the first.
  ASSERT_TRUE(fs::exists(root + "/train/.fedtail-cache.bin"));
  start = std::chrono::steady_clock::now();
  auto cached = load_dataset(o, Split::kTrain);
  const double cached_train = seconds_since(start);
  ASSERT_TRUE(cached.ok()) << cached.status().to_string();
  EXPECT_TRUE(torch::equal(cached->images, train->images));
  EXPECT_TRUE(torch::equal(cached->labels, train->labels));
  EXPECT_LT(cached_train, decode_train);

  std::printf("CIFAR-10 train mean [%.4f, %.4f, %.4f] std [%.4f, %.4f, %.4f]\n", stats.mean[0],
              stats.mean[1], stats.mean[2], stats.std[0], stats.std[1], stats.std[2]);
  std::printf("decode: train %.2f s, test %.2f s; cached train load %.2f s\n", decode_train,
              decode_test, cached_train);
  RecordProperty("decode_train_s", std::to_string(decode_train));
  RecordProperty("cached_train_s", std::to_string(cached_train));
}

}  // namespace
}  // namespace fedtail

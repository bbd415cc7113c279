// Integration test: the fedtail-train binary trains on a small Fashion-MNIST-LT slice and reports
// accuracy overall and by class group; bad configs fail with one line naming the JSON path.
#include <filesystem>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/cli.h"

namespace fedtail {
namespace {

using test_support::binary_path;
using test_support::run_cli;
using test_support::scratch_dir;
using test_support::write_file;

constexpr char kTinyConfig[] = R"({
  "seed": 3, "threads": 1,
  "data": {"dataset": "fashion-mnist", "imbalance_factor": 10, "max_examples_per_class": 200,
           "partition": "iid", "clients": 2},
  "model": {"arch": "cnn"},
  "local": {"epochs": 3, "batch_size": 16, "lr": 0.02,
            "augment": {"crop_padding": 0, "horizontal_flip": false}},
  "eval": {"batch_size": 1000}
})";

class FedtailTrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
    dir_ = scratch_dir("fedtail_train_cli");
  }
  std::string dir_;
};

TEST_F(FedtailTrainCli, TrainsAndReportsGroupAccuracyAsJson) {
  write_file(dir_ + "/run.json", kTinyConfig);
  auto r = run_cli(binary_path("fedtail-train"), "--config " + dir_ + "/run.json --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  // Long tail with IF 10 over 200 per class: 200 ... 20.
  EXPECT_EQ(j["train_class_counts"][0], 200);
  EXPECT_EQ(j["train_class_counts"][9], 20);
  ASSERT_EQ(j["history"].size(), 3u);
  const auto& acc = j["accuracy"];
  EXPECT_GT(acc["overall"].get<double>(), 0.3);  // 10 classes: chance is 0.1
  EXPECT_LE(acc["overall"].get<double>(), 1.0);
  for (const char* group : {"many", "medium", "few"}) {
    ASSERT_TRUE(acc[group].is_number()) << group;
    EXPECT_GE(acc[group].get<double>(), 0.0);
  }
  // The head classes are learned better than the tail under a 10x imbalance.
  EXPECT_GT(acc["many"].get<double>(), acc["few"].get<double>());
  EXPECT_EQ(acc["per_class"].size(), 10u);
}

TEST_F(FedtailTrainCli, SameSeedGivesSameResult) {
  write_file(dir_ + "/run.json", kTinyConfig);
  auto a = run_cli(binary_path("fedtail-train"), "--config " + dir_ + "/run.json --json --epochs 1");
  auto b = run_cli(binary_path("fedtail-train"), "--config " + dir_ + "/run.json --json --epochs 1");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  auto ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  EXPECT_EQ(ja["accuracy"], jb["accuracy"]);
  EXPECT_EQ(ja["history"][0]["loss"], jb["history"][0]["loss"]);
}

TEST_F(FedtailTrainCli, BadConfigFailsWithOneLineNamingThePath) {
  write_file(dir_ + "/bad.json", R"({"local": {"lr": "0.1"}})");
  auto r = run_cli(binary_path("fedtail-train"), "--config " + dir_ + "/bad.json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("config.local.lr: expected a number"), std::string::npos) << r.err;
  write_file(dir_ + "/unknown.json", R"({"data": {"alpah": 0.5}})");
  r = run_cli(binary_path("fedtail-train"), "--config " + dir_ + "/unknown.json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("config.data.alpah: unknown key"), std::string::npos) << r.err;
  write_file(dir_ + "/run.json", kTinyConfig);
  r = run_cli(binary_path("fedtail-train"), "--config " + dir_ + "/run.json --client 5");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--client: must be < config.data.clients = 2 (got 5)"), std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace fedtail

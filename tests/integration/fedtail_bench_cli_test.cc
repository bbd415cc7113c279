// Integration test: fedtail-bench's "round" section (a real fedtail-sim federation, twice) and
// "pytorch" section (its skip path), and its flag errors. Figures are not asserted (performance
// belongs in the benchmark), only that every measurement is there and sane.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using test_support::CliRun;

const std::string kBinary = test_support::binary_path("fedtail-bench");

// A federation small enough for a test: 8 clients of a small CNN on a Fashion-MNIST slice.
constexpr char kRoundConfig[] = R"({
  "seed": 3, "threads": 0, "device": "cpu", "rounds": 1,
  "data": {"dataset": "fashion-mnist", "max_examples_per_class": 60, "imbalance_factor": 10,
           "partition": "dirichlet", "alpha": 1.0, "clients": 8},
  "model": {"arch": "cnn"},
  "local": {"epochs": 1, "batch_size": 8, "lr": 0.03, "momentum": 0.5, "weight_decay": 0},
  "eval": {"batch_size": 1000, "every": 1},
  "strategy": {"name": "fedavg", "fraction_fit": 0.5, "fraction_evaluate": 1.0}
})";

class FedtailBenchCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kBinary)) FAIL() << kBinary << " is not built";
    if (!fs::exists(test_support::binary_path("fedtail-sim"))) FAIL() << "fedtail-sim is not built";
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("bench");
  }
  void TearDown() override { fs::remove_all(dir_); }

  nlohmann::json bench_json() const {
    return nlohmann::json::parse(test_support::read_file(dir_ + "/bench.json"));
  }

  std::string dir_;
};

TEST_F(FedtailBenchCli, RoundSectionRunsTheFederationWithBothMallocSettings) {
  const std::string config = dir_ + "/round.json";
  test_support::write_file(config, kRoundConfig);
  const CliRun r = test_support::run_cli(
      "OMP_WAIT_POLICY=PASSIVE " + kBinary,
      "--quick --sections round --round-config " + config + " --rounds 1 --out " + dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json report = bench_json();
  ASSERT_TRUE(report.contains("round")) << report.dump();
  const nlohmann::json& round = report["round"];
  EXPECT_EQ(round["rounds"], 1);
  EXPECT_GT(round["seconds_per_round"].get<double>(), 0);
  EXPECT_GT(round["seconds_per_round_untuned"].get<double>(), 0);
  EXPECT_GT(round["efficiency_training_compute"].get<double>(), 0);
  EXPECT_GT(round["efficiency_server_evaluation"].get<double>(), 0);
  int round_rows = 0;
  for (const nlohmann::json& row : round["rows"]) {
    if (row["phase"] != "round") continue;
    ++round_rows;
    EXPECT_GT(row["user_s"].get<double>(), 0) << row.dump();
    EXPECT_GT(row["minor_faults"].get<int64_t>(), 0) << row.dump();
  }
  EXPECT_EQ(round_rows, 2);  // glibc's defaults, then fedtail's
  // The images each phase went through: 8 clients' test sets, the 10,000 server test images.
  bool server_eval = false;
  for (const nlohmann::json& row : round["rows"]) {
    if (row["phase"] == "server evaluation") {
      server_eval = true;
      EXPECT_EQ(row["images_per_round"].get<double>(), 10000.0) << row.dump();
    }
  }
  EXPECT_TRUE(server_eval);
  EXPECT_TRUE(report["machine"].contains("malloc_keep_mb"));
  EXPECT_NE(test_support::read_file(dir_ + "/bench.md").find("## Round"), std::string::npos);
}

TEST_F(FedtailBenchCli, PytorchSectionSaysWhyItIsSkipped) {
  const CliRun r = test_support::run_cli("FEDTAIL_PYTHON=/nonexistent/python3 " + kBinary,
                                         "--quick --sections pytorch --models cnn --out " + dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json report = bench_json();
  ASSERT_TRUE(report.contains("pytorch")) << report.dump();
  const nlohmann::json& section = report["pytorch"];
  EXPECT_TRUE(section["rows"].empty());
  EXPECT_NE(section["skipped"].get<std::string>().find("cannot import torch"), std::string::npos)
      << section.dump();
}

TEST_F(FedtailBenchCli, BadFlagsAreOneLineErrors) {
  const CliRun section = test_support::run_cli(kBinary, "--sections nope --out " + dir_);
  EXPECT_NE(section.exit_code, 0);
  EXPECT_NE(section.err.find("--sections: unknown section \"nope\""), std::string::npos)
      << section.err;
  const CliRun config =
      test_support::run_cli(kBinary, "--sections round --round-config /no/such.json");
  EXPECT_NE(config.exit_code, 0);
  EXPECT_NE(config.err.find("/no/such.json"), std::string::npos) << config.err;
}

}  // namespace
}  // namespace fedtail

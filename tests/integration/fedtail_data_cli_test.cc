// Integration test: the fedtail-data binary (JSON output, determinism, one-line errors).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/support/cli.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using test_support::CliRun;

const std::string kBinary = std::string(FEDTAIL_BIN_DIR) + "/fedtail-data";

CliRun run_cli(const std::string& args) { return test_support::run_cli(kBinary, args); }

class FedtailDataCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kBinary)) FAIL() << kBinary << " is not built";
    if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
  }
};

TEST_F(FedtailDataCli, PrintsTheFashionMnistLongTailAsJsonDeterministically) {
  const std::string args =
      "--dataset fashion-mnist --imbalance-factor 100 --partition dirichlet --alpha 0.5 --clients "
      "40 "
      "--seed 1 --json";
  const CliRun a = run_cli(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const CliRun b = run_cli(args);
  EXPECT_EQ(a.out, b.out);
  const auto j = nlohmann::json::parse(a.out);
  EXPECT_EQ(j["classes"], nlohmann::json({6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60}));
  EXPECT_EQ(j["dataset"], "fashion-mnist");
  EXPECT_EQ(j["seed"], 1);
  ASSERT_EQ(j["clients"].size(), 40u);
  // Column sums of the client matrix are the class counts.
  for (int c = 0; c < 10; ++c) {
    int64_t sum = 0;
    for (const auto& row : j["clients"]) sum += row[c].get<int64_t>();
    EXPECT_EQ(sum, j["classes"][c].get<int64_t>()) << "class " << c;
  }
  const CliRun other = run_cli("--imbalance-factor 100 --clients 40 --seed 2 --json");
  ASSERT_EQ(other.exit_code, 0) << other.err;
  EXPECT_NE(nlohmann::json::parse(other.out)["clients"], j["clients"]);
}

TEST_F(FedtailDataCli, PrintsATable) {
  const CliRun r =
      run_cli("--imbalance-factor 10 --partition pathological --classes-per-client 2 --clients 5");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Ankle boot"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("many"), std::string::npos);
  EXPECT_NE(r.out.find(" total"), std::string::npos);
}

TEST_F(FedtailDataCli, BadFlagsGiveOneLineErrors) {
  CliRun r = run_cli("--alpha -1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err, "fedtail-data: --alpha: must be > 0 (got -1)\n");
  r = run_cli("--dataset folder --root /nonexistent-fedtail-root");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;  // exactly one line
  EXPECT_NE(r.err.find("/nonexistent-fedtail-root"), std::string::npos) << r.err;
  r = run_cli("--no-such-flag");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  r = run_cli("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, std::string(FEDTAIL_VERSION) + "\n");
  r = run_cli("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--imbalance-factor"), std::string::npos);
}

}  // namespace
}  // namespace fedtail

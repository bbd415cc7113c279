// Integration test: a real fedtail-coordinator and three real fedtail-client processes over
// loopback run two FedSA rounds on a small Fashion-MNIST federation whose clients have three
// different architectures (config.model.groups: cnn, resnet8, resnet18). Only class prototypes
// travel: each client's upload is C×D float32 + C int64 bytes, whatever its model.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/base/subprocess.h"
#include "tests/support/cli.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr int kClasses = 10;
constexpr int kFeatureDim = 32;
const std::vector<std::string> kGroups = {"cnn", "resnet8", "resnet18"};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Waits for `path` to exist and hold a line; returns its content ("" on timeout).
std::string wait_for_file(const std::string& path, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    std::ifstream in(path);
    std::string line;
    if (in && std::getline(in, line) && !line.empty()) return line;
    std::this_thread::sleep_for(100ms);
  }
  return "";
}

nlohmann::json run_config(const std::string& strategy) {
  return {{"seed", 3},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", 2},
          {"strategy", {{"name", strategy}, {"min_fit_clients", 3}}},
          {"federation",
           {{"min_available_clients", 3},
            {"round_timeout_s", 400},
            {"poll_timeout_ms", 2000},
            {"heartbeat_interval_ms", 1000},
            {"client_timeout_s", 60}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 30},
            {"imbalance_factor", 10},
            {"partition", "iid"},
            {"clients", 3}}},
          {"model", {{"feature_dim", kFeatureDim}, {"groups", kGroups}}},
          {"local",
           {{"epochs", 1},
            {"batch_size", 10},
            {"lr", 0.01},
            {"momentum", 0},
            {"weight_decay", 0},
            {"augment", {{"crop_padding", 0}, {"horizontal_flip", false}}}}},
          {"eval", {{"batch_size", 500}, {"every", 2}}}};
}

class HeterogeneousFederation : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("heterogeneous_federation");
    state_dir_ = dir_ + "/state";
  }

  std::unique_ptr<Subprocess> start(std::vector<std::string> argv, const std::string& log) {
    SubprocessOptions options;
    options.argv = std::move(argv);
    options.log_path = dir_ + "/" + log;
    options.env = {"OMP_WAIT_POLICY=PASSIVE"};
    auto process = Subprocess::spawn(options);
    EXPECT_TRUE(process.ok()) << process.status().to_string();
    return process.ok() ? std::move(process).value() : nullptr;
  }

  std::string dir_;
  std::string state_dir_;
};

TEST_F(HeterogeneousFederation, ThreeArchitecturesShareOnlyPrototypesOverTheRealTransport) {
  test_support::write_file(dir_ + "/run.json", run_config("fedsa").dump(2));
  std::unique_ptr<Subprocess> coordinator =
      start({test_support::binary_path("fedtail-coordinator"), "--config", dir_ + "/run.json",
             "--listen", "127.0.0.1:0", "--state-dir", state_dir_, "--threads", "1"},
            "coordinator.log");
  ASSERT_TRUE(coordinator);
  const std::string port = wait_for_file(state_dir_ + "/port", 120s);
  ASSERT_FALSE(port.empty()) << read_text(dir_ + "/coordinator.log");
  std::vector<std::unique_ptr<Subprocess>> clients;
  for (int k = 0; k < 3; ++k) {
    const std::string range = std::to_string(k) + "-" + std::to_string(k);
    clients.push_back(start({test_support::binary_path("fedtail-client"), "--coordinator",
                             "127.0.0.1:" + port, "--clients", range, "--state-dir",
                             dir_ + "/client-state", "--device", "cpu", "--threads", "1"},
                            "client-" + std::to_string(k) + ".log"));
    ASSERT_TRUE(clients.back());
  }

  ASSERT_TRUE(coordinator->wait_for(900s)) << read_text(dir_ + "/coordinator.log");
  const std::string coordinator_log = read_text(dir_ + "/coordinator.log");
  ASSERT_EQ(coordinator->exit_code(), 0) << coordinator->describe_exit() << "\n"
                                         << coordinator_log << "\n--- client-2:\n"
                                         << read_text(dir_ + "/client-2.log");
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(clients[static_cast<size_t>(k)]->wait_for(60s)) << k;
    EXPECT_EQ(clients[static_cast<size_t>(k)]->exit_code(), 0)
        << read_text(dir_ + "/client-" + std::to_string(k) + ".log");
  }

  // Each client built its own architecture: partition k uses groups[k]. (The coordinator's log
  // cannot show it: a client's first Join precedes the run config, so it carries no model family.)
  for (int k = 0; k < 3; ++k) {
    const std::string log = read_text(dir_ + "/client-" + std::to_string(k) + ".log");
    const std::regex built("client-" + std::to_string(k) + ": partition " + std::to_string(k) +
                           ", \\d+ training examples, model (\\w+) on cpu, strategy fedsa");
    std::smatch match;
    ASSERT_TRUE(std::regex_search(log, match, built)) << log;
    EXPECT_EQ(match[1].str(), kGroups[static_cast<size_t>(k)]) << match.str();
  }

  // Every upload over the wire is the prototypes and counts only, the same size for all three
  // architectures (resnet18 alone has over 11 million parameters).
  const std::regex upload("round (\\d) fit done: .* uploading (\\d+) bytes");
  const uint64_t expected_bytes = kClasses * kFeatureDim * 4 + kClasses * 8;
  for (int k = 0; k < 3; ++k) {
    const std::string log = read_text(dir_ + "/client-" + std::to_string(k) + ".log");
    int uploads = 0;
    for (std::sregex_iterator it(log.begin(), log.end(), upload), end; it != end; ++it) {
      EXPECT_EQ(std::stoull((*it)[2].str()), expected_bytes) << it->str();
      ++uploads;
    }
    EXPECT_EQ(uploads, 2) << log;
  }

  std::ifstream metrics(state_dir_ + "/metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(metrics, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 2u);
  for (const nlohmann::json& line : lines) {
    const nlohmann::json& fit = line["fit"]["metrics"];
    EXPECT_TRUE(fit["updated"].get<bool>()) << line.dump();
    EXPECT_EQ(fit["updates"], 3) << line.dump();
    EXPECT_TRUE(fit["anchor_distances"]["mean"].is_number()) << line.dump();
  }
  const nlohmann::json& evaluated = lines.back()["evaluate"]["metrics"];
  EXPECT_EQ(evaluated["rule"], "nearest_global_prototype") << lines.back().dump();
  EXPECT_EQ(evaluated["personalized"]["clients"], 3) << lines.back().dump();
  EXPECT_TRUE(evaluated["personalized_head"]["mean"].is_number()) << lines.back().dump();

  std::ifstream in(state_dir_ + "/summary.json");
  ASSERT_TRUE(in) << "no summary.json";
  const nlohmann::json summary = nlohmann::json::parse(in);
  EXPECT_EQ(summary["strategy"], "fedsa");
  EXPECT_EQ(summary["rounds_completed"], 2);
  EXPECT_TRUE(summary["final"]["generic_accuracy"].is_null()) << summary.dump(2);
  ASSERT_TRUE(summary["final"]["personalized_accuracy"].is_number()) << summary.dump(2);
  // Two rounds are far too few to learn (the anchors barely move and each architecture's features
  // are still far from them): only the range is checked.
  const double personalized = summary["final"]["personalized_accuracy"].get<double>();
  EXPECT_GE(personalized, 0.0);
  EXPECT_LE(personalized, 1.0);
  // The final "model" is the anchors and global prototypes.
  EXPECT_TRUE(fs::exists(state_dir_ + "/final_model.bundle"));
}

TEST_F(HeterogeneousFederation, FedAvgRefusesModelGroups) {
  test_support::write_file(dir_ + "/run.json", run_config("fedavg").dump(2));
  std::unique_ptr<Subprocess> coordinator =
      start({test_support::binary_path("fedtail-coordinator"), "--config", dir_ + "/run.json",
             "--listen", "127.0.0.1:0", "--state-dir", state_dir_, "--threads", "1"},
            "coordinator.log");
  ASSERT_TRUE(coordinator);
  ASSERT_TRUE(coordinator->wait_for(300s)) << read_text(dir_ + "/coordinator.log");
  EXPECT_NE(coordinator->exit_code(), 0);
  const std::string log = read_text(dir_ + "/coordinator.log");
  EXPECT_NE(log.find("config.model.groups"), std::string::npos) << log;
}

}  // namespace
}  // namespace fedtail

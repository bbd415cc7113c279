// Integration smoke test: a real fedtail-coordinator and three real fedtail-client processes over
// loopback run three FedAvg rounds on a small Fashion-MNIST-LT federation.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/cli.h"
#include "tests/support/federation_processes.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

nlohmann::json run_config(int rounds) {
  return {{"seed", 1},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", rounds},
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 3}}},
          {"federation",
           {{"min_available_clients", 3},
            {"round_timeout_s", 240},
            {"poll_timeout_ms", 2000},
            {"heartbeat_interval_ms", 1000},
            {"client_timeout_s", 30}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 100},
            {"imbalance_factor", 10},
            {"partition", "dirichlet"},
            {"alpha", 1.0},
            {"clients", 3}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 32}}},
          // Evaluation (federated and server-side) at the last round only: it costs more than the
          // training of this tiny federation.
          {"eval", {{"batch_size", 500}, {"every", rounds}}}};
}

class FederationSmoke : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("federation_smoke");
    state_dir_ = dir_ + "/state";
  }

  std::unique_ptr<Process> start_coordinator(const std::vector<std::string>& extra = {}) {
    return test_support::start_loopback_coordinator(dir_, state_dir_, extra);
  }
  std::unique_ptr<Process> start_client(int k, const std::string& port) {
    return test_support::start_loopback_client(dir_, k, port);
  }

  std::string dir_;
  std::string state_dir_;
};

TEST_F(FederationSmoke, ThreeClientsRunThreeRoundsAndGetASummary) {
  test_support::write_file(dir_ + "/run.json", run_config(3).dump(2));
  std::unique_ptr<Process> coordinator = start_coordinator();
  const std::string port = test_support::wait_for_file(state_dir_ + "/port", 120s);
  ASSERT_FALSE(port.empty()) << coordinator->log();
  std::vector<std::unique_ptr<Process>> clients;
  for (int k = 0; k < 3; ++k) clients.push_back(start_client(k, port));

  const int code = coordinator->wait(600s);
  ASSERT_EQ(code, 0) << coordinator->log() << "\n--- client-0:\n" << clients[0]->log();
  for (auto& client : clients) EXPECT_EQ(client->wait(60s), 0) << client->log();

  std::ifstream in(state_dir_ + "/summary.json");
  ASSERT_TRUE(in) << "no summary.json";
  nlohmann::json summary = nlohmann::json::parse(in);
  EXPECT_EQ(summary["rounds_completed"], 3);
  EXPECT_EQ(summary["strategy"], "fedavg");
  ASSERT_TRUE(summary["final"]["generic_accuracy"].is_number()) << summary.dump(2);
  const double accuracy = summary["final"]["generic_accuracy"].get<double>();
  EXPECT_GT(accuracy, 0.0);
  EXPECT_LE(accuracy, 1.0);
  EXPECT_TRUE(fs::exists(state_dir_ + "/final_model.bundle"));
  EXPECT_TRUE(fs::exists(state_dir_ + "/checkpoint.bundle"));
  // One metrics line per round.
  std::ifstream metrics(state_dir_ + "/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 3);
  const std::string log = coordinator->log();
  EXPECT_NE(log.find("round 3/3"), std::string::npos) << log;
}

TEST_F(FederationSmoke, BadConfigIsAOneLineErrorNamingTheField) {
  nlohmann::json config = run_config(2);
  config["federation"]["round_timeout_s"] = 0;
  test_support::write_file(dir_ + "/run.json", config.dump());
  const test_support::CliRun r =
      test_support::run_cli(test_support::binary_path("fedtail-coordinator"),
                            "--config " + dir_ + "/run.json --state-dir " + state_dir_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("config.federation.round_timeout_s: must be > 0"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
}

TEST_F(FederationSmoke, PlaintextOnAPublicAddressNeedsInsecure) {
  test_support::write_file(dir_ + "/run.json", run_config(1).dump());
  const test_support::CliRun r = test_support::run_cli(
      test_support::binary_path("fedtail-coordinator"),
      "--config " + dir_ + "/run.json --listen 0.0.0.0:0 --state-dir " + state_dir_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("plaintext refused"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace fedtail

// Client failures in a real federation: a fedtail-coordinator and three fedtail-client processes
// over loopback, FedAvg on a small Fashion-MNIST-LT slice. One client is killed (SIGKILL) while it
// trains round 2; the coordinator notices the silence after federation.client_timeout_s, lists
// the client under round 2's fit.failures with the reason, and the two remaining clients finish
// the run (min_available_clients and min_fit_clients are 2).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

constexpr int kRounds = 3;
constexpr int kVictim = 1;  // the client killed in round 2

nlohmann::json run_config() {
  return {{"seed", 5},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", kRounds},
          // All available clients train; 2 are enough once one is gone. No evaluation: the test is
          // about the fit phase.
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 2}, {"fraction_evaluate", 0.0}}},
          {"federation",
           {{"min_available_clients", 2},
            {"round_timeout_s", 60},
            {"poll_timeout_ms", 1000},
            {"heartbeat_interval_ms", 300},
            // A killed client is declared gone 3 s after its last heartbeat.
            {"client_timeout_s", 3},
            {"server_eval", false}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 100},
            {"imbalance_factor", 10},
            {"partition", "iid"},
            {"clients", 3}}},
          {"model", {{"arch", "cnn"}}},
          // A few passes, so that local training lasts long enough to be interrupted.
          {"local", {{"epochs", 4}, {"batch_size", 16}}}};
}

class FederationFailures : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("federation_failures");
    state_dir_ = dir_ + "/state";
    test_support::write_file(dir_ + "/run.json", run_config().dump(2));
  }

  std::unique_ptr<Process> start_client(int k, const std::string& port) {
    const std::string range = std::to_string(k) + "-" + std::to_string(k);
    return std::make_unique<Process>(
        std::vector<std::string>{test_support::binary_path("fedtail-client"), "--coordinator",
                                 "127.0.0.1:" + port, "--clients", range, "--state-dir",
                                 dir_ + "/client-" + std::to_string(k) + "-state", "--device",
                                 "cpu", "--threads", "1", "--retry-timeout", "30"},
        dir_ + "/client-" + std::to_string(k) + ".log");
  }

  std::string dir_;
  std::string state_dir_;
};

TEST_F(FederationFailures, ClientKilledMidRoundIsAFailureAndTheOthersFinishTheRun) {
  Process coordinator(
      {test_support::binary_path("fedtail-coordinator"), "--config", dir_ + "/run.json", "--listen",
       "127.0.0.1:0", "--state-dir", state_dir_, "--threads", "1"},
      dir_ + "/coordinator.log");
  const std::string port = test_support::wait_for_file(state_dir_ + "/port", 120s);
  ASSERT_FALSE(port.empty()) << coordinator.log();

  // The victim joins first, so that every round (round 1 may start with 2 clients) selects it.
  std::vector<std::unique_ptr<Process>> clients(3);
  clients[kVictim] = start_client(kVictim, port);
  ASSERT_TRUE(clients[kVictim]->wait_for_log_line("joined coordinator", 120s))
      << clients[kVictim]->log();
  for (int k = 0; k < 3; ++k) {
    if (k != kVictim) clients[k] = start_client(k, port);
  }

  // Round 2's fit task reached the victim: kill it while it trains.
  const std::string victim_id = "client-" + std::to_string(kVictim);
  ASSERT_TRUE(clients[kVictim]->wait_for_log_line(victim_id + ": round 2 fit (task", 180s))
      << clients[kVictim]->log() << "\n--- coordinator:\n"
      << coordinator.log();
  clients[kVictim]->signal(SIGKILL);
  EXPECT_EQ(clients[kVictim]->wait(30s), Process::kSignalled);
  // The kill must have interrupted training (else the test shows nothing): local training of
  // 4 epochs lasts far longer than the 50 ms it takes to notice the task.
  ASSERT_EQ(clients[kVictim]->log().find(victim_id + ": round 2 fit done"), std::string::npos)
      << "the victim finished round 2 before it was killed; make local training longer\n"
      << clients[kVictim]->log();

  ASSERT_EQ(coordinator.wait(180s), 0) << coordinator.log();
  for (int k = 0; k < 3; ++k) {
    if (k == kVictim) continue;
    EXPECT_EQ(clients[k]->wait(60s), 0) << clients[k]->log();
  }

  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(state_dir_ + "/summary.json"));
  EXPECT_EQ(summary.value("rounds_completed", 0), kRounds) << summary.dump(2);

  const std::vector<nlohmann::json> lines =
      test_support::metrics_lines(state_dir_ + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
  // Round 2: three clients selected, the victim failed with a reason, two updates aggregated.
  const nlohmann::json& fit2 = lines[1]["fit"];
  EXPECT_EQ(fit2["selected"], 3) << fit2.dump();
  EXPECT_EQ(fit2["updates"], 2) << fit2.dump();
  ASSERT_EQ(fit2["failures"].size(), 1u) << fit2.dump();
  const nlohmann::json& failure = fit2["failures"][0];
  EXPECT_EQ(failure.value("client_id", ""), victim_id) << fit2.dump();
  const std::string reason = failure.value("reason", "");
  EXPECT_NE(reason.find("connection lost"), std::string::npos) << fit2.dump();
  EXPECT_EQ(fit2["metrics"]["updated"], true) << fit2.dump();
  // Round 3: the remaining two clients, no failure.
  const nlohmann::json& fit3 = lines[2]["fit"];
  EXPECT_EQ(fit3["selected"], 2) << fit3.dump();
  EXPECT_EQ(fit3["failures"], nlohmann::json::array()) << fit3.dump();

  // The coordinator's log names the client and the reason.
  const std::string log = coordinator.log();
  EXPECT_NE(log.find("round 2 fit: client " + victim_id + " failed: " + reason), std::string::npos)
      << log;
}

}  // namespace
}  // namespace fedtail

// Process-level resume: a coordinator killed with SIGKILL mid-run and restarted with --resume on
// the same state directory and address finishes the run bit-exactly as an uninterrupted one.
//
// Run A: fedtail-coordinator + one fedtail-client process hosting 3 virtual clients, FedAvg,
// 6 rounds on a small Fashion-MNIST-LT slice, fixed seed. Run B: the same config; the coordinator
// is killed (SIGKILL) in round 4 — metrics.jsonl has 3 lines, client-0's round-4 update may have
// been folded in, client-1 is training — then restarted with --resume on the same --state-dir and
// --listen address while the client process keeps running (it reconnects with backoff, re-joins,
// and its stale round-4 result is refused). Both runs must complete 6 rounds and write the same
// final model, byte for byte, and the same per-round training metrics.
//
// Run for FedAvg and for each classic algorithm, most of which keep state beyond the global model:
// FedAvgM (server velocity), FedAdam / FedYogi / FedAdagrad (server moments m, v and the step
// count), SCAFFOLD (server control variate c, each client's c_i), FedNova (the a_i uploads),
// FedDyn (server h, each client's linear term), MOON (each client's previous local model) and
// q-FedAvg (L in the server state, F_k uploads). Client state lives in the client process's state
// directory, which must give a re-run round the state it started from.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/security/crypto.h"
#include "common/wire/bundle_file.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

constexpr int kRounds = 6;
constexpr int kKillAfterLines = 3;
// The coordinator is killed once this appears in the clients' log (round kKillAfterLines + 1).
constexpr char kKillAt[] = "client-1: round 4 fit (task";

nlohmann::json run_config(const std::string& strategy) {
  return {
      {"seed", 11},
      {"threads", 1},
      {"device", "cpu"},
      {"rounds", kRounds},
      // Every client trains every round; no federated evaluation (it does not change the model).
      {"strategy", {{"name", strategy}, {"min_fit_clients", 3}, {"fraction_evaluate", 0.0}}},
      {"federation",
       {{"min_available_clients", 3},
        {"round_timeout_s", 120},
        {"poll_timeout_ms", 1000},
        {"heartbeat_interval_ms", 500},
        {"client_timeout_s", 10}}},
      {"data",
       {{"dataset", "fashion-mnist"},
        {"max_examples_per_class", 60},
        {"imbalance_factor", 10},
        {"partition", "dirichlet"},
        {"alpha", 1.0},
        {"clients", 3}}},
      {"model", {{"arch", "cnn"}}},
      // Augmentation on: its random crops and flips must be derived deterministically too.
      {"local", {{"epochs", 1}, {"batch_size", 16}}},
      // Server-side evaluation at the last round only.
      {"eval", {{"batch_size", 1000}, {"every", kRounds}}}};
}

class FederationResume : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("federation_resume-" + GetParam());
    test_support::write_file(dir_ + "/run.json", run_config(GetParam()).dump(2));
  }

  std::unique_ptr<Process> start_coordinator(const std::string& name, const std::string& listen,
                                             bool resume) {
    std::vector<std::string> argv = {test_support::binary_path("fedtail-coordinator"),
                                     "--config",
                                     dir_ + "/run.json",
                                     "--listen",
                                     listen,
                                     "--state-dir",
                                     dir_ + "/" + name + "-state",
                                     "--threads",
                                     "1"};
    if (resume) argv.push_back("--resume");
    return std::make_unique<Process>(
        argv, dir_ + "/" + name + (resume ? "-resumed" : "") + "-coordinator.log");
  }

  std::unique_ptr<Process> start_clients(const std::string& name, const std::string& port) {
    return std::make_unique<Process>(
        std::vector<std::string>{test_support::binary_path("fedtail-client"), "--coordinator",
                                 "127.0.0.1:" + port, "--clients", "0-2", "--state-dir",
                                 dir_ + "/" + name + "-client-state", "--device", "cpu",
                                 "--threads", "1", "--retry-timeout", "120"},
        dir_ + "/" + name + "-clients.log");
  }

  std::string state(const std::string& name, const char* file) const {
    return dir_ + "/" + name + "-state/" + file;
  }

  std::string dir_;
};

TEST_P(FederationResume, KilledCoordinatorResumesBitExactly) {
  // Run A: uninterrupted.
  {
    std::unique_ptr<Process> coordinator = start_coordinator("a", "127.0.0.1:0", false);
    const std::string port = test_support::wait_for_file(state("a", "port"), 120s);
    ASSERT_FALSE(port.empty()) << coordinator->log();
    std::unique_ptr<Process> clients = start_clients("a", port);
    ASSERT_EQ(coordinator->wait(300s), 0) << coordinator->log() << "\n--- clients:\n"
                                          << clients->log();
    EXPECT_EQ(clients->wait(60s), 0) << clients->log();
  }

  // Run B: the coordinator is killed in round 4, after round 3's metrics line, then resumed.
  std::unique_ptr<Process> clients;
  std::string port;
  {
    std::unique_ptr<Process> coordinator = start_coordinator("b", "127.0.0.1:0", false);
    port = test_support::wait_for_file(state("b", "port"), 120s);
    ASSERT_FALSE(port.empty()) << coordinator->log();
    clients = start_clients("b", port);
    ASSERT_TRUE(test_support::wait_for_lines(state("b", "metrics.jsonl"), kKillAfterLines, 300s))
        << coordinator->log() << "\n--- clients:\n"
        << clients->log();
    ASSERT_TRUE(clients->wait_for_log_line(kKillAt, 120s)) << clients->log();
    coordinator->signal(SIGKILL);
    EXPECT_EQ(coordinator->wait(30s), Process::kSignalled);
    ASSERT_TRUE(clients->running()) << clients->log();
  }
  std::unique_ptr<Process> resumed = start_coordinator("b", "127.0.0.1:" + port, true);
  ASSERT_EQ(resumed->wait(300s), 0) << resumed->log() << "\n--- clients:\n" << clients->log();
  EXPECT_EQ(clients->wait(60s), 0) << clients->log();
  const std::string resumed_log = resumed->log();
  EXPECT_NE(resumed_log.find("resuming run"), std::string::npos) << resumed_log;
  // The clients noticed the restart and joined the new incarnation.
  EXPECT_NE(clients->log().find("retrying in"), std::string::npos) << clients->log();

  // Both runs completed every round.
  for (const char* name : {"a", "b"}) {
    const std::string summary_text = test_support::read_file(state(name, "summary.json"));
    ASSERT_FALSE(summary_text.empty()) << name << ": no summary.json";
    const nlohmann::json summary = nlohmann::json::parse(summary_text);
    EXPECT_EQ(summary.value("rounds_completed", 0), kRounds) << name << ": " << summary.dump(2);
  }

  // The final models are the same, byte for byte: the files (digest) and each tensor.
  const std::string file_a = test_support::read_file(state("a", "final_model.bundle"));
  const std::string file_b = test_support::read_file(state("b", "final_model.bundle"));
  ASSERT_FALSE(file_a.empty());
  ASSERT_FALSE(file_b.empty());
  EXPECT_EQ(to_hex(sha256(file_a)), to_hex(sha256(file_b)));
  Result<TensorBundle> model_a = read_bundle_file(state("a", "final_model.bundle"));
  Result<TensorBundle> model_b = read_bundle_file(state("b", "final_model.bundle"));
  ASSERT_TRUE(model_a.ok()) << model_a.status().to_string();
  ASSERT_TRUE(model_b.ok()) << model_b.status().to_string();
  ASSERT_EQ(model_a->names(), model_b->names());
  for (size_t i = 0; i < model_a->size(); ++i) {
    EXPECT_TRUE(model_a->at(i).bitwise_equal(model_b->at(i))) << model_a->at(i).name();
  }
  EXPECT_EQ(model_a->metadata(), model_b->metadata());

  // Every round's training metrics agree. The loss is a double sum over the clients in arrival
  // order, so it may differ in its last bits when the arrival order differs.
  const std::vector<nlohmann::json> lines_a =
      test_support::metrics_lines(state("a", "metrics.jsonl"));
  const std::vector<nlohmann::json> lines_b =
      test_support::metrics_lines(state("b", "metrics.jsonl"));
  ASSERT_EQ(lines_a.size(), static_cast<size_t>(kRounds));
  ASSERT_EQ(lines_b.size(), static_cast<size_t>(kRounds));
  for (int r = 0; r < kRounds; ++r) {
    const nlohmann::json& a = lines_a[r];
    const nlohmann::json& b = lines_b[r];
    EXPECT_EQ(b.value("round", 0), r + 1);
    EXPECT_EQ(a["fit"]["selected"], b["fit"]["selected"]) << "round " << r + 1;
    EXPECT_EQ(a["fit"]["metrics"]["examples"], b["fit"]["metrics"]["examples"]);
    EXPECT_EQ(b["fit"]["failures"], nlohmann::json::array()) << b.dump();
    const double loss_a = a["fit"]["metrics"]["loss"].get<double>();
    const double loss_b = b["fit"]["metrics"]["loss"].get<double>();
    EXPECT_NEAR(loss_a, loss_b, 1e-12 * std::abs(loss_a)) << "round " << r + 1;
  }
  // Server-side evaluation of the last round: the same model gives the same accuracy.
  EXPECT_EQ(lines_a.back()["server_eval"], lines_b.back()["server_eval"]);
}

INSTANTIATE_TEST_SUITE_P(Strategies, FederationResume,
                         ::testing::Values("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
                                           "scaffold", "fednova", "feddyn", "moon", "qfedavg"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace fedtail

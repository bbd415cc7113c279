// Secure aggregation and differential privacy over the real transport.
//
// SecAgg+ with dropouts: a fedtail-coordinator and three fedtail-client processes over loopback
// (one hosting eight virtual clients, two hosting one each), FedAvg for three rounds with
// config.secagg (4 neighbours per client: a sparse SecAgg+ graph, not the complete one). In round 2
// the two single clients, 20% of the federation, drop mid-protocol: one after the receive stage
// (its pairwise masks are in its neighbours' inputs: recovered from their shares of its s key),
// one after its masked upload (its self mask is removed from the survivors' shares of its seed);
// both rejoin for round 3.
// The same run without secagg, with the same two clients gone at the same points (one before
// training, one after its upload), must give the same final model within quantisation, and the
// secure run's coordinator must never have held an individual update.
//
// DP-FedAvg: a fedtail-sim run with config.privacy (central mode, target_epsilon) stops before the
// round that would exceed the budget, writes its final model, and reports epsilon every round; in
// distributed mode over secagg the clients add the noise and the round is accounted at the
// multiplier their shares add up to.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/privacy/rdp_accountant.h"
#include "common/wire/bundle_file.h"
#include "common/wire/float_elements.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"
#include "tests/support/sim_configs.h"

namespace fedtail {
namespace {

using namespace std::chrono_literals;
using test_support::Process;

constexpr int kRounds = 3;
constexpr int kDropRound = 2;

nlohmann::json federation_config(bool secure) {
  nlohmann::json config = {
      {"seed", 11},
      {"threads", 1},
      {"device", "cpu"},
      {"rounds", kRounds},
      {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 2}, {"fraction_evaluate", 0.0}}},
      {"federation",
       {{"min_available_clients", 10},
        {"round_timeout_s", 120},
        {"poll_timeout_ms", 500},
        {"heartbeat_interval_ms", 300},
        {"client_timeout_s", 3},
        {"server_eval", false}}},
      {"data",
       {{"dataset", "fashion-mnist"},
        {"max_examples_per_class", 40},
        {"imbalance_factor", 10},
        {"partition", "dirichlet"},
        {"alpha", 1.0},
        {"clients", 10}}},
      {"model", {{"arch", "cnn"}}},
      {"local", {{"epochs", 1}, {"batch_size", 16}, {"lr", 0.05}}}};
  if (secure) {
    config["secagg"] = {{"neighbours", 4},
                        {"reconstruction_threshold", 0.5},
                        {"max_dropout_fraction", 0.3},
                        {"clip", 1.0},
                        {"bits", 24},
                        {"stage_timeout_s", 20}};
  }
  return config;
}

// Starts fedtail-client hosting clients `range` ("0-7") against 127.0.0.1:`port`, its state and
// log in `dir`; FEDTAIL_FAULT_EXIT=`fault` when not empty (client/fault_pause.h).
std::unique_ptr<Process> start_clients(const std::string& dir, const std::string& port,
                                       const std::string& range, const std::string& fault) {
  std::vector<std::string> env = {"OMP_WAIT_POLICY=PASSIVE"};
  if (!fault.empty()) env.push_back("FEDTAIL_FAULT_EXIT=" + fault);
  return std::make_unique<Process>(
      std::vector<std::string>{test_support::binary_path("fedtail-client"), "--coordinator",
                               "127.0.0.1:" + port, "--clients", range, "--state-dir",
                               dir + "/clients-" + range, "--device", "cpu", "--threads", "1",
                               "--retry-timeout", "30"},
      dir + "/client-" + range + ".log", env);
}

// Runs fedtail-sim on `config` in a fresh scratch directory tagged `tag`; returns the metrics lines
// of its one run (FedAvg, seed 3: tiny_sim_config) and sets *run_dir to that run's directory.
std::vector<nlohmann::json> run_sim(const std::string& tag, const nlohmann::json& config,
                                    std::string* run_dir = nullptr) {
  const std::string dir = test_support::scratch_dir(tag);
  test_support::write_file(dir + "/sim.json", config.dump(2));
  const std::string out = dir + "/out";
  test_support::CliRun r = test_support::run_cli(test_support::binary_path("fedtail-sim"),
                                                 dir + "/sim.json --out " + out);
  EXPECT_EQ(r.exit_code, 0) << r.err << test_support::read_file(out + "/sim.log");
  const std::string run = out + "/runs/fedavg/seed-3";
  if (run_dir != nullptr) *run_dir = run;
  return test_support::metrics_lines(run + "/metrics.jsonl");
}

struct FederationRun {
  std::string dir;
  std::string log;
  int exit_code = 0;
};

// Runs the federation: clients 0-7 in one process, clients 8 and 9 alone, each of those two with
// FEDTAIL_FAULT_EXIT set to its drop point in round 2.
FederationRun run_federation(const std::string& tag, bool secure, const std::string& drop8,
                             const std::string& drop9) {
  FederationRun run;
  run.dir = test_support::scratch_dir(tag);
  const std::string state = run.dir + "/state";
  test_support::write_file(run.dir + "/run.json", federation_config(secure).dump(2));
  Process coordinator(
      {test_support::binary_path("fedtail-coordinator"), "--config", run.dir + "/run.json",
       "--listen", "127.0.0.1:0", "--state-dir", state, "--threads", "1"},
      run.dir + "/coordinator.log", {"OMP_WAIT_POLICY=PASSIVE"});
  const std::string port = test_support::wait_for_file(state + "/port", 120s);
  if (port.empty()) {
    run.exit_code = -100;
    run.log = coordinator.log();
    return run;
  }
  auto client = [&](const std::string& range, const std::string& fault) {
    return start_clients(run.dir, port, range, fault);
  };

  auto many = client("0-7", "");
  auto eight = client("8-8", drop8);
  auto nine = client("9-9", drop9);
  // Once round 2 is over (its line in metrics.jsonl), the two come back, as a phone does: every
  // round waits for all ten, so both runs train the same clients in every round.
  const bool round_two = test_support::wait_for_lines(state + "/metrics.jsonl", kDropRound, 240s);
  const int eight_exit = eight->wait(30s);
  const int nine_exit = nine->wait(30s);
  run.log = "--- client 8 (exit " + std::to_string(eight_exit) + "):\n" + eight->log() +
            "\n--- client 9 (exit " + std::to_string(nine_exit) + "):\n" + nine->log();
  if (!round_two || eight_exit != 3 || nine_exit != 3) {
    run.exit_code = -101;
    run.log = coordinator.log() + run.log;
    return run;
  }
  eight = client("8-8", "");
  nine = client("9-9", "");
  run.exit_code = coordinator.wait(300s);
  many->wait(30s);
  run.log = coordinator.log() + run.log;
  return run;
}

// The largest absolute difference between the floating-point tensors of two bundles.
double max_float_difference(const TensorBundle& a, const TensorBundle& b) {
  double most = 0;
  for (const NamedTensor& x : a) {
    if (!dtype_is_floating(x.dtype())) continue;
    const NamedTensor* y = b.find(x.name());
    EXPECT_NE(y, nullptr) << x.name();
    if (y == nullptr) return INFINITY;
    for (int64_t i = 0; i < x.numel(); ++i) {
      most = std::max(most, std::abs(load_float(x.dtype(), x.bytes(), i) -
                                     load_float(y->dtype(), y->bytes(), i)));
    }
  }
  return most;
}

TEST(SecAggFederation, TwentyPercentDropMidProtocolAndTheModelEqualsThePlainRun) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  const std::string round = std::to_string(kDropRound);
  const FederationRun secure =
      run_federation("secagg-dropouts", true, "receive:" + round, "fit:" + round);
  ASSERT_EQ(secure.exit_code, 0) << secure.log;
  const FederationRun plain =
      run_federation("plain-dropouts", false, "train:" + round, "fit:" + round);
  ASSERT_EQ(plain.exit_code, 0) << plain.log;

  const std::vector<nlohmann::json> lines =
      test_support::metrics_lines(secure.dir + "/state/metrics.jsonl");
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds)) << secure.log;
  // Round 1: all ten through every stage.
  EXPECT_EQ(lines[0]["secagg"]["survivors"], 10) << lines[0].dump();
  EXPECT_EQ(lines[0]["fit"]["updates"], 10) << lines[0].dump();
  // Round 2: client-8 answered the receive stage, then left (recovered from its neighbours'
  // shares of its mask key); client-9 sent its masked input, then left (its self mask removed
  // from the survivors' shares of its seed). Nine inputs are in the sum, eight unmasked it.
  const nlohmann::json& r2 = lines[1];
  EXPECT_EQ(r2["secagg"]["confirmed"], 10) << r2.dump();
  EXPECT_EQ(r2["secagg"]["survivors"], 9) << r2.dump();
  EXPECT_EQ(r2["secagg"]["recovered_dropouts"], 1) << r2.dump();
  EXPECT_EQ(r2["secagg"]["stages"]["unmask"]["answers"], 8) << r2.dump();
  EXPECT_EQ(r2["fit"]["metrics"]["updated"], true) << r2.dump();
  EXPECT_EQ(r2["fit"]["metrics"]["updates"], 9) << r2.dump();
  // Round 3: both came back (new keys: a client's keys live one round, in memory).
  EXPECT_EQ(lines[2]["secagg"]["survivors"], 10) << lines[2].dump();
  EXPECT_EQ(lines[2]["fit"]["metrics"]["updated"], true) << lines[2].dump();

  // Same clients, same data, same seeds: the final models agree up to the fixed point's rounding
  // (24 bits over [-1, 1]: steps of 1.2e-7 per value and round, compounded by training; measured
  // 2.5e-6).
  Result<TensorBundle> a = read_bundle_file(secure.dir + "/state/final_model.bundle");
  Result<TensorBundle> b = read_bundle_file(plain.dir + "/state/final_model.bundle");
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  const double difference = max_float_difference(*a, *b);
  std::printf("secure vs plain final model: max |difference| %.3g\n", difference);
  EXPECT_LT(difference, 5e-5) << "the secure and plain runs' final models differ";
  const std::vector<nlohmann::json> plain_lines =
      test_support::metrics_lines(plain.dir + "/state/metrics.jsonl");
  ASSERT_EQ(plain_lines.size(), static_cast<size_t>(kRounds)) << plain.log;
  EXPECT_EQ(plain_lines[1]["fit"]["updates"], 9) << plain_lines[1].dump();
  // And the model learned: the clients' training loss fell from round 1 to round 3.
  EXPECT_LT(lines[2]["fit"]["metrics"]["loss"].get<double>(),
            lines[0]["fit"]["metrics"]["loss"].get<double>());

  // What the coordinator held: every fit upload of the secure run was an int32 masked vector (the
  // engine checks headers against the masked layout before allocating), and its state directory
  // holds only the global model: no metrics line carries tensor data.
  const std::string coordinator_log = test_support::read_file(secure.dir + "/coordinator.log");
  EXPECT_EQ(coordinator_log.find("update refused"), std::string::npos) << coordinator_log;
  Result<TensorBundle> checkpoint = read_bundle_file(secure.dir + "/state/checkpoint.bundle");
  ASSERT_TRUE(checkpoint.ok());
  for (const NamedTensor& t : *checkpoint) EXPECT_NE(a->find(t.name()), nullptr) << t.name();
  for (const nlohmann::json& line : lines) EXPECT_LT(line.dump().size(), 20000u);
}

TEST(SecAggFederation, CentralDpStopsAtTheBudgetAndWritesTheModel) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  nlohmann::json config = test_support::tiny_sim_config(6);
  // Four clients all sampled (q = 1), noise multiplier 3: epsilon at delta 1e-5 is 1.386, 2.029,
  // 2.547, 2.992 after rounds 1-4 and would be 3.385 after round 5 (the accountant's values,
  // tests/unit/rdp_accountant_test.cc), so a budget of 3.2 ends the run after round 4 of 6.
  config["privacy"] = {{"mode", "central"},
                       {"clip_norm", 0.5},
                       {"noise_multiplier", 3.0},
                       {"delta", 1e-5},
                       {"target_epsilon", 3.2}};
  std::string run_dir;
  const std::vector<nlohmann::json> lines = run_sim("sim-dp", config, &run_dir);
  ASSERT_EQ(lines.size(), 4u) << "the budget should end the run after round 4 of 6";
  double last = 0;
  for (const nlohmann::json& line : lines) {
    const double eps = line["privacy"]["epsilon"].get<double>();
    EXPECT_GT(eps, last);
    EXPECT_LE(eps, 3.2);
    EXPECT_EQ(line["privacy"]["sampling_rate"], 1.0);
    last = eps;
  }
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(run_dir + "/summary.json"));
  EXPECT_NEAR(last, 2.992, 0.001);
  EXPECT_EQ(summary["privacy"]["budget_exhausted"], true) << summary.dump(2);
  EXPECT_EQ(summary["rounds_completed"], 4) << summary.dump(2);
  EXPECT_TRUE(summary["final"]["generic_accuracy"].is_number()) << summary.dump(2);
  EXPECT_TRUE(read_bundle_file(run_dir + "/final_model.bundle").ok());
}

TEST(SecAggFederation, AnUnreachableBudgetFailsTheRunSayingWhy) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  nlohmann::json config = test_support::tiny_sim_config(3);
  // epsilon 1e-6 for 3 rounds of all 4 clients would need a noise multiplier above 10^4.
  config["privacy"] = {{"mode", "central"}, {"target_epsilon", 1e-6}};
  const std::string dir = test_support::scratch_dir("sim-unreachable-budget");
  test_support::write_file(dir + "/sim.json", config.dump(2));
  const std::string out = dir + "/out";
  test_support::CliRun r = test_support::run_cli(test_support::binary_path("fedtail-sim"),
                                                 dir + "/sim.json --out " + out);
  EXPECT_NE(r.exit_code, 0);
  const std::string log = r.err + test_support::read_file(out + "/sim.log");
  EXPECT_NE(log.find("config.privacy.target_epsilon: no noise multiplier keeps 3 round(s)"),
            std::string::npos)
      << log;
}

TEST(SecAggFederation, ARoundThatLosesTooManyFailsCleanlyAndTheRunGoesOn) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  // Four clients; at most 10% may drop in a round. client-3 leaves after round 2's receive stage
  // (25%): the round must fail without revealing anything, keep the model, and round 3 (client-3
  // back) must run as usual.
  nlohmann::json config = federation_config(true);
  config["data"]["clients"] = 4;
  config["federation"]["min_available_clients"] = 4;
  config["secagg"]["max_dropout_fraction"] = 0.1;
  config["secagg"]["neighbours"] = 2;
  const std::string dir = test_support::scratch_dir("secagg-failed-round");
  const std::string state = dir + "/state";
  test_support::write_file(dir + "/run.json", config.dump(2));
  Process coordinator(
      {test_support::binary_path("fedtail-coordinator"), "--config", dir + "/run.json", "--listen",
       "127.0.0.1:0", "--state-dir", state, "--threads", "1"},
      dir + "/coordinator.log", {"OMP_WAIT_POLICY=PASSIVE"});
  const std::string port = test_support::wait_for_file(state + "/port", 120s);
  ASSERT_FALSE(port.empty()) << coordinator.log();
  auto client = [&](const std::string& range, const std::string& fault) {
    return start_clients(dir, port, range, fault);
  };

  auto three = client("0-2", "");
  auto leaver = client("3-3", "receive:2");
  ASSERT_TRUE(test_support::wait_for_lines(state + "/metrics.jsonl", 2, 240s)) << coordinator.log();
  EXPECT_EQ(leaver->wait(30s), 3) << leaver->log();
  leaver = client("3-3", "");
  ASSERT_EQ(coordinator.wait(300s), 0) << coordinator.log();

  const std::vector<nlohmann::json> lines = test_support::metrics_lines(state + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
  const nlohmann::json& failed = lines[1];
  ASSERT_TRUE(failed["secagg"].contains("error")) << failed.dump();
  EXPECT_FALSE(failed["secagg"]["error"].get<std::string>().empty()) << failed.dump();
  EXPECT_EQ(failed["fit"]["metrics"]["updated"], false) << failed.dump();
  EXPECT_EQ(failed["fit"]["metrics"]["updates"], 0) << failed.dump();
  // The survivors never got an unmask request: nothing was revealed.
  EXPECT_FALSE(failed["secagg"]["stages"].contains("unmask")) << failed.dump();
  for (size_t r : {size_t{0}, size_t{2}}) {
    EXPECT_FALSE(lines[r]["secagg"].contains("error")) << lines[r].dump();
    EXPECT_EQ(lines[r]["fit"]["metrics"]["updated"], true) << lines[r].dump();
    EXPECT_EQ(lines[r]["secagg"]["survivors"], 4) << lines[r].dump();
  }
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(state + "/summary.json"));
  EXPECT_EQ(summary["secagg"]["rounds"], 3) << summary.dump(2);
  EXPECT_EQ(summary["secagg"]["failed_rounds"], 1) << summary.dump(2);
}

TEST(SecAggFederation, AdaptiveClippingFollowsTheUnclippedFraction) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  nlohmann::json config = test_support::tiny_sim_config(3);
  // A clip norm far above every update (their norms are about 1 here): all unclipped, so C
  // shrinks each round towards the target quantile 0.5. Little noise (std 0.001 · 10 / 4 per value
  // on the mean), so the model keeps training.
  config["privacy"] = {
      {"mode", "central"},
      {"clip_norm", 10.0},
      {"noise_multiplier", 0.001},
      {"adaptive_clipping",
       {{"target_quantile", 0.5}, {"learning_rate", 0.5}, {"count_noise_multiplier", 1.0}}}};
  const std::vector<nlohmann::json> lines = run_sim("sim-adaptive-clip", config);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["privacy"]["clip_norm"], 10.0);
  for (size_t i = 0; i < lines.size(); ++i) {
    const nlohmann::json& p = lines[i]["privacy"];
    EXPECT_EQ(p["unclipped"], 4) << p;
    // C <- C · exp(-0.5 · (b - 0.5)) with b the noised unclipped fraction (4 ± 1 of 4).
    const double b = p["unclipped_fraction_noised"].get<double>();
    EXPECT_NEAR(p["next_clip_norm"].get<double>(),
                p["clip_norm"].get<double>() * std::exp(-0.5 * (b - 0.5)), 1e-9)
        << p;
    if (i > 0) {
      EXPECT_EQ(p["clip_norm"], lines[i - 1]["privacy"]["next_clip_norm"]) << p;
    }
  }
}

TEST(SecAggFederation, AStrategyThatIsNotAMeanRefusesSecAggAtStartSayingWhy) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  nlohmann::json config = federation_config(true);
  config["strategy"] = {{"name", "scaffold"}};
  const std::string dir = test_support::scratch_dir("secagg-refused");
  test_support::write_file(dir + "/run.json", config.dump(2));
  Process coordinator(
      {test_support::binary_path("fedtail-coordinator"), "--config", dir + "/run.json", "--listen",
       "127.0.0.1:0", "--state-dir", dir + "/state", "--threads", "1"},
      dir + "/coordinator.log");
  EXPECT_EQ(coordinator.wait(120s), 1) << coordinator.log();
  EXPECT_NE(coordinator.log().find("strategy scaffold cannot run with config.secagg: its control "
                                   "variates are averaged over all clients"),
            std::string::npos)
      << coordinator.log();
}

TEST(SecAggFederation, TheDpAccountantSurvivesACoordinatorKill) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  // Four clients, two sampled a round (q = 0.5), noise multiplier 1.5, four rounds; the
  // coordinator is killed after round 2's metrics line and resumed.
  nlohmann::json config = federation_config(false);
  config["rounds"] = 4;
  config["data"]["clients"] = 4;
  config["federation"]["min_available_clients"] = 4;
  config["strategy"]["fraction_fit"] = 0.5;
  config["privacy"] = {{"mode", "central"}, {"clip_norm", 1.0}, {"noise_multiplier", 1.5}};
  const std::string dir = test_support::scratch_dir("dp-resume");
  const std::string state = dir + "/state";
  test_support::write_file(dir + "/run.json", config.dump(2));
  auto coordinator = [&](const std::string& listen, bool resume) {
    std::vector<std::string> argv = {test_support::binary_path("fedtail-coordinator"),
                                     "--config",
                                     dir + "/run.json",
                                     "--listen",
                                     listen,
                                     "--state-dir",
                                     state,
                                     "--threads",
                                     "1"};
    if (resume) argv.push_back("--resume");
    return std::make_unique<Process>(argv, dir + (resume ? "/resumed.log" : "/coordinator.log"));
  };
  auto first = coordinator("127.0.0.1:0", false);
  const std::string port = test_support::wait_for_file(state + "/port", 120s);
  ASSERT_FALSE(port.empty()) << first->log();
  Process clients({test_support::binary_path("fedtail-client"), "--coordinator",
                   "127.0.0.1:" + port, "--clients", "0-3", "--state-dir", dir + "/clients",
                   "--device", "cpu", "--threads", "1", "--retry-timeout", "120"},
                  dir + "/clients.log", {"OMP_WAIT_POLICY=PASSIVE"});
  ASSERT_TRUE(test_support::wait_for_lines(state + "/metrics.jsonl", 2, 300s)) << first->log();
  first->signal(SIGKILL);
  first->wait(30s);
  auto resumed = coordinator("127.0.0.1:" + port, true);
  ASSERT_EQ(resumed->wait(300s), 0) << resumed->log() << clients.log();
  EXPECT_NE(resumed->log().find("privacy: resumed after"), std::string::npos) << resumed->log();

  // Every round's epsilon is the accountant's closed form for that many rounds: nothing was
  // forgotten or counted twice across the kill.
  const std::vector<nlohmann::json> lines = test_support::metrics_lines(state + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 4u);
  for (size_t r = 0; r < lines.size(); ++r) {
    const nlohmann::json& p = lines[r]["privacy"];
    EXPECT_EQ(p["steps"], static_cast<int64_t>(r + 1)) << p;
    EXPECT_EQ(p["sampling_rate"], 0.5) << p;
    Result<double> expected = privacy::epsilon_after(0.5, 1.5, static_cast<int64_t>(r + 1), 1e-5);
    ASSERT_TRUE(expected.ok());
    EXPECT_NEAR(p["epsilon"].get<double>(), *expected, 1e-9) << "round " << r + 1;
  }
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(state + "/summary.json"));
  EXPECT_EQ(summary["privacy"]["rounds_accounted"], 4) << summary.dump(2);
  EXPECT_EQ(summary["privacy"]["budget_exhausted"], false) << summary.dump(2);
}

TEST(SecAggFederation, DistributedDpOverSecAggNoisesOnTheClients) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  nlohmann::json config = test_support::tiny_sim_config(2);
  // Each of the 4 clients clips its change to 0.5 and adds N(0, (1 · 0.5)^2 / 4) before masking;
  // the coordinator sees only the noised sum.
  config["secagg"] = {{"neighbours", 2}, {"stage_timeout_s", 30}};
  config["privacy"] = {{"mode", "distributed"}, {"clip_norm", 0.5}, {"noise_multiplier", 1.0}};
  const std::vector<nlohmann::json> lines = run_sim("sim-distributed-dp", config);
  ASSERT_EQ(lines.size(), 2u);
  for (const nlohmann::json& line : lines) {
    EXPECT_EQ(line["secagg"]["survivors"], 4) << line.dump();
    EXPECT_EQ(line["fit"]["metrics"]["updated"], true) << line.dump();
    const nlohmann::json& p = line["privacy"];
    EXPECT_EQ(p["mode"], "distributed") << p;
    // No dropouts: the survivors' noise shares add up to the planned multiplier.
    EXPECT_DOUBLE_EQ(p["effective_noise_multiplier"].get<double>(), 1.0) << p;
    EXPECT_GT(p["epsilon"].get<double>(), 0) << p;
  }
  EXPECT_GT(lines[1]["privacy"]["epsilon"].get<double>(),
            lines[0]["privacy"]["epsilon"].get<double>());
}

}  // namespace
}  // namespace fedtail

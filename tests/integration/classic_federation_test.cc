// The classic FL algorithms over the real transport: one fedtail-sim (coordinator + fedtail-client
// worker processes over loopback gRPC) of FedAvgM, FedAdam, FedYogi, FedAdagrad, SCAFFOLD, FedNova,
// FedDyn, MOON and q-FedAvg. Each run completes every round with every update folded and its
// training loss falling, and reports the quantities that show its algorithm ran over the wire:
// SCAFFOLD's control variates (c_i reached the clients, Δc came back), FedNova's normalisers a_i
// (τ_eff), FedDyn's server state h, q-FedAvg's client losses F_k. (MOON's previous local model,
// kept by the client process, is exercised across a coordinator restart in federation_resume_test.)
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/cli.h"
#include "tests/support/process.h"
#include "tests/support/sim_configs.h"

namespace fedtail {
namespace {

using test_support::binary_path;
using test_support::run_cli;
using test_support::scratch_dir;

constexpr int kRounds = 3;

std::vector<nlohmann::json> lines_of(const std::string& out, const std::string& strategy) {
  return test_support::metrics_lines(out + "/runs/" + strategy + "/seed-3/metrics.jsonl");
}

TEST(ClassicFederation, NineClassicAlgorithmsInOneSimulation) {
  const std::vector<std::string> strategies = {"fedavgm",    "fedadam",  "fedyogi",
                                               "fedadagrad", "scaffold", "fednova",
                                               "feddyn",     "moon",     "qfedavg"};
  nlohmann::json config = test_support::tiny_sim_config(kRounds);
  // Plain SGD (no momentum), as SCAFFOLD's, FedNova's and q-FFL's papers train.
  config["local"] = {{"epochs", 3}, {"batch_size", 16}, {"lr", 0.05}};
  nlohmann::json entries = nlohmann::json::array();
  for (const std::string& s : strategies) entries.push_back({{"name", s}});
  config["simulation"] = {{"strategies", entries}, {"seeds", {3}}};

  const std::string dir = scratch_dir("sim-classic");
  test_support::write_file(dir + "/sim.json", config.dump(2));
  const std::string out = dir + "/out";
  test_support::CliRun r =
      run_cli(binary_path("fedtail-sim"), dir + "/sim.json --out " + out + " --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.err << test_support::read_file(out + "/sim.log");
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(out + "/summary.json"));

  ASSERT_EQ(summary["runs"].size(), strategies.size());
  for (const nlohmann::json& run : summary["runs"]) {
    SCOPED_TRACE(run["strategy"].get<std::string>());
    EXPECT_EQ(run["status"], "completed");
    EXPECT_EQ(run["rounds_completed"], kRounds);
  }
  // Every round folds all 4 updates, and the clients' training loss falls from round 1 to the
  // last (three rounds on a few hundred images are too few for the balanced test accuracy to
  // say much; the loss does). MOON's reported loss includes its contrastive term, which is zero in
  // round 1 (no previous local model yet), so it is not compared.
  for (const std::string& s : strategies) {
    SCOPED_TRACE(s);
    const std::vector<nlohmann::json> lines = lines_of(out, s);
    ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
    for (const nlohmann::json& line : lines) {
      EXPECT_EQ(line["fit"]["updates"], 4) << line["fit"].dump();
      EXPECT_EQ(line["fit"]["failures"], nlohmann::json::array());
      EXPECT_TRUE(line["fit"]["metrics"]["loss"].is_number()) << line["fit"].dump();
    }
    if (s != "moon") {
      EXPECT_LT(lines.back()["fit"]["metrics"]["loss"].get<double>(),
                lines.front()["fit"]["metrics"]["loss"].get<double>());
    }
  }

  // SCAFFOLD: every round, all 4 clients sent their Δc_i; c moved away from zero.
  for (const nlohmann::json& line : lines_of(out, "scaffold")) {
    const nlohmann::json& m = line["fit"]["metrics"]["scaffold"];
    EXPECT_EQ(m["control_updates"], 4) << m;
    EXPECT_EQ(m["available_clients"], 4) << m;
    EXPECT_GT(m["control_norm"].get<double>(), 0) << m;
  }
  // FedNova: τ_eff is the weighted mean of the clients' a_i (plain SGD: their step counts), which
  // differ with the clients' data sizes.
  for (const nlohmann::json& line : lines_of(out, "fednova")) {
    const nlohmann::json& m = line["fit"]["metrics"]["fednova"];
    EXPECT_LT(m["a_min"].get<double>(), m["a_max"].get<double>()) << m;
    EXPECT_GE(m["tau_eff"].get<double>(), m["a_min"].get<double>()) << m;
    EXPECT_LE(m["tau_eff"].get<double>(), m["a_max"].get<double>()) << m;
  }
  // FedDyn: all 4 of 4 clients took part; h is non-zero after the first round.
  for (const nlohmann::json& line : lines_of(out, "feddyn")) {
    const nlohmann::json& m = line["fit"]["metrics"]["feddyn"];
    EXPECT_EQ(m["participants"], 4) << m;
    EXPECT_EQ(m["clients"], 4) << m;
    EXPECT_GT(m["h_norm"].get<double>(), 0) << m;
  }
  // q-FedAvg: the clients' losses of the global model reached the server.
  for (const nlohmann::json& line : lines_of(out, "qfedavg")) {
    const nlohmann::json& m = line["fit"]["metrics"]["qfedavg"];
    EXPECT_GT(m["global_loss"]["min"].get<double>(), 0) << m;
    EXPECT_GT(m["step"].get<double>(), 0) << m;
  }
}

}  // namespace
}  // namespace fedtail

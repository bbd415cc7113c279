// The long-tail baselines over the real transport: one fedtail-sim of FedETF, CCVR, CReFF and Ratio
// Loss, and
// one of FedAvg and FedProx trained with config.local.loss (coordinator + fedtail-client worker
// processes over loopback gRPC). Each run completes above chance; FedETF's clients adapt before
// scoring; the last CCVR round is a statistics round in which every client uploaded class
// statistics and the server calibrated its classifier; Ratio Loss's clients train with the class
// weights the server estimated on its auxiliary set in the round before.
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

// Runs `config` with fedtail-sim in a fresh scratch folder; returns summary.json (empty on failure,
// with the failure recorded).
nlohmann::json simulate(const std::string& tag, const nlohmann::json& config, std::string* out) {
  const std::string dir = scratch_dir(tag);
  const std::string path = dir + "/sim.json";
  test_support::write_file(path, config.dump(2));
  *out = dir + "/out";
  test_support::CliRun r =
      run_cli(binary_path("fedtail-sim"), path + " --out " + *out + " --workers 2");
  EXPECT_EQ(r.exit_code, 0) << r.err << test_support::read_file(*out + "/sim.log");
  if (r.exit_code != 0) return nlohmann::json();
  return nlohmann::json::parse(test_support::read_file(*out + "/summary.json"));
}

void expect_completed_above_chance(const nlohmann::json& summary, size_t runs, int rounds) {
  ASSERT_EQ(summary["runs"].size(), runs);
  for (const nlohmann::json& run : summary["runs"]) {
    SCOPED_TRACE(run["strategy"].get<std::string>());
    EXPECT_EQ(run["status"], "completed");
    EXPECT_EQ(run["rounds_completed"], rounds);
    // Above chance (10 classes) after a few rounds on a few hundred images.
    EXPECT_GT(run["final"]["generic_accuracy"].get<double>(), 0.15) << run["final"].dump();
    EXPECT_GT(run["final"]["personalized_accuracy"].get<double>(), 0.15) << run["final"].dump();
  }
}

TEST(LongTailFederation, FedEtfCcvrCreffAndRatioLossInOneSimulation) {
  nlohmann::json config = test_support::tiny_sim_config(3);
  config["local"] = {{"epochs", 3}, {"batch_size", 16}, {"lr", 0.05}};
  config["simulation"] = {
      {"strategies",
       {{{"name", "fedetf"}, {"finetune_cycles", 1}, {"finetune_epochs", 1}},
        {{"name", "ccvr"}, {"samples_per_class", 50}, {"calibration_epochs", 2}},
        {{"name", "creff"},
         {"features_per_class", 20},
         {"match_steps", 20},
         {"retrain_epochs", 50},
         {"gradient_repeats", 2}},
        {{"name", "ratioloss"}, {"overrides", {{"data", {{"auxiliary_per_class", 5}}}}}}}},
      {"seeds", {3}}};
  std::string out;
  const nlohmann::json summary = simulate("sim-longtail", config, &out);
  ASSERT_FALSE(summary.is_null());
  expect_completed_above_chance(summary, 4, 3);

  // FedETF: the clients adapted (one cycle) before their last-round report.
  const std::vector<nlohmann::json> etf =
      test_support::metrics_lines(out + "/runs/fedetf/seed-3/metrics.jsonl");
  ASSERT_EQ(etf.size(), 3u);
  EXPECT_TRUE(etf.back()["server_eval"].contains("temperature")) << etf.back()["server_eval"];
  EXPECT_EQ(etf.back()["evaluate"]["reports"], 4) << etf.back()["evaluate"];

  // CCVR: rounds 1-2 train as FedAvg; round 3 is the statistics round of all 4 clients, whose
  // pooled Gaussians calibrate the classifier that the last evaluation scores.
  const std::vector<nlohmann::json> ccvr =
      test_support::metrics_lines(out + "/runs/ccvr/seed-3/metrics.jsonl");
  ASSERT_EQ(ccvr.size(), 3u);
  EXPECT_EQ(ccvr[0]["fit"]["metrics"]["calibrated"], false) << ccvr[0]["fit"];
  const nlohmann::json& last = ccvr.back()["fit"];
  EXPECT_EQ(last["selected"], 4) << last;
  EXPECT_EQ(last["metrics"]["calibrated"], true) << last;
  EXPECT_GT(last["metrics"]["classes_calibrated"].get<int>(), 5) << last;
  EXPECT_TRUE(ccvr.back()["server_eval"].contains("generic_uncalibrated"))
      << ccvr.back()["server_eval"];

  // CReFF: every round the server matched federated features to the clients' class gradients and
  // re-trained a classifier on them; the FedAvg classifier's accuracy is reported beside it.
  const std::vector<nlohmann::json> creff =
      test_support::metrics_lines(out + "/runs/creff/seed-3/metrics.jsonl");
  ASSERT_EQ(creff.size(), 3u);
  for (const nlohmann::json& line : creff) {
    EXPECT_GT(line["fit"]["metrics"]["matched_classes"].get<int>(), 5) << line["fit"];
    EXPECT_GT(line["fit"]["metrics"]["retrain_steps"].get<int>(), 0) << line["fit"];
  }
  EXPECT_TRUE(creff.back()["server_eval"].contains("generic_fedavg"))
      << creff.back()["server_eval"];

  // Ratio Loss: round 1 is plain cross-entropy (α = 1); each round's probe on the server's
  // auxiliary set gives the weights (>= 1) the next round's clients train with.
  const std::vector<nlohmann::json> ratio =
      test_support::metrics_lines(out + "/runs/ratioloss/seed-3/metrics.jsonl");
  ASSERT_EQ(ratio.size(), 3u);
  const nlohmann::json& first = ratio[0]["fit"]["metrics"]["ratioloss"];
  ASSERT_EQ(first["alpha"].size(), 10u) << first;
  for (const nlohmann::json& a : first["alpha"]) EXPECT_EQ(a.get<double>(), 1.0) << first;
  for (size_t r = 0; r + 1 < ratio.size(); ++r) {
    const nlohmann::json& now = ratio[r]["fit"]["metrics"]["ratioloss"];
    const nlohmann::json& next = ratio[r + 1]["fit"]["metrics"]["ratioloss"];
    EXPECT_EQ(now["next_alpha"], next["alpha"]) << "round " << r + 1;
    for (const nlohmann::json& a : now["next_alpha"]) EXPECT_GE(a.get<double>(), 1.0) << now;
  }
}

TEST(LongTailFederation, FedAvgAndFedProxWithABalancedLocalLoss) {
  nlohmann::json config = test_support::tiny_sim_config(3);
  config["local"] = {{"epochs", 2},
                     {"batch_size", 16},
                     {"lr", 0.05},
                     {"loss", {{"name", "balanced_softmax"}, {"counts", "global"}}}};
  config["simulation"] = {{"strategies", {{{"name", "fedavg"}}, {{"name", "fedprox"}}}},
                          {"seeds", {3}}};
  std::string out;
  const nlohmann::json summary = simulate("sim-local-loss", config, &out);
  ASSERT_FALSE(summary.is_null());
  expect_completed_above_chance(summary, 2, 3);

  // A strategy with its own loss refuses the key at start, naming it.
  config["simulation"] = {{"strategies", {{{"name", "fedrod"}}}}, {"seeds", {3}}};
  const std::string dir = scratch_dir("sim-local-loss-refused");
  test_support::write_file(dir + "/sim.json", config.dump(2));
  test_support::CliRun r =
      run_cli(binary_path("fedtail-sim"), dir + "/sim.json --out " + dir + "/out --workers 2");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE((r.err + test_support::read_file(dir + "/out/sim.log")).find("config.local.loss"),
            std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace fedtail

// The personalised and decoupled baselines over the real transport: one fedtail-sim of FedBN,
// FedPer, FedRep, FedBABU, FedRoD and Ditto (coordinator + fedtail-client worker processes over
// loopback gRPC). Each run completes and reports a generic and a personalised accuracy, and the
// clients' state files hold exactly the part each strategy keeps local.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "client/state_store.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"
#include "tests/support/sim_configs.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using test_support::binary_path;
using test_support::run_cli;
using test_support::scratch_dir;

// The names a state file's current state holds, for every state file of a run.
std::vector<std::set<std::string>> state_names(const std::string& run_dir) {
  std::vector<std::set<std::string>> out;
  if (!fs::exists(run_dir + "/clients")) return out;
  for (const auto& entry : fs::directory_iterator(run_dir + "/clients")) {
    if (entry.path().extension() != ".state") continue;
    Result<client::StateRecord> record = client::read_state_file(entry.path().string());
    EXPECT_TRUE(record.ok()) << record.status().to_string();
    if (!record.ok()) continue;
    const std::vector<std::string> names = record->current.tensors.names();
    out.emplace_back(names.begin(), names.end());
  }
  return out;
}

TEST(PersonalizedFederation, SixBaselinesInOneSimulation) {
  const std::string dir = scratch_dir("sim-personalized");
  nlohmann::json config = test_support::tiny_sim_config(3);
  config["local"] = {{"epochs", 5}, {"batch_size", 16}, {"lr", 0.05}};
  config["simulation"] = {{"strategies",
                           {{{"name", "fedbn"}},
                            {{"name", "fedper"}},
                            {{"name", "fedrep"}, {"head_epochs", 2}, {"body_epochs", 5}},
                            {{"name", "fedbabu"}, {"finetune_epochs", 1}},
                            {{"name", "fedrod"}},
                            {{"name", "ditto"}, {"lambda", 0.5}}}},
                          {"seeds", {3}}};
  const std::string path = dir + "/sim.json";
  test_support::write_file(path, config.dump(2));
  const std::string out = dir + "/out";
  test_support::CliRun r =
      run_cli(binary_path("fedtail-sim"), path + " --out " + out + " --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.err << test_support::read_file(out + "/sim.log");

  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(out + "/summary.json"));
  ASSERT_EQ(summary["runs"].size(), 6u);
  for (const nlohmann::json& run : summary["runs"]) {
    SCOPED_TRACE(run["strategy"].get<std::string>());
    EXPECT_EQ(run["status"], "completed");
    EXPECT_EQ(run["rounds_completed"], 3);
    // Above chance (10 classes) after three rounds on a few hundred images.
    EXPECT_GT(run["final"]["generic_accuracy"].get<double>(), 0.15) << run["final"].dump();
    EXPECT_GT(run["final"]["personalized_accuracy"].get<double>(), 0.15) << run["final"].dump();
    EXPECT_GT(run["seconds_per_round"]["total"].get<double>(), 0);
  }
  ASSERT_EQ(summary["table"]["generic"].size(), 6u);

  // What each strategy keeps on its clients (clients that trained at least once).
  const std::string runs = out + "/runs/";
  auto expect_states = [&](const std::string& label,
                           const std::function<bool(const std::string&)>& is_local) {
    SCOPED_TRACE(label);
    const std::vector<std::set<std::string>> states = state_names(runs + label + "/seed-3");
    size_t trained = 0;
    for (const std::set<std::string>& names : states) {
      if (names.empty()) continue;  // evaluated, never trained
      ++trained;
      for (const std::string& n : names) EXPECT_TRUE(is_local(n)) << n;
    }
    EXPECT_GE(trained, 2u);
  };
  expect_states("fedbn", [](const std::string& n) { return n.find(".bn") != std::string::npos; });
  expect_states("fedper",
                [](const std::string& n) { return n.rfind("heads.classifier.", 0) == 0; });
  expect_states("fedrep",
                [](const std::string& n) { return n.rfind("heads.classifier.", 0) == 0; });
  expect_states("fedrod", [](const std::string& n) { return n.rfind("heads.personal.", 0) == 0; });
  expect_states("ditto", [](const std::string& n) {
    return n.rfind("backbone.", 0) == 0 || n.rfind("heads.classifier.", 0) == 0;
  });
  for (const std::set<std::string>& names : state_names(runs + "fedbabu/seed-3")) {
    EXPECT_TRUE(names.empty());  // FedBABU keeps nothing between rounds
  }
}

}  // namespace
}  // namespace fedtail

// The personalised and decoupled baselines over the real transport: one fedtail-sim of FedBN,
// FedPer, FedRep, FedBABU, FedRoD and Ditto (coordinator + fedtail-client worker processes over
// loopback gRPC). Each run completes and reports a generic and a personalised accuracy, and the
// clients' state files hold exactly the part each strategy keeps local.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "client/state_store.h"
#include "common/base/subprocess.h"
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

// Ditto and FedRoD keep state on the clients (a personal model, a personal head) that every later
// round builds on: stop the simulation after round 2 (SIGTERM, as a user's Ctrl-C), continue it
// with --resume, and every round's generic and personalised accuracy is the uninterrupted run's.
TEST(PersonalizedFederation, StoppedAndResumedEndsWhereAnUninterruptedRunDoes) {
  const std::string dir = scratch_dir("sim-personalized-resume");
  nlohmann::json config = test_support::tiny_sim_config(4);
  config["local"] = {{"epochs", 2}, {"batch_size", 16}, {"lr", 0.05}};
  config["strategy"] = {{"fraction_fit", 0.75}};  // 3 of 4 clients a round: states diverge
  config["eval"]["every"] = 1;
  config["simulation"] = {{"strategies", {{{"name", "ditto"}}, {{"name", "fedrod"}}}},
                          {"seeds", {5}}};
  const std::string path = dir + "/sim.json";
  test_support::write_file(path, config.dump(2));

  const std::string straight = dir + "/straight";
  test_support::CliRun r =
      run_cli(binary_path("fedtail-sim"), path + " --out " + straight + " --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.err << test_support::read_file(straight + "/sim.log");

  const std::string out = dir + "/stopped";
  {
    SubprocessOptions options;
    options.argv = {binary_path("fedtail-sim"), path, "--out", out, "--workers", "2"};
    options.log_path = dir + "/first.log";
    options.env = {"OMP_WAIT_POLICY=PASSIVE"};
    Result<std::unique_ptr<Subprocess>> sim = Subprocess::spawn(options);
    ASSERT_TRUE(sim.ok()) << sim.status().to_string();
    ASSERT_TRUE(test_support::wait_for_lines(out + "/runs/ditto/seed-5/metrics.jsonl", 2,
                                             std::chrono::seconds(120)))
        << test_support::read_file(dir + "/first.log");
    (*sim)->signal(SIGTERM);
    ASSERT_TRUE((*sim)->wait_for(std::chrono::seconds(60)));
  }
  const size_t before =
      test_support::metrics_lines(out + "/runs/ditto/seed-5/metrics.jsonl").size();
  ASSERT_LT(before, 4u) << "the run ended before it could be stopped";
  test_support::CliRun resumed =
      run_cli(binary_path("fedtail-sim"), path + " --out " + out + " --workers 2 --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err << test_support::read_file(out + "/sim.log");

  for (const std::string label : {"ditto", "fedrod"}) {
    SCOPED_TRACE(label);
    const auto a =
        test_support::metrics_lines(straight + "/runs/" + label + "/seed-5/metrics.jsonl");
    const auto b = test_support::metrics_lines(out + "/runs/" + label + "/seed-5/metrics.jsonl");
    ASSERT_EQ(a.size(), 4u);
    ASSERT_EQ(b.size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(a[i]["round"], b[i]["round"]);
      EXPECT_EQ(a[i]["server_eval"]["generic"]["correct"],
                b[i]["server_eval"]["generic"]["correct"])
          << "round " << i + 1;
      EXPECT_EQ(a[i]["evaluate"]["metrics"]["personalized"],
                b[i]["evaluate"]["metrics"]["personalized"])
          << "round " << i + 1;
    }
  }
}

}  // namespace
}  // namespace fedtail

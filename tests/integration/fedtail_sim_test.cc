// fedtail-sim as a user runs it: the smoke config end to end (table, summary.json, metrics.jsonl,
// curves), several strategies and seeds in one table, errors, stop + --resume, and a worker killed
// mid-run.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

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

std::string write_config(const std::string& dir, const nlohmann::json& config) {
  const std::string path = dir + "/sim.json";
  test_support::write_file(path, config.dump(2));
  return path;
}

// Polls until `path` holds at least `n` lines (or the timeout): true when it does.
bool wait_for_lines(const std::string& path, size_t n, std::chrono::seconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (fs::exists(path) && test_support::metrics_lines(path).size() >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

std::unique_ptr<Subprocess> start_sim(const std::vector<std::string>& args,
                                      const std::string& log) {
  SubprocessOptions options;
  options.argv = {binary_path("fedtail-sim")};
  options.argv.insert(options.argv.end(), args.begin(), args.end());
  options.log_path = log;
  options.env = {"OMP_WAIT_POLICY=PASSIVE"};
  Result<std::unique_ptr<Subprocess>> process = Subprocess::spawn(options);
  EXPECT_TRUE(process.ok()) << process.status().to_string();
  return process.ok() ? std::move(process).value() : nullptr;
}

TEST(FedtailSim, SmokeConfigEndToEnd) {
  const std::string out = scratch_dir("sim-smoke") + "/out";
  const std::string config = std::string(FEDTAIL_SOURCE_DIR) + "/simulations/configs/smoke.json";
  test_support::CliRun r =
      run_cli(binary_path("fedtail-sim"), config + " --out " + out + " --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << test_support::read_file(out + "/sim.log");

  // The table on stdout and in summary.md.
  const std::string md = test_support::read_file(out + "/summary.md");
  EXPECT_NE(md.find("## Generic accuracy"), std::string::npos) << md;
  EXPECT_NE(md.find("| fedavg | generic |"), std::string::npos) << md;
  EXPECT_NE(md.find("| fedavg | personalized |"), std::string::npos) << md;
  EXPECT_NE(r.out.find("| fedavg | generic |"), std::string::npos) << r.out;

  // summary.json: the keys of the binaries' contract (one run: also at the top level).
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(out + "/summary.json"));
  EXPECT_EQ(summary["strategy"], "fedavg");
  EXPECT_EQ(summary["rounds_completed"], 2);
  EXPECT_TRUE(summary["wall_seconds"].is_number());
  ASSERT_EQ(summary["runs"].size(), 1u);
  const nlohmann::json& final = summary["final"];
  ASSERT_TRUE(final["generic_accuracy"].is_number()) << summary.dump(2);
  const double accuracy = final["generic_accuracy"];
  EXPECT_GT(accuracy, 0.2);  // 10 classes: well above chance after two rounds
  EXPECT_LE(accuracy, 1.0);
  for (const char* group : {"many", "medium", "few"}) {
    EXPECT_TRUE(final["generic_by_group"][group].is_number()) << group;
  }
  EXPECT_TRUE(final["personalized_accuracy"].is_number());

  // metrics.jsonl: one line per round, tagged, with bytes moved and seconds.
  const std::vector<nlohmann::json> lines = test_support::metrics_lines(out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(lines[i]["round"], i + 1);
    EXPECT_EQ(lines[i]["label"], "fedavg");
    EXPECT_EQ(lines[i]["seed"], 1);
    EXPECT_EQ(lines[i]["strategy"], "fedavg");
    EXPECT_GT(lines[i]["bytes"]["down"].get<double>(), 0);
    EXPECT_GT(lines[i]["bytes"]["up"].get<double>(), 0);
    EXPECT_GT(lines[i]["seconds"].get<double>(), 0);
    EXPECT_TRUE(lines[i].contains("server_eval"));
  }
  // Four clients, all selected: the coordinator sent four models and got four back.
  EXPECT_EQ(lines[0]["fit"]["updates"], 4);
  EXPECT_EQ(lines[0]["fit"]["bytes_up"], lines[0]["fit"]["bytes_down"]);

  // The run's own state directory and the workers' logs.
  EXPECT_TRUE(fs::exists(out + "/runs/fedavg/seed-1/checkpoint.bundle"));
  EXPECT_TRUE(fs::exists(out + "/runs/fedavg/seed-1/workers/worker-0.log"));
  EXPECT_TRUE(fs::exists(out + "/runs/fedavg/seed-1/workers/worker-1.log"));
  if (fs::exists("/usr/bin/gnuplot")) {
    ASSERT_TRUE(fs::exists(out + "/accuracy.png")) << test_support::read_file(out + "/sim.log");
    const std::string png = test_support::read_file(out + "/accuracy.png");
    EXPECT_EQ(png.substr(1, 3), "PNG");
    EXPECT_TRUE(fs::exists(out + "/personalized.png"));
  }

  // A second run into the same directory is refused with a way out.
  test_support::CliRun again =
      run_cli(binary_path("fedtail-sim"), config + " --out " + out + " --workers 2");
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("holds an earlier simulation: pass --resume"), std::string::npos)
      << again.err;
}

TEST(FedtailSim, SeveralStrategiesAndSeedsInOneTable) {
  const std::string dir = scratch_dir("sim-multi");
  nlohmann::json config = test_support::tiny_sim_config(2);
  config["simulation"] = {
      {"strategies", {{{"name", "fedavg"}}, {{"name", "fedprox"}, {"mu", 0.01}}}},
      {"seeds", {3, 4}}};
  const std::string out = dir + "/out";
  test_support::CliRun r = run_cli(binary_path("fedtail-sim"),
                                   write_config(dir, config) + " --out " + out + " --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.err << test_support::read_file(out + "/sim.log");
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(out + "/summary.json"));
  ASSERT_EQ(summary["runs"].size(), 4u);
  EXPECT_EQ(summary["strategies"], nlohmann::json({"fedavg", "fedprox"}));
  for (const nlohmann::json& run : summary["runs"]) {
    EXPECT_EQ(run["status"], "completed");
    EXPECT_EQ(run["rounds_completed"], 2);
    EXPECT_TRUE(run["final"]["generic_accuracy"].is_number());
  }
  const nlohmann::json& generic = summary["table"]["generic"];
  ASSERT_EQ(generic.size(), 2u);
  EXPECT_EQ(generic[0]["overall"]["n"], 2);
  EXPECT_TRUE(generic[0]["overall"]["std"].is_number());  // two seeds: a spread
  // Same seed, same partition: both strategies saw the same client sizes in round 1.
  const std::vector<nlohmann::json> lines = test_support::metrics_lines(out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_NE(test_support::read_file(out + "/summary.md").find(" ± "), std::string::npos);

  // --strategies picks a subset; an unknown name is a one-line error naming what exists.
  test_support::CliRun bad =
      run_cli(binary_path("fedtail-sim"),
              write_config(dir, config) + " --out " + dir + "/out2 --strategies fedx");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(
      bad.err.find("--strategies: no strategy \"fedx\" in the config (it has fedavg, fedprox)"),
      std::string::npos)
      << bad.err;
}

TEST(FedtailSim, HelpAndConfigErrors) {
  test_support::CliRun help = run_cli(binary_path("fedtail-sim"), "--help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag :
       {"--out", "--workers", "--device", "--rounds", "--strategies", "--seeds", "--resume"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
  const std::string dir = scratch_dir("sim-errors");
  nlohmann::json config = test_support::tiny_sim_config(2);
  config["data"]["alpha"] = -1;
  test_support::CliRun r =
      run_cli(binary_path("fedtail-sim"), write_config(dir, config) + " --out " + dir + "/out");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("config.data.alpha"), std::string::npos) << r.err;
  test_support::CliRun missing =
      run_cli(binary_path("fedtail-sim"), dir + "/nope.json --out " + dir + "/out");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("nope.json"), std::string::npos) << missing.err;
}

TEST(FedtailSim, StoppedThenResumed) {
  const std::string dir = scratch_dir("sim-resume");
  nlohmann::json config = test_support::tiny_sim_config(4);
  config["simulation"]["seeds"] = {3, 4};
  const std::string path = write_config(dir, config);
  const std::string out = dir + "/out";
  {
    std::unique_ptr<Subprocess> sim =
        start_sim({path, "--out", out, "--workers", "2"}, dir + "/first.log");
    ASSERT_NE(sim, nullptr);
    ASSERT_TRUE(
        wait_for_lines(out + "/runs/fedavg/seed-3/metrics.jsonl", 2, std::chrono::seconds(120)))
        << test_support::read_file(dir + "/first.log");
    sim->signal(SIGTERM);
    ASSERT_TRUE(sim->wait_for(std::chrono::seconds(60)));
    EXPECT_EQ(sim->exit_code(), 128 + SIGTERM) << test_support::read_file(dir + "/first.log");
    EXPECT_NE(test_support::read_file(dir + "/first.log").find("--resume"), std::string::npos);
  }
  // No worker outlives the simulation.
  const size_t done_before =
      test_support::metrics_lines(out + "/runs/fedavg/seed-3/metrics.jsonl").size();
  EXPECT_GE(done_before, 2u);

  test_support::CliRun resumed =
      run_cli(binary_path("fedtail-sim"), path + " --out " + out + " --workers 2 --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err << test_support::read_file(out + "/sim.log");
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(out + "/summary.json"));
  ASSERT_EQ(summary["runs"].size(), 2u);
  for (const nlohmann::json& run : summary["runs"]) {
    EXPECT_EQ(run["rounds_completed"], 4) << run.dump();
    EXPECT_EQ(run["status"], "completed");
  }
  // Each round once: the resumed run continued after its checkpoint.
  const std::vector<nlohmann::json> lines =
      test_support::metrics_lines(out + "/runs/fedavg/seed-3/metrics.jsonl");
  ASSERT_EQ(lines.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(lines[i]["round"], i + 1);
  EXPECT_EQ(test_support::metrics_lines(out + "/metrics.jsonl").size(), 8u);
}

TEST(FedtailSim, AKilledWorkerIsReportedAndTheRunGoesOn) {
  const std::string dir = scratch_dir("sim-worker-kill");
  nlohmann::json config = test_support::tiny_sim_config(4);
  const std::string out = dir + "/out";
  std::unique_ptr<Subprocess> sim =
      start_sim({write_config(dir, config), "--out", out, "--workers", "2"}, dir + "/sim.log");
  ASSERT_NE(sim, nullptr);
  ASSERT_TRUE(
      wait_for_lines(out + "/runs/fedavg/seed-3/metrics.jsonl", 1, std::chrono::seconds(120)))
      << test_support::read_file(dir + "/sim.log");
  std::vector<pid_t> workers = test_support::children_of(sim->pid());
  ASSERT_EQ(workers.size(), 2u) << test_support::read_file(dir + "/sim.log");
  ASSERT_EQ(::kill(workers[0], SIGKILL), 0);
  ASSERT_TRUE(sim->wait_for(std::chrono::seconds(180)))
      << test_support::read_file(dir + "/sim.log");
  EXPECT_EQ(sim->exit_code(), 0) << test_support::read_file(dir + "/sim.log");

  const std::string log = test_support::read_file(dir + "/sim.log");
  EXPECT_NE(log.find("killed by signal 9"), std::string::npos) << log;
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(out + "/summary.json"));
  const nlohmann::json& run = summary["runs"][0];
  EXPECT_EQ(run["rounds_completed"], 4);
  ASSERT_EQ(run["worker_failures"].size(), 1u) << run.dump(2);
  EXPECT_NE(run["worker_failures"][0]["how"].get<std::string>().find("signal 9"),
            std::string::npos);
  EXPECT_NE(test_support::read_file(out + "/summary.md").find("## Failures"), std::string::npos);
  // The dead worker's clients show up as failures in some round after the kill, and later rounds
  // train only the survivors.
  const std::vector<nlohmann::json> lines = test_support::metrics_lines(out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 4u);
  int failures = 0;
  for (const nlohmann::json& line : lines) failures += line["fit"]["failures"].size();
  EXPECT_GE(failures, 1);
  EXPECT_EQ(lines.back()["fit"]["updates"], 2);
}

}  // namespace
}  // namespace fedtail

// Asynchronous FL and simulated devices through fedtail-sim (real coordinator, worker processes,
// loopback gRPC): FedBuff and synchronous FedAvg on a simulated clock while 30% of the clients go
// away mid-run and come back, an interrupted FedBuff run resumed, and FedBuff on real time.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/base/subprocess.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"
#include "tests/support/sim_configs.h"

namespace fedtail {
namespace {

using test_support::binary_path;
using test_support::metrics_lines;
using test_support::read_file;
using test_support::run_cli;
using test_support::scratch_dir;

constexpr int kClients = 10;
// The clients that go away (30%), and when, on the simulated clock.
const std::vector<int> kAway = {0, 3, 7};
constexpr double kAwayFrom = 3;
constexpr double kAwayTo = 6;

// The tiny federation with 10 clients, devices with modeled compute (so the simulated clock is
// the same in every run), and FedBuff with a buffer of 3 updates and 4 tasks in flight.
nlohmann::json async_config(const std::string& dir, int rounds) {
  nlohmann::json config = test_support::tiny_sim_config(rounds);
  config["data"]["clients"] = kClients;
  std::string trace = "client,off_from_s,off_to_s\n";
  for (int client : kAway) {
    trace += "client-" + std::to_string(client) + "," + std::to_string(kAwayFrom) + "," +
             std::to_string(kAwayTo) + "\n";
  }
  test_support::write_file(dir + "/availability.csv", trace);
  config["simulation"]["devices"] = {
      {"compute", "modeled"},
      {"seconds_per_example", 0.02},
      {"slowdown", {{"distribution", "lognormal"}, {"median", 1.0}, {"sigma", 0.5}}},
      {"bandwidth_mbps", {{"distribution", "uniform"}, {"min", 5}, {"max", 50}}},
      {"latency_ms", 50},
      {"availability", {{"trace", dir + "/availability.csv"}}}};
  config["simulation"]["strategies"] = {
      {{"name", "fedbuff"}, {"buffer_size", 3}, {"max_concurrency", 4}, {"max_staleness", 3}}};
  return config;
}

std::string write_config(const std::string& dir, const nlohmann::json& config) {
  const std::string path = dir + "/sim.json";
  test_support::write_file(path, config.dump(2));
  return path;
}

// Every processed result is counted once: as an update, a stale refusal or a failure.
void expect_step_accounting(const std::vector<nlohmann::json>& lines, int buffer_size) {
  for (const nlohmann::json& line : lines) {
    const nlohmann::json& fit = line["fit"];
    EXPECT_EQ(fit["updates"].get<int>(), buffer_size) << line.dump();
    EXPECT_EQ(fit["selected"].get<int>(), fit["updates"].get<int>() +
                                              fit["refused_stale"].get<int>() +
                                              static_cast<int>(fit["failures"].size()))
        << line.dump();
    EXPECT_EQ(line["version"], line["step"]) << line.dump();
  }
}

TEST(AsyncFederation, FedBuffAndFedAvgWhileAThirdOfTheClientsGoAwayAndComeBack) {
  const std::string dir = scratch_dir("async-away");
  nlohmann::json config = async_config(dir, 10);
  config["simulation"]["strategies"].push_back({{"name", "fedavg"}});
  const std::string out = dir + "/out";
  test_support::CliRun r = run_cli(binary_path("fedtail-sim"),
                                   write_config(dir, config) + " --out " + out + " --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.err << read_file(out + "/sim.log");

  // FedBuff: 10 server steps of exactly 3 updates; the simulated clock only moves forward.
  const std::vector<nlohmann::json> buff =
      metrics_lines(out + "/runs/fedbuff/seed-3/metrics.jsonl");
  ASSERT_EQ(buff.size(), 10u);
  expect_step_accounting(buff, 3);
  double previous = 0;
  bool saw_away = false;
  for (size_t i = 0; i < buff.size(); ++i) {
    EXPECT_EQ(buff[i]["step"], static_cast<int>(i) + 1);
    const double t = buff[i]["sim_time_s"].get<double>();
    EXPECT_GE(t, previous);
    previous = t;
    const int on = buff[i]["clients_on"].get<int>();
    if (t >= kAwayFrom && t < kAwayTo) {
      EXPECT_EQ(on, kClients - static_cast<int>(kAway.size())) << buff[i].dump();
      saw_away = true;
    } else {
      EXPECT_EQ(on, kClients) << buff[i].dump();
    }
    for (const nlohmann::json& failure : buff[i]["fit"]["failures"]) {
      EXPECT_NE(failure["reason"].get<std::string>().find("offline (simulated)"), std::string::npos)
          << failure.dump();
    }
  }
  EXPECT_TRUE(saw_away) << "no server step ended while the clients were away";
  EXPECT_GT(previous, kAwayTo) << "the run ended before the clients came back";
  // Nothing lost, nothing counted twice: every task handed out was processed once, or is still
  // out when the run ends.
  int processed = 0;
  for (const nlohmann::json& line : buff) processed += line["fit"]["selected"].get<int>();
  EXPECT_EQ(buff.back()["tasks_issued"].get<int>(),
            processed + buff.back()["in_flight"].get<int>());
  EXPECT_TRUE(buff.back().contains("server_eval"));

  // FedAvg: a round that starts while they are away trains the 7 others; rounds after they are
  // back train all 10 again. A client away before its result arrives fails as offline.
  const std::vector<nlohmann::json> avg = metrics_lines(out + "/runs/fedavg/seed-3/metrics.jsonl");
  ASSERT_EQ(avg.size(), 10u);
  double start = 0;
  bool reduced = false;
  for (const nlohmann::json& line : avg) {
    const int selected = line["fit"]["selected"].get<int>();
    const bool away_at_start = start >= kAwayFrom && start < kAwayTo;
    EXPECT_EQ(selected, away_at_start ? kClients - 3 : kClients) << line.dump();
    reduced = reduced || away_at_start;
    EXPECT_EQ(line["fit"]["updates"].get<int>() + static_cast<int>(line["fit"]["failures"].size()),
              selected);
    start = line["sim_time_s"].get<double>();
  }
  EXPECT_TRUE(reduced) << "no FedAvg round started while the clients were away";
  EXPECT_GT(start, kAwayTo);

  // The report has the time view.
  const std::string summary_md = read_file(out + "/summary.md");
  EXPECT_NE(summary_md.find("simulated time"), std::string::npos) << summary_md;
}

TEST(AsyncFederation, AnInterruptedFedBuffRunResumesWhereItsCheckpointIs) {
  const std::string dir = scratch_dir("async-resume");
  // Larger local data and two epochs, so that the run lasts long enough (a few seconds) to be
  // interrupted after its third step.
  nlohmann::json config = async_config(dir, 12);
  config["data"]["max_examples_per_class"] = 600;
  config["local"]["epochs"] = 2;
  config["eval"]["every"] = 1000;  // evaluate only after the last step
  const std::string path = write_config(dir, config);
  const std::string out = dir + "/out";
  const std::string metrics = out + "/runs/fedbuff/seed-3/metrics.jsonl";

  // The same run uninterrupted, for reference.
  const std::string reference_out = dir + "/reference";
  test_support::CliRun reference =
      run_cli(binary_path("fedtail-sim"), path + " --out " + reference_out + " --workers 2");
  ASSERT_EQ(reference.exit_code, 0) << reference.err;
  const std::vector<nlohmann::json> whole =
      metrics_lines(reference_out + "/runs/fedbuff/seed-3/metrics.jsonl");
  ASSERT_EQ(whole.size(), 12u);

  size_t kept = 0;
  {
    SubprocessOptions options;
    options.argv = {binary_path("fedtail-sim"), path, "--out", out, "--workers", "2"};
    options.log_path = dir + "/first.log";
    options.env = {"OMP_WAIT_POLICY=PASSIVE"};
    Result<std::unique_ptr<Subprocess>> sim = Subprocess::spawn(options);
    ASSERT_TRUE(sim.ok()) << sim.status().to_string();
    ASSERT_TRUE(test_support::wait_for_lines(metrics, 3, std::chrono::seconds(120)))
        << read_file(dir + "/first.log");
    (*sim)->signal(SIGTERM);
    ASSERT_TRUE((*sim)->wait_for(std::chrono::seconds(60)));
    kept = metrics_lines(metrics).size();
    ASSERT_GE(kept, 3u);
  }
  if (kept == 12u) GTEST_SKIP() << "the run finished before it could be interrupted";
  const std::vector<nlohmann::json> before = metrics_lines(metrics);

  test_support::CliRun resumed =
      run_cli(binary_path("fedtail-sim"), path + " --out " + out + " --workers 2 --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err << read_file(out + "/sim.log");
  const std::vector<nlohmann::json> lines = metrics_lines(metrics);
  ASSERT_EQ(lines.size(), 12u);
  expect_step_accounting(lines, 3);
  // Up to the checkpoint the run is the uninterrupted one, to the bit (modeled compute: the clock,
  // the client draws and the updates are functions of the seed); each step is there once.
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(lines[i]["step"], static_cast<int>(i) + 1);
    EXPECT_EQ(lines[i]["sim_time_s"], whole[i]["sim_time_s"]) << i;
    EXPECT_EQ(lines[i]["tasks_issued"], whole[i]["tasks_issued"]) << i;
    EXPECT_EQ(lines[i]["fit"]["metrics"]["loss"], whole[i]["fit"]["metrics"]["loss"]) << i;
  }
  // After it: the version, the task count and the clock go on from the checkpoint; the tasks
  // that were out when it stopped are handed out afresh (counted as dropped, never applied).
  const nlohmann::json& checkpoint = lines[before.size() - 1];
  double previous = checkpoint["sim_time_s"].get<double>();
  for (size_t i = before.size(); i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["step"], static_cast<int>(i) + 1);
    EXPECT_GE(lines[i]["sim_time_s"].get<double>(), previous);
    previous = lines[i]["sim_time_s"].get<double>();
    EXPECT_GT(lines[i]["tasks_issued"].get<int>(), checkpoint["tasks_issued"].get<int>());
  }
  int processed = 0;
  for (const nlohmann::json& line : lines) processed += line["fit"]["selected"].get<int>();
  EXPECT_EQ(lines.back()["tasks_issued"].get<int>(),
            processed + lines.back()["in_flight"].get<int>() + checkpoint["in_flight"].get<int>());
  const nlohmann::json summary = nlohmann::json::parse(read_file(out + "/summary.json"));
  EXPECT_EQ(summary["runs"][0]["status"], "completed") << summary.dump();
}

TEST(AsyncFederation, FedBuffOnRealTimeWithoutDevices) {
  const std::string dir = scratch_dir("async-real");
  nlohmann::json config = async_config(dir, 4);
  config["simulation"].erase("devices");
  const std::string out = dir + "/out";
  test_support::CliRun r = run_cli(binary_path("fedtail-sim"),
                                   write_config(dir, config) + " --out " + out + " --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.err << read_file(out + "/sim.log");
  const std::vector<nlohmann::json> lines =
      metrics_lines(out + "/runs/fedbuff/seed-3/metrics.jsonl");
  ASSERT_EQ(lines.size(), 4u);
  expect_step_accounting(lines, 3);
  for (const nlohmann::json& line : lines) {
    EXPECT_FALSE(line.contains("sim_time_s")) << line.dump();
    EXPECT_LE(line["in_flight"].get<int>(), 4);
    EXPECT_LE(line["fit"]["metrics"]["staleness"]["max"].get<double>(), 3.0);
  }
  const nlohmann::json& last = lines.back();
  ASSERT_TRUE(last.contains("server_eval")) << last.dump();
  const double accuracy = last["server_eval"]["generic"]["overall"].get<double>();
  EXPECT_GE(accuracy, 0.0);
  EXPECT_LE(accuracy, 1.0);
}

TEST(AsyncFederation, FedBuffGoesOnWhenAWorkerAndItsClientsAreKilled) {
  const std::string dir = scratch_dir("async-kill");
  nlohmann::json config = async_config(dir, 10);
  config["simulation"].erase("devices");
  config["data"]["max_examples_per_class"] = 600;  // slow enough to kill a worker mid-run
  config["local"]["epochs"] = 2;
  const std::string out = dir + "/out";
  const std::string metrics = out + "/runs/fedbuff/seed-3/metrics.jsonl";
  SubprocessOptions options;
  options.argv = {
      binary_path("fedtail-sim"), write_config(dir, config), "--out", out, "--workers", "2"};
  options.log_path = dir + "/sim.log";
  options.env = {"OMP_WAIT_POLICY=PASSIVE"};
  Result<std::unique_ptr<Subprocess>> sim = Subprocess::spawn(options);
  ASSERT_TRUE(sim.ok()) << sim.status().to_string();
  ASSERT_TRUE(test_support::wait_for_lines(metrics, 2, std::chrono::seconds(120)))
      << read_file(dir + "/sim.log");
  std::vector<pid_t> workers = test_support::children_of((*sim)->pid());
  ASSERT_EQ(workers.size(), 2u) << read_file(dir + "/sim.log");
  ASSERT_EQ(::kill(workers[0], SIGKILL), 0);
  ASSERT_TRUE((*sim)->wait_for(std::chrono::seconds(180))) << read_file(dir + "/sim.log");
  EXPECT_EQ((*sim)->exit_code(), 0) << read_file(dir + "/sim.log");

  // Every step still applies 3 updates; the dead worker's tasks out at the kill fail (once each,
  // freeing their slots), and the task count adds up.
  const std::vector<nlohmann::json> lines = metrics_lines(metrics);
  ASSERT_EQ(lines.size(), 10u);
  expect_step_accounting(lines, 3);
  int failures = 0;
  int processed = 0;
  for (const nlohmann::json& line : lines) {
    failures += static_cast<int>(line["fit"]["failures"].size());
    processed += line["fit"]["selected"].get<int>();
  }
  EXPECT_GE(failures, 1);
  EXPECT_EQ(lines.back()["tasks_issued"].get<int>(),
            processed + lines.back()["in_flight"].get<int>());
  const nlohmann::json summary = nlohmann::json::parse(read_file(out + "/summary.json"));
  EXPECT_EQ(summary["runs"][0]["worker_failures"].size(), 1u) << summary.dump();
}

}  // namespace
}  // namespace fedtail

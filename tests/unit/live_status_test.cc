// coordinator/live_status.h: run state transitions, the probe, sums over metrics lines, and the
// /api/status and /api/metrics JSON.
#include "coordinator/live_status.h"

#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

namespace fedtail::coordinator {
namespace {

using nlohmann::json;

json metrics_line(int round, double seconds, uint64_t down, uint64_t up, double overall) {
  return {
      {"round", round},
      {"rounds", 3},
      {"strategy", "fedavg"},
      {"seconds", seconds},
      {"bytes", {{"down", down}, {"up", up}}},
      {"fit",
       {{"selected", 2},
        {"updates", 1},
        {"failures", json::array({{{"client_id", "client-1"}, {"reason", "deadline exceeded"}}})}}},
      {"refused", {{"late", 1}, {"non_finite", 0}, {"total", 1}}},
      {"server_eval",
       {{"generic", {{"overall", overall}, {"many", 0.9}, {"medium", 0.4}, {"few", nullptr}}}}}};
}

class LiveStatusTest : public ::testing::Test {
 protected:
  // A clock the test moves.
  LiveStatus live_{[this] { return now_ms_.load(); }};
  std::atomic<int64_t> now_ms_{1'000'000};
};

TEST_F(LiveStatusTest, IdleBeforeTheFirstRun) {
  json status = live_.status_json();
  EXPECT_EQ(status["state"], "idle");
  EXPECT_EQ(status["phase"], "idle");
  EXPECT_EQ(status["run_seq"], 0);
  EXPECT_EQ(status["rounds_completed"], 0);
  EXPECT_TRUE(status["last_round"].is_null());
  EXPECT_EQ(live_.metrics_json(), "[]");
}

TEST_F(LiveStatusTest, RunningPhaseComesFromTheProbe) {
  live_.begin_run({"run1", "fedavg", "fedavg seed 1, run 1/2", 3});
  int probes = 0;
  live_.set_probe([&probes] {
    ++probes;
    LiveProbe probe;
    probe.round = 1;
    probe.phase = "fit";
    probe.phase_started_unix_ms = 997'500;
    probe.selected = 2;
    probe.received = 1;
    probe.failures = {{"client-1", "update refused: non-finite"}};
    probe.clients_connected = 2;
    probe.sessions = 2;
    probe.min_available_clients = 2;
    probe.refusals = {{"non_finite", 1}, {"total", 1}};
    return probe;
  });
  json status = live_.status_json();
  EXPECT_EQ(probes, 1);
  EXPECT_EQ(status["run_id"], "run1");
  EXPECT_EQ(status["label"], "fedavg seed 1, run 1/2");
  EXPECT_EQ(status["strategy"], "fedavg");
  EXPECT_EQ(status["rounds"], 3);
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["round"], 1);
  EXPECT_EQ(status["phase"], "fit");
  EXPECT_EQ(status["phase_started_unix_ms"], 997'500);
  EXPECT_DOUBLE_EQ(status["phase_elapsed_s"].get<double>(), 2.5);
  EXPECT_EQ(status["clients"]["connected"], 2);
  EXPECT_EQ(status["clients"]["waiting"], false);
  EXPECT_EQ(status["selected"], 2);
  EXPECT_EQ(status["received"], 1);
  ASSERT_EQ(status["failures"].size(), 1u);
  EXPECT_EQ(status["failures"][0]["client_id"], "client-1");
  EXPECT_EQ(status["failures"][0]["reason"], "update refused: non-finite");
  EXPECT_EQ(status["refusals"]["non_finite"], 1);
  EXPECT_EQ(status["refusals"]["total"], 1);
  EXPECT_TRUE(status["ended_unix_ms"].is_null());
}

TEST_F(LiveStatusTest, WaitingForClientsBetweenPhases) {
  live_.begin_run({"run1", "fedavg", "", 3});
  live_.set_probe([] {
    LiveProbe probe;
    probe.clients_connected = 1;
    probe.min_available_clients = 2;
    probe.selected = 9;  // stale numbers of a closed phase are not shown
    return probe;
  });
  json status = live_.status_json();
  EXPECT_EQ(status["phase"], "idle");
  EXPECT_EQ(status["clients"]["waiting"], true);
  EXPECT_EQ(status["selected"], 0);
}

TEST_F(LiveStatusTest, MetricsLinesAreSummedAndListed) {
  live_.begin_run({"run1", "fedavg", "", 3});
  live_.add_round(metrics_line(1, 0.75, 100, 10, 0.25));
  live_.add_round(metrics_line(2, 2.0, 200, 20, 0.5));
  live_.add_round(json("not an object"));  // ignored
  LiveSnapshot s = live_.snapshot();
  EXPECT_EQ(s.rounds_completed, 2);
  EXPECT_EQ(s.bytes_down, 300u);
  EXPECT_EQ(s.bytes_up, 30u);
  EXPECT_EQ(s.fit_failures, 2u);
  EXPECT_EQ(s.round_seconds, (std::vector<double>{0.75, 2.0}));
  EXPECT_EQ(s.refusals.at("late"), 2u);
  EXPECT_EQ(s.refusals.at("non_finite"), 0u);
  EXPECT_EQ(s.refusals.count("total"), 0u);
  EXPECT_DOUBLE_EQ(s.accuracy.at("all"), 0.5);
  EXPECT_DOUBLE_EQ(s.accuracy.at("many"), 0.9);
  EXPECT_EQ(s.accuracy.count("few"), 0u);  // null: no value
  EXPECT_EQ(s.accuracy.count("personalized"), 0u);

  json lines = json::parse(live_.metrics_json());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], metrics_line(1, 0.75, 100, 10, 0.25));
  EXPECT_EQ(lines[1]["round"], 2);
  json since = json::parse(live_.metrics_json(1));
  ASSERT_EQ(since.size(), 1u);
  EXPECT_EQ(since[0]["round"], 2);
  EXPECT_EQ(live_.metrics_json(5), "[]");

  json status = live_.status_json();
  EXPECT_EQ(status["round"], 2);  // no probe: the last line's round
  EXPECT_EQ(status["rounds_completed"], 2);
  EXPECT_EQ(status["bytes"]["down"], 300);
  EXPECT_EQ(status["last_round"]["round"], 2);
  EXPECT_DOUBLE_EQ(status["last_round"]["seconds"].get<double>(), 2.0);
  EXPECT_EQ(status["last_round"]["fit"]["selected"], 2);
  EXPECT_EQ(status["last_round"]["fit"]["updates"], 1);
  EXPECT_EQ(status["last_round"]["fit"]["failures"][0]["reason"], "deadline exceeded");
  EXPECT_TRUE(status["last_round"]["evaluate"].is_null());
  EXPECT_EQ(status["refusals"]["late"], 2);
  EXPECT_EQ(status["refusals"]["total"], 2);
  EXPECT_DOUBLE_EQ(status["accuracy"]["all"].get<double>(), 0.5);
}

TEST_F(LiveStatusTest, ProbeRefusalsIncludeThoseNotYetInALine) {
  live_.begin_run({"run1", "fedavg", "", 3});
  live_.add_round(metrics_line(1, 1, 0, 0, 0.1));  // late: 1
  live_.set_probe([] {
    LiveProbe probe;
    probe.refusals = {{"late", 3}, {"duplicate", 1}, {"total", 4}};
    return probe;
  });
  LiveSnapshot s = live_.snapshot();
  EXPECT_EQ(s.refusals.at("late"), 3u);
  EXPECT_EQ(s.refusals.at("duplicate"), 1u);
  EXPECT_EQ(s.refusals.at("non_finite"), 0u);
}

TEST_F(LiveStatusTest, ResumedRunCountsEarlierLinesAndTheirRefusals) {
  live_.begin_run({"run1", "fedavg", "", 3},
                  {metrics_line(1, 1, 10, 1, 0.1), metrics_line(2, 1, 10, 1, 0.2)});
  live_.set_probe([] {
    LiveProbe probe;
    probe.round = 3;
    probe.refusals = {{"late", 1}};  // this process's own count
    return probe;
  });
  LiveSnapshot s = live_.snapshot();
  EXPECT_EQ(s.rounds_completed, 2);
  EXPECT_EQ(s.bytes_down, 20u);
  EXPECT_EQ(s.refusals.at("late"), 3u);
  EXPECT_EQ(json::parse(live_.metrics_json()).size(), 2u);
}

TEST_F(LiveStatusTest, EndRunKeepsTheLastProbeAndOnlyTheFirstEndCounts) {
  live_.begin_run({"run1", "fedavg", "", 3});
  int probes = 0;
  live_.set_probe([&probes] {
    ++probes;
    LiveProbe probe;
    probe.round = 3;
    probe.phase = "evaluate";
    probe.clients_connected = 2;
    return probe;
  });
  live_.add_round(metrics_line(1, 1, 10, 1, 0.1));
  now_ms_ = 1'004'000;
  live_.end_run(LiveRunState::kFinished, "");
  live_.end_run(LiveRunState::kFailed, "ignored");
  const int probes_at_end = probes;
  EXPECT_EQ(probes_at_end, 1);  // the last probe, taken by end_run
  now_ms_ = 1'006'000;
  json status = live_.status_json();
  EXPECT_EQ(probes, probes_at_end);  // no probe after the end
  EXPECT_EQ(status["state"], "finished");
  EXPECT_EQ(status["message"], "");
  EXPECT_EQ(status["phase"], "done");
  EXPECT_EQ(status["phase_started_unix_ms"], 1'004'000);
  EXPECT_DOUBLE_EQ(status["phase_elapsed_s"].get<double>(), 2.0);
  EXPECT_EQ(status["ended_unix_ms"], 1'004'000);
  EXPECT_EQ(status["round"], 1);  // the last line's round once the run ended
  EXPECT_EQ(status["selected"], 0);
  EXPECT_EQ(live_.snapshot().state, LiveRunState::kFinished);
}

TEST_F(LiveStatusTest, StoppedAndFailedStates) {
  live_.begin_run({"run1", "fedavg", "", 3});
  live_.end_run(LiveRunState::kStopped, "stopped after round 0 of 3");
  EXPECT_EQ(live_.status_json()["state"], "stopped");
  EXPECT_EQ(live_.status_json()["message"], "stopped after round 0 of 3");
  live_.begin_run({"run2", "fedprox", "", 5});
  live_.end_run(LiveRunState::kFailed, "disk full");
  EXPECT_EQ(live_.status_json()["state"], "failed");
  EXPECT_EQ(live_.status_json()["run_id"], "run2");
}

TEST_F(LiveStatusTest, BeginRunResetsEverything) {
  live_.begin_run({"run1", "fedavg", "a", 3});
  live_.add_round(metrics_line(1, 1, 10, 1, 0.1));
  live_.set_probe([] { return LiveProbe(); });
  live_.end_run(LiveRunState::kFinished);
  live_.begin_run({"run2", "fedprox", "b", 5});
  json status = live_.status_json();
  EXPECT_EQ(status["run_seq"], 2);
  EXPECT_EQ(status["run_id"], "run2");
  EXPECT_EQ(status["label"], "b");
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["rounds_completed"], 0);
  EXPECT_EQ(status["bytes"]["down"], 0);
  EXPECT_TRUE(status["last_round"].is_null());
  EXPECT_EQ(status["refusals"]["total"], 0);
  EXPECT_EQ(live_.metrics_json(), "[]");
  EXPECT_TRUE(live_.snapshot().accuracy.empty());
}

TEST_F(LiveStatusTest, ClearProbeWaitsForACallInProgress) {
  live_.begin_run({"run1", "fedavg", "", 3});
  std::atomic<bool> in_probe{false};
  std::atomic<bool> release{false};
  std::atomic<bool> owner_gone{false};
  std::atomic<bool> used_after_clear{false};
  live_.set_probe([&] {
    in_probe = true;
    while (!release) std::this_thread::yield();
    if (owner_gone) used_after_clear = true;
    return LiveProbe();
  });
  std::thread reader([this] { (void)live_.status_json(); });
  while (!in_probe) std::this_thread::yield();
  std::thread clearer([&] {
    live_.clear_probe();
    owner_gone = true;
  });
  release = true;
  clearer.join();
  reader.join();
  EXPECT_FALSE(used_after_clear);
  in_probe = false;
  (void)live_.status_json();
  EXPECT_FALSE(in_probe);  // no probe any more
}

}  // namespace
}  // namespace fedtail::coordinator

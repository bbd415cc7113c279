// Coordinator-side faults with real processes over loopback. Every test runs a fedtail-coordinator
// and one fedtail-client process hosting 3 virtual clients (FedAvg, kRounds rounds on a small
// Fashion-MNIST-LT slice, fixed seed; one client process, so that a run is bit-exact whatever
// happens to the coordinator) and compares the run with an uninterrupted reference run of the same
// config (computed once per test process).
//
// - KilledRepeatedlyAtRandomPointsResumesBitExactly: the coordinator is SIGKILLed 4 times, each
//   time restarted with --resume on the same --state-dir and --listen address while the client
//   process keeps running: in round 1 before any checkpoint exists (then --resume finds no
//   checkpoint and starts a new run), in round 1 of that new run, and in two rounds drawn from
//   std::mt19937(kKillSeed), with drawn delays. Two of the kills are traps: the test hook
//   FEDTAIL_FAULT_PAUSE_CHECKPOINT=<round> (coordinator/checkpoint.cc) makes that round's
//   checkpoint write pause after its metrics line, so the kill certainly falls between the two.
//   (A FIFO at the temporary file's name no longer works: temporary names are unique and opened
//   with O_EXCL.) The kill points and where each one landed
//   are printed, so a failure can be reproduced.
// - DiskFullAtCheckpointTime, ReadOnlyStateDir: a write in
//   the state directory fails after round kFaultAfterRound's checkpoint. The coordinator must exit
//   1 with an error line naming the file and the OS reason, keep the last checkpoint readable, and
//   leave metrics.jsonl made of complete lines, at most one beyond the checkpoint's count (which
//   --resume cuts off). With the fault removed, --resume finishes the run, equal to the reference.
// - FailedMetricsAppendLeavesNoPartialLine: append_metrics_line on a full file system, with a line
//   longer than the room left, fails naming the file and leaves the file as it was.
//
// The disk-full and read-only tests mount a tmpfs (root only; skipped otherwise).
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/security/crypto.h"
#include "common/wire/bundle_file.h"
#include "coordinator/checkpoint.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using coordinator::Checkpoint;
using coordinator::kCheckpointFile;
using coordinator::kMetricsFile;
using test_support::Process;

constexpr int kRounds = 10;
// Seeds the kill points. Quote it, with the printed kill points, to reproduce a failure; change it
// to explore other points.
constexpr uint32_t kKillSeed = 20251130;
// The fault tests break the state directory once this round's checkpoint is on disk.
constexpr int kFaultAfterRound = 3;
// The tmpfs that holds the state directory in the disk-full and read-only tests: room for two
// checkpoints, the final model and the metrics (about 1.5 MB), and quick to fill.
constexpr char kTmpfsOptions[] = "size=8m,mode=0755";
// Generous: the machine is shared and tests run in parallel.
constexpr auto kStartTimeout = 120s;
constexpr auto kRunTimeout = 300s;

nlohmann::json run_config() {
  return {{"seed", 17},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", kRounds},
          // Every client trains every round; no evaluation (the final model is compared instead).
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 3}, {"fraction_evaluate", 0.0}}},
          {"federation",
           {{"min_available_clients", 3},
            {"round_timeout_s", 120},
            {"poll_timeout_ms", 1000},
            {"heartbeat_interval_ms", 500},
            {"client_timeout_s", 10},
            {"server_eval", false}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 60},
            {"imbalance_factor", 10},
            {"partition", "dirichlet"},
            {"alpha", 1.0},
            {"clients", 3}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 16}}}};
}

// What a state directory holds, as a resume would see it.
struct StateSnapshot {
  bool has_checkpoint = false;   // checkpoint.bundle exists
  std::string checkpoint_error;  // why it does not read; "" when it does (or is absent)
  int checkpoint_round = 0;      // 0 without a (readable) checkpoint
  int64_t recorded_lines = 0;    // the metrics lines the checkpoint counts
  int64_t lines = 0;             // complete ('\n'-terminated) lines of metrics.jsonl
  bool torn = false;             // metrics.jsonl ends in a partial line

  std::string describe() const {
    std::ostringstream s;
    if (!has_checkpoint) {
      s << "no checkpoint";
    } else if (!checkpoint_error.empty()) {
      s << "unreadable checkpoint (" << checkpoint_error << ")";
    } else {
      s << "checkpoint of round " << checkpoint_round << " (counts " << recorded_lines
        << " metrics lines)";
    }
    s << ", metrics.jsonl " << lines << " line(s)" << (torn ? " + a partial line" : "");
    return s.str();
  }
};

StateSnapshot inspect(const std::string& state_dir) {
  StateSnapshot s;
  const std::string checkpoint = state_dir + "/" + kCheckpointFile;
  s.has_checkpoint = fs::exists(checkpoint);
  if (s.has_checkpoint) {
    Result<Checkpoint> read = coordinator::read_checkpoint(checkpoint);
    if (read.ok()) {
      s.checkpoint_round = read->info.round;
      s.recorded_lines = read->info.metrics_lines;
    } else {
      s.checkpoint_error = read.status().to_string();
    }
  }
  const std::string text = test_support::read_file(state_dir + "/" + kMetricsFile);
  s.lines = std::count(text.begin(), text.end(), '\n');
  s.torn = !text.empty() && text.back() != '\n';
  return s;
}

// Where in the run a coordinator killed with `s` on disk was.
std::string kill_landing(const StateSnapshot& s) {
  if (!s.has_checkpoint) {
    return s.lines == 0 ? "in round 1 before its metrics line (no checkpoint yet)"
                        : "in round 1 between its metrics line and the first checkpoint";
  }
  const std::string next = std::to_string(s.checkpoint_round + 1);
  if (s.lines > s.recorded_lines) {
    return "between round " + next + "'s metrics line and its checkpoint";
  }
  if (s.checkpoint_round == kRounds) return "after the last checkpoint";
  return "in round " + next + " (round " + std::to_string(s.checkpoint_round) +
         "'s checkpoint on disk)";
}

// Polls `done` every 20 ms; false after `timeout`.
bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// The lines of a spdlog log written at level error.
std::string error_lines(const std::string& log) {
  std::istringstream in(log);
  std::string out;
  for (std::string line; std::getline(in, line);) {
    if (line.find("[error]") != std::string::npos) out += line + "\n";
  }
  return out;
}

// Writes `path` until the file system is full (ENOSPC). Returns "" or what went wrong.
std::string fill_file_system(const std::string& path, int64_t* written) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return path + ": open: " + std::strerror(errno);
  const std::vector<char> block(64 << 10, 'x');
  *written = 0;
  for (;;) {
    const ssize_t n = ::write(fd, block.data(), block.size());
    if (n > 0) {
      *written += n;
      continue;
    }
    const int err = n < 0 ? errno : ENOSPC;
    if (err == EINTR) continue;
    ::close(fd);
    return err == ENOSPC ? "" : path + ": write: " + std::strerror(err);
  }
}

// A finished run's outputs.
struct FinishedRun {
  std::string final_model;  // final_model.bundle's bytes
  std::vector<nlohmann::json> lines;
};

// How a finished run compares with the reference.
struct Comparison {
  int rounds_lost = 0;      // rounds of 1..kRounds without a metrics line
  int rounds_repeated = 0;  // metrics lines beyond one per round
  bool in_order = true;     // line i is round i + 1
  bool model_equal = false;
};

class CoordinatorFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("coordinator_faults");
    test_support::write_file(dir_ + "/run.json", run_config().dump(2));
  }

  void TearDown() override {
    if (!mount_point_.empty() && ::umount2(mount_point_.c_str(), MNT_DETACH) != 0) {
      ADD_FAILURE() << "umount " << mount_point_ << ": " << std::strerror(errno);
    }
  }

  // Mounts a small tmpfs at <dir_>/mnt (unmounted in TearDown) and returns its path; "" with the
  // reason in *why when that is not possible here.
  std::string mount_tmpfs(std::string* why) {
    if (::geteuid() != 0) {
      *why = "mounting a tmpfs needs root";
      return "";
    }
    const std::string mnt = dir_ + "/mnt";
    fs::create_directories(mnt);
    if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, kTmpfsOptions) != 0) {
      *why = "mount -t tmpfs -o " + std::string(kTmpfsOptions) + " on " + mnt +
             " failed: " + std::strerror(errno) + " (no CAP_SYS_ADMIN here?)";
      return "";
    }
    mount_point_ = mnt;
    return mnt;
  }

  // Remounts the tmpfs read-only (`read_only`) or read-write. Returns "" or the error.
  std::string remount(bool read_only) {
    const unsigned long flags = MS_REMOUNT | (read_only ? MS_RDONLY : 0);
    if (::mount(nullptr, mount_point_.c_str(), nullptr, flags, kTmpfsOptions) == 0) return "";
    return std::strerror(errno);
  }

  std::unique_ptr<Process> start_coordinator(const std::string& state, const std::string& listen,
                                             bool resume, const std::string& log_name,
                                             std::vector<std::string> env = {}) {
    std::vector<std::string> argv = {test_support::binary_path("fedtail-coordinator"),
                                     "--config",
                                     dir_ + "/run.json",
                                     "--listen",
                                     listen,
                                     "--state-dir",
                                     state,
                                     "--threads",
                                     "1"};
    if (resume) argv.push_back("--resume");
    return std::make_unique<Process>(argv, dir_ + "/" + log_name + ".log", std::move(env));
  }

  std::unique_ptr<Process> start_clients(const std::string& port, const std::string& name) {
    return std::make_unique<Process>(
        std::vector<std::string>{test_support::binary_path("fedtail-client"), "--coordinator",
                                 "127.0.0.1:" + port, "--clients", "0-2", "--state-dir",
                                 dir_ + "/" + name + "-client-state", "--device", "cpu",
                                 "--threads", "1", "--retry-timeout", "120"},
        dir_ + "/" + name + "-clients.log");
  }

  // Runs the config uninterrupted, once per test process.
  void ensure_reference() {
    if (reference_) return;
    const std::string state = dir_ + "/reference-state";
    std::unique_ptr<Process> coordinator =
        start_coordinator(state, "127.0.0.1:0", /*resume=*/false, "reference-coordinator");
    const std::string port = test_support::wait_for_file(state + "/port", kStartTimeout);
    ASSERT_FALSE(port.empty()) << coordinator->log();
    std::unique_ptr<Process> clients = start_clients(port, "reference");
    ASSERT_EQ(coordinator->wait(kRunTimeout), 0) << coordinator->log() << "\n--- clients:\n"
                                                 << clients->log();
    EXPECT_EQ(clients->wait(60s), 0) << clients->log();
    auto run = std::make_unique<FinishedRun>();
    run->final_model = test_support::read_file(state + "/" + coordinator::kFinalModelFile);
    run->lines = test_support::metrics_lines(state + "/" + kMetricsFile);
    ASSERT_FALSE(run->final_model.empty());
    ASSERT_EQ(run->lines.size(), static_cast<size_t>(kRounds));
    reference_ = std::move(run);
  }

  // Compares the finished run in `state` with the reference: every round's metrics line exactly
  // once and in order, the same training metrics, the same final model byte for byte.
  Comparison compare_with_reference(const std::string& state) {
    Comparison c;
    const std::string summary_text =
        test_support::read_file(state + "/" + coordinator::kSummaryFile);
    EXPECT_FALSE(summary_text.empty()) << state << ": no summary.json";
    if (!summary_text.empty()) {
      EXPECT_EQ(nlohmann::json::parse(summary_text).value("rounds_completed", 0), kRounds);
    }
    const std::vector<nlohmann::json> lines =
        test_support::metrics_lines(state + "/" + kMetricsFile);
    std::map<int, int> seen;
    for (size_t i = 0; i < lines.size(); ++i) {
      const int round = lines[i].value("round", 0);
      ++seen[round];
      if (round != static_cast<int>(i) + 1) c.in_order = false;
    }
    for (int r = 1; r <= kRounds; ++r) {
      if (seen[r] == 0) ++c.rounds_lost;
    }
    for (const auto& [round, n] : seen) c.rounds_repeated += std::max(0, n - 1);
    EXPECT_EQ(c.rounds_lost, 0);
    EXPECT_EQ(c.rounds_repeated, 0);
    EXPECT_TRUE(c.in_order);
    EXPECT_EQ(lines.size(), static_cast<size_t>(kRounds));
    for (size_t i = 0; i < std::min(lines.size(), reference_->lines.size()); ++i) {
      const nlohmann::json& a = reference_->lines[i];
      const nlohmann::json& b = lines[i];
      EXPECT_EQ(a["fit"]["selected"], b["fit"]["selected"]) << "round " << i + 1;
      EXPECT_EQ(a["fit"]["metrics"]["examples"], b["fit"]["metrics"]["examples"]);
      EXPECT_EQ(b["fit"]["failures"], nlohmann::json::array()) << b.dump();
      // The loss is a double sum over the clients in arrival order: equal up to the last bits.
      const double loss_a = a["fit"]["metrics"]["loss"].get<double>();
      const double loss_b = b["fit"]["metrics"]["loss"].get<double>();
      EXPECT_NEAR(loss_a, loss_b, 1e-12 * std::abs(loss_a)) << "round " << i + 1;
    }

    const std::string path = state + "/" + coordinator::kFinalModelFile;
    const std::string model = test_support::read_file(path);
    EXPECT_FALSE(model.empty()) << path;
    c.model_equal = !model.empty() && model == reference_->final_model;
    EXPECT_EQ(to_hex(sha256(model)), to_hex(sha256(reference_->final_model)));
    if (!c.model_equal && !model.empty()) {
      // Say which tensors differ.
      Result<TensorBundle> got = read_bundle_file(path);
      const std::string reference_path = dir_ + "/reference-final.bundle";
      test_support::write_file(reference_path, reference_->final_model);
      Result<TensorBundle> want = read_bundle_file(reference_path);
      if (got.ok() && want.ok() && got->names() == want->names()) {
        for (size_t i = 0; i < got->size(); ++i) {
          EXPECT_TRUE(got->at(i).bitwise_equal(want->at(i))) << got->at(i).name();
        }
      }
    }
    return c;
  }

  // A fault injected into a running coordinator's state directory.
  struct Fault {
    std::string name;
    // Breaks the state directory of `coordinator` (running, round kFaultAfterRound's checkpoint
    // on disk); returns "" or why it could not.
    std::function<std::string(Process& coordinator, const std::string& state)> inject;
    // Removes the fault; returns "" or why it could not.
    std::function<std::string(const std::string& state)> repair;
    std::string os_error;         // strerror text expected in the error line
    std::string failing_file;     // the file the error must name; "" = whichever failed
    bool same_checkpoint = true;  // the checkpoint cannot advance once the fault is injected
  };

  // Runs the config in `state` with `fault` injected after round kFaultAfterRound; checks the
  // failure, then repairs, resumes, and compares the finished run with the reference.
  void run_with_fault(const std::string& state, const Fault& fault) {
    ASSERT_NO_FATAL_FAILURE(ensure_reference());
    std::unique_ptr<Process> coordinator =
        start_coordinator(state, "127.0.0.1:0", /*resume=*/false, fault.name + "-coordinator");
    const std::string port = test_support::wait_for_file(state + "/port", kStartTimeout);
    ASSERT_FALSE(port.empty()) << coordinator->log();
    std::unique_ptr<Process> clients = start_clients(port, fault.name);
    ASSERT_TRUE(wait_until(
        [&] {
          return inspect(state).checkpoint_round >= kFaultAfterRound || !coordinator->running();
        },
        kRunTimeout))
        << coordinator->log();
    ASSERT_TRUE(coordinator->running()) << coordinator->log();

    const std::string injected = fault.inject(*coordinator, state);
    ASSERT_EQ(injected, "") << fault.name;
    const StateSnapshot before = inspect(state);
    ASSERT_LT(before.checkpoint_round, kRounds - 1) << "the run got too far before the fault";

    // The next checkpoint fails: a clear error, exit status 1, the clients left waiting.
    const int code = coordinator->wait(kRunTimeout);
    const std::string log = coordinator->log();
    EXPECT_EQ(code, 1) << coordinator->describe_exit() << "\n" << log;
    const StateSnapshot after = inspect(state);
    std::printf("[ %s ] at the fault: %s; after the exit: %s\n", fault.name.c_str(),
                before.describe().c_str(), after.describe().c_str());
    EXPECT_TRUE(after.has_checkpoint) << after.describe();
    EXPECT_EQ(after.checkpoint_error, "") << after.describe();
    if (fault.same_checkpoint) {
      EXPECT_EQ(after.checkpoint_round, before.checkpoint_round) << after.describe();
    } else {
      EXPECT_GE(after.checkpoint_round, before.checkpoint_round) << after.describe();
      EXPECT_LE(after.checkpoint_round, before.checkpoint_round + 1) << after.describe();
    }
    EXPECT_LT(after.checkpoint_round, kRounds);
    EXPECT_FALSE(after.torn) << "metrics.jsonl ends in a partial line: " << after.describe();
    EXPECT_GE(after.lines, after.recorded_lines) << after.describe();
    EXPECT_LE(after.lines, after.recorded_lines + 1) << after.describe();
    Result<std::vector<nlohmann::json>> lines =
        coordinator::read_metrics_lines(state + "/" + kMetricsFile);
    EXPECT_TRUE(lines.ok()) << lines.status().to_string();
    // The metrics line of the failed round is on disk exactly when its checkpoint write failed.
    const std::string failed = after.lines > after.recorded_lines ? kCheckpointFile : kMetricsFile;
    if (!fault.failing_file.empty()) {
      EXPECT_EQ(failed, fault.failing_file) << after.describe();
    }
    const std::string errors = error_lines(log);
    std::printf("[ %s ] the %s write failed; error line: %s", fault.name.c_str(), failed.c_str(),
                errors.c_str());
    EXPECT_NE(errors.find(state + "/" + failed), std::string::npos) << log;
    EXPECT_NE(errors.find(fault.os_error), std::string::npos) << log;
    EXPECT_TRUE(clients->running()) << clients->log();

    // Fault removed: --resume on the same address finishes the run.
    ASSERT_EQ(fault.repair(state), "") << fault.name;
    std::unique_ptr<Process> resumed = start_coordinator(state, "127.0.0.1:" + port,
                                                         /*resume=*/true, fault.name + "-resumed");
    ASSERT_EQ(resumed->wait(kRunTimeout), 0) << resumed->log() << "\n--- clients:\n"
                                             << clients->log();
    EXPECT_EQ(clients->wait(60s), 0) << clients->log();
    EXPECT_NE(resumed->log().find("resuming run"), std::string::npos) << resumed->log();
    const Comparison c = compare_with_reference(state);
    std::printf("[ %s ] resumed: rounds lost %d, repeated %d, in order %s, final model %s\n",
                fault.name.c_str(), c.rounds_lost, c.rounds_repeated, c.in_order ? "yes" : "no",
                c.model_equal ? "equal to the reference" : "DIFFERENT");
  }

  static inline std::unique_ptr<FinishedRun> reference_;
  std::string dir_;
  std::string mount_point_;  // the mounted tmpfs; "" when none
};

// How the coordinator is killed in one incarnation.
struct KillPoint {
  // kTrap: FEDTAIL_FAULT_PAUSE_CHECKPOINT pauses round `round`'s checkpoint write after its
  // metrics line; the kill comes once that line is on disk. kTimed: the kill
  // comes `delay_ms` after round `round` started (round - 1 metrics lines on disk, or the clients'
  // join when the incarnation resumed at that round).
  enum class Kind { kTrap, kTimed } kind;
  int round = 1;
  int delay_ms = 0;

  std::string describe() const {
    if (kind == Kind::kTrap) {
      return "round " + std::to_string(round) + ", between its metrics line and its checkpoint";
    }
    return "round " + std::to_string(round) + ", " + std::to_string(delay_ms) +
           " ms after it started";
  }
};

// Kill 1 is a trap in round 1 of the fresh run (no checkpoint yet), so --resume then starts a new
// run; kill 2 is timed in round 1 of that run; kills 3 and 4, one trap and one timed in drawn
// order, fall in two drawn rounds of 2..kRounds-2.
std::vector<KillPoint> draw_kill_points(std::mt19937& rng) {
  std::uniform_int_distribution<int> delay_ms(0, 499);
  std::vector<KillPoint> points = {{KillPoint::Kind::kTrap, 1},
                                   {KillPoint::Kind::kTimed, 1, delay_ms(rng)}};
  std::vector<int> rounds;
  for (int r = 2; r <= kRounds - 2; ++r) rounds.push_back(r);
  std::shuffle(rounds.begin(), rounds.end(), rng);
  std::sort(rounds.begin(), rounds.begin() + 2);
  const bool trap_first = std::uniform_int_distribution<int>(0, 1)(rng) == 0;
  for (int i = 0; i < 2; ++i) {
    if ((i == 0) == trap_first) {
      points.push_back({KillPoint::Kind::kTrap, rounds[i]});
    } else {
      points.push_back({KillPoint::Kind::kTimed, rounds[i], delay_ms(rng)});
    }
  }
  return points;
}

TEST_F(CoordinatorFaults, KilledRepeatedlyAtRandomPointsResumesBitExactly) {
  ASSERT_NO_FATAL_FAILURE(ensure_reference());
  std::mt19937 rng(kKillSeed);
  const std::vector<KillPoint> points = draw_kill_points(rng);
  std::printf("[ kills ] seed %u, %zu planned kill points:\n", kKillSeed, points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    std::printf("[ kills ]   %zu: %s\n", i + 1, points[i].describe().c_str());
  }

  const std::string state = dir_ + "/killed-state";
  const std::string metrics = state + "/" + kMetricsFile;
  fs::create_directories(state);
  std::string port;
  std::unique_ptr<Process> clients;
  std::unique_ptr<Process> coordinator;
  int kills = 0;
  int round1_kills = 0;  // before any checkpoint existed
  int window_kills = 0;  // between a metrics line and its checkpoint, a checkpoint on disk
  bool finished_early = false;
  for (size_t i = 0; i < points.size(); ++i) {
    const KillPoint& point = points[i];
    // What this incarnation resumes from (nothing runs now); a point already passed moves up.
    const StateSnapshot start = inspect(state);
    const int round = std::max(point.round, start.checkpoint_round + 1);
    std::vector<std::string> env;
    if (point.kind == KillPoint::Kind::kTrap) {
      env.push_back("FEDTAIL_FAULT_PAUSE_CHECKPOINT=" + std::to_string(round));
    }
    const std::string name = "killed-" + std::to_string(i + 1);
    coordinator = start_coordinator(state, port.empty() ? "127.0.0.1:0" : "127.0.0.1:" + port,
                                    /*resume=*/i > 0, name, std::move(env));
    // Listening means the state directory is prepared (on --resume: metrics.jsonl cut back).
    ASSERT_TRUE(coordinator->wait_for_log_line("listening on", kStartTimeout))
        << coordinator->log();
    if (i > 0) {
      const std::string log = coordinator->log();
      if (start.has_checkpoint) {
        EXPECT_NE(log.find("resuming run"), std::string::npos) << log;
      } else {
        // What --resume does without a checkpoint: a new run, with a warning.
        EXPECT_NE(log.find("--resume: no checkpoint in"), std::string::npos) << log;
        EXPECT_NE(log.find("starting a new run"), std::string::npos) << log;
      }
    }
    if (port.empty()) {
      port = test_support::wait_for_file(state + "/port", kStartTimeout);
      ASSERT_FALSE(port.empty()) << coordinator->log();
      clients = start_clients(port, "killed");
    }

    std::string at;
    if (point.kind == KillPoint::Kind::kTrap) {
      // The hook logs once the round's metrics line is on disk and its checkpoint write sleeps
      // (earlier rounds' short natural windows must not count).
      const std::string paused = "pausing the checkpoint write of round " + std::to_string(round);
      ASSERT_TRUE(wait_until(
          [&] {
            return coordinator->log().find(paused) != std::string::npos || !coordinator->running();
          },
          kRunTimeout))
          << coordinator->log();
      at = "its checkpoint write paused";
    } else {
      if (round == start.checkpoint_round + 1) {
        ASSERT_TRUE(coordinator->wait_for_log_line("joined hosting", kRunTimeout))
            << coordinator->log();
        at = "the clients joined";
      } else {
        ASSERT_TRUE(wait_until(
            [&] {
              const std::string text = test_support::read_file(metrics);
              return std::count(text.begin(), text.end(), '\n') >= round - 1 ||
                     !coordinator->running();
            },
            kRunTimeout))
            << coordinator->log();
        at = "round " + std::to_string(round - 1) + "'s metrics line";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(point.delay_ms));
      at += " + " + std::to_string(point.delay_ms) + " ms";
    }
    if (!coordinator->running()) {
      EXPECT_EQ(coordinator->wait(1s), 0) << coordinator->log();
      std::printf("[ kills ] incarnation %zu finished the run before kill %zu\n", i + 1, i + 1);
      finished_early = true;
      break;
    }
    coordinator->signal(SIGKILL);
    ASSERT_EQ(coordinator->wait(30s), Process::kSignalled) << coordinator->describe_exit();
    ++kills;
    const StateSnapshot killed = inspect(state);
    if (!killed.has_checkpoint) {
      ++round1_kills;
    } else if (killed.lines > killed.recorded_lines) {
      ++window_kills;
    }
    std::printf(
        "[ kills ] kill %d: planned %s; on disk at the restart: %s; killed at %s: %s [%s]\n", kills,
        point.describe().c_str(), start.describe().c_str(), at.c_str(),
        kill_landing(killed).c_str(), killed.describe().c_str());
    EXPECT_EQ(killed.checkpoint_error, "");
    EXPECT_FALSE(killed.torn) << killed.describe();
    ASSERT_TRUE(clients->running()) << clients->log();
  }

  if (!finished_early) {
    coordinator = start_coordinator(state, "127.0.0.1:" + port, /*resume=*/true, "killed-final");
    ASSERT_EQ(coordinator->wait(kRunTimeout), 0) << coordinator->log() << "\n--- clients:\n"
                                                 << clients->log();
  }
  EXPECT_EQ(clients->wait(60s), 0) << clients->log();
  const std::string client_log = clients->log();
  // The clients followed every restart, and the new run after the round-1 kill.
  EXPECT_NE(client_log.find("retrying in"), std::string::npos) << client_log;
  EXPECT_NE(client_log.find("the coordinator runs a new run"), std::string::npos) << client_log;

  const Comparison c = compare_with_reference(state);
  std::printf(
      "[ kills ] %d kills (%d before the first checkpoint, %d later between a metrics line and its "
      "checkpoint); rounds lost %d, repeated %d, in order %s; final model %s\n",
      kills, round1_kills, window_kills, c.rounds_lost, c.rounds_repeated,
      c.in_order ? "yes" : "no", c.model_equal ? "equal to the reference" : "DIFFERENT");
  RecordProperty("kills", kills);
  RecordProperty("rounds_lost", c.rounds_lost);
  EXPECT_GE(kills, 3);
  EXPECT_GE(round1_kills, 1);
  EXPECT_GE(window_kills, 1);
  EXPECT_TRUE(c.model_equal);
}

TEST_F(CoordinatorFaults, DiskFullAtCheckpointTime) {
  std::string why;
  const std::string mnt = mount_tmpfs(&why);
  if (mnt.empty()) GTEST_SKIP() << why;
  const std::string filler = mnt + "/filler";
  Fault fault;
  fault.name = "disk-full";
  fault.inject = [&](Process& coordinator, const std::string&) {
    // Stopped, the coordinator cannot finish a checkpoint while the disk fills. It may be in the
    // middle of one (that write then fails) or past it (the next one fails).
    coordinator.signal(SIGSTOP);
    int64_t written = 0;
    const std::string error = fill_file_system(filler, &written);
    coordinator.signal(SIGCONT);
    std::printf("[ disk-full ] wrote %lld filler bytes until ENOSPC\n",
                static_cast<long long>(written));
    return error;
  };
  fault.repair = [&](const std::string&) {
    std::error_code ec;
    fs::remove(filler, ec);
    return ec ? filler + ": " + ec.message() : std::string();
  };
  fault.os_error = "No space left on device";
  fault.same_checkpoint = false;
  run_with_fault(mnt + "/state", fault);
}

TEST_F(CoordinatorFaults, ReadOnlyStateDir) {
  std::string why;
  const std::string mnt = mount_tmpfs(&why);
  if (mnt.empty()) GTEST_SKIP() << why;
  Fault fault;
  fault.name = "read-only";
  fault.inject = [&](Process&, const std::string&) {
    // EBUSY: a file is open for writing (a checkpoint or metrics write in progress).
    std::string error;
    const bool done = wait_until(
        [&] {
          error = remount(/*read_only=*/true);
          return error.empty();
        },
        30s);
    return done ? "" : "remount,ro " + mount_point_ + ": " + error;
  };
  fault.repair = [&](const std::string&) {
    const std::string error = remount(/*read_only=*/false);
    return error.empty() ? "" : "remount,rw " + mount_point_ + ": " + error;
  };
  fault.os_error = "Read-only file system";
  run_with_fault(mnt + "/state", fault);
}

TEST_F(CoordinatorFaults, FailedMetricsAppendLeavesNoPartialLine) {
  std::string why;
  const std::string mnt = mount_tmpfs(&why);
  if (mnt.empty()) GTEST_SKIP() << why;
  const std::string path = mnt + "/" + kMetricsFile;
  ASSERT_TRUE(coordinator::append_metrics_line(path, {{"round", 1}}).ok());
  const std::string before = test_support::read_file(path);
  int64_t written = 0;
  ASSERT_EQ(fill_file_system(mnt + "/filler", &written), "");
  // Longer than the rest of the file's last page (tmpfs allocates pages): a short write, then
  // ENOSPC.
  const nlohmann::json line = {{"round", 2}, {"padding", std::string(3 * 4096, 'p')}};
  Status status = coordinator::append_metrics_line(path, line);
  EXPECT_EQ(status.code(), StatusCode::kIOError) << status.to_string();
  EXPECT_NE(status.message().find(path), std::string::npos) << status.to_string();
  EXPECT_NE(status.message().find("No space left on device"), std::string::npos)
      << status.to_string();
  EXPECT_EQ(test_support::read_file(path), before);
}

}  // namespace
}  // namespace fedtail

// Client-side faults in a real federation: a fedtail-coordinator and fedtail-client processes over
// loopback (one network-namespace test aside), FedAvg on a small Fashion-MNIST-LT slice. Each test
// injects one fault into a running client and checks that the round ends as the policy says (the
// victim listed in that round's fit.failures with a reason, also in the coordinator's log), that
// the client comes back and is used again in a later round, and that the run completes:
//   - killed (SIGKILL) while downloading its task, or while uploading its result, then restarted
//     with the same client id and state directory (federation_failures_test.cc covers training);
//   - slow past the round's deadline, in training or in the upload;
//   - frozen (SIGSTOP) past federation.client_timeout_s, then thawed (SIGCONT);
//   - every client gone: the coordinator waits for clients without spinning, then finishes;
//   - its network link cut for longer than client_timeout_s (root only: network namespaces).
// The exact windows come from fedtail-client's test hook FEDTAIL_FAULT_PAUSE
// (client/fault_pause.h): the client logs "fault injection: pausing ..." and sleeps at that point,
// and the test acts then.
//
// Rounds wait for every client (federation.min_available_clients = all of them), so that the round
// after a fault cannot start without the victim: "used again later" does not depend on timing.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

// The client that each test harms (partition 1).
constexpr int kVictim = 1;
constexpr char kVictimId[] = "client-1";

// The run config shared by the tests: `clients` clients, all needed for a round to start, 2 enough
// for a round's update (min_fit_clients), no evaluation (the tests are about the fit phase).
nlohmann::json base_config(int rounds, int clients) {
  return {{"seed", 7},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", rounds},
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 2}, {"fraction_evaluate", 0.0}}},
          {"federation",
           {{"min_available_clients", clients},
            // Far longer than a round takes here, even under load; test 2 shortens it.
            {"round_timeout_s", 120},
            {"poll_timeout_ms", 1000},
            {"heartbeat_interval_ms", 300},
            // A killed or frozen client is declared gone 3 s after its last contact.
            {"client_timeout_s", 3},
            {"server_eval", false}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 100},
            {"imbalance_factor", 10},
            {"partition", "iid"},
            {"clients", clients}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 16}}}};
}

// CPU time (user + system, all threads) that process `pid` has used, in seconds; -1 when
// /proc/<pid>/stat cannot be read.
double cpu_seconds(pid_t pid) {
  const std::string stat = test_support::read_file("/proc/" + std::to_string(pid) + "/stat");
  // Fields after the command name (which may hold spaces, hence the last ')'): state is field 3,
  // utime 14 and stime 15, in clock ticks.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream in(stat.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 13; ++i) in >> field;
  long long utime = -1;
  long long stime = -1;
  in >> utime >> stime;
  if (!in) return -1;
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// How many times `text` occurs in `haystack`.
int count_of(const std::string& haystack, const std::string& text) {
  int count = 0;
  for (size_t at = haystack.find(text); at != std::string::npos; at = haystack.find(text, at + 1)) {
    ++count;
  }
  return count;
}

// Waits until the log of `process` contains `text` at or after byte `from` (so that a line logged
// earlier in the run does not count); false after `timeout`.
bool wait_for_log_from(const Process& process, size_t from, const std::string& text,
                       std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (process.log().find(text, from) != std::string::npos) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// The entry of fit.failures (a metrics line's "fit" object) for `client_id`; null when absent.
const nlohmann::json* failure_of(const nlohmann::json& fit, const std::string& client_id) {
  for (const nlohmann::json& failure : fit["failures"]) {
    if (failure.value("client_id", "") == client_id) return &failure;
  }
  return nullptr;
}

class ClientFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("client_faults");
    state_dir_ = dir_ + "/state";
  }

  // Starts the coordinator on a loopback port with `config`; sets port_ ("" when it did not come
  // up: the caller asserts).
  std::unique_ptr<Process> start_coordinator(const nlohmann::json& config) {
    test_support::write_file(dir_ + "/run.json", config.dump(2));
    auto coordinator = std::make_unique<Process>(
        std::vector<std::string>{test_support::binary_path("fedtail-coordinator"), "--config",
                                 dir_ + "/run.json", "--listen", "127.0.0.1:0", "--state-dir",
                                 state_dir_, "--threads", "1"},
        dir_ + "/coordinator.log", std::vector<std::string>{"OMP_WAIT_POLICY=PASSIVE"});
    port_ = test_support::wait_for_file(state_dir_ + "/port", 120s);
    return coordinator;
  }

  // Starts client k ("client-<k>", partition k, state in client-<k>-state) with `env` added; its
  // log is client-<k><log_tag>.log. A restart passes the same k: same id, same state directory.
  std::unique_ptr<Process> start_client(int k, std::vector<std::string> env = {},
                                        const std::string& log_tag = "") {
    env.push_back("OMP_WAIT_POLICY=PASSIVE");
    const std::string id = "client-" + std::to_string(k);
    return std::make_unique<Process>(
        std::vector<std::string>{test_support::binary_path("fedtail-client"), "--coordinator",
                                 "127.0.0.1:" + port_, "--clients",
                                 std::to_string(k) + "-" + std::to_string(k), "--state-dir",
                                 dir_ + "/" + id + "-state", "--device", "cpu", "--threads", "1",
                                 "--retry-timeout", "60"},
        dir_ + "/" + id + log_tag + ".log", std::move(env));
  }

  std::vector<nlohmann::json> metrics() const {
    return test_support::metrics_lines(state_dir_ + "/metrics.jsonl");
  }

  // Every log of the test (coordinator and clients), for failure messages.
  std::string logs() const {
    std::string all;
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      if (entry.path().extension() == ".log") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& file : files) {
      all += "\n--- " + file.filename().string() + ":\n" + test_support::read_file(file.string());
    }
    return all;
  }

  // The run finished: every round in metrics.jsonl and summary.json.
  void expect_run_complete(int rounds) {
    EXPECT_EQ(metrics().size(), static_cast<size_t>(rounds)) << logs();
    const std::string text = test_support::read_file(state_dir_ + "/summary.json");
    ASSERT_FALSE(text.empty()) << "no summary.json" << logs();
    const nlohmann::json summary = nlohmann::json::parse(text);
    EXPECT_EQ(summary.value("rounds_completed", 0), rounds) << summary.dump(2);
  }

  // Tests 1: three clients; the victim pauses at `fault` (FEDTAIL_FAULT_PAUSE) of round 2, logging
  // `pause_line`, and is killed there; once the coordinator has failed its task it is restarted.
  void kill_in_window_then_restart(const std::string& fault, const std::string& pause_line,
                                   bool trained_before_kill) {
    constexpr int kRounds = 3;
    constexpr int kClients = 3;
    std::unique_ptr<Process> coordinator = start_coordinator(base_config(kRounds, kClients));
    ASSERT_FALSE(port_.empty()) << coordinator->log();
    std::vector<std::unique_ptr<Process>> clients(kClients);
    for (int k = 0; k < kClients; ++k) {
      clients[k] =
          start_client(k, k == kVictim ? std::vector<std::string>{"FEDTAIL_FAULT_PAUSE=" + fault}
                                       : std::vector<std::string>{});
    }

    Process& victim = *clients[kVictim];
    ASSERT_TRUE(victim.wait_for_log_line(pause_line, 240s)) << logs();
    victim.signal(SIGKILL);
    EXPECT_EQ(victim.wait(30s), Process::kSignalled);
    // Where it died: a download ends before training starts; an upload after training.
    const std::string victim_log = victim.log();
    EXPECT_EQ(victim_log.find(std::string(kVictimId) + ": round 2 fit (task") != std::string::npos,
              trained_before_kill)
        << victim_log;
    EXPECT_EQ(victim_log.find("the coordinator refused the result"), std::string::npos)
        << victim_log;

    // The coordinator notices (no contact for client_timeout_s) and fails the victim's task; only
    // then does the victim come back, so that round 2 cannot hand the task to the new process.
    const std::string failed = "round 2 fit: client " + std::string(kVictimId) + " failed: ";
    ASSERT_TRUE(coordinator->wait_for_log_line(failed, 120s)) << logs();
    clients[kVictim] = start_client(kVictim, {}, "-restarted");

    ASSERT_EQ(coordinator->wait(240s), 0) << logs();
    for (int k = 0; k < kClients; ++k) EXPECT_EQ(clients[k]->wait(60s), 0) << logs();
    expect_run_complete(kRounds);

    const std::vector<nlohmann::json> lines = metrics();
    ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
    // Round 2: three selected, the victim failed with a reason, the two others were aggregated
    // (min_fit_clients = 2).
    const nlohmann::json& fit2 = lines[1]["fit"];
    EXPECT_EQ(fit2["selected"], kClients) << fit2.dump();
    EXPECT_EQ(fit2["updates"], kClients - 1) << fit2.dump();
    EXPECT_EQ(fit2["failures"].size(), 1u) << fit2.dump();
    const nlohmann::json* failure = failure_of(fit2, kVictimId);
    ASSERT_NE(failure, nullptr) << fit2.dump();
    const std::string reason = failure->value("reason", "");
    EXPECT_NE(reason.find("connection lost"), std::string::npos) << fit2.dump();
    // Nothing of the victim was folded (for an upload: not its partial result).
    EXPECT_EQ(fit2["metrics"]["updates"], kClients - 1) << fit2.dump();
    EXPECT_EQ(fit2["metrics"]["updated"], true) << fit2.dump();
    EXPECT_NE(coordinator->log().find(failed + reason), std::string::npos) << coordinator->log();
    // Round 3: the restarted victim rejoined under its id and was selected and aggregated again.
    const nlohmann::json& fit3 = lines[2]["fit"];
    EXPECT_EQ(fit3["selected"], kClients) << fit3.dump();
    EXPECT_EQ(fit3["updates"], kClients) << fit3.dump();
    EXPECT_EQ(fit3["failures"], nlohmann::json::array()) << fit3.dump();
    const std::string restarted = clients[kVictim]->log();
    EXPECT_NE(restarted.find("as clients-1-1"), std::string::npos) << restarted;
    EXPECT_NE(restarted.find(std::string(kVictimId) + ": round 3 fit done"), std::string::npos)
        << restarted;
  }

  std::string dir_;
  std::string state_dir_;
  std::string port_;
};

TEST_F(ClientFaults, KilledWhileDownloadingFailsTheTaskAndRejoinsAfterRestart) {
  kill_in_window_then_restart("download:2", "fault injection: pausing during the download",
                              /*trained_before_kill=*/false);
}

TEST_F(ClientFaults, KilledWhileUploadingFailsTheTaskAndRejoinsAfterRestart) {
  kill_in_window_then_restart("upload:2", "fault injection: pausing during the upload",
                              /*trained_before_kill=*/true);
}

// Two slow clients in round 2 of a run with a 15 s round deadline: client-1 trains past the
// deadline (its heartbeats keep it connected; the coordinator answers them "cancel" once the round
// is over, so its late update is dropped by the client), client-2 uploads past the deadline (its
// result arrives after the round closed and is refused as late). The round closes at the deadline
// with client-0's update (min_fit_clients = 1 here), and round 3 uses all three again.
TEST_F(ClientFaults, SlowClientsPastTheDeadlineAreLateAndUsedAgain) {
  constexpr int kRounds = 3;
  constexpr int kClients = 3;
  constexpr double kRoundTimeoutS = 15;
  // Longer than the deadline: a pause starts after its round did.
  const std::string pause = std::to_string(static_cast<int>(kRoundTimeoutS) + 2);
  nlohmann::json config = base_config(kRounds, kClients);
  config["strategy"]["min_fit_clients"] = 1;
  config["federation"]["round_timeout_s"] = kRoundTimeoutS;
  // Longer than the upload pause, during which the client is silent: slow, not gone.
  config["federation"]["client_timeout_s"] = 30;
  std::unique_ptr<Process> coordinator = start_coordinator(config);
  ASSERT_FALSE(port_.empty()) << coordinator->log();
  std::vector<std::unique_ptr<Process>> clients;
  clients.push_back(start_client(0));
  clients.push_back(start_client(1, {"FEDTAIL_FAULT_PAUSE=train:2:" + pause}));
  clients.push_back(start_client(2, {"FEDTAIL_FAULT_PAUSE=upload:2:" + pause}));

  ASSERT_EQ(coordinator->wait(240s), 0) << logs();
  for (auto& client : clients) EXPECT_EQ(client->wait(60s), 0) << logs();
  expect_run_complete(kRounds);
  ASSERT_NE(clients[1]->log().find("fault injection: pausing before training of round 2"),
            std::string::npos)
      << clients[1]->log();
  ASSERT_NE(clients[2]->log().find("fault injection: pausing during the upload of round 2"),
            std::string::npos)
      << clients[2]->log();

  const std::vector<nlohmann::json> lines = metrics();
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
  const nlohmann::json& fit2 = lines[1]["fit"];
  EXPECT_EQ(fit2["selected"], kClients) << fit2.dump();
  EXPECT_EQ(fit2["updates"], 1) << fit2.dump();
  EXPECT_EQ(fit2["metrics"]["updated"], true) << fit2.dump();
  const std::string log = coordinator->log();
  for (const char* id : {"client-1", "client-2"}) {
    const nlohmann::json* failure = failure_of(fit2, id);
    ASSERT_NE(failure, nullptr) << id << " is not a failure of round 2: " << fit2.dump();
    const std::string reason = failure->value("reason", "");
    EXPECT_NE(reason.find("deadline exceeded"), std::string::npos) << id << ": " << reason;
    EXPECT_NE(log.find("round 2 fit: client " + std::string(id) + " failed: " + reason),
              std::string::npos)
        << log;
  }
  // The round closed at its deadline, not before (it waited for the slow ones) and not much later.
  const double fit_s = lines[1]["timing"].value("fit_s", 0.0);
  EXPECT_GE(fit_s, kRoundTimeoutS - 0.5) << lines[1].dump();
  EXPECT_LT(fit_s, kRoundTimeoutS + 5) << lines[1].dump();

  // client-1 was told to drop its result; client-2's arrived late and was refused as late.
  EXPECT_NE(clients[1]->log().find("the coordinator cancelled task"), std::string::npos)
      << clients[1]->log();
  const std::string refused = clients[2]->log();
  const size_t at = refused.find("the coordinator refused the result of task");
  ASSERT_NE(at, std::string::npos) << refused;
  EXPECT_NE(refused.find("late", at), std::string::npos) << refused;

  // Round 3: everyone, nobody failed.
  const nlohmann::json& fit3 = lines[2]["fit"];
  EXPECT_EQ(fit3["selected"], kClients) << fit3.dump();
  EXPECT_EQ(fit3["failures"], nlohmann::json::array()) << fit3.dump();
  for (int k : {1, 2}) {
    EXPECT_NE(clients[k]->log().find("client-" + std::to_string(k) + ": round 3 fit done"),
              std::string::npos)
        << clients[k]->log();
  }
}

// A client frozen (SIGSTOP) while it trains round 2 stops heartbeating: after client_timeout_s the
// coordinator declares it gone and round 2 ends with the two others. Round 3 waits for it. Thawed
// (SIGCONT), the client learns that its session is unknown, joins again, has its stale round-2
// result refused, and trains round 3.
TEST_F(ClientFaults, FrozenClientIsDeclaredGoneThenRejoinsWhenThawed) {
  constexpr int kRounds = 3;
  constexpr int kClients = 3;
  std::unique_ptr<Process> coordinator = start_coordinator(base_config(kRounds, kClients));
  ASSERT_FALSE(port_.empty()) << coordinator->log();
  std::vector<std::unique_ptr<Process>> clients(kClients);
  for (int k = 0; k < kClients; ++k) {
    // The victim's pause only holds it in round 2's training long enough to be frozen there.
    clients[k] =
        start_client(k, k == kVictim ? std::vector<std::string>{"FEDTAIL_FAULT_PAUSE=train:2:5"}
                                     : std::vector<std::string>{});
  }
  Process& victim = *clients[kVictim];
  ASSERT_TRUE(victim.wait_for_log_line("fault injection: pausing before training of round 2", 240s))
      << logs();
  victim.signal(SIGSTOP);

  // Round 2 ends without it; round 3 waits for it (the same line at start-up does not count).
  const size_t frozen_at = coordinator->log().size();
  ASSERT_TRUE(test_support::wait_for_lines(state_dir_ + "/metrics.jsonl", 2, 120s)) << logs();
  ASSERT_TRUE(wait_for_log_from(*coordinator, frozen_at, "waiting for clients: 2/3 connected", 60s))
      << logs();
  ASSERT_TRUE(victim.running());
  victim.signal(SIGCONT);

  ASSERT_EQ(coordinator->wait(240s), 0) << logs();
  for (auto& client : clients) EXPECT_EQ(client->wait(60s), 0) << logs();
  expect_run_complete(kRounds);

  const std::vector<nlohmann::json> lines = metrics();
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
  const nlohmann::json& fit2 = lines[1]["fit"];
  EXPECT_EQ(fit2["selected"], kClients) << fit2.dump();
  EXPECT_EQ(fit2["updates"], kClients - 1) << fit2.dump();
  const nlohmann::json* failure = failure_of(fit2, kVictimId);
  ASSERT_NE(failure, nullptr) << fit2.dump();
  const std::string reason = failure->value("reason", "");
  EXPECT_NE(reason.find("connection lost"), std::string::npos) << reason;
  EXPECT_NE(coordinator->log().find("round 2 fit: client " + std::string(kVictimId) +
                                    " failed: " + reason),
            std::string::npos)
      << coordinator->log();
  const nlohmann::json& fit3 = lines[2]["fit"];
  EXPECT_EQ(fit3["selected"], kClients) << fit3.dump();
  EXPECT_EQ(fit3["updates"], kClients) << fit3.dump();
  EXPECT_EQ(fit3["failures"], nlohmann::json::array()) << fit3.dump();

  const std::string log = victim.log();
  EXPECT_NE(log.find("does not know this session"), std::string::npos) << log;
  EXPECT_GE(count_of(log, "joined coordinator"), 2) << log;
  EXPECT_NE(log.find("the coordinator refused the result"), std::string::npos) << log;
  EXPECT_NE(log.find(std::string(kVictimId) + ": round 3 fit done"), std::string::npos) << log;
}

// Every client killed while training round 2: round 2 ends with no update (the model is kept), and
// round 3 waits for clients, saying so in the log, on a condition variable: the coordinator uses
// almost no CPU while it waits. Clients started again finish the run.
TEST_F(ClientFaults, AllClientsGoneCoordinatorWaitsWithoutSpinningThenFinishes) {
  constexpr int kRounds = 3;
  constexpr int kClients = 2;
  std::unique_ptr<Process> coordinator = start_coordinator(base_config(kRounds, kClients));
  ASSERT_FALSE(port_.empty()) << coordinator->log();
  std::vector<std::unique_ptr<Process>> clients(kClients);
  for (int k = 0; k < kClients; ++k) clients[k] = start_client(k, {"FEDTAIL_FAULT_PAUSE=train:2"});
  for (auto& client : clients) {
    ASSERT_TRUE(
        client->wait_for_log_line("fault injection: pausing before training of round 2", 240s))
        << logs();
  }
  const size_t killed_at = coordinator->log().size();
  for (auto& client : clients) {
    client->signal(SIGKILL);
    EXPECT_EQ(client->wait(30s), Process::kSignalled);
  }

  // The same line at start-up does not count.
  const std::string waiting = "waiting for clients: 0/" + std::to_string(kClients) + " connected";
  ASSERT_TRUE(wait_for_log_from(*coordinator, killed_at, waiting, 120s)) << logs();
  const std::string before_log = coordinator->log();
  const double before = cpu_seconds(coordinator->pid());
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(5s);
  const double after = cpu_seconds(coordinator->pid());
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_GE(before, 0);
  ASSERT_GE(after, 0);
  EXPECT_LT(after - before, 0.5) << "the waiting coordinator used " << (after - before)
                                 << " s of CPU in " << wall << " s";
  // It keeps saying so (every 5 s), without flooding the log.
  const int lines_logged = count_of(coordinator->log(), "waiting for clients: 0/") -
                           count_of(before_log, "waiting for clients: 0/");
  EXPECT_LE(lines_logged, 2) << coordinator->log();
  ASSERT_TRUE(coordinator->running()) << coordinator->log();

  for (int k = 0; k < kClients; ++k) clients[k] = start_client(k, {}, "-restarted");
  ASSERT_EQ(coordinator->wait(240s), 0) << logs();
  for (auto& client : clients) EXPECT_EQ(client->wait(60s), 0) << logs();
  expect_run_complete(kRounds);

  const std::vector<nlohmann::json> lines = metrics();
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
  const nlohmann::json& fit2 = lines[1]["fit"];
  EXPECT_EQ(fit2["updates"], 0) << fit2.dump();
  EXPECT_EQ(fit2["failures"].size(), static_cast<size_t>(kClients)) << fit2.dump();
  EXPECT_EQ(fit2["metrics"]["updated"], false) << fit2.dump();
  const nlohmann::json& fit3 = lines[2]["fit"];
  EXPECT_EQ(fit3["selected"], kClients) << fit3.dump();
  EXPECT_EQ(fit3["updates"], kClients) << fit3.dump();
  EXPECT_EQ(fit3["metrics"]["updated"], true) << fit3.dump();
}

// The `ip` binary, or "" when iproute2 is not installed.
std::string ip_binary() {
  for (const char* path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (::access(path, X_OK) == 0) return path;
  }
  return "";
}

// Network cuts, as multihost_netns_test.cc builds them: the coordinator and two clients in one
// network namespace (the clients over its loopback), the victim in another, joined to the first by
// a veth pair (coordinator 10.232.1.1/24, victim 10.232.1.2/24). Needs root and `ip netns`; skips
// otherwise. Namespace and interface names carry the test process's pid; TearDown deletes the
// namespaces (and so the pair), failed assertions included.
class ClientFaultsNetns : public ClientFaults {
 protected:
  void SetUp() override {
    ClientFaults::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (::geteuid() != 0) GTEST_SKIP() << "network namespaces need root";
    ip_ = ip_binary();
    if (ip_.empty()) GTEST_SKIP() << "`ip` not found: install iproute2";
    const std::string pid = std::to_string(::getpid());
    coordinator_ns_ = "ftfc" + pid;
    victim_ns_ = "ftfk" + pid;
    std::string error;
    if (!ip({"netns", "add", coordinator_ns_}, &error)) {
      GTEST_SKIP() << "`ip netns add` failed (no network namespaces here?): " << error;
    }
    made_.push_back(coordinator_ns_);
    ASSERT_TRUE(ip({"netns", "add", victim_ns_}, &error)) << error;
    made_.push_back(victim_ns_);
    // Interface names are at most 15 characters: "ftfc" + pid (<= 7 digits) + "v".
    const std::string coordinator_end = "ftfc" + pid + "v";
    victim_end_ = "ftfk" + pid + "v";
    ASSERT_TRUE(ip({"link", "add", coordinator_end, "netns", coordinator_ns_, "type", "veth",
                    "peer", "name", victim_end_, "netns", victim_ns_},
                   &error))
        << error;
    for (const auto& [ns, dev, address] : {std::tuple<std::string, std::string, std::string>{
                                               coordinator_ns_, coordinator_end, "10.232.1.1/24"},
                                           {victim_ns_, victim_end_, "10.232.1.2/24"}}) {
      ASSERT_TRUE(ip({"-n", ns, "addr", "add", address, "dev", dev}, &error)) << error;
      ASSERT_TRUE(ip({"-n", ns, "link", "set", dev, "up"}, &error)) << error;
      ASSERT_TRUE(ip({"-n", ns, "link", "set", "lo", "up"}, &error)) << error;
    }
  }

  void TearDown() override {
    for (const std::string& ns : made_) {
      std::string error;
      if (!ip({"netns", "del", ns}, &error)) ADD_FAILURE() << "cleanup: " << error;
    }
  }

  // Runs `ip args`; false (with its output in *error) when it fails.
  bool ip(const std::vector<std::string>& args, std::string* error) {
    std::vector<std::string> argv = {ip_};
    argv.insert(argv.end(), args.begin(), args.end());
    Process p(argv, dir_ + "/ip.out");
    const int code = p.wait(30s);
    if (code == 0) return true;
    std::string line;
    for (const std::string& a : argv) line += a + " ";
    *error = line + "-> " + p.describe_exit() + ": " + p.log();
    return false;
  }

  // `binary args` inside namespace `ns`, logging to dir_/<log>, with `env` added.
  std::unique_ptr<Process> start_in(const std::string& ns, const std::string& binary,
                                    const std::vector<std::string>& args, const std::string& log,
                                    std::vector<std::string> env = {}) {
    std::vector<std::string> argv = {ip_, "netns", "exec", ns, test_support::binary_path(binary)};
    argv.insert(argv.end(), args.begin(), args.end());
    env.push_back("OMP_WAIT_POLICY=PASSIVE");
    return std::make_unique<Process>(argv, dir_ + "/" + log, std::move(env));
  }

  // Client k's command line, to coordinator `address`.
  std::vector<std::string> client_args(int k, const std::string& address) {
    const std::string id = "client-" + std::to_string(k);
    return {"--coordinator",
            address + ":" + port_,
            "--insecure",
            "--clients",
            std::to_string(k) + "-" + std::to_string(k),
            "--state-dir",
            dir_ + "/" + id + "-state",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--retry-timeout",
            "120"};
  }

  // Starts the coordinator with `config` and `clients` clients, the victim in its own namespace
  // with FEDTAIL_FAULT_PAUSE=`victim_pause`, the others beside the coordinator, then cuts the
  // victim's link once it pauses mid-upload. The processes are in coordinator_ and clients_.
  void start_and_cut_victim_mid_upload(const nlohmann::json& config, int clients,
                                       const std::string& victim_pause) {
    test_support::write_file(dir_ + "/run.json", config.dump(2));
    coordinator_ =
        start_in(coordinator_ns_, "fedtail-coordinator",
                 {"--config", dir_ + "/run.json", "--listen", "0.0.0.0:0", "--insecure",
                  "--allow-unauthenticated-clients", "--state-dir", state_dir_, "--threads", "1"},
                 "coordinator.log");
    port_ = test_support::wait_for_file(state_dir_ + "/port", 120s);
    ASSERT_FALSE(port_.empty()) << coordinator_->log();
    clients_.resize(clients);
    for (int k = 0; k < clients; ++k) {
      const std::string log = "client-" + std::to_string(k) + ".log";
      clients_[k] =
          k == kVictim
              ? start_in(victim_ns_, "fedtail-client", client_args(k, "10.232.1.1"), log,
                         {"FEDTAIL_FAULT_PAUSE=" + victim_pause})
              : start_in(coordinator_ns_, "fedtail-client", client_args(k, "127.0.0.1"), log);
    }
    ASSERT_TRUE(
        clients_[kVictim]->wait_for_log_line("fault injection: pausing during the upload", 240s))
        << logs();
    std::string error;
    ASSERT_TRUE(ip({"-n", victim_ns_, "link", "set", victim_end_, "down"}, &error)) << error;
  }

  std::unique_ptr<Process> coordinator_;
  std::vector<std::unique_ptr<Process>> clients_;
  std::string ip_;
  std::string coordinator_ns_;
  std::string victim_ns_;
  std::string victim_end_;
  std::vector<std::string> made_;  // namespaces to delete
};

// The victim's link is cut while it uploads its round-2 result (FEDTAIL_FAULT_PAUSE holds the
// upload after its first chunks, so the cut always lands mid-upload), for kCutS seconds:
//   - longer than heartbeat_interval_ms and client_timeout_s (3 s): the coordinator declares the
//     victim's session gone during the cut, so that afterwards the client must re-join (its
//     session is unknown) and re-send its result: the path where an update could count twice;
//   - longer than 10 s: gRPC sets TCP_USER_TIMEOUT on the client's socket to the client's
//     keepalive timeout (10 s, client/connection.cc), so the upload's unacknowledged data makes
//     the kernel drop the connection about 10 s into the cut. From then on each attempt fails at
//     once ("Network is unreachable": the victim's end is down) and the client retries with
//     backoff until the link is back. (A cut shorter than that leaves the TCP connection intact:
//     the client only sees a delay.)
// Then: the client re-joins and re-sends; the run completes; the victim trains round 3; and in
// every round the strategy folded exactly the updates of the clients not listed as failures:
// fit.metrics.updates and fit.metrics.examples match them (no update counted twice, whether the
// coordinator kept the cut upload's task open and took the re-sent result, or failed it and
// refused the re-send as late). A re-sent result the coordinator already had is answered as a
// duplicate ("already had the result") and not folded again.
TEST_F(ClientFaultsNetns, NetworkCutMidUploadReconnectsWithBackoffAndCountsUpdatesOnce) {
  constexpr int kRounds = 3;
  constexpr int kClients = 3;
  constexpr auto kCutS = 16s;
  ASSERT_NO_FATAL_FAILURE(
      start_and_cut_victim_mid_upload(base_config(kRounds, kClients), kClients, "upload:2:2"));
  Process& coordinator = *coordinator_;
  Process& victim = *clients_[kVictim];
  std::this_thread::sleep_for(kCutS);
  std::string error;
  ASSERT_TRUE(ip({"-n", victim_ns_, "link", "set", victim_end_, "up"}, &error)) << error;

  ASSERT_EQ(coordinator.wait(240s), 0) << logs();
  for (auto& client : clients_) EXPECT_EQ(client->wait(60s), 0) << logs();
  expect_run_complete(kRounds);

  // The coordinator lost the victim during the cut; the victim noticed, retried with backoff,
  // re-joined and re-sent its result.
  EXPECT_NE(coordinator.log().find("session \"clients-1-1\" (1 client(s)): connection lost"),
            std::string::npos)
      << coordinator.log();
  const std::string log = victim.log();
  EXPECT_NE(log.find("Network is unreachable"), std::string::npos) << log;
  EXPECT_GE(count_of(log, "; retrying in "), 1) << log;
  EXPECT_GE(count_of(log, "joined coordinator"), 2) << log;
  const int resends = count_of(log, "then re-sending task");
  EXPECT_GE(resends, 1) << log;
  EXPECT_LE(count_of(log, "already had the result"), resends) << log;
  EXPECT_NE(log.find(std::string(kVictimId) + ": round 3 fit done"), std::string::npos) << log;

  // Each client's examples per update (its partition's size), from its log.
  std::map<std::string, int64_t> examples;
  const std::regex done("(client-[0-9]+): round [0-9]+ fit done: ([0-9]+) examples");
  for (const auto& client : clients_) {
    const std::string text = client->log();
    for (std::sregex_iterator it(text.begin(), text.end(), done), end; it != end; ++it) {
      examples[(*it)[1]] = std::stoll((*it)[2]);
    }
  }
  ASSERT_EQ(examples.size(), static_cast<size_t>(kClients)) << logs();

  const std::vector<nlohmann::json> lines = metrics();
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
  for (const nlohmann::json& line : lines) {
    const nlohmann::json& fit = line["fit"];
    ASSERT_EQ(fit["selected"], kClients) << fit.dump();
    int64_t expected = 0;
    for (const auto& [id, n] : examples) {
      if (failure_of(fit, id) == nullptr) expected += n;
    }
    const int accepted = kClients - static_cast<int>(fit["failures"].size());
    EXPECT_EQ(fit["updates"], accepted) << fit.dump();
    EXPECT_EQ(fit["metrics"]["updates"], accepted) << fit.dump();
    EXPECT_EQ(fit["metrics"]["examples"], expected) << fit.dump();
    for (const nlohmann::json& failure : fit["failures"]) {
      EXPECT_FALSE(failure.value("reason", "").empty()) << fit.dump();
    }
  }
  // Round 3: the victim is back and counted.
  EXPECT_EQ(lines[2]["fit"]["failures"], nlohmann::json::array()) << lines[2].dump();
}

// A client whose host dies mid-upload (here: its link cut, then the process killed, so that no FIN
// or RST ever reaches the coordinator) is declared gone after client_timeout_s, and its task with
// it: RoundEngine::expire_sessions_locked fails an upload in progress whose session went silent, so
// the round closes with the others instead of waiting for round_timeout_s (600 s by default).
TEST_F(ClientFaultsNetns, ClientLostMidUploadFailsAtClientTimeoutNotAtTheDeadline) {
  constexpr int kRounds = 2;
  constexpr int kClients = 3;
  nlohmann::json config = base_config(kRounds, kClients);
  config["federation"]["min_available_clients"] = 2;
  config["federation"]["round_timeout_s"] = 60;
  ASSERT_NO_FATAL_FAILURE(start_and_cut_victim_mid_upload(config, kClients, "upload:2"));
  Process& coordinator = *coordinator_;
  Process& victim = *clients_[kVictim];
  victim.kill();  // the link stays down: the coordinator never hears of it

  // client_timeout_s is 3 s: round 2 must end long before its 60 s deadline.
  ASSERT_TRUE(test_support::wait_for_lines(state_dir_ + "/metrics.jsonl", 2, 30s)) << logs();
  const nlohmann::json fit2 = metrics()[1]["fit"];
  const nlohmann::json* failure = failure_of(fit2, kVictimId);
  ASSERT_NE(failure, nullptr) << fit2.dump();
  EXPECT_NE(failure->value("reason", "").find("connection lost"), std::string::npos) << fit2.dump();
  EXPECT_EQ(coordinator.wait(120s), 0) << logs();
}

}  // namespace
}  // namespace fedtail

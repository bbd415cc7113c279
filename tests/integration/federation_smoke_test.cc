// Integration smoke test: a real fedtail-coordinator and three real fedtail-client processes over
// loopback run two FedAvg rounds on a small Fashion-MNIST federation.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/cli.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A child process with stdout+stderr in a log file; killed (SIGKILL) if still running at
// destruction.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& log_path) : log_(log_path) {
    pid_ = ::fork();
    if (pid_ == 0) {
      int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // The exit code, or -1 when it did not exit normally within `timeout` (or was signalled).
  int wait(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(50ms);
    }
    return -1;
  }
  void signal(int sig) { ::kill(pid_, sig); }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string log_;
};

// Waits for `path` to exist and hold a line; returns its content ("" on timeout).
std::string wait_for_file(const std::string& path, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    std::ifstream in(path);
    std::string line;
    if (in && std::getline(in, line) && !line.empty()) return line;
    std::this_thread::sleep_for(100ms);
  }
  return "";
}

nlohmann::json run_config(int rounds) {
  return {{"seed", 1},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", rounds},
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 3}}},
          {"federation",
           {{"min_available_clients", 3},
            {"round_timeout_s", 240},
            {"poll_timeout_ms", 2000},
            {"heartbeat_interval_ms", 1000},
            {"client_timeout_s", 30}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 100},
            {"imbalance_factor", 10},
            {"partition", "dirichlet"},
            {"alpha", 1.0},
            {"clients", 3}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 32}}},
          {"eval", {{"batch_size", 500}}}};
}

class FederationSmoke : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"fedtail-coordinator", "fedtail-client"}) {
      if (!fs::exists(test_support::binary_path(name))) {
        GTEST_SKIP() << test_support::binary_path(name) << " is not built";
      }
    }
    if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
    dir_ = test_support::scratch_dir("federation_smoke");
    state_dir_ = dir_ + "/state";
  }

  std::unique_ptr<Process> start_coordinator(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {test_support::binary_path("fedtail-coordinator"),
                                     "--config",
                                     dir_ + "/run.json",
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--state-dir",
                                     state_dir_,
                                     "--threads",
                                     "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<Process>(argv, dir_ + "/coordinator.log");
  }

  std::unique_ptr<Process> start_client(int k, const std::string& port) {
    const std::string range = std::to_string(k) + "-" + std::to_string(k);
    return std::make_unique<Process>(
        std::vector<std::string>{test_support::binary_path("fedtail-client"), "--coordinator",
                                 "127.0.0.1:" + port, "--clients", range, "--state-dir",
                                 dir_ + "/client-state", "--device", "cpu", "--threads", "1"},
        dir_ + "/client-" + std::to_string(k) + ".log");
  }

  std::string dir_;
  std::string state_dir_;
};

TEST_F(FederationSmoke, ThreeClientsRunTwoRoundsAndGetASummary) {
  test_support::write_file(dir_ + "/run.json", run_config(2).dump(2));
  std::unique_ptr<Process> coordinator = start_coordinator();
  const std::string port = wait_for_file(state_dir_ + "/port", 120s);
  ASSERT_FALSE(port.empty()) << coordinator->log();
  std::vector<std::unique_ptr<Process>> clients;
  for (int k = 0; k < 3; ++k) clients.push_back(start_client(k, port));

  const int code = coordinator->wait(600s);
  ASSERT_EQ(code, 0) << coordinator->log() << "\n--- client-0:\n" << clients[0]->log();
  for (auto& client : clients) EXPECT_EQ(client->wait(60s), 0) << client->log();

  std::ifstream in(state_dir_ + "/summary.json");
  ASSERT_TRUE(in) << "no summary.json";
  nlohmann::json summary = nlohmann::json::parse(in);
  EXPECT_EQ(summary["rounds_completed"], 2);
  EXPECT_EQ(summary["strategy"], "fedavg");
  ASSERT_TRUE(summary["final"]["generic_accuracy"].is_number()) << summary.dump(2);
  const double accuracy = summary["final"]["generic_accuracy"].get<double>();
  EXPECT_GT(accuracy, 0.0);
  EXPECT_LE(accuracy, 1.0);
  EXPECT_TRUE(fs::exists(state_dir_ + "/final_model.bundle"));
  EXPECT_TRUE(fs::exists(state_dir_ + "/checkpoint.bundle"));
  // One metrics line per round.
  std::ifstream metrics(state_dir_ + "/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 2);
  const std::string log = coordinator->log();
  EXPECT_NE(log.find("round 2/2"), std::string::npos) << log;
}

TEST_F(FederationSmoke, BadConfigIsAOneLineErrorNamingTheField) {
  nlohmann::json config = run_config(2);
  config["federation"]["round_timeout_s"] = 0;
  test_support::write_file(dir_ + "/run.json", config.dump());
  const test_support::CliRun r =
      test_support::run_cli(test_support::binary_path("fedtail-coordinator"),
                            "--config " + dir_ + "/run.json --state-dir " + state_dir_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("config.federation.round_timeout_s: must be > 0"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
}

TEST_F(FederationSmoke, PlaintextOnAPublicAddressNeedsInsecure) {
  test_support::write_file(dir_ + "/run.json", run_config(1).dump());
  const test_support::CliRun r = test_support::run_cli(
      test_support::binary_path("fedtail-coordinator"),
      "--config " + dir_ + "/run.json --listen 0.0.0.0:0 --state-dir " + state_dir_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("plaintext refused"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace fedtail

// The coordinator's state files against tampering, with real processes: a short FedAvg run
// (fedtail-coordinator + one fedtail-client process hosting 3 virtual clients, 2 rounds on a small
// Fashion-MNIST-LT slice) leaves a state directory of mode 0700 with a 0600 checkpoint key and no
// temporary files; then --resume refuses the checkpoint, naming the file, once it is
//   - re-encoded with one tensor byte flipped (valid file digests: only the MAC can tell), and
//   - flipped one raw byte (the file's own digests already catch this).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/wire/bundle_file.h"
#include "coordinator/checkpoint.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

constexpr int kRounds = 2;

nlohmann::json run_config() {
  return {{"seed", 5},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", kRounds},
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 3}, {"fraction_evaluate", 0.0}}},
          {"federation",
           {{"min_available_clients", 3},
            {"round_timeout_s", 120},
            {"poll_timeout_ms", 1000},
            {"heartbeat_interval_ms", 500},
            {"client_timeout_s", 10}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 30},
            {"imbalance_factor", 10},
            {"partition", "dirichlet"},
            {"alpha", 1.0},
            {"clients", 3}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 16}}},
          {"eval", {{"batch_size", 1000}, {"every", kRounds}}}};
}

mode_t permissions(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

class StateFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("state_files");
    state_ = dir_ + "/state";
    test_support::write_file(dir_ + "/run.json", run_config().dump(2));
  }

  std::unique_ptr<Process> start_coordinator(bool resume, const std::string& log_name) {
    std::vector<std::string> argv = {test_support::binary_path("fedtail-coordinator"),
                                     "--config",
                                     dir_ + "/run.json",
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--state-dir",
                                     state_,
                                     "--threads",
                                     "1"};
    if (resume) argv.push_back("--resume");
    return std::make_unique<Process>(argv, dir_ + "/" + log_name + ".log");
  }

  // Runs the federation to the end.
  void run_federation() {
    std::unique_ptr<Process> coordinator = start_coordinator(/*resume=*/false, "coordinator");
    const std::string port = test_support::wait_for_file(state_ + "/port", 120s);
    ASSERT_FALSE(port.empty()) << coordinator->log();
    Process clients({test_support::binary_path("fedtail-client"), "--coordinator",
                     "127.0.0.1:" + port, "--clients", "0-2", "--state-dir", dir_ + "/client-state",
                     "--device", "cpu", "--threads", "1", "--retry-timeout", "60"},
                    dir_ + "/clients.log");
    ASSERT_EQ(coordinator->wait(300s), 0) << coordinator->log() << "\n--- clients:\n"
                                          << clients.log();
    EXPECT_EQ(clients.wait(60s), 0) << clients.log();
  }

  // Starts `--resume` on the state directory and returns its exit code; *log gets its log.
  int resume(const std::string& log_name, std::string* log) {
    std::unique_ptr<Process> coordinator = start_coordinator(/*resume=*/true, log_name);
    const int code = coordinator->wait(120s);
    *log = coordinator->log();
    return code;
  }

  std::string dir_;
  std::string state_;
};

TEST_F(StateFiles, PrivateStateDirAndTamperedCheckpointRefusedOnResume) {
  ASSERT_NO_FATAL_FAILURE(run_federation());
  const std::string checkpoint = state_ + "/" + coordinator::kCheckpointFile;
  const std::string key = state_ + "/" + coordinator::kCheckpointKeyFile;

  // Modes: the directory is its owner's alone; so are the key and the checkpoint.
  EXPECT_EQ(permissions(state_), 0700u);
  EXPECT_EQ(permissions(key), 0600u);
  EXPECT_EQ(fs::file_size(key), coordinator::kCheckpointKeyBytes);
  EXPECT_EQ(permissions(checkpoint), 0600u);
  // Every temporary file was renamed into place.
  for (const auto& entry : fs::directory_iterator(state_)) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  }
  Result<coordinator::Checkpoint> intact = coordinator::read_checkpoint(checkpoint);
  ASSERT_TRUE(intact.ok()) << intact.status().to_string();
  EXPECT_EQ(intact->info.round, kRounds);
  const std::string original = test_support::read_file(checkpoint);

  // Tampered with, consistently: one tensor byte flipped and the file re-encoded, so that its
  // XXH3 digests match. Only the MAC can tell.
  {
    Result<TensorBundle> bundle = read_bundle_file(checkpoint);
    ASSERT_TRUE(bundle.ok()) << bundle.status().to_string();
    ASSERT_GT(bundle->size(), 0u);
    NamedTensor& tensor = bundle->at(0);
    ASSERT_GT(tensor.nbytes(), 0u);
    tensor.mutable_bytes()[0] ^= 0x01;
    ASSERT_TRUE(write_bundle_file(checkpoint, *bundle).ok());
  }
  std::string log;
  EXPECT_NE(resume("resume-tampered", &log), 0) << log;
  EXPECT_NE(log.find(checkpoint + ": MAC mismatch: the file was modified or written with another "
                                  "key"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("resuming run"), std::string::npos) << log;

  // One raw byte flipped in the middle of the file: refused too, naming the file.
  std::string flipped = original;
  flipped[flipped.size() / 2] ^= 0x01;
  test_support::write_file(checkpoint, flipped);
  EXPECT_NE(resume("resume-flipped", &log), 0) << log;
  EXPECT_NE(log.find(checkpoint), std::string::npos) << log;
  EXPECT_EQ(log.find("resuming run"), std::string::npos) << log;
}

}  // namespace
}  // namespace fedtail

// Test support: the fedtail-coordinator and fedtail-client processes of a loopback federation, as
// the integration tests start them (one thread each, logs beside the run's files). Header-only.
#ifndef FEDTAIL_TESTS_SUPPORT_FEDERATION_PROCESSES_H_
#define FEDTAIL_TESTS_SUPPORT_FEDERATION_PROCESSES_H_

#include <memory>
#include <string>
#include <vector>

#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail::test_support {

// fedtail-coordinator --config <dir>/run.json on 127.0.0.1:0 (the port goes to
// <state_dir>/port) with one LibTorch thread, plus `extra` flags; log <dir>/coordinator.log.
inline std::unique_ptr<Process> start_loopback_coordinator(const std::string& dir,
                                                           const std::string& state_dir,
                                                           const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {binary_path("fedtail-coordinator"),
                                   "--config",
                                   dir + "/run.json",
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--state-dir",
                                   state_dir,
                                   "--threads",
                                   "1"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return std::make_unique<Process>(argv, dir + "/coordinator.log");
}

// fedtail-client hosting virtual client `k` (--clients k-k) of the coordinator on 127.0.0.1:port,
// on the CPU with one thread, state in <dir>/client-state; log <dir>/client-<k>.log.
inline std::unique_ptr<Process> start_loopback_client(const std::string& dir, int k,
                                                      const std::string& port) {
  const std::string range = std::to_string(k) + "-" + std::to_string(k);
  return std::make_unique<Process>(
      std::vector<std::string>{binary_path("fedtail-client"), "--coordinator", "127.0.0.1:" + port,
                               "--clients", range, "--state-dir", dir + "/client-state", "--device",
                               "cpu", "--threads", "1"},
      dir + "/client-" + std::to_string(k) + ".log");
}

}  // namespace fedtail::test_support

#endif  // FEDTAIL_TESTS_SUPPORT_FEDERATION_PROCESSES_H_

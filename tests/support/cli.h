// Test support: runs a fedtail binary as a real process and captures its exit code, stdout and
// stderr. Header-only; used by the integration tests.
#ifndef FEDTAIL_TESTS_SUPPORT_CLI_H_
#define FEDTAIL_TESTS_SUPPORT_CLI_H_

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fedtail::test_support {

struct CliRun {
  int exit_code = -1;  // -1 when the process did not exit normally
  std::string out;     // stdout
  std::string err;     // stderr
};

// The path of binary `name` (e.g. "fedtail-data") in the build tree.
inline std::string binary_path(const std::string& name) {
  return std::string(FEDTAIL_BIN_DIR) + "/" + name;
}

// A fresh scratch directory under the test tmp dir, unique per process and call.
inline std::string scratch_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  std::string dir = std::string(FEDTAIL_TEST_TMP) + "/" + tag + "." + std::to_string(::getpid()) +
                    "." + std::to_string(counter++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Why a federation test cannot run here ("" when it can): fedtail-coordinator or fedtail-client
// not built, or Debian's Fashion-MNIST (dataset-fashion-mnist) not installed. For GTEST_SKIP.
inline std::string missing_federation_prerequisite() {
  for (const char* name : {"fedtail-coordinator", "fedtail-client"}) {
    if (!std::filesystem::exists(binary_path(name))) return binary_path(name) + " is not built";
  }
  if (!std::filesystem::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
    return "dataset-fashion-mnist is not installed";
  }
  return "";
}

// Runs `binary args` through the shell (args are shell words) and waits for it.
inline CliRun run_cli(const std::string& binary, const std::string& args) {
  const std::string dir = scratch_dir("cli");
  const std::string err_path = dir + "/stderr";
  CliRun r;
  std::FILE* p = ::popen((binary + " " + args + " 2>" + err_path).c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err_path);
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  std::filesystem::remove_all(dir);
  return r;
}

// Writes `text` to `path`.
inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

}  // namespace fedtail::test_support

#endif  // FEDTAIL_TESTS_SUPPORT_CLI_H_

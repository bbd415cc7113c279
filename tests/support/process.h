// Test support: a real child process (a fedtail binary) whose stdout and stderr go to a log file,
// over common/base/subprocess.h's Subprocess, with the waits integration tests need: for the
// process to end, for a file to appear (the coordinator's port file), for a line in the log.
// Header-only; used by the integration tests.
//
// A Process still running when destroyed is killed (SIGKILL) and reaped. Thread-compatible: one
// thread drives a Process at a time.
#ifndef FEDTAIL_TESTS_SUPPORT_PROCESS_H_
#define FEDTAIL_TESTS_SUPPORT_PROCESS_H_

#include <dirent.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/base/subprocess.h"

namespace fedtail::test_support {

// The whole content of `path`; "" when it cannot be read.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The JSON objects of a .jsonl file (metrics.jsonl), one per non-empty line; empty when absent.
inline std::vector<nlohmann::json> metrics_lines(const std::string& path) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  }
  return lines;
}

// Waits until `path` holds a complete first line (ending in '\n'; files written atomically, such
// as the coordinator's port file, always do) and returns that line without its '\n'; "" after
// `timeout`. Polls every 50 ms.
inline std::string wait_for_file(const std::string& path, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::string text = read_file(path);
    const size_t newline = text.find('\n');
    if (newline != std::string::npos && newline > 0) return text.substr(0, newline);
    if (std::chrono::steady_clock::now() >= until) return "";
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Waits until the file at `path` contains `text`; false after `timeout`. Polls every 50 ms.
inline bool wait_for_text(const std::string& path, const std::string& text,
                          std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (read_file(path).find(text) != std::string::npos) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Waits until the file at `path` has at least `lines` lines ('\n'-terminated); false after
// `timeout`. Polls every 50 ms.
inline bool wait_for_lines(const std::string& path, int lines, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::string text = read_file(path);
    int count = 0;
    for (char c : text) count += c == '\n';
    if (count >= lines) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

class Process {
 public:
  // Exit-code values of wait() that are not exit codes.
  static constexpr int kTimedOut = -1;    // still running at the deadline (then killed)
  static constexpr int kSignalled = -2;   // ended by a signal
  static constexpr int kNotStarted = -3;  // spawn failed (see start_error())

  // Starts `argv` (argv[0] a path) with stdout and stderr to `log_path` (truncated), and `env`
  // ("NAME=value") added to the environment. Never fails: check started() / start_error().
  Process(std::vector<std::string> argv, std::string log_path, std::vector<std::string> env = {})
      : log_path_(std::move(log_path)) {
    SubprocessOptions options;
    options.argv = std::move(argv);
    options.log_path = log_path_;
    options.env = std::move(env);
    Result<std::unique_ptr<Subprocess>> spawned = Subprocess::spawn(options);
    if (spawned.ok()) {
      child_ = std::move(spawned).value();
    } else {
      start_error_ = spawned.status().to_string();
    }
  }
  ~Process() = default;  // Subprocess kills and reaps a running child
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  bool started() const { return child_ != nullptr; }
  const std::string& start_error() const { return start_error_; }
  // The child's pid; -1 when it did not start.
  pid_t pid() const { return child_ ? child_->pid() : -1; }

  // Waits up to `timeout` for the child to end. Returns its exit code; kSignalled when a signal
  // ended it; kTimedOut when it was still running (it is then killed); kNotStarted.
  int wait(std::chrono::milliseconds timeout) {
    if (!child_) return kNotStarted;
    if (!child_->wait_for(timeout)) {
      child_->kill();
      timed_out_ = true;
    }
    return code();
  }
  // SIGTERM, then wait(timeout).
  int stop(std::chrono::milliseconds timeout) {
    signal(SIGTERM);
    return wait(timeout);
  }
  // True while the child runs (reaps it, without blocking, once it has ended).
  bool running() { return child_ && !child_->poll(); }
  // Sends `sig` (no effect once the child ended).
  void signal(int sig) {
    if (child_) child_->signal(sig);
  }
  // SIGKILL, then reap.
  void kill() {
    if (child_) child_->kill();
  }
  // "exit code 0", "killed by signal 9 (Killed)", "running", "not started: ...".
  std::string describe_exit() const {
    return child_ ? child_->describe_exit() : "not started: " + start_error_;
  }

  const std::string& log_path() const { return log_path_; }
  // The log so far.
  std::string log() const { return read_file(log_path_); }
  // Waits until the log contains `text`; false after `timeout`, or at once when the child has
  // ended without writing it.
  bool wait_for_log_line(const std::string& text, std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const bool ended = !running();
      if (log().find(text) != std::string::npos) return true;
      if (ended || std::chrono::steady_clock::now() >= until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

 private:
  int code() const {
    if (timed_out_) return kTimedOut;
    if (child_->term_signal() != 0) return kSignalled;
    return child_->exit_code();
  }

  const std::string log_path_;
  std::unique_ptr<Subprocess> child_;
  std::string start_error_;
  bool timed_out_ = false;
};

// Pids of the processes whose parent is `parent`.
inline std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> pids;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return pids;
  while (dirent* entry = ::readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(entry->d_name));
    if (pid <= 0) continue;
    std::string stat = read_file("/proc/" + std::string(entry->d_name) + "/stat");
    // "pid (comm) state ppid ...": comm may hold spaces, so parse after the last ')'.
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) pids.push_back(pid);
  }
  ::closedir(proc);
  return pids;
}

}  // namespace fedtail::test_support

#endif  // FEDTAIL_TESTS_SUPPORT_PROCESS_H_

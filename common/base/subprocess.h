// Subprocess: a child process started with posix_spawn, its output sent to a log file, and reaped
// exactly once. Used by fedtail-sim (its workers) and by the integration tests (real processes).
//
// The destructor kills (SIGKILL) and reaps a child still running, so no zombie or orphan outlives
// the object. Thread-compatible: one thread drives an object at a time.
#ifndef FEDTAIL_COMMON_BASE_SUBPROCESS_H_
#define FEDTAIL_COMMON_BASE_SUBPROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail {

struct SubprocessOptions {
  // The program (argv[0], a path: no PATH search) and its arguments. Required.
  std::vector<std::string> argv;
  // Where stdout and stderr go (created, or appended to with `append_log`); "" = inherit ours.
  std::string log_path;
  bool append_log = false;
  // Extra environment entries "NAME=value", added to (and overriding) ours.
  std::vector<std::string> env;
};

class Subprocess {
 public:
  // Starts the child. kInvalidArgument for an empty argv; kIOError naming the program when it
  // cannot be started (missing, not executable) or the log cannot be opened.
  static Result<std::unique_ptr<Subprocess>> spawn(const SubprocessOptions& options);

  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& program() const { return program_; }

  // True once the child has ended (reaps it without blocking).
  bool poll();
  // Waits up to `timeout` for the child to end; true when it has.
  bool wait_for(std::chrono::milliseconds timeout);
  // Waits for the child to end; returns exit_code().
  int wait();

  // After the child ended: its exit code, or -1 when a signal ended it.
  int exit_code() const { return exit_code_; }
  // After the child ended: the signal that ended it, or 0.
  int term_signal() const { return term_signal_; }
  bool exited() const { return reaped_; }
  // "exit code 0", "exit code 3", "killed by signal 9 (Killed)", or "running".
  std::string describe_exit() const;

  // Sends `sig` to a running child (no effect after it ended).
  void signal(int sig);
  // SIGKILL, then reaps.
  void kill();

 private:
  Subprocess(pid_t pid, std::string program) : pid_(pid), program_(std::move(program)) {}
  void record(int wait_status);

  const pid_t pid_;
  const std::string program_;
  bool reaped_ = false;
  int exit_code_ = -1;
  int term_signal_ = 0;
};

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_SUBPROCESS_H_

#include "common/base/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <thread>

extern char** environ;

namespace fedtail {
namespace {

// Our environment with `extra` ("NAME=value") added or overriding.
std::vector<std::string> merged_environment(const std::vector<std::string>& extra) {
  std::map<std::string, std::string> entries;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    entries[entry.substr(0, entry.find('='))] = entry;
  }
  for (const std::string& entry : extra) entries[entry.substr(0, entry.find('='))] = entry;
  std::vector<std::string> out;
  out.reserve(entries.size());
  for (auto& [name, entry] : entries) out.push_back(std::move(entry));
  return out;
}

}  // namespace

Result<std::unique_ptr<Subprocess>> Subprocess::spawn(const SubprocessOptions& options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return Status::InvalidArgument("subprocess: no program given");
  }
  const std::string& program = options.argv[0];
  if (::access(program.c_str(), X_OK) != 0) {
    return Status::IOError(program + ": cannot execute: " + std::strerror(errno));
  }
  std::vector<std::string> args = options.argv;
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env = merged_environment(options.env);
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  // The child starts with no blocked signals and default handlers for the ones we may catch or
  // block (a parent that sigwaits for SIGTERM must not hand that mask down to its children).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  struct AttrGuard {
    posix_spawnattr_t* attr;
    ~AttrGuard() { posix_spawnattr_destroy(attr); }
  } attr_guard{&attr};

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!options.log_path.empty()) {
    const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (options.append_log ? O_APPEND : O_TRUNC);
    // Open here (not in the child) so a bad log path is reported as such.
    const int fd = ::open(options.log_path.c_str(), flags, 0644);
    if (fd < 0) {
      posix_spawn_file_actions_destroy(&actions);
      return Status::IOError(options.log_path + ": cannot open the log: " + std::strerror(errno));
    }
    posix_spawn_file_actions_adddup2(&actions, fd, 1);
    posix_spawn_file_actions_adddup2(&actions, fd, 2);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, program.c_str(), &actions, &attr, argv.data(), envp.data());
    ::close(fd);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) return Status::IOError(program + ": cannot start: " + std::strerror(rc));
    return std::unique_ptr<Subprocess>(new Subprocess(pid, program));
  }
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, program.c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return Status::IOError(program + ": cannot start: " + std::strerror(rc));
  return std::unique_ptr<Subprocess>(new Subprocess(pid, program));
}

Subprocess::~Subprocess() {
  if (!reaped_) kill();
}

void Subprocess::record(int wait_status) {
  reaped_ = true;
  if (WIFEXITED(wait_status)) {
    exit_code_ = WEXITSTATUS(wait_status);
  } else if (WIFSIGNALED(wait_status)) {
    term_signal_ = WTERMSIG(wait_status);
  }
}

bool Subprocess::poll() {
  if (reaped_) return true;
  int wait_status = 0;
  pid_t rc = ::waitpid(pid_, &wait_status, WNOHANG);
  if (rc == pid_) {
    record(wait_status);
  } else if (rc < 0 && errno == ECHILD) {
    reaped_ = true;  // reaped elsewhere: nothing more to learn
  }
  return reaped_;
}

bool Subprocess::wait_for(std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::milliseconds(1);
  while (!poll()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= until) return false;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(pause, until - now));
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
  return true;
}

int Subprocess::wait() {
  while (!reaped_) {
    int wait_status = 0;
    pid_t rc = ::waitpid(pid_, &wait_status, 0);
    if (rc == pid_) {
      record(wait_status);
    } else if (rc < 0 && errno != EINTR) {
      reaped_ = true;
    }
  }
  return exit_code_;
}

std::string Subprocess::describe_exit() const {
  if (!reaped_) return "running";
  if (term_signal_ != 0) {
    return "killed by signal " + std::to_string(term_signal_) + " (" + strsignal(term_signal_) +
           ")";
  }
  return "exit code " + std::to_string(exit_code_);
}

void Subprocess::signal(int sig) {
  if (!reaped_ && !poll()) ::kill(pid_, sig);
}

void Subprocess::kill() {
  signal(SIGKILL);
  wait();
}

}  // namespace fedtail

#include "common/base/signal_watcher.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>

namespace fedtail {

std::atomic<int> SignalWatcher::write_end_{-1};

SignalWatcher::SignalWatcher(std::function<void()> on_stop) : on_stop_(std::move(on_stop)) {
  if (::pipe2(pipe_, O_CLOEXEC) != 0) {
    pipe_[0] = pipe_[1] = -1;
    spdlog::warn("cannot create the signal pipe: SIGINT/SIGTERM will kill the process");
    return;
  }
  write_end_.store(pipe_[1]);
  struct sigaction action {};
  action.sa_handler = &SignalWatcher::on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  // Installed even where the shell set SIG_IGN (background jobs ignore SIGINT): stopping cleanly
  // is always what the user wants.
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  thread_ = std::thread([this] { run(); });
}

SignalWatcher::~SignalWatcher() {
  if (!thread_.joinable()) return;
  const char quit = 0;
  (void)!::write(pipe_[1], &quit, 1);
  thread_.join();
  // From now on a signal has its default effect.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  write_end_.store(-1);
  ::close(pipe_[0]);
  ::close(pipe_[1]);
}

void SignalWatcher::on_signal(int sig) {
  const char c = static_cast<char>(sig);
  const int fd = write_end_.load();
  if (fd >= 0) (void)!::write(fd, &c, 1);
}

void SignalWatcher::run() {
  for (;;) {
    char c = 0;
    const ssize_t n = ::read(pipe_[0], &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == 0) return;
    const int received = c;
    if (signal_.exchange(received) != 0) {
      spdlog::warn("second signal: exiting now");
      std::_Exit(128 + received);
    }
    spdlog::info("{}: stopping (again to exit at once)", received == SIGINT ? "SIGINT" : "SIGTERM");
    on_stop_();
  }
}

}  // namespace fedtail

// SignalWatcher: turns SIGINT/SIGTERM into a call of `on_stop` on a thread of its own, so that a
// binary can stop cleanly (checkpoints stay valid). The handler only writes the signal number to a
// pipe (async-signal-safe), whichever thread it interrupts (libraries such as OpenBLAS start
// threads before main, so blocking signals cannot confine them to one thread). A second signal
// exits the process at once with 128 + signal.
//
// One watcher at a time per process. Construct it after logging is set up; destroying it restores
// the default handlers.
#ifndef FEDTAIL_COMMON_BASE_SIGNAL_WATCHER_H_
#define FEDTAIL_COMMON_BASE_SIGNAL_WATCHER_H_

#include <atomic>
#include <functional>
#include <thread>

namespace fedtail {

class SignalWatcher {
 public:
  // `on_stop` runs on the watcher's thread at the first signal; it must be thread-safe.
  explicit SignalWatcher(std::function<void()> on_stop);
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  // The first signal received, or 0.
  int signal() const { return signal_.load(); }

 private:
  static void on_signal(int sig);
  void run();

  static std::atomic<int> write_end_;
  std::function<void()> on_stop_;
  int pipe_[2] = {-1, -1};
  std::atomic<int> signal_{0};
  std::thread thread_;
};

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_SIGNAL_WATCHER_H_

// UploadWatch: ends result uploads that would hold the coordinator up. A client that sends a valid
// ResultHeader and then nothing (or a byte every few seconds) would otherwise keep its upload slot
// until its session expired, and a few such streams would queue every honest upload behind them.
//
// Each PushResult stream registers once its header is accepted and reports the bytes it reads. A
// timer thread sweeps every `period` and asks each stream to stop (its `stop` callback, with the
// reason) when
//   - its task no longer takes results (`closed(task_id)` is true: the phase closed, the task was
//     answered or failed) — whether it reads or waits for a slot;
//   - it reads (holds a slot) and has received nothing for `idle`;
//   - it has read for at least `idle` and its mean rate is below `min_bytes_per_s`.
// A stream's `stop` is called at most once, on the timer thread, with no UploadWatch lock held,
// and never after remove() has returned: remove() waits for a call in progress on another thread
// (a call may end the stream inline, and so run remove() on the timer thread itself: it then does
// not wait, and `stop` must touch nothing of the stream after ending the call). Thread-safe.
#ifndef FEDTAIL_COORDINATOR_UPLOAD_WATCH_H_
#define FEDTAIL_COORDINATOR_UPLOAD_WATCH_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace fedtail::coordinator {

class UploadWatch {
 public:
  using Clock = std::chrono::steady_clock;

  // Why a stream is asked to stop.
  enum class Reason { kPhaseClosed, kIdle, kTooSlow };

  struct Limits {
    std::chrono::milliseconds idle{30000};
    double min_bytes_per_s = 16384;  // 0 = no rate floor
    std::chrono::milliseconds period{250};
  };

  // One watched stream; the stream keeps it and reports through it.
  class Entry {
   public:
    // The stream holds a slot and reads from now on: the idle and rate clocks start.
    void reading();
    // `bytes` more were read.
    void progress(uint64_t bytes);

   private:
    friend class UploadWatch;
    Entry(std::string task_id, std::function<void(Reason, const std::string&)> stop,
          Clock::time_point now);

    const std::string task_id_;
    // `stop_` runs without stop_mu_ held (it may end the call, and so the stream, inline on the
    // same thread); remove() waits for a call in progress on another thread.
    std::mutex stop_mu_;
    std::condition_variable stop_done_;
    bool removed_ = false;                                  // guarded by stop_mu_
    bool stopped_ = false;                                  // guarded by stop_mu_
    bool calling_ = false;                                  // guarded by stop_mu_: `stop_` runs now
    std::thread::id caller_;                                // guarded by stop_mu_: on this thread
    std::function<void(Reason, const std::string&)> stop_;  // guarded by stop_mu_
    std::atomic<bool> reading_{false};
    std::atomic<int64_t> started_ns_;        // when reading began
    std::atomic<int64_t> last_progress_ns_;  // the last read, or when reading began
    std::atomic<uint64_t> bytes_{0};
  };

  // `closed(task_id)`: whether the task no longer takes results (called on the timer thread,
  // without UploadWatch locks). Starts the timer thread.
  UploadWatch(Limits limits, std::function<bool(const std::string&)> closed);
  ~UploadWatch();

  UploadWatch(const UploadWatch&) = delete;
  UploadWatch& operator=(const UploadWatch&) = delete;

  // Watches a stream uploading the result of `task_id`. `stop(reason, message)` should cancel the
  // call; the stream must call remove() before it is destroyed.
  std::shared_ptr<Entry> add(std::string task_id,
                             std::function<void(Reason, const std::string&)> stop);
  // Stops watching; waits for a `stop` call in progress. No effect for null.
  void remove(const std::shared_ptr<Entry>& entry);

  // One sweep at `now` (the timer thread's work; public for tests). Returns how many streams were
  // asked to stop.
  int sweep(Clock::time_point now);

  // Streams watched now.
  size_t size() const;

 private:
  void timer_loop();

  const Limits limits_;
  const std::function<bool(const std::string&)> closed_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::map<Entry*, std::shared_ptr<Entry>> entries_;  // guarded by mu_
  bool stop_ = false;                                 // guarded by mu_
  std::thread timer_;                                 // started last
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_UPLOAD_WATCH_H_

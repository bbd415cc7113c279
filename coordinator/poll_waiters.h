// PollWaiters: the parked long-polls. A PullTask that finds no task for its session parks here with
// a deadline and a callback; it is completed exactly once: with a task (take_for_client), with WAIT
// by the timer thread when its deadline passes, or with SHUTDOWN (take_all / destruction). A parked
// poll holds no thread: one timer thread sleeps on a condition variable until the earliest
// deadline.
//
// One session may park at most `max_per_session` polls at once (an honest client parks one): more
// are refused, so no client can flood the table. Parking, taking and expiring are O(log n).
//
// Callbacks run on the thread that completes the waiter (the timer thread, or the caller of
// take_*()/the destructor, after the caller invokes what take_* returned), never under the internal
// lock. Thread-safe.
#ifndef FEDTAIL_COORDINATOR_POLL_WAITERS_H_
#define FEDTAIL_COORDINATOR_POLL_WAITERS_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "coordinator/task.h"

namespace fedtail::coordinator {

class PollWaiters {
 public:
  using Callback = std::function<void(PollAnswer)>;

  // A parked poll taken out of the table; the taker must call `done` exactly once.
  struct Waiter {
    uint64_t id = 0;
    std::string session_token;
    std::vector<std::string> client_ids;  // sorted
    Callback done;
  };

  // The most polls one session may park at once by default.
  static constexpr size_t kDefaultMaxPerSession = 4;

  // Starts the timer thread.
  explicit PollWaiters(size_t max_per_session = kDefaultMaxPerSession);
  // Stops the timer thread and completes every parked poll with SHUTDOWN.
  ~PollWaiters();

  PollWaiters(const PollWaiters&) = delete;
  PollWaiters& operator=(const PollWaiters&) = delete;

  // Parks a poll of session `session_token` serving `client_ids` (sorted) until `deadline`.
  // Returns its id (for cancel()), or 0 — `done` dropped, never called — when the session already
  // has max_per_session polls parked.
  uint64_t park(std::string session_token, std::vector<std::string> client_ids,
                std::chrono::steady_clock::time_point deadline, Callback done);

  // Removes a parked poll without calling it (its RPC was cancelled). False when it was already
  // completed or taken (its callback has been or is being called).
  bool cancel(uint64_t id);

  // Removes and returns the earliest-parked poll of session `session_token`, if any.
  std::optional<Waiter> take_for_session(const std::string& session_token);

  // Removes and returns every parked poll (e.g. to answer SHUTDOWN).
  std::vector<Waiter> take_all();

  // Parked polls now.
  size_t size() const;

 private:
  struct Entry {
    Waiter waiter;
    std::chrono::steady_clock::time_point deadline;
  };

  void timer_loop();
  // Removes `it` from every index; returns its waiter.
  Waiter erase_locked(std::map<uint64_t, Entry>::iterator it);

  const size_t max_per_session_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::map<uint64_t, Entry> waiters_;  // by id (= parking order); guarded by mu_
  std::set<std::pair<std::chrono::steady_clock::time_point, uint64_t>>
      by_deadline_;                                       // guarded by mu_
  std::map<std::string, std::set<uint64_t>> by_session_;  // token -> ids; guarded by mu_
  uint64_t next_id_ = 1;                                  // guarded by mu_
  bool stop_ = false;                                     // guarded by mu_
  std::thread timer_;                                     // started last, joined by the destructor
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_POLL_WAITERS_H_

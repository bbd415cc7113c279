#include "coordinator/poll_waiters.h"

#include <algorithm>

namespace fedtail::coordinator {

PollWaiters::PollWaiters() : timer_([this] { timer_loop(); }) {}

PollWaiters::~PollWaiters() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  timer_.join();
  for (Waiter& waiter : take_all()) waiter.done(PollAnswer{PollAnswer::Kind::kShutdown, nullptr});
}

uint64_t PollWaiters::park(std::string session_token, std::vector<std::string> client_ids,
                           std::chrono::steady_clock::time_point deadline, Callback done) {
  uint64_t id;
  bool earliest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_id_++;
    earliest = std::all_of(waiters_.begin(), waiters_.end(),
                           [&](const auto& entry) { return deadline < entry.second.deadline; });
    Entry entry{Waiter{id, std::move(session_token), std::move(client_ids), std::move(done)},
                deadline};
    waiters_.emplace(id, std::move(entry));
  }
  // The timer sleeps until the earliest deadline: wake it only if that moved earlier.
  if (earliest) wake_.notify_all();
  return id;
}

bool PollWaiters::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  return waiters_.erase(id) > 0;
}

std::optional<PollWaiters::Waiter> PollWaiters::take_for_client(const std::string& client_id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    const std::vector<std::string>& ids = it->second.waiter.client_ids;
    if (std::binary_search(ids.begin(), ids.end(), client_id)) {
      Waiter waiter = std::move(it->second.waiter);
      waiters_.erase(it);
      return waiter;
    }
  }
  return std::nullopt;
}

std::vector<PollWaiters::Waiter> PollWaiters::take_all() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Waiter> all;
  for (auto& [id, entry] : waiters_) all.push_back(std::move(entry.waiter));
  waiters_.clear();
  return all;
}

size_t PollWaiters::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiters_.size();
}

void PollWaiters::timer_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (waiters_.empty()) {
      wake_.wait(lock);
      continue;
    }
    auto earliest = std::min_element(
        waiters_.begin(), waiters_.end(),
        [](const auto& a, const auto& b) { return a.second.deadline < b.second.deadline; });
    const auto deadline = earliest->second.deadline;
    if (std::chrono::steady_clock::now() < deadline) {
      wake_.wait_until(lock, deadline);
      continue;
    }
    std::vector<Waiter> expired;
    const auto now = std::chrono::steady_clock::now();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second.waiter));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
    lock.unlock();
    for (Waiter& waiter : expired) waiter.done(PollAnswer{PollAnswer::Kind::kWait, nullptr});
    lock.lock();
  }
}

}  // namespace fedtail::coordinator

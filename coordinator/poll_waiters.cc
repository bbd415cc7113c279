#include "coordinator/poll_waiters.h"

namespace fedtail::coordinator {

PollWaiters::PollWaiters(size_t max_per_session)
    : max_per_session_(max_per_session), timer_([this] { timer_loop(); }) {}

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
    std::set<uint64_t>& mine = by_session_[session_token];
    if (mine.size() >= max_per_session_) return 0;
    id = next_id_++;
    earliest = by_deadline_.empty() || deadline < by_deadline_.begin()->first;
    mine.insert(id);
    by_deadline_.emplace(deadline, id);
    Entry entry{Waiter{id, std::move(session_token), std::move(client_ids), std::move(done)},
                deadline};
    waiters_.emplace(id, std::move(entry));
  }
  // The timer sleeps until the earliest deadline: wake it only if that moved earlier.
  if (earliest) wake_.notify_all();
  return id;
}

PollWaiters::Waiter PollWaiters::erase_locked(std::map<uint64_t, Entry>::iterator it) {
  by_deadline_.erase({it->second.deadline, it->first});
  auto mine = by_session_.find(it->second.waiter.session_token);
  if (mine != by_session_.end()) {
    mine->second.erase(it->first);
    if (mine->second.empty()) by_session_.erase(mine);
  }
  Waiter waiter = std::move(it->second.waiter);
  waiters_.erase(it);
  return waiter;
}

bool PollWaiters::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return false;
  erase_locked(it);
  return true;
}

std::optional<PollWaiters::Waiter> PollWaiters::take_for_session(const std::string& session_token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto mine = by_session_.find(session_token);
  if (mine == by_session_.end() || mine->second.empty()) return std::nullopt;
  return erase_locked(waiters_.find(*mine->second.begin()));
}

std::vector<PollWaiters::Waiter> PollWaiters::take_all() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Waiter> all;
  for (auto& [id, entry] : waiters_) all.push_back(std::move(entry.waiter));
  waiters_.clear();
  by_deadline_.clear();
  by_session_.clear();
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
    const auto deadline = by_deadline_.begin()->first;
    if (std::chrono::steady_clock::now() < deadline) {
      wake_.wait_until(lock, deadline);
      continue;
    }
    std::vector<Waiter> expired;
    const auto now = std::chrono::steady_clock::now();
    while (!by_deadline_.empty() && by_deadline_.begin()->first <= now) {
      expired.push_back(erase_locked(waiters_.find(by_deadline_.begin()->second)));
    }
    lock.unlock();
    for (Waiter& waiter : expired) waiter.done(PollAnswer{PollAnswer::Kind::kWait, nullptr});
    lock.lock();
  }
}

}  // namespace fedtail::coordinator

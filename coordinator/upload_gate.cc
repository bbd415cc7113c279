#include "coordinator/upload_gate.h"

#include "common/base/status.h"

namespace fedtail::coordinator {

UploadGate::UploadGate(int slots) : slots_(slots) { FEDTAIL_CHECK(slots >= 1); }

bool UploadGate::acquire(std::function<void()> ready, uint64_t* ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  if (in_use_ < slots_ && waiting_.empty()) {
    ++in_use_;
    return true;
  }
  *ticket = next_ticket_++;
  waiting_.emplace_back(*ticket, std::move(ready));
  return false;
}

bool UploadGate::cancel(uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->first == ticket) {
      waiting_.erase(it);
      return true;
    }
  }
  return false;
}

void UploadGate::release() {
  std::function<void()> next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (waiting_.empty()) {
      FEDTAIL_CHECK(in_use_ > 0);
      --in_use_;
      return;
    }
    // The slot passes to the oldest waiter: in_use_ is unchanged.
    next = std::move(waiting_.front().second);
    waiting_.pop_front();
  }
  next();
}

int UploadGate::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

int UploadGate::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(waiting_.size());
}

}  // namespace fedtail::coordinator

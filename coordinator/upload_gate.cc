#include "coordinator/upload_gate.h"

#include "common/base/status.h"

namespace fedtail::coordinator {

UploadGate::UploadGate(int slots) : slots_(slots) { FEDTAIL_CHECK(slots >= 1); }

bool UploadGate::acquire(const std::string& owner, std::function<void()> ready, uint64_t* ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  // Every queued waiter is blocked by its owner's slot whenever a slot is free (release() hands
  // free slots to the runnable ones), so a free slot may go to `owner` without queue-jumping.
  if (in_use_ < slots_ && holders_.count(owner) == 0) {
    ++in_use_;
    holders_[owner] = 1;
    return true;
  }
  *ticket = next_ticket_++;
  waiting_.push_back({*ticket, owner, std::move(ready)});
  return false;
}

bool UploadGate::cancel(uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->ticket == ticket) {
      waiting_.erase(it);
      return true;
    }
  }
  return false;
}

void UploadGate::release(const std::string& owner) {
  std::function<void()> next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    FEDTAIL_CHECK(in_use_ > 0 && holders_.erase(owner) == 1);
    auto it = waiting_.begin();
    while (it != waiting_.end() && holders_.count(it->owner) != 0) ++it;
    if (it == waiting_.end()) {
      --in_use_;
      return;
    }
    // The slot passes to the oldest runnable waiter: in_use_ is unchanged.
    holders_[it->owner] = 1;
    next = std::move(it->ready);
    waiting_.erase(it);
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

// UploadGate: a counting semaphore with asynchronous waiters, bounding how many result uploads are
// decoded at once (and so the coordinator's memory: about one model per slot). An upload that
// finds no free slot is not read further until one frees, so gRPC flow control holds its bytes at
// the sender.
//
// Each slot is held on behalf of an owner (a client session): one owner holds at most one slot at a
// time, so a client that opens many uploads (or stalls one) takes no more than its share; its
// further uploads wait, FIFO among those that may run.
//
// Thread-safe. A waiter's `ready` callback runs on the thread that calls release(), outside the
// internal lock.
#ifndef FEDTAIL_COORDINATOR_UPLOAD_GATE_H_
#define FEDTAIL_COORDINATOR_UPLOAD_GATE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace fedtail::coordinator {

class UploadGate {
 public:
  // Precondition (FEDTAIL_CHECK): slots >= 1.
  explicit UploadGate(int slots);

  UploadGate(const UploadGate&) = delete;
  UploadGate& operator=(const UploadGate&) = delete;

  // Takes a slot for `owner` at once and returns true (`ready` is dropped) when one is free and
  // `owner` holds none; otherwise queues `ready`, to be called when a slot is handed over to it,
  // and returns false with its ticket in *ticket.
  bool acquire(const std::string& owner, std::function<void()> ready, uint64_t* ticket);

  // Removes a queued waiter. True when it was still queued (it holds no slot and will not be
  // called); false when its slot was already handed over (it must release() it).
  bool cancel(uint64_t ticket);

  // Frees `owner`'s slot, or hands it straight to the oldest queued waiter whose owner holds no
  // slot (calling its `ready`). Precondition (FEDTAIL_CHECK): `owner` holds a slot.
  void release(const std::string& owner);

  int in_use() const;
  int queued() const;
  int slots() const { return slots_; }

 private:
  const int slots_;

  struct Waiter {
    uint64_t ticket;
    std::string owner;
    std::function<void()> ready;
  };

  mutable std::mutex mu_;
  int in_use_ = 0;              // guarded by mu_
  uint64_t next_ticket_ = 1;    // guarded by mu_
  std::deque<Waiter> waiting_;  // guarded by mu_; invariant: none may run while a slot is free
  std::map<std::string, int> holders_;  // owners holding a slot (value 1); guarded by mu_
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_UPLOAD_GATE_H_

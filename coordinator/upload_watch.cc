#include "coordinator/upload_watch.h"

#include <cstdio>
#include <vector>

namespace fedtail::coordinator {
namespace {

int64_t ns_of(UploadWatch::Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

std::string seconds_text(double s) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", s);
  return text;
}

}  // namespace

UploadWatch::Entry::Entry(std::string task_id, std::function<void(Reason, const std::string&)> stop,
                          Clock::time_point now)
    : task_id_(std::move(task_id)),
      stop_(std::move(stop)),
      started_ns_(ns_of(now)),
      last_progress_ns_(ns_of(now)) {}

void UploadWatch::Entry::reading() {
  const int64_t now = ns_of(Clock::now());
  started_ns_.store(now);
  last_progress_ns_.store(now);
  bytes_.store(0);
  reading_.store(true);
}

void UploadWatch::Entry::progress(uint64_t bytes) {
  bytes_.fetch_add(bytes);
  last_progress_ns_.store(ns_of(Clock::now()));
}

UploadWatch::UploadWatch(Limits limits, std::function<bool(const std::string&)> closed)
    : limits_(limits), closed_(std::move(closed)), timer_([this] { timer_loop(); }) {}

UploadWatch::~UploadWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  timer_.join();
}

std::shared_ptr<UploadWatch::Entry> UploadWatch::add(
    std::string task_id, std::function<void(Reason, const std::string&)> stop) {
  std::shared_ptr<Entry> entry(new Entry(std::move(task_id), std::move(stop), Clock::now()));
  std::lock_guard<std::mutex> lock(mu_);
  entries_.emplace(entry.get(), entry);
  return entry;
}

void UploadWatch::remove(const std::shared_ptr<Entry>& entry) {
  if (!entry) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.erase(entry.get());
  }
  std::unique_lock<std::mutex> stop_lock(entry->stop_mu_);
  entry->removed_ = true;
  entry->stop_ = nullptr;
  if (entry->calling_ && entry->caller_ != std::this_thread::get_id()) {
    entry->stop_done_.wait(stop_lock, [&] { return !entry->calling_; });
  }
}

size_t UploadWatch::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

int UploadWatch::sweep(Clock::time_point now) {
  std::vector<std::shared_ptr<Entry>> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries.reserve(entries_.size());
    for (const auto& [key, entry] : entries_) entries.push_back(entry);
  }
  const int64_t now_ns = ns_of(now);
  const double idle_s = std::chrono::duration<double>(limits_.idle).count();
  int stopped = 0;
  for (const std::shared_ptr<Entry>& entry : entries) {
    Reason reason;
    std::string message;
    const bool reading = entry->reading_.load();
    const double silent_s = (now_ns - entry->last_progress_ns_.load()) * 1e-9;
    const double running_s = (now_ns - entry->started_ns_.load()) * 1e-9;
    const double rate = running_s > 0 ? entry->bytes_.load() / running_s : 0.0;
    if (closed_ && closed_(entry->task_id_)) {
      reason = Reason::kPhaseClosed;
      message = "the task no longer takes results (its phase closed or it was answered)";
    } else if (reading && silent_s > idle_s) {
      reason = Reason::kIdle;
      message = "upload stalled: nothing received for " + seconds_text(silent_s) +
                " s (federation.upload_idle_timeout_s " + seconds_text(idle_s) + ")";
    } else if (reading && limits_.min_bytes_per_s > 0 && running_s >= idle_s &&
               rate < limits_.min_bytes_per_s) {
      reason = Reason::kTooSlow;
      message = "upload too slow: " + seconds_text(rate) + " bytes/s over " +
                seconds_text(running_s) + " s (federation.upload_min_bytes_per_s " +
                seconds_text(limits_.min_bytes_per_s) + ")";
    } else {
      continue;
    }
    std::function<void(Reason, const std::string&)> stop;
    {
      std::lock_guard<std::mutex> stop_lock(entry->stop_mu_);
      if (entry->removed_ || entry->stopped_ || !entry->stop_) continue;
      entry->stopped_ = true;
      entry->calling_ = true;
      entry->caller_ = std::this_thread::get_id();
      stop = entry->stop_;
    }
    stop(reason, message);
    {
      std::lock_guard<std::mutex> stop_lock(entry->stop_mu_);
      entry->calling_ = false;
    }
    entry->stop_done_.notify_all();
    ++stopped;
  }
  return stopped;
}

void UploadWatch::timer_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    wake_.wait_for(lock, limits_.period);
    if (stop_) break;
    if (entries_.empty()) continue;
    lock.unlock();
    sweep(Clock::now());
    lock.lock();
  }
}

}  // namespace fedtail::coordinator

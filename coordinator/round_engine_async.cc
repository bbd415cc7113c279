// RoundEngine's asynchronous runs (strategies::AsyncStrategy, e.g. FedBuff): tasks handed out as
// slots free up, results processed one at a time in (simulated) arrival order, a server step per
// full buffer. See round_engine.h, "Asynchronous runs" and "Simulated time".
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>

#include "common/base/rng.h"
#include "coordinator/engine_time.h"
#include "coordinator/metrics_line.h"
#include "coordinator/round_engine.h"

namespace fedtail::coordinator {
namespace {

constexpr double kNever = std::numeric_limits<double>::infinity();

// Retired entries kept for duplicate detection: beyond this many (per slot), the oldest generation
// is dropped (a duplicate push of it is then answered as an unknown task).
constexpr size_t kRetiredPerSlot = 4;

// What one server step saw, for its metrics line.
struct StepTally {
  int processed = 0;      // results and failures taken off the queue
  int refused_stale = 0;  // updates staler than max_staleness
  std::vector<strategies::ClientFailure> failures;
  uint64_t bytes_down_at_start = 0;  // the phase's counters when the step began
  uint64_t bytes_up_at_start = 0;
  PhaseTiming timing_at_start;
  double aggregate_s = 0;  // buffer_update and apply_buffer
};

}  // namespace

Status RoundEngine::run_async(strategies::AsyncStrategy* async) {
  const CoordinatorOptions& options = config_.options;
  const strategies::AsyncOptions async_options = async->async_options();
  const size_t slots = static_cast<size_t>(std::max(1, async_options.max_concurrency));
  const uint64_t seed = config_.run_config->seed;
  const DeviceModel* devices = config_.devices.get();
  const double timeout_s = options.federation.round_timeout_s;
  const auto task_timeout =
      std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(timeout_s));
  const int64_t epochs = std::max(1, config_.run_config->local.epochs);
  if (config_.first_round > options.rounds) return Status::OK();
  spdlog::info(
      "asynchronous run: buffer {} update(s) per server step, {} task(s) in flight, "
      "staleness at most {}{}",
      async_options.buffer_size, slots, async_options.max_staleness,
      devices ? ", on the simulated clock" : "");
  if (!wait_for_clients(0, "")) return Status::OK();  // stopped

  int step = config_.first_round;
  {
    std::lock_guard<std::mutex> lock(mu_);
    round_ = step;
    auto phase = std::make_unique<Phase>();
    phase->round = step;
    phase->kind = TaskKind::kFit;
    phase->open = true;
    phase->hold = true;
    phase->deadline = SteadyClock::time_point::max();  // each task has its own (issued + timeout)
    phase_ = std::move(phase);
    phase_since_ = std::chrono::system_clock::now();
  }
  // Closes the long fit phase: tasks still out are no longer wanted (a later push is "late").
  auto close_phase = [this](const char* why) {
    std::lock_guard<std::mutex> fold_lock(fold_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    if (!phase_) return;
    phase_->open = false;
    for (auto& [id, entry] : phase_->tasks) {
      if (entry.state != TaskEntry::State::kDone) {
        entry.state = TaskEntry::State::kDone;
        entry.reason = why;
      }
      entry.held.reset();
      retired_[id] = std::move(entry);
    }
    phase_.reset();
    phase_since_ = std::chrono::system_clock::now();
  };
  // However the loop ends (done, stopped, an error), the phase is closed.
  struct Closer {
    std::function<void()> close;
    ~Closer() { close(); }
  } closer{[&close_phase] { close_phase("coordinator stopping"); }};

  std::map<const TensorBundle*, std::shared_ptr<const PayloadDigest>> digests;  // this version's
  std::set<std::string> busy;  // clients with a task out (not yet processed)
  StepTally tally;
  SteadyClock::time_point step_started = SteadyClock::now();
  const std::string total = std::to_string(options.rounds);

  while (step <= options.rounds && !stop_.load()) {
    // 1. Hand out tasks while slots are free: clients drawn from those connected, idle and (with
    //    devices) on at this simulated time.
    std::vector<Delivery> deliveries;
    if (busy.size() < slots) {
      std::vector<strategies::ClientInfo> candidates = clients_now();
      candidates.erase(std::remove_if(candidates.begin(), candidates.end(),
                                      [&busy](const strategies::ClientInfo& client) {
                                        return busy.count(client.id) > 0;
                                      }),
                       candidates.end());
      while (busy.size() < slots && !candidates.empty()) {
        Rng rng = Rng::derive(seed, "async", {async_tasks_});
        const size_t pick = static_cast<size_t>(rng.uniform_int(candidates.size()));
        const strategies::ClientInfo client = candidates[pick];
        candidates.erase(candidates.begin() + static_cast<std::ptrdiff_t>(pick));
        Result<strategies::TaskSpec> spec = async->configure_async_fit(client, rng);
        if (!spec.ok()) {
          return spec.status().with_context("strategy " + options.strategy_name +
                                            ": configure_async_fit");
        }
        const uint64_t seq = ++async_tasks_;
        std::shared_ptr<const Task> task = make_task(
            incarnation_ + "-a" + std::to_string(seq) + "-" + client.id, static_cast<int>(seq),
            TaskKind::kFit, *spec, unix_ms_after(timeout_s), &digests);
        std::lock_guard<std::mutex> lock(mu_);
        TaskEntry entry;
        entry.task = task;
        entry.version = async->version();
        entry.seq = seq;
        entry.issued = SteadyClock::now();
        entry.sim_start = sim_now_;
        entry.sim_lower = sim_now_ + (devices ? devices->task_seconds_lower_bound(
                                                    client.id, client.num_examples * epochs,
                                                    task->bundle->payload_bytes())
                                              : 0.0);
        auto [it, inserted] = phase_->tasks.emplace(task->id, std::move(entry));
        FEDTAIL_CHECK(inserted);
        ++phase_->selected;
        ++phase_->pending;
        busy.insert(client.id);
        requeue_locked(it->second, &deliveries);
      }
    }
    deliver(deliveries);

    // 2. The next result to process: the earliest arrival; on the simulated clock only once no
    //    task still running could arrive before it.
    std::unique_lock<std::mutex> lock(mu_);
    expire_sessions_locked();
    const auto now = SteadyClock::now();
    for (auto& [id, entry] : phase_->tasks) {
      if (entry.state == TaskEntry::State::kDone || now - entry.issued < task_timeout) continue;
      char text[96];
      std::snprintf(text, sizeof(text), "deadline exceeded (%g s): no result", timeout_s);
      fail_locked(entry, text);
    }
    TaskEntry* next = nullptr;
    double next_time = kNever;
    double running_bound = kNever;  // earliest possible arrival of a task still running
    for (auto& [id, entry] : phase_->tasks) {
      if (entry.state != TaskEntry::State::kDone) {
        running_bound = std::min(running_bound, entry.sim_lower);
        continue;
      }
      const double t = devices ? (entry.sim_end >= 0 ? entry.sim_end : sim_now_)
                               : static_cast<double>(entry.done_order);
      if (next == nullptr || t < next_time || (t == next_time && entry.seq < next->seq)) {
        next = &entry;
        next_time = t;
      }
    }
    if (devices) {
      if (busy.size() < slots) {
        // A client coming on before anything else happens takes a free slot then.
        const std::vector<std::string> off = clients_off_now(busy);
        std::optional<double> on = devices->next_online(off, sim_now_);
        if (on && *on < std::min(next_time, running_bound)) {
          sim_now_ = *on;
          continue;
        }
        if (!on && next == nullptr && busy.empty() && !off.empty()) {
          return Status::FailedPrecondition(
              "step " + std::to_string(step) + "/" + total + ": every connected client is off " +
              "at simulated time " + format_number(sim_now_, "%.1f") +
              " s and none comes on again (config.devices.availability)");
        }
      }
      if (next != nullptr && next_time > running_bound) next = nullptr;  // not safe yet
    }
    if (next == nullptr && busy.empty() && registry_->available_count() == 0) {
      // Nothing out and nobody connected: wait (and say so) for a client to come back.
      lock.unlock();
      if (!wait_for_clients(1, " (asynchronous run: no client connected)")) break;
      continue;
    }
    if (next == nullptr) {
      SteadyClock::time_point wake = now + std::chrono::seconds(1);
      if (auto expiry = registry_->next_expiry(); expiry && *expiry < wake) wake = *expiry;
      cv_.wait_until(lock, wake);
      wakeups_.fetch_add(1);
      continue;
    }

    // 3. Process it: a failure frees its slot; an update is refused when too stale, else buffered.
    if (devices) sim_now_ = std::max(sim_now_, next_time);
    const std::string client_id = next->task->client_id;
    const bool accepted = next->accepted;
    const std::string reason = next->reason;
    const int64_t version = next->version;
    std::shared_ptr<const Task> task = next->task;
    std::shared_ptr<strategies::ClientUpdate> update = std::move(next->held);
    // Keep only what duplicate detection needs of a processed task (not its model).
    {
      TaskEntry retired;
      auto stub = std::make_shared<Task>(*task);
      stub->bundle = empty_bundle_;
      stub->digest = empty_digest_;
      stub->expected_update = nullptr;
      retired.task = std::move(stub);
      retired.state = TaskEntry::State::kDone;
      retired.received = next->received;
      retired.accepted = accepted;
      retired.reason = reason;
      if (retired_.size() >= kRetiredPerSlot * slots + 64) retired_.clear();
      retired_[task->id] = std::move(retired);
      phase_->tasks.erase(task->id);
    }
    lock.unlock();
    busy.erase(client_id);
    ++tally.processed;
    if (!accepted) {
      tally.failures.push_back({client_id, reason});
    } else {
      FEDTAIL_CHECK(update != nullptr);
      const int staleness = static_cast<int>(async->version() - version);
      if (staleness > async_options.max_staleness) {
        ++tally.refused_stale;
        spdlog::debug("step {}/{}: update of {} refused: staleness {} > max_staleness {}", step,
                      total, client_id, staleness, async_options.max_staleness);
      } else {
        const SteadyClock::time_point fold_start = SteadyClock::now();
        Status added;
        try {
          added = async->buffer_update(std::move(*update), *task->bundle, staleness);
        } catch (const std::exception& e) {
          added = Status::Internal(std::string("buffer_update threw: ") + e.what());
        }
        tally.aggregate_s += seconds_since(fold_start);
        if (!added.ok()) {
          refusals_.add(Refusal::kIncompatibleUpdate);
          tally.failures.push_back({client_id, "update refused: " + added.message()});
        }
      }
    }
    update.reset();
    task.reset();
    if (async->buffered() < async_options.buffer_size) continue;

    // 4. A full buffer: one server step.
    const std::string where = "step " + std::to_string(step) + "/" + total;
    const SteadyClock::time_point apply_start = SteadyClock::now();
    Result<nlohmann::json> metrics = async->apply_buffer(step);
    if (!metrics.ok()) return metrics.status().with_context(where + ": apply_buffer");
    tally.aggregate_s += seconds_since(apply_start);
    digests.clear();  // the next tasks carry the new model
    nlohmann::json line = {{"round", step},
                           {"rounds", options.rounds},
                           {"step", step},
                           {"strategy", options.strategy_name},
                           {"run_id", config_.run_id},
                           {"version", async->version()},
                           {"tasks_issued", async_tasks_},
                           {"in_flight", busy.size()}};
    nlohmann::json timing = nlohmann::json::object();
    uint64_t bytes_down = 0;
    uint64_t bytes_up = 0;
    {
      std::lock_guard<std::mutex> phase_lock(mu_);
      bytes_down = phase_->bytes_down - tally.bytes_down_at_start;
      bytes_up = phase_->bytes_up - tally.bytes_up_at_start;
      timing["fit_s"] = seconds_since(step_started);
      timing["fit_compute_s"] = phase_->timing.compute_s - tally.timing_at_start.compute_s;
      timing["fit_upload_s"] = phase_->timing.upload_s - tally.timing_at_start.upload_s;
      timing["aggregate_s"] = tally.aggregate_s;
      tally.bytes_down_at_start = phase_->bytes_down;
      tally.bytes_up_at_start = phase_->bytes_up;
      tally.timing_at_start = phase_->timing;
      phase_->failures.clear();  // the dashboard shows the step's
    }
    std::sort(tally.failures.begin(), tally.failures.end(),
              [](const auto& a, const auto& b) { return a.client_id < b.client_id; });
    line["fit"] = {{"selected", tally.processed},
                   {"updates", metrics->value("updates", 0)},
                   {"failures", failures_json(tally.failures)},
                   {"refused_stale", tally.refused_stale},
                   {"bytes_down", bytes_down},
                   {"bytes_up", bytes_up},
                   {"metrics", *metrics}};
    const bool last = step == options.rounds;
    if (last) close_phase("run complete");
    if (last || step % config_.run_config->eval.every == 0) {
      FEDTAIL_RETURN_IF_ERROR(
          evaluate_round(step, /*federated=*/last, &line, &timing, &bytes_down, &bytes_up));
    }
    if (stop_.load()) break;
    FEDTAIL_RETURN_IF_ERROR(finish_line(step, where, step_started, std::move(line),
                                        std::move(timing), bytes_down, bytes_up));
    StepTally next_tally;
    next_tally.bytes_down_at_start = tally.bytes_down_at_start;
    next_tally.bytes_up_at_start = tally.bytes_up_at_start;
    next_tally.timing_at_start = tally.timing_at_start;
    tally = std::move(next_tally);
    step_started = SteadyClock::now();
    ++step;
    std::lock_guard<std::mutex> round_lock(mu_);
    if (step <= options.rounds) round_ = step;
  }
  return Status::OK();
}

}  // namespace fedtail::coordinator

// RoundEngine's service-facing half: handing out tasks (pull), taking in results (push, and the
// PendingUpload a result's bundle is read into), heartbeats, and the effect of clients joining,
// leaving and going silent. See round_engine.h for the contract.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>

#include "common/base/json_reader.h"
#include "common/base/peer_text.h"
#include "common/wire/bundle_checks.h"
#include "coordinator/round_engine.h"

namespace fedtail::coordinator {
namespace {

// A result's metrics_json: a few numbers per client (loss, accuracy, compute_s, ...); anything far
// larger or deeper is refused before it is parsed or stored.
constexpr size_t kMaxMetricsJsonBytes = 1 << 20;
constexpr int64_t kMaxMetricsJsonDepth = 32;

v1::PushResultResponse make_response(bool accepted, bool duplicate, const std::string& reason) {
  v1::PushResultResponse response;
  response.set_accepted(accepted);
  response.set_duplicate(duplicate);
  response.set_reason(reason);
  return response;
}

}  // namespace

// ---- PendingUpload ----

PendingUpload::PendingUpload(std::shared_ptr<const Task> task, std::string session_token,
                             int64_t num_examples, nlohmann::json metrics,
                             const DecodeLimits& limits)
    : task_(std::move(task)),
      session_token_(std::move(session_token)),
      num_examples_(num_examples),
      metrics_(std::move(metrics)),
      decoder_(limits) {}

Status PendingUpload::add(const v1::BundleChunk& chunk) {
  ++chunks_;
  return decoder_.add(chunk);
}

// ---- Helpers, with mu_ held ----

RoundEngine::TaskEntry* RoundEngine::find_current_locked(const std::string& task_id) {
  if (!phase_) return nullptr;
  auto it = phase_->tasks.find(task_id);
  return it == phase_->tasks.end() ? nullptr : &it->second;
}

void RoundEngine::mark_done_locked(TaskEntry& entry) {
  entry.state = TaskEntry::State::kDone;
  entry.done_order = ++phase_->done_count;
  --phase_->pending;
}

std::optional<std::string> RoundEngine::settle_simulated_locked(TaskEntry& entry,
                                                                const nlohmann::json& metrics,
                                                                int64_t num_examples,
                                                                uint64_t bytes_up) {
  const DeviceModel& devices = *config_.devices;
  const Task& task = *entry.task;
  double compute_s = 0;
  if (auto c = metrics.find("compute_s"); c != metrics.end() && c->is_number()) {
    compute_s = std::max(0.0, c->get<double>());
  }
  const int64_t examples = num_examples * std::max(1, config_.run_config->local.epochs);
  const double seconds = devices.task_seconds(task.client_id, compute_s, examples,
                                              task.bundle->payload_bytes(), bytes_up);
  const double arrival = entry.sim_start + seconds;
  if (std::optional<double> off = devices.next_offline(task.client_id, entry.sim_start, arrival)) {
    entry.sim_end = *off;
    char text[128];
    std::snprintf(text, sizeof(text),
                  "offline (simulated): went off at %.1f s, before its result at %.1f s", *off,
                  arrival);
    return std::string(text);
  }
  entry.sim_end = arrival;
  const double deadline_s = devices.options().deadline_s;
  if (!phase_->hold && deadline_s > 0 && seconds > deadline_s) {
    char text[128];
    std::snprintf(text, sizeof(text),
                  "late (simulated): its result took %.1f s, the round's deadline is %g s", seconds,
                  deadline_s);
    return std::string(text);
  }
  return std::nullopt;
}

void RoundEngine::fail_locked(TaskEntry& entry, const std::string& reason) {
  if (entry.state == TaskEntry::State::kDone) return;
  mark_done_locked(entry);
  entry.accepted = false;
  entry.reason = reason;
  phase_->failures.push_back({entry.task->client_id, reason});
  spdlog::warn("round {} {}: client {} failed: {}", entry.task->round,
               task_kind_name(entry.task->kind), entry.task->client_id, reason);
  cv_.notify_all();
}

void RoundEngine::requeue_locked(TaskEntry& entry, std::vector<Delivery>* deliveries) {
  entry.state = TaskEntry::State::kQueued;
  entry.delivered_to.clear();
  const std::string owner = registry_->session_of(entry.task->client_id);
  std::optional<PollWaiters::Waiter> waiter;
  if (!owner.empty()) waiter = waiters_.take_for_session(owner);
  if (waiter) {
    entry.state = TaskEntry::State::kDelivered;
    entry.delivered_to = waiter->session_token;
    phase_->bytes_down += entry.task->bundle->payload_bytes();
    deliveries->push_back({std::move(waiter->done), entry.task});
    return;
  }
  phase_->queued[entry.task->client_id].push_back(entry.task->id);
}

void RoundEngine::deliver(std::vector<Delivery>& deliveries) {
  for (Delivery& delivery : deliveries) {
    delivery.done(PollAnswer{PollAnswer::Kind::kTask, std::move(delivery.task)});
  }
  deliveries.clear();
}

void RoundEngine::expire_sessions_locked() {
  const auto timeout_s = config_.options.federation.client_timeout_s;
  for (const RemovedSession& session : registry_->expire()) {
    char reason[96];
    std::snprintf(reason, sizeof(reason), "connection lost: no contact for %g s", timeout_s);
    spdlog::warn("session \"{}\" ({} client(s)): {}", session.name, session.client_ids.size(),
                 reason);
    if (!phase_) continue;
    for (auto& [id, entry] : phase_->tasks) {
      if (entry.state == TaskEntry::State::kDone) continue;
      // An upload in progress touches its session with every chunk: one of this session that went
      // silent is dead (a host gone without a FIN). Failing it now, not at the round's deadline,
      // lets the round close; complete_push / abandon_push of that stream later find it done.
      if (entry.state == TaskEntry::State::kReceiving) {
        if (entry.delivered_to == session.token) fail_locked(entry, reason);
        continue;
      }
      if (std::binary_search(session.client_ids.begin(), session.client_ids.end(),
                             entry.task->client_id)) {
        fail_locked(entry, reason);
      }
    }
  }
}

v1::PushResultResponse RoundEngine::refuse_locked(TaskEntry& entry, Refusal kind,
                                                  const std::string& reason) {
  refusals_.add(kind);
  entry.received = true;
  fail_locked(entry, reason);
  return make_response(/*accepted=*/false, /*duplicate=*/false, reason);
}

// ---- Polls ----

RoundEngine::PullStart RoundEngine::pull(const SessionView& session,
                                         std::chrono::milliseconds max_wait,
                                         PollWaiters::Callback done) {
  PullStart start;
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) {
    shutdown_sent_.insert(session.token);
    cv_.notify_all();
    start.answer = PollAnswer{PollAnswer::Kind::kShutdown, nullptr};
    return start;
  }
  if (stop_.load()) {
    start.answer = PollAnswer{PollAnswer::Kind::kWait, nullptr};
    return start;
  }
  if (phase_ && phase_->open) {
    for (const std::string& client : session.client_ids) {
      auto queue = phase_->queued.find(client);
      if (queue == phase_->queued.end()) continue;
      while (!queue->second.empty()) {
        const std::string id = std::move(queue->second.front());
        queue->second.pop_front();
        auto found = phase_->tasks.find(id);
        // Failed meanwhile (and, in an asynchronous run, perhaps processed and removed).
        if (found == phase_->tasks.end() || found->second.state != TaskEntry::State::kQueued) {
          continue;
        }
        TaskEntry& entry = found->second;
        entry.state = TaskEntry::State::kDelivered;
        entry.delivered_to = session.token;
        phase_->bytes_down += entry.task->bundle->payload_bytes();
        start.answer = PollAnswer{PollAnswer::Kind::kTask, entry.task};
        return start;
      }
    }
  }
  const std::chrono::milliseconds longest(config_.options.federation.poll_timeout_ms);
  const std::chrono::milliseconds wait =
      max_wait.count() <= 0 ? longest : std::min(max_wait, longest);
  start.parked_id =
      waiters_.park(session.token, session.client_ids, SteadyClock::now() + wait, std::move(done));
  if (start.parked_id == 0) {
    refusals_.add(Refusal::kResourceLimit);
    start.status = Status::ResourceExhausted("PullTask: this session already has " +
                                             std::to_string(PollWaiters::kDefaultMaxPerSession) +
                                             " polls waiting (a client needs one)");
  }
  return start;
}

bool RoundEngine::cancel_pull(uint64_t parked_id) { return waiters_.cancel(parked_id); }

void RoundEngine::delivery_failed(const std::string& task_id) {
  std::vector<Delivery> deliveries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    TaskEntry* entry = find_current_locked(task_id);
    if (entry == nullptr || entry->state != TaskEntry::State::kDelivered || !phase_->open) return;
    spdlog::debug("task {}: not delivered whole; queued again", task_id);
    requeue_locked(*entry, &deliveries);
  }
  deliver(deliveries);
}

// ---- Results ----

RoundEngine::PushStart RoundEngine::begin_push(const SessionView& session,
                                               const v1::ResultHeader& header) {
  PushStart start;
  // Parse the metrics before taking mu_: up to 1 MiB of JSON must not hold up polls and pushes.
  // (Refused only after the task checks below, so that a bad header still fails its task.)
  nlohmann::json metrics = nlohmann::json::object();
  std::string metrics_error;
  if (header.ok()) {
    if (header.metrics_json().size() > kMaxMetricsJsonBytes) {
      metrics_error = "result refused: metrics_json has " +
                      std::to_string(header.metrics_json().size()) + " bytes (at most " +
                      std::to_string(kMaxMetricsJsonBytes) + ")";
    } else if (!header.metrics_json().empty()) {
      Result<nlohmann::json> parsed = parse_json_text(header.metrics_json(), kMaxMetricsJsonDepth);
      if (!parsed.ok() || !parsed->is_object()) {
        metrics_error = "result refused: metrics_json is not a JSON object" +
                        (parsed.ok() ? std::string() : " (" + parsed.status().message() + ")");
      } else {
        metrics = std::move(parsed).value();
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  const std::string& task_id = header.task_id();
  TaskEntry* entry = find_current_locked(task_id);
  if (entry == nullptr) {
    auto retired = retired_.find(task_id);
    if (retired == retired_.end()) {
      refusals_.add(Refusal::kUnknownTask);
      start.response = make_response(false, false, "unknown or expired task \"" + task_id + "\"");
    } else if (retired->second.received) {
      refusals_.add(Refusal::kDuplicate);
      start.response =
          make_response(retired->second.accepted, /*duplicate=*/true, retired->second.reason);
    } else {
      refusals_.add(Refusal::kLate);
      start.response = make_response(false, false,
                                     "late: round " + std::to_string(retired->second.task->round) +
                                         " " + task_kind_name(retired->second.task->kind) +
                                         " is over (" + retired->second.reason + ")");
    }
    return start;
  }
  const Task& task = *entry->task;
  if (header.client_id() != task.client_id) {
    refusals_.add(Refusal::kWrongClient);
    start.status =
        Status::InvalidArgument("task \"" + task_id + "\" is for client \"" + task.client_id +
                                "\", not \"" + header.client_id() + "\"");
    return start;
  }
  if (!session.serves(task.client_id)) {
    refusals_.add(Refusal::kWrongClient);
    start.status =
        Status::FailedPrecondition("this session does not host client \"" + task.client_id + "\"");
    return start;
  }
  switch (entry->state) {
    case TaskEntry::State::kDone:
      if (entry->received) {
        refusals_.add(Refusal::kDuplicate);
        start.response = make_response(entry->accepted, /*duplicate=*/true, entry->reason);
      } else {
        refusals_.add(Refusal::kLate);
        start.response = make_response(false, false, "late: " + entry->reason);
      }
      return start;
    case TaskEntry::State::kReceiving:
      start.status = Status::Unavailable("task \"" + task_id +
                                         "\": a result is already being received; retry later");
      return start;
    case TaskEntry::State::kQueued:
    case TaskEntry::State::kDelivered:
      break;
  }
  if (!phase_->open || SteadyClock::now() > phase_->deadline) {
    // The engine thread lists it as a deadline failure when it closes the phase.
    refusals_.add(Refusal::kLate);
    start.response = make_response(false, false, "late: the round's deadline has passed");
    return start;
  }
  if (!header.ok()) {
    entry->received = true;
    // The client's own words, cut to kMaxPeerTextBytes: they go into the log and metrics.jsonl.
    fail_locked(*entry,
                "client error: " + (header.error().empty() ? std::string("(no reason given)")
                                                           : bounded_text(header.error())));
    // Recorded: the failure is what the client reported.
    start.response = make_response(/*accepted=*/true, /*duplicate=*/false, "");
    return start;
  }
  if (!metrics_error.empty()) {
    start.response = refuse_locked(*entry, Refusal::kBadHeader, metrics_error);
    return start;
  }
  // An update weighs what its client declared at Join, at most (and at most
  // federation.max_examples_per_client): a client cannot make itself the global model by claiming
  // 2^62 examples, nor overflow the weighted sums that fold the honest updates.
  const int64_t cap = config_.options.federation.max_examples_per_client;
  const int64_t most = config_.options.federation.max_declared_examples();
  const int64_t bound = task.kind == TaskKind::kFit
                            ? std::min(session.declared_examples(task.client_id), most)
                            : most;
  const int64_t least = task.kind == TaskKind::kFit ? 1 : 0;
  if (task.kind == TaskKind::kFit && bound == 0) {
    start.response =
        refuse_locked(*entry, Refusal::kBadHeader,
                      "update refused: client \"" + task.client_id +
                          "\" has not declared its example count (at Join, or in a poll after it)");
    return start;
  }
  if (header.num_examples() < least || header.num_examples() > bound) {
    start.response = refuse_locked(
        *entry, Refusal::kBadHeader,
        "update refused: num_examples must be in [" + std::to_string(least) + ", " +
            std::to_string(bound) + "] (got " + std::to_string(header.num_examples()) + "; " +
            (task.kind == TaskKind::kFit
                 ? "at most what client \"" + task.client_id + "\" declared at Join"
                 : std::string("evaluation examples")) +
            (cap > 0 ? ", federation.max_examples_per_client " + std::to_string(cap) : "") + ")");
    return start;
  }
  entry->state = TaskEntry::State::kReceiving;
  entry->delivered_to = session.token;
  DecodeLimits limits;
  limits.max_payload_bytes = config_.options.federation.max_update_bytes;
  limits.expected = task.expected_update;
  start.upload.reset(new PendingUpload(entry->task, session.token, header.num_examples(),
                                       std::move(metrics), limits));
  return start;
}

v1::PushResultResponse RoundEngine::complete_push(std::unique_ptr<PendingUpload> upload) {
  const Task& task = *upload->task_;
  // Decode and check outside every lock: this is the expensive part.
  Result<TensorBundle> bundle = Status::Internal("unset");
  if (task.kind != TaskKind::kFit && !upload->decoder_.header_received()) {
    bundle = TensorBundle();  // an evaluation or secagg result need not carry a bundle
  } else {
    bundle = upload->decoder_.finish();
  }
  Refusal refusal = Refusal::kCorruptBundle;
  if (bundle.ok()) {
    Status finite = check_finite(*bundle);
    if (!finite.ok()) {
      bundle = finite;
      refusal = Refusal::kNonFinite;
    }
  } else {
    refusal = classify_bundle_error(bundle.status());
  }

  std::lock_guard<std::mutex> fold_lock(fold_mu_);
  std::unique_lock<std::mutex> lock(mu_);
  TaskEntry* entry = find_current_locked(task.id);
  if (entry == nullptr || entry->state != TaskEntry::State::kReceiving || !phase_->open) {
    refusals_.add(Refusal::kLate);
    return make_response(
        false, false,
        "late: round " + std::to_string(task.round) + " " + task_kind_name(task.kind) + " is over");
  }
  if (SteadyClock::now() > phase_->deadline) {
    return refuse_locked(*entry, Refusal::kLate,
                         "late: the result arrived after the round's deadline");
  }
  if (!bundle.ok()) {
    return refuse_locked(*entry, refusal, "update refused: " + bundle.status().message());
  }
  phase_->bytes_up += bundle->payload_bytes();
  phase_->timing.upload_s +=
      std::chrono::duration<double>(SteadyClock::now() - upload->started_).count();
  if (auto c = upload->metrics_.find("compute_s");
      c != upload->metrics_.end() && c->is_number() && c->get<double>() >= 0) {
    phase_->timing.compute_s += c->get<double>();
  }
  if (config_.devices && task.kind == TaskKind::kFit) {
    if (std::optional<std::string> reason = settle_simulated_locked(
            *entry, upload->metrics_, upload->num_examples_, bundle->payload_bytes())) {
      // Not a refusal of the client's input: on the simulated clock its result never came.
      entry->received = true;
      fail_locked(*entry, *reason);
      return make_response(/*accepted=*/false, /*duplicate=*/false, *reason);
    }
  }
  if (task.kind == TaskKind::kFit && phase_->hold) {
    // Asynchronous: the engine thread processes it in order (round_engine_async.cc).
    auto update = std::make_shared<strategies::ClientUpdate>();
    update->client_id = task.client_id;
    update->num_examples = upload->num_examples_;
    update->bundle = std::move(bundle).value();
    update->metrics = std::move(upload->metrics_);
    entry->held = std::move(update);
  } else if (task.kind == TaskKind::kFit) {
    strategies::ClientUpdate update;
    update.client_id = task.client_id;
    update.num_examples = upload->num_examples_;
    update.bundle = std::move(bundle).value();
    update.metrics = std::move(upload->metrics_);
    strategies::Aggregation* aggregation = phase_->aggregation;
    // Fold without mu_ (polls and heartbeats go on); fold_mu_ keeps the phase open meanwhile.
    lock.unlock();
    const SteadyClock::time_point fold_start = SteadyClock::now();
    Status added;
    try {
      added = aggregation->add(std::move(update));
    } catch (const std::exception& e) {
      added = Status::Internal(std::string("aggregation threw: ") + e.what());
    } catch (...) {
      added = Status::Internal("aggregation threw a non-standard exception");
    }
    lock.lock();
    phase_->timing.aggregate_s +=
        std::chrono::duration<double>(SteadyClock::now() - fold_start).count();
    entry = find_current_locked(task.id);
    FEDTAIL_CHECK(entry != nullptr);
    if (!added.ok()) {
      return refuse_locked(*entry, Refusal::kIncompatibleUpdate,
                           "update refused: " + added.message());
    }
  } else {
    strategies::EvalReport report;
    report.client_id = task.client_id;
    report.num_examples = upload->num_examples_;
    report.metrics = std::move(upload->metrics_);
    phase_->reports.push_back(std::move(report));
  }
  mark_done_locked(*entry);
  entry->received = true;
  entry->accepted = true;
  cv_.notify_all();
  spdlog::debug("round {} {}: result of {} accepted", task.round, task_kind_name(task.kind),
                task.client_id);
  return make_response(/*accepted=*/true, /*duplicate=*/false, "");
}

void RoundEngine::abandon_push(std::unique_ptr<PendingUpload> upload) {
  std::lock_guard<std::mutex> lock(mu_);
  TaskEntry* entry = find_current_locked(upload->task_id());
  if (entry != nullptr && entry->state == TaskEntry::State::kReceiving) {
    entry->state = TaskEntry::State::kDelivered;
    entry->delivered_to = upload->session_token_;
  }
}

void RoundEngine::stalled_push(std::unique_ptr<PendingUpload> upload, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  refusals_.add(Refusal::kStalledUpload);
  TaskEntry* entry = find_current_locked(upload->task_id());
  if (entry == nullptr || entry->state != TaskEntry::State::kReceiving || !phase_->open) return;
  if (++entry->stalls >= 2) {
    entry->received = true;
    fail_locked(*entry, reason + " (the second stalled upload of this task)");
    return;
  }
  entry->last_stall = reason;
  entry->state = TaskEntry::State::kDelivered;
  entry->delivered_to = upload->session_token_;
}

bool RoundEngine::upload_closed(const std::string& task_id) {
  std::lock_guard<std::mutex> lock(mu_);
  TaskEntry* entry = find_current_locked(task_id);
  return entry == nullptr || !phase_->open || entry->state != TaskEntry::State::kReceiving;
}

// ---- Heartbeats and membership ----

bool RoundEngine::heartbeat(const SessionView& session, const std::string& task_id) {
  if (task_id.empty()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  TaskEntry* entry = find_current_locked(task_id);
  if (entry == nullptr || !phase_->open) return true;
  if (!session.serves(entry->task->client_id)) return true;
  return entry->state == TaskEntry::State::kDone;
}

void RoundEngine::clients_joined(const Admission& admission) {
  std::vector<Delivery> deliveries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase_ && phase_->open && !admission.taken_over.empty()) {
      for (auto& [id, entry] : phase_->tasks) {
        if (entry.state != TaskEntry::State::kDelivered) continue;
        if (std::find(admission.taken_over.begin(), admission.taken_over.end(),
                      entry.task->client_id) != admission.taken_over.end()) {
          spdlog::info("client {} rejoined: its task {} is offered again", entry.task->client_id,
                       id);
          requeue_locked(entry, &deliveries);
        }
      }
    }
  }
  cv_.notify_all();
  deliver(deliveries);
}

void RoundEngine::clients_gone(const RemovedSession& session, const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase_ && phase_->open) {
      for (auto& [id, entry] : phase_->tasks) {
        if (entry.state != TaskEntry::State::kQueued &&
            entry.state != TaskEntry::State::kDelivered) {
          continue;
        }
        if (std::binary_search(session.client_ids.begin(), session.client_ids.end(),
                               entry.task->client_id)) {
          fail_locked(entry, reason);
        }
      }
    }
  }
  cv_.notify_all();
}

}  // namespace fedtail::coordinator

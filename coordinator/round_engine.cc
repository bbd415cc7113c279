// The engine thread: rounds, phases, evaluation, the metrics line (its formatting helpers are in
// metrics_line.cc). The service-facing methods (pull, push, heartbeat, joins) and PendingUpload are
// in round_engine_service_side.cc.
#include "coordinator/round_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <set>

#include "common/base/rng.h"
#include "coordinator/engine_time.h"
#include "coordinator/metrics_line.h"

namespace fedtail::coordinator {
namespace {

// How often "waiting for clients" is logged: every 5 s for the first minute, then every 30 s.
constexpr std::chrono::seconds kWaitLogInterval{5};
constexpr std::chrono::seconds kWaitLogSlowInterval{30};
constexpr std::chrono::seconds kWaitLogSlowAfter{60};

// A phase's wall time and where it went, as "<phase>_s", "<phase>_compute_s", "<phase>_upload_s".
void put_phase_timing(nlohmann::json* timing, const char* phase, double wall_s,
                      const PhaseTiming& t) {
  (*timing)[std::string(phase) + "_s"] = wall_s;
  (*timing)[std::string(phase) + "_compute_s"] = t.compute_s;
  (*timing)[std::string(phase) + "_upload_s"] = t.upload_s;
}

std::shared_ptr<const PayloadDigest> digest_of(const TensorBundle& bundle) {
  return std::make_shared<const PayloadDigest>(payload_digest(bundle));
}

}  // namespace

RoundEngine::RoundEngine(EngineConfig config, strategies::ServerStrategy* strategy,
                         ClientRegistry* registry)
    : config_(std::move(config)),
      strategy_(strategy),
      registry_(registry),
      incarnation_(random_token(4)),
      empty_bundle_(std::make_shared<const TensorBundle>()),
      empty_digest_(digest_of(TensorBundle())),
      gate_(config_.options.federation.max_concurrent_uploads) {
  FEDTAIL_CHECK(strategy_ != nullptr);
  FEDTAIL_CHECK(registry_ != nullptr);
  FEDTAIL_CHECK(config_.run_config != nullptr);
  const FederationOptions& federation = config_.options.federation;
  UploadWatch::Limits limits;
  limits.idle = std::chrono::milliseconds(
      static_cast<int64_t>(std::ceil(federation.upload_idle_timeout_s * 1000)));
  limits.min_bytes_per_s = federation.upload_min_bytes_per_s;
  limits.period = std::min(std::chrono::milliseconds(250), limits.idle);
  watch_ = std::make_unique<UploadWatch>(
      limits, [this](const std::string& task_id) { return upload_closed(task_id); });
}

RoundEngine::~RoundEngine() {
  watch_.reset();
  request_stop();
  if (thread_.joinable()) thread_.join();
}

Status RoundEngine::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) return Status::FailedPrecondition("round engine: already started");
  started_ = true;
  phase_since_ = std::chrono::system_clock::now();
  thread_ = std::thread([this] { thread_main(); });
  return Status::OK();
}

Status RoundEngine::wait() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return result_;
}

void RoundEngine::request_stop() {
  stop_.store(true);
  // Taking mu_ orders the flag before any waiter's predicate check.
  { std::lock_guard<std::mutex> lock(mu_); }
  cv_.notify_all();
}

bool RoundEngine::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

void RoundEngine::set_on_done(std::function<void()> on_done) {
  std::lock_guard<std::mutex> lock(mu_);
  on_done_ = std::move(on_done);
}

void RoundEngine::set_min_available_clients(int n) {
  FEDTAIL_CHECK(n >= 1);
  min_available_override_.store(n);
  std::lock_guard<std::mutex> lock(mu_);
  cv_.notify_all();
}

int RoundEngine::min_available_clients() const {
  const int override_value = min_available_override_.load();
  return override_value > 0 ? override_value : config_.options.federation.min_available_clients;
}

EngineSnapshot RoundEngine::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineSnapshot snapshot;
  snapshot.round = round_;
  snapshot.phase_since = phase_since_;
  if (done_) {
    snapshot.phase = "done";
  } else if (phase_ && phase_->open) {
    snapshot.phase = task_kind_name(phase_->kind);
    snapshot.selected = phase_->selected;
    for (const auto& [id, entry] : phase_->tasks) {
      snapshot.received += entry.state == TaskEntry::State::kDone && entry.accepted;
    }
    snapshot.failures = phase_->failures;
  }
  return snapshot;
}

int RoundEngine::TEST_round() const {
  std::lock_guard<std::mutex> lock(mu_);
  return round_;
}

void RoundEngine::thread_main() {
  Status status;
  try {
    status = run_rounds();
  } catch (const std::exception& e) {
    status = Status::Internal(std::string("round engine: unexpected exception: ") + e.what());
  } catch (...) {
    status = Status::Internal("round engine: unexpected non-standard exception");
  }
  if (status.ok()) finish_run();
  std::function<void()> on_done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    result_ = status;
    done_ = true;
    phase_since_ = std::chrono::system_clock::now();
    on_done = on_done_;
  }
  cv_.notify_all();
  if (on_done) on_done();
}

Status RoundEngine::run_rounds() {
  const CoordinatorOptions& options = config_.options;
  completed_round_ = config_.first_round - 1;
  strategies::RunContext context;
  context.config = config_.run_config;
  context.strategy_config = options.strategy_config;
  context.total_rounds = options.rounds;
  context.num_classes = config_.num_classes;
  context.train_class_counts = config_.train_class_counts;
  context.auxiliary = config_.auxiliary;
  context.device = config_.device;
  if (!config_.resumed) {
    Rng rng = Rng::derive(config_.run_config->seed, "init");
    Status status = strategy_->initialize(context, rng);
    if (!status.ok())
      return status.with_context("strategy " + options.strategy_name + ": initialize");
  } else {
    Status status = strategy_->resume(context);
    if (!status.ok()) return status.with_context("strategy " + options.strategy_name + ": resume");
  }
  if (config_.devices && (options.secagg.enabled || options.privacy.enabled())) {
    return Status::FailedPrecondition(
        "config.devices: simulated devices do not combine with config.secagg or config.privacy "
        "yet");
  }
  if (config_.resume_line.is_object()) {
    sim_now_ = config_.resume_line.value("sim_time_s", 0.0);
    async_tasks_ = config_.resume_line.value("tasks_issued", uint64_t{0});
  }
  if (auto* async = dynamic_cast<strategies::AsyncStrategy*>(strategy_)) {
    if (options.secagg.enabled || options.privacy.enabled()) {
      return Status::FailedPrecondition(
          "strategy " + options.strategy_name +
          " is asynchronous: secure aggregation and differential privacy need synchronous rounds");
    }
    FEDTAIL_RETURN_IF_ERROR(run_async(async));
  } else {
    FEDTAIL_RETURN_IF_ERROR(prepare_privacy());
    for (int round = config_.first_round; round <= options.rounds; ++round) {
      if (stop_.load() || privacy_budget_spent_) break;
      FEDTAIL_RETURN_IF_ERROR(run_round(round));
    }
  }
  if (stop_.load()) {
    return Status::Unavailable("stopped after round " + std::to_string(completed_round_) + " of " +
                               std::to_string(options.rounds));
  }
  return Status::OK();
}

bool RoundEngine::wait_for_clients(int needed, const char* why) {
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<SteadyClock::time_point> next_log;
  const auto waiting_since = SteadyClock::now();
  while (!stop_.load()) {
    expire_sessions_locked();
    const int available = registry_->available_count();
    const int want = needed > 0 ? needed : min_available_clients();
    if (available >= want) return true;
    const auto now = SteadyClock::now();
    if (!next_log || now >= *next_log) {
      spdlog::info("waiting for clients: {}/{} connected{}", available, want, why);
      next_log =
          now + (now - waiting_since < kWaitLogSlowAfter ? kWaitLogInterval : kWaitLogSlowInterval);
    }
    SteadyClock::time_point wake = *next_log;
    if (auto expiry = registry_->next_expiry(); expiry && *expiry < wake) wake = *expiry;
    cv_.wait_until(lock, wake);
    wakeups_.fetch_add(1);
  }
  return false;
}

std::vector<strategies::ClientInfo> RoundEngine::clients_now() const {
  std::vector<strategies::ClientInfo> clients = registry_->available_clients();
  if (config_.devices) {
    clients.erase(std::remove_if(clients.begin(), clients.end(),
                                 [this](const strategies::ClientInfo& client) {
                                   return !config_.devices->available(client.id, sim_now_);
                                 }),
                  clients.end());
  }
  return clients;
}

std::vector<std::string> RoundEngine::clients_off_now(const std::set<std::string>& except) const {
  std::vector<std::string> off;
  if (!config_.devices) return off;
  for (const auto& client : registry_->available_clients()) {
    if (!except.count(client.id) && !config_.devices->available(client.id, sim_now_)) {
      off.push_back(client.id);
    }
  }
  return off;
}

Status RoundEngine::run_round(int round) {
  const CoordinatorOptions& options = config_.options;
  const uint64_t seed = config_.run_config->seed;
  const auto started = SteadyClock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    round_ = round;
  }
  const std::string where = "round " + std::to_string(round) + "/" + std::to_string(options.rounds);

  // Fit: configure (waiting for more clients while the strategy says there are too few).
  std::vector<strategies::TaskSpec> specs;
  int needed = 0;  // min_available_clients()
  for (;;) {
    if (!wait_for_clients(needed, "")) return Status::OK();  // stopped
    std::vector<strategies::ClientInfo> available = clients_now();
    Rng rng = Rng::derive(seed, "fit", {static_cast<uint64_t>(round)});
    Result<std::vector<strategies::TaskSpec>> configured =
        strategy_->configure_fit(round, available, rng);
    if (configured.ok()) {
      specs = std::move(configured).value();
      break;
    }
    if (configured.status().code() != StatusCode::kFailedPrecondition) {
      return configured.status().with_context(where + ": configure_fit");
    }
    if (config_.devices) {
      // Too few clients are on at this simulated time: the clock moves to when another comes on.
      std::optional<double> next = config_.devices->next_online(clients_off_now({}), sim_now_);
      if (next) {
        spdlog::info("{}: {} (simulated time {:.1f} s); the clock moves to {:.1f} s", where,
                     configured.status().message(), sim_now_, *next);
        sim_now_ = *next;
        continue;
      }
    }
    // Too few clients for the strategy: wait for one more than there are now.
    needed = std::max(static_cast<int>(available.size()) + 1, min_available_clients());
    spdlog::warn("{}: {}; waiting for more clients", where, configured.status().message());
  }

  // config.privacy.target_epsilon: no round starts that would spend more; the last one that may
  // is evaluated as the run's last.
  bool last_private_round = false;
  FEDTAIL_ASSIGN_OR_RETURN(
      bool allowed, privacy_allows(round, static_cast<int>(specs.size()), &last_private_round));
  if (!allowed) {
    privacy_budget_spent_ = true;
    return Status::OK();
  }

  nlohmann::json line = {{"round", round},
                         {"rounds", options.rounds},
                         {"strategy", options.strategy_name},
                         {"run_id", config_.run_id}};
  uint64_t bytes_down = 0;  // payload bytes of the round's tasks and results
  uint64_t bytes_up = 0;
  // Where the round's time went: phase walls (seconds on the engine's clock) and, per phase, the
  // sums over accepted results of the clients' compute, the uploads and the strategy's fold.
  nlohmann::json timing = nlohmann::json::object();
  if (specs.empty()) {
    spdlog::info("{}: the strategy selected no client; training skipped", where);
    line["fit"] = {{"selected", 0},
                   {"updates", 0},
                   {"failures", nlohmann::json::array()},
                   {"metrics", nlohmann::json::object()},
                   {"skipped", true}};
  } else {
    const SteadyClock::time_point fit_start = SteadyClock::now();
    Result<PhaseOutcome> outcome = Status::Internal("unset");
    Result<nlohmann::json> metrics = Status::Internal("unset");
    SteadyClock::time_point finish_start;
    if (private_fit()) {
      // Secure aggregation and/or DP: the engine aggregates, the strategy gets the mean.
      Result<PrivateFit> fit = run_private_fit(round, specs);
      if (!fit.ok()) {
        if (stop_.load()) return Status::OK();
        return fit.status().with_context(where);
      }
      finish_start = SteadyClock::now();
      outcome = std::move(fit->outcome);
      metrics = std::move(fit->metrics);
      if (!fit->secagg.is_null()) line["secagg"] = std::move(fit->secagg);
      if (!fit->privacy.is_null()) line["privacy"] = std::move(fit->privacy);
    } else {
      FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<strategies::Aggregation> aggregation,
                               strategy_->begin_aggregation(round));
      outcome = run_phase(round, TaskKind::kFit, specs, aggregation.get());
      if (!outcome.ok()) {
        if (stop_.load()) return Status::OK();
        return outcome.status();
      }
      finish_start = SteadyClock::now();
      metrics = aggregation->finish(outcome->failures);
    }
    if (!metrics.ok()) return metrics.status().with_context(where + ": aggregation finish");
    put_phase_timing(&timing, "fit", seconds_since(fit_start), outcome->timing);
    timing["aggregate_s"] = outcome->timing.aggregate_s + seconds_since(finish_start);
    line["fit"] = {{"selected", outcome->selected},
                   {"updates", outcome->answered},
                   {"failures", failures_json(outcome->failures)},
                   {"bytes_down", outcome->bytes_down},
                   {"bytes_up", outcome->bytes_up},
                   {"metrics", *metrics}};
    bytes_down += outcome->bytes_down;
    bytes_up += outcome->bytes_up;
    sim_now_ += outcome->sim_seconds;
  }
  if (stop_.load()) return Status::OK();

  const bool evaluate =
      round % config_.run_config->eval.every == 0 || round == options.rounds || last_private_round;
  if (evaluate) {
    FEDTAIL_RETURN_IF_ERROR(
        evaluate_round(round, /*federated=*/true, &line, &timing, &bytes_down, &bytes_up));
  }
  if (stop_.load()) return Status::OK();
  return finish_line(round, where, started, std::move(line), std::move(timing), bytes_down,
                     bytes_up);
}

Status RoundEngine::evaluate_round(int round, bool federated, nlohmann::json* line,
                                   nlohmann::json* timing, uint64_t* bytes_down,
                                   uint64_t* bytes_up) {
  const uint64_t seed = config_.run_config->seed;
  const std::string where =
      "round " + std::to_string(round) + "/" + std::to_string(config_.options.rounds);
  if (federated) {
    std::vector<strategies::ClientInfo> available = clients_now();
    Rng rng = Rng::derive(seed, "evaluate", {static_cast<uint64_t>(round)});
    Result<std::vector<strategies::TaskSpec>> especs =
        strategy_->configure_evaluate(round, available, rng);
    if (!especs.ok() && especs.status().code() != StatusCode::kFailedPrecondition) {
      return especs.status().with_context(where + ": configure_evaluate");
    }
    if (!especs.ok()) {
      spdlog::warn("{}: federated evaluation skipped: {}", where, especs.status().message());
    } else if (!especs->empty()) {
      const SteadyClock::time_point evaluate_start = SteadyClock::now();
      Result<PhaseOutcome> outcome = run_phase(round, TaskKind::kEvaluate, *especs, nullptr);
      if (!outcome.ok()) {
        if (stop_.load()) return Status::OK();
        return outcome.status();
      }
      put_phase_timing(timing, "evaluate", seconds_since(evaluate_start), outcome->timing);
      Result<nlohmann::json> metrics =
          strategy_->aggregate_evaluate(round, outcome->reports, outcome->failures);
      if (!metrics.ok()) return metrics.status().with_context(where + ": aggregate_evaluate");
      (*line)["evaluate"] = {{"selected", outcome->selected},
                             {"reports", outcome->answered},
                             {"failures", failures_json(outcome->failures)},
                             {"bytes_down", outcome->bytes_down},
                             {"bytes_up", outcome->bytes_up},
                             {"metrics", *metrics}};
      *bytes_down += outcome->bytes_down;
      *bytes_up += outcome->bytes_up;
    }
  }
  if (config_.server_test != nullptr && config_.options.federation.server_eval) {
    strategies::ServerEvalContext context;
    context.test = config_.server_test;
    context.train_class_counts = config_.train_class_counts;
    context.device = config_.device;
    context.batch_size = config_.run_config->eval.batch_size;
    const SteadyClock::time_point server_eval_start = SteadyClock::now();
    Result<nlohmann::json> metrics = strategy_->evaluate(round, context);
    if (!metrics.ok()) return metrics.status().with_context(where + ": server evaluation");
    (*timing)["server_eval_s"] = seconds_since(server_eval_start);
    (*line)["server_eval"] = *metrics;
  }
  return Status::OK();
}

Status RoundEngine::finish_line(int round, const std::string& where,
                                SteadyClock::time_point started, nlohmann::json line,
                                nlohmann::json timing, uint64_t bytes_down, uint64_t bytes_up) {
  const double seconds = seconds_since(started);
  if (config_.devices) {
    line["sim_time_s"] = sim_now_;
    line["clients_on"] = clients_now().size();  // connected and available at sim_time_s
  }
  line["seconds"] = seconds;
  line["bytes"] = {{"down", bytes_down}, {"up", bytes_up}};
  line["timing"] = std::move(timing);
  nlohmann::json refusals_now = refusals_.snapshot();
  line["refused"] = refusal_delta(refusals_now, refusals_reported_);
  std::optional<double> loss = number_at(line, {"fit", "metrics", "loss"});
  std::optional<double> generic = number_at(line, {"server_eval", "generic", "overall"});
  std::optional<double> personal = number_at(line, {"evaluate", "metrics", "personalized", "mean"});
  const int fit_selected = line["fit"].value("selected", 0);
  const size_t fit_failures =
      line["fit"].contains("failures") ? line["fit"]["failures"].size() : size_t{0};
  spdlog::info("{}: {} clients, {} failures, loss {}, accuracy {}{}, {:.1f} s{}", where,
               fit_selected, fit_failures, format_number(loss, "%.4f"),
               format_number(generic, "%.4f"),
               personal ? " (personalized " + format_number(personal, "%.4f") + ")" : "", seconds,
               config_.devices ? " (simulated time " + format_number(sim_now_, "%.1f") + " s)"
                               : std::string());
  if (const uint64_t refused = line["refused"]["total"].get<uint64_t>(); refused > 0) {
    spdlog::warn("{}: {} input(s) refused since the last round: {}", where, refused,
                 describe_refusals(line["refused"]));
  }
  if (config_.on_round_end) {
    Status status = config_.on_round_end(round, line, *strategy_);
    if (!status.ok()) return status.with_context(where + ": saving metrics line and checkpoint");
  }
  refusals_reported_ = std::move(refusals_now);
  completed_round_ = round;
  return Status::OK();
}

Result<RoundEngine::PhaseOutcome> RoundEngine::run_phase(
    int round, TaskKind kind, const std::vector<strategies::TaskSpec>& specs,
    strategies::Aggregation* aggregation, double timeout_s) {
  const FederationOptions& federation = config_.options.federation;
  const std::string where = "round " + std::to_string(round) + " " + task_kind_name(kind);
  const double phase_timeout_s = timeout_s > 0 ? timeout_s : federation.round_timeout_s;
  const auto timeout = std::chrono::duration_cast<SteadyClock::duration>(
      std::chrono::duration<double>(phase_timeout_s));
  const uint64_t deadline_unix_ms = unix_ms_after(phase_timeout_s);

  // One digest per distinct bundle (usually one global model shared by every task).
  std::map<const TensorBundle*, std::shared_ptr<const PayloadDigest>> digests;
  std::set<std::string> available;
  for (const auto& client : registry_->available_clients()) available.insert(client.id);

  std::vector<Delivery> deliveries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto phase = std::make_unique<Phase>();
    phase->round = round;
    phase->kind = kind;
    phase->open = true;
    phase->deadline = SteadyClock::now() + timeout;
    phase->aggregation = aggregation;
    phase_ = std::move(phase);
    phase_since_ = std::chrono::system_clock::now();
    std::set<std::string> seen;
    for (const strategies::TaskSpec& spec : specs) {
      std::shared_ptr<const Task> task =
          make_task(incarnation_ + "-r" + std::to_string(round) + "-" + task_kind_name(kind) + "-" +
                        spec.client_id,
                    round, kind, spec, deadline_unix_ms, &digests);
      if (!seen.insert(spec.client_id).second) {
        spdlog::warn("{}: the strategy gave client \"{}\" two tasks; the second is ignored", where,
                     spec.client_id);
        continue;
      }
      TaskEntry entry;
      entry.task = task;
      entry.sim_start = sim_now_;
      auto [it, inserted] = phase_->tasks.emplace(task->id, std::move(entry));
      ++phase_->selected;
      ++phase_->pending;
      if (!available.count(spec.client_id)) {
        fail_locked(it->second, "not an available client");
        continue;
      }
      requeue_locked(it->second, &deliveries);
    }
  }
  deliver(deliveries);
  spdlog::debug("{}: {} task(s) queued", where, specs.size());

  // Wait for the answers, the deadline, or stop.
  {
    std::unique_lock<std::mutex> lock(mu_);
    while (phase_->pending > 0 && !stop_.load()) {
      const auto now = SteadyClock::now();
      if (now >= phase_->deadline) break;
      SteadyClock::time_point wake = phase_->deadline;
      if (auto expiry = registry_->next_expiry(); expiry && *expiry < wake) wake = *expiry;
      cv_.wait_until(lock, wake);
      wakeups_.fetch_add(1);
      expire_sessions_locked();
    }
  }

  // Close the phase. Holding fold_mu_ first means no fold is in progress, and none starts after.
  PhaseOutcome outcome;
  {
    std::lock_guard<std::mutex> fold_lock(fold_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    Phase& phase = *phase_;
    phase.open = false;
    const bool stopped = stop_.load();
    char timeout_text[32];
    std::snprintf(timeout_text, sizeof(timeout_text), "%g", phase_timeout_s);
    for (auto& [id, entry] : phase.tasks) {
      switch (entry.state) {
        case TaskEntry::State::kQueued:
          fail_locked(entry, stopped ? "coordinator stopping"
                                     : std::string("deadline exceeded (") + timeout_text +
                                           " s): the task was never pulled");
          break;
        case TaskEntry::State::kDelivered:
          fail_locked(entry,
                      stopped
                          ? "coordinator stopping"
                          : std::string("deadline exceeded (") + timeout_text + " s): no result" +
                                (entry.last_stall.empty()
                                     ? std::string()
                                     : " (its upload was stopped: " + entry.last_stall + ")"));
          break;
        case TaskEntry::State::kReceiving:
          fail_locked(entry, stopped ? "coordinator stopping"
                                     : std::string("deadline exceeded (") + timeout_text +
                                           " s): the upload was still in progress");
          break;
        case TaskEntry::State::kDone:
          break;
      }
    }
    outcome.selected = phase.selected;
    outcome.answered = phase.selected - static_cast<int>(phase.failures.size());
    if (config_.devices && kind == TaskKind::kFit) {
      // The phase lasts, on the simulated clock, until its last result arrives or its last client
      // goes off; at most devices.deadline_s.
      for (const auto& [id, entry] : phase.tasks) {
        if (entry.sim_end >= 0) {
          outcome.sim_seconds = std::max(outcome.sim_seconds, entry.sim_end - entry.sim_start);
        }
      }
      const double deadline_s = config_.devices->options().deadline_s;
      if (deadline_s > 0) outcome.sim_seconds = std::min(outcome.sim_seconds, deadline_s);
    }
    outcome.bytes_down = phase.bytes_down;
    outcome.bytes_up = phase.bytes_up;
    outcome.timing = phase.timing;
    outcome.failures = std::move(phase.failures);
    outcome.reports = std::move(phase.reports);
    phase.aggregation = nullptr;
    retired_ = std::move(phase.tasks);
    phase_.reset();
    phase_since_ = std::chrono::system_clock::now();
  }
  // Failures come out in arrival order; sort them so that the strategy and the metrics line see
  // the same list whatever the timing.
  std::sort(outcome.failures.begin(), outcome.failures.end(),
            [](const auto& a, const auto& b) { return a.client_id < b.client_id; });
  std::sort(outcome.reports.begin(), outcome.reports.end(),
            [](const auto& a, const auto& b) { return a.client_id < b.client_id; });
  if (stop_.load()) return Status::Unavailable(where + ": stopped");
  return outcome;
}

std::shared_ptr<const Task> RoundEngine::make_task(
    std::string id, int round, TaskKind kind, const strategies::TaskSpec& spec,
    uint64_t deadline_unix_ms,
    std::map<const TensorBundle*, std::shared_ptr<const PayloadDigest>>* digests) const {
  auto task = std::make_shared<Task>();
  task->id = std::move(id);
  task->kind = kind;
  task->round = round;
  task->strategy = config_.options.strategy_name;
  task->client_id = spec.client_id;
  task->config_json = spec.config.is_null() ? "{}" : spec.config.dump();
  task->deadline_unix_ms = deadline_unix_ms;
  if (kind == TaskKind::kFit) task->expected_update = spec.expected_update;
  if (spec.bundle) {
    auto& digest = (*digests)[spec.bundle.get()];
    if (!digest) digest = digest_of(*spec.bundle);
    task->bundle = spec.bundle;
    task->digest = digest;
  } else {
    task->bundle = empty_bundle_;
    task->digest = empty_digest_;
  }
  return task;
}

void RoundEngine::finish_run() {
  if (privacy_budget_spent_) {
    spdlog::info(
        "run complete at the privacy budget after {} of {} round(s); telling clients to "
        "shut down",
        completed_round_, config_.options.rounds);
  } else {
    spdlog::info("run complete: {} round(s); telling clients to shut down", config_.options.rounds);
  }
  std::vector<PollWaiters::Waiter> parked;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
    parked = waiters_.take_all();
    for (const auto& waiter : parked) shutdown_sent_.insert(waiter.session_token);
  }
  cv_.notify_all();
  for (auto& waiter : parked) waiter.done(PollAnswer{PollAnswer::Kind::kShutdown, nullptr});
}

bool RoundEngine::wait_sessions_shut_down(std::chrono::milliseconds timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    registry_->expire();
    bool all = true;
    for (const std::string& token : registry_->live_session_tokens()) {
      if (!shutdown_sent_.count(token)) all = false;
    }
    if (all) return true;
    const auto now = SteadyClock::now();
    if (now >= deadline) return false;
    // Sessions also go stale without calling: re-check at least every second.
    cv_.wait_until(lock, std::min(deadline, now + std::chrono::seconds(1)));
  }
}

}  // namespace fedtail::coordinator

#include "coordinator/live_status.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace fedtail::coordinator {
namespace {

int64_t system_now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The number at `path` in `json`, if there is one.
std::optional<double> number_at(const nlohmann::json& json,
                                std::initializer_list<const char*> path) {
  const nlohmann::json* at = &json;
  for (const char* key : path) {
    if (!at->is_object()) return std::nullopt;
    auto it = at->find(key);
    if (it == at->end()) return std::nullopt;
    at = &*it;
  }
  if (!at->is_number()) return std::nullopt;
  return at->get<double>();
}

uint64_t count_at(const nlohmann::json& json, std::initializer_list<const char*> path) {
  std::optional<double> value = number_at(json, path);
  return value && *value > 0 ? static_cast<uint64_t>(*value) : 0;
}

// Adds the kinds of a {"<kind>": n, "total": n} object to `sums` ("total" skipped).
void add_refusals(const nlohmann::json& counts, std::map<std::string, uint64_t>* sums) {
  if (!counts.is_object()) return;
  for (auto it = counts.begin(); it != counts.end(); ++it) {
    if (it.key() == "total" || !it.value().is_number()) continue;
    const double n = it.value().get<double>();
    (*sums)[it.key()] += n > 0 ? static_cast<uint64_t>(n) : 0;
  }
}

nlohmann::json failures_to_json(const std::vector<LiveFailure>& failures) {
  nlohmann::json list = nlohmann::json::array();
  for (const LiveFailure& failure : failures) {
    list.push_back({{"client_id", failure.client_id}, {"reason", failure.reason}});
  }
  return list;
}

// A phase of a metrics line, as /api/status shows the last round: counts and failures.
nlohmann::json phase_summary(const nlohmann::json& line, const char* phase, const char* answered) {
  auto it = line.find(phase);
  if (it == line.end() || !it->is_object()) return nullptr;
  nlohmann::json summary = {{"selected", it->value("selected", 0)},
                            {answered, it->value(answered, 0)},
                            {"failures", nlohmann::json::array()}};
  auto failures = it->find("failures");
  if (failures != it->end() && failures->is_array()) summary["failures"] = *failures;
  return summary;
}

}  // namespace

const char* live_run_state_name(LiveRunState state) {
  switch (state) {
    case LiveRunState::kIdle:
      return "idle";
    case LiveRunState::kRunning:
      return "running";
    case LiveRunState::kFinished:
      return "finished";
    case LiveRunState::kFailed:
      return "failed";
    case LiveRunState::kStopped:
      return "stopped";
  }
  return "idle";
}

LiveStatus::LiveStatus(std::function<int64_t()> now_unix_ms)
    : now_unix_ms_(now_unix_ms ? std::move(now_unix_ms) : system_now_unix_ms) {}

void LiveStatus::begin_run(LiveRunInfo info, std::vector<nlohmann::json> earlier_lines) {
  std::lock_guard<std::mutex> lock(mu_);
  ++run_seq_;
  run_ = std::move(info);
  state_ = LiveRunState::kRunning;
  message_.clear();
  started_unix_ms_ = now_unix_ms_();
  ended_unix_ms_ = 0;
  probe_fn_ = nullptr;
  probe_.reset();
  lines_.clear();
  last_line_ = nullptr;
  earlier_refusals_.clear();
  line_refusals_.clear();
  bytes_down_ = 0;
  bytes_up_ = 0;
  fit_failures_ = 0;
  round_seconds_.clear();
  accuracy_.clear();
  for (const nlohmann::json& line : earlier_lines) {
    if (!line.is_object()) continue;
    add_round_locked(line);
    // The new process's counters start from zero: these refusals are not in its probe.
    add_refusals(line.value("refused", nlohmann::json()), &earlier_refusals_);
  }
  line_refusals_.clear();
}

void LiveStatus::set_probe(std::function<LiveProbe()> probe) {
  std::lock_guard<std::mutex> lock(mu_);
  probe_fn_ = std::move(probe);
}

void LiveStatus::clear_probe() {
  std::lock_guard<std::mutex> lock(mu_);
  refresh_locked();
  probe_fn_ = nullptr;
}

void LiveStatus::add_round(const nlohmann::json& line) {
  if (!line.is_object()) return;
  std::lock_guard<std::mutex> lock(mu_);
  add_round_locked(line);
  add_refusals(line.value("refused", nlohmann::json()), &line_refusals_);
}

void LiveStatus::add_round_locked(const nlohmann::json& line) {
  lines_.push_back(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  last_line_ = line;
  bytes_down_ += count_at(line, {"bytes", "down"});
  bytes_up_ += count_at(line, {"bytes", "up"});
  auto fit = line.find("fit");
  if (fit != line.end() && fit->is_object()) {
    auto failures = fit->find("failures");
    if (failures != fit->end() && failures->is_array()) fit_failures_ += failures->size();
  }
  if (std::optional<double> seconds = number_at(line, {"seconds"})) {
    round_seconds_.push_back(*seconds);
  }
  static constexpr std::pair<const char*, const char*> kGeneric[] = {
      {"all", "overall"}, {"many", "many"}, {"medium", "medium"}, {"few", "few"}};
  for (const auto& [group, key] : kGeneric) {
    if (std::optional<double> value = number_at(line, {"server_eval", "generic", key})) {
      accuracy_[group] = *value;
    }
  }
  if (std::optional<double> value =
          number_at(line, {"evaluate", "metrics", "personalized", "mean"})) {
    accuracy_["personalized"] = *value;
  }
}

void LiveStatus::end_run(LiveRunState state, const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  refresh_locked();
  probe_fn_ = nullptr;
  if (state_ != LiveRunState::kRunning) return;
  state_ = state;
  message_ = message;
  ended_unix_ms_ = now_unix_ms_();
}

void LiveStatus::refresh_locked() const {
  if (probe_fn_) probe_ = probe_fn_();
}

LiveSnapshot LiveStatus::snapshot_locked() const {
  LiveSnapshot snapshot;
  snapshot.run_seq = run_seq_;
  snapshot.run = run_;
  snapshot.state = state_;
  snapshot.message = message_;
  snapshot.rounds_completed = static_cast<int>(lines_.size());
  snapshot.now_unix_ms = now_unix_ms_();
  snapshot.probe = probe_;
  snapshot.bytes_down = bytes_down_;
  snapshot.bytes_up = bytes_up_;
  snapshot.fit_failures = fit_failures_;
  snapshot.round_seconds = round_seconds_;
  snapshot.accuracy = accuracy_;
  // The probe's counters include what the lines since begin_run() reported, and the refusals
  // since the last line; the larger of the two is the live count.
  std::map<std::string, uint64_t> live = line_refusals_;
  if (probe_) {
    std::map<std::string, uint64_t> probed;
    add_refusals(probe_->refusals, &probed);
    for (const auto& [kind, n] : probed) live[kind] = std::max(live[kind], n);
  }
  snapshot.refusals = earlier_refusals_;
  for (const auto& [kind, n] : live) snapshot.refusals[kind] += n;
  return snapshot;
}

LiveSnapshot LiveStatus::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  refresh_locked();
  return snapshot_locked();
}

// The /api/status object:
//   run_seq, run_id, label, strategy, rounds, state ("idle", "running", "finished", "failed",
//   "stopped"), message, started_unix_ms, ended_unix_ms (null while running), now_unix_ms,
//   round (in progress, or the last completed), rounds_completed,
//   phase ("fit", "evaluate", "secagg", "idle", "done"), phase_started_unix_ms, phase_elapsed_s,
//   clients {connected, sessions, min_available, waiting}, selected, received,
//   failures [{client_id, reason}] (of the open phase), last_round (null before the first line:
//   {round, seconds, fit {selected, updates, failures}, evaluate {selected, reports, failures}}),
//   refusals {"<kind>": n, ..., total}, bytes {down, up}, accuracy {"<group>": latest}.
nlohmann::json LiveStatus::status_json() const {
  std::lock_guard<std::mutex> lock(mu_);
  refresh_locked();
  const LiveSnapshot s = snapshot_locked();
  const bool running = s.state == LiveRunState::kRunning;
  nlohmann::json status = {{"run_seq", s.run_seq},
                           {"run_id", s.run.run_id},
                           {"label", s.run.label},
                           {"strategy", s.run.strategy},
                           {"rounds", s.run.rounds},
                           {"state", live_run_state_name(s.state)},
                           {"message", s.message},
                           {"started_unix_ms", started_unix_ms_},
                           {"ended_unix_ms", nullptr},
                           {"now_unix_ms", s.now_unix_ms},
                           {"rounds_completed", s.rounds_completed}};
  if (!running && s.state != LiveRunState::kIdle) status["ended_unix_ms"] = ended_unix_ms_;
  const LiveProbe probe = s.probe.value_or(LiveProbe());
  int round = s.rounds_completed;
  if (!last_line_.is_null()) round = last_line_.value("round", round);
  if (running && probe.round > 0) round = probe.round;
  status["round"] = round;
  std::string phase = running ? probe.phase : (s.state == LiveRunState::kIdle ? "idle" : "done");
  int64_t phase_started = running ? probe.phase_started_unix_ms : ended_unix_ms_;
  if (phase_started == 0) phase_started = started_unix_ms_;
  status["phase"] = phase;
  status["phase_started_unix_ms"] = phase_started;
  status["phase_elapsed_s"] =
      std::max<double>(0, static_cast<double>(s.now_unix_ms - phase_started) / 1000.0);
  status["clients"] = {{"connected", probe.clients_connected},
                       {"sessions", probe.sessions},
                       {"min_available", probe.min_available_clients},
                       {"waiting", running && phase == "idle" &&
                                       probe.clients_connected < probe.min_available_clients}};
  const bool open = running && phase != "idle";
  status["selected"] = open ? probe.selected : 0;
  status["received"] = open ? probe.received : 0;
  status["failures"] = open ? failures_to_json(probe.failures) : nlohmann::json::array();
  if (last_line_.is_null()) {
    status["last_round"] = nullptr;
  } else {
    status["last_round"] = {{"round", last_line_.value("round", 0)},
                            {"seconds", number_at(last_line_, {"seconds"}).value_or(0.0)},
                            {"fit", phase_summary(last_line_, "fit", "updates")},
                            {"evaluate", phase_summary(last_line_, "evaluate", "reports")}};
  }
  nlohmann::json refusals = nlohmann::json::object();
  uint64_t total = 0;
  for (const auto& [kind, n] : s.refusals) {
    refusals[kind] = n;
    total += n;
  }
  refusals["total"] = total;
  status["refusals"] = std::move(refusals);
  status["bytes"] = {{"down", s.bytes_down}, {"up", s.bytes_up}};
  status["accuracy"] = s.accuracy;
  return status;
}

std::string LiveStatus::metrics_json(size_t since) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string text = "[";
  for (size_t i = since; i < lines_.size(); ++i) {
    if (i > since) text += ",\n";
    text += lines_[i];
  }
  text += "]";
  return text;
}

}  // namespace fedtail::coordinator

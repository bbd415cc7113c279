// LiveStatus: the live state of the coordinator's run, for the HTTP dashboard
// (coordinator/http_dashboard.h) and the Prometheus text (coordinator/prometheus_text.h).
//
// It is fed from two sides:
//   - pushes from the Coordinator: begin_run() when a run starts (it resets everything, so that one
//     LiveStatus serves the many runs a simulation makes one after another in one process),
//     add_round() with each metrics line as written to metrics.jsonl, end_run() when it ends;
//   - a probe (set_probe) that it calls, under its own lock, whenever a reader asks for the status:
//     the round engine's open phase and the client registry's counts (coordinator/live_feed.h).
// It owns copies of everything; the probe is the only thing it borrows, and clear_probe() returns
// only once no call of it is in progress, so the probe's owner may then go away.
//
// Thread-safe: every method locks an internal mutex (a leaf lock, except that the probe runs under
// it: a probe must not call back into the LiveStatus).
#ifndef FEDTAIL_COORDINATOR_LIVE_STATUS_H_
#define FEDTAIL_COORDINATOR_LIVE_STATUS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace fedtail::coordinator {

// What begin_run() is told about a run.
struct LiveRunInfo {
  std::string run_id;
  std::string strategy;
  // Shown by the dashboard, e.g. "fedavg seed 1, run 2/6" in a simulation; "" = none.
  std::string label;
  int rounds = 0;  // planned
};

// A run's state: kRunning from begin_run() to end_run(); kIdle before the first begin_run().
enum class LiveRunState { kIdle, kRunning, kFinished, kFailed, kStopped };

// "idle", "running", "finished", "failed", "stopped".
const char* live_run_state_name(LiveRunState state);

// One client's failure in a phase: why its task brought no accepted result.
struct LiveFailure {
  std::string client_id;
  std::string reason;
};

// What the probe reports of the engine and the registry at one moment.
struct LiveProbe {
  int round = 0;               // the round in progress (0 before the first)
  std::string phase = "idle";  // "fit", "evaluate", "secagg" while a phase is open, else "idle"
  int64_t phase_started_unix_ms = 0;  // when `phase` began (wall clock, ms since the epoch)
  int selected = 0;                   // tasks of the open phase
  int received = 0;                   // ... answered and accepted so far
  std::vector<LiveFailure> failures;  // ... failed so far
  int clients_connected = 0;          // clients of live sessions (what strategies choose from)
  int sessions = 0;                   // live and stale sessions
  int min_available_clients = 0;      // the number of connected clients a round waits for
  // Refusals counted by this coordinator process since the run (re)started: {"<kind>": n, ...};
  // a "total" key is ignored.
  nlohmann::json refusals = nlohmann::json::object();
};

// A copy of the state, for the Prometheus text (coordinator/prometheus_text.h) and tests.
struct LiveSnapshot {
  uint64_t run_seq = 0;  // begin_run() calls so far (the dashboard resets its charts when it moves)
  LiveRunInfo run;
  LiveRunState state = LiveRunState::kIdle;
  std::string message;       // end_run()'s message ("" when none)
  int rounds_completed = 0;  // metrics lines so far (those of a resumed run's earlier rounds too)
  int64_t now_unix_ms = 0;   // when the snapshot was taken
  std::optional<LiveProbe> probe;  // the latest probe (the last one taken, once the run ended)
  uint64_t bytes_down = 0;         // payload bytes, summed over the metrics lines' "bytes"
  uint64_t bytes_up = 0;
  uint64_t fit_failures = 0;                 // summed over the lines' fit.failures
  std::vector<double> round_seconds;         // each line's "seconds", in order
  std::map<std::string, uint64_t> refusals;  // by kind: earlier lines + the probe's counters
  // The latest accuracy of each group that has one: "all", "many", "medium", "few" (the server's
  // generic evaluation) and "personalized" (the mean of federated evaluation).
  std::map<std::string, double> accuracy;
};

class LiveStatus {
 public:
  // `now_unix_ms`: the wall clock (ms since the epoch); default: std::chrono::system_clock.
  explicit LiveStatus(std::function<int64_t()> now_unix_ms = {});
  LiveStatus(const LiveStatus&) = delete;
  LiveStatus& operator=(const LiveStatus&) = delete;

  // Starts a new run: forgets the previous one (its lines, probe and counters) and sets the state
  // to kRunning. `earlier_lines`: on resume, the metrics lines of the rounds already done, which
  // count as that run's lines (their refusals too, since the new process counts from zero).
  void begin_run(LiveRunInfo info, std::vector<nlohmann::json> earlier_lines = {});
  // Sets the probe called by readers while the run goes on. Replaces an earlier one.
  void set_probe(std::function<LiveProbe()> probe);
  // Takes a last probe (kept for the final status) and forgets the probe; returns once no call of
  // it is in progress. No effect without a probe.
  void clear_probe();
  // A round's metrics line (an object; anything else is ignored).
  void add_round(const nlohmann::json& line);
  // Ends the run with `state` (kFinished, kFailed or kStopped) and a message (e.g. the error);
  // clears the probe first. Only the first call after begin_run() counts.
  void end_run(LiveRunState state, const std::string& message = "");

  // The state now; calls the probe while the run goes on.
  LiveSnapshot snapshot() const;
  // The /api/status object (see the .cc for its keys); calls the probe while the run goes on.
  nlohmann::json status_json() const;
  // The /api/metrics text: a JSON array of the metrics lines from index `since` on (0-based; past
  // the end: "[]").
  std::string metrics_json(size_t since = 0) const;

 private:
  // With mu_ held: refreshes probe_ from the probe, if there is one.
  void refresh_locked() const;
  // With mu_ held: adds `line` (an object) to the lines and the sums over them.
  void add_round_locked(const nlohmann::json& line);
  LiveSnapshot snapshot_locked() const;

  // Constant after construction.
  const std::function<int64_t()> now_unix_ms_;

  mutable std::mutex mu_;
  // State below is guarded by mu_.
  uint64_t run_seq_ = 0;
  LiveRunInfo run_;
  LiveRunState state_ = LiveRunState::kIdle;
  std::string message_;
  int64_t started_unix_ms_ = 0;
  int64_t ended_unix_ms_ = 0;
  std::function<LiveProbe()> probe_fn_;
  mutable std::optional<LiveProbe> probe_;            // the latest probe taken
  std::vector<std::string> lines_;                    // the metrics lines, serialised
  nlohmann::json last_line_;                          // the latest line (null before the first)
  std::map<std::string, uint64_t> earlier_refusals_;  // summed over begin_run's earlier lines
  std::map<std::string, uint64_t> line_refusals_;     // summed over add_round's lines
  uint64_t bytes_down_ = 0;
  uint64_t bytes_up_ = 0;
  uint64_t fit_failures_ = 0;
  std::vector<double> round_seconds_;
  std::map<std::string, double> accuracy_;
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_LIVE_STATUS_H_

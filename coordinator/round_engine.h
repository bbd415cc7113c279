// RoundEngine: runs a federated run's rounds on its own thread, and is what the gRPC service calls
// to hand out tasks and take in results.
//
// One round (docs/architecture.md):
//   1. wait until federation.min_available_clients clients are live (logging "waiting for
//      clients: 1/3 connected" every few seconds; the thread sleeps on a condition variable);
//   2. strategy->configure_fit(round, live clients sorted by id, Rng::derive(seed, "fit",
//   {round}));
//      one task per selected client is queued, and handed to that client's next PullTask;
//   3. results are decoded (BundleDecoder limited to max_update_bytes), checked finite and folded
//      into the round's Aggregation as they arrive, one at a time (fold_mu_); at most
//      max_concurrent_uploads decodes run at once (upload_gate()), so memory is O(model × that);
//   4. the phase ends when every selected client has answered or at its deadline
//      (round_timeout_s); unanswered, late, lost and invalid answers become ClientFailures with a
//      reason, logged and handed to Aggregation::finish;
//   5. every eval.every rounds and at the last round: federated evaluation (configure_evaluate with
//      Rng::derive(seed, "evaluate", {round}) -> tasks -> aggregate_evaluate) and server-side
//      evaluation (strategy->evaluate on the server test set, when one is given);
//   6. the round's metrics line goes to on_round_end (metrics.jsonl + checkpoint) and to the log.
// After the last round every session's next PullTask is answered SHUTDOWN. A stopped run
// (request_stop) sends no SHUTDOWN, so that clients wait for a resumed coordinator.
//
// Every random choice is derived from (seed, purpose, round), and aggregation is order-independent,
// so a run resumed at round r+1 from round r's checkpoint behaves as the uninterrupted run.
//
// Simulated time (config "devices", coordinator/device_model.h): the engine keeps a simulated
// clock. A task handed out at simulated time t arrives at t + DeviceModel::task_seconds(...) (the
// client's measured or modeled compute, its bandwidth and latency); a synchronous round's fit
// phase lasts until its last arrival, or devices.deadline_s when set (later results are refused as
// late on the simulated clock and the round ends at the deadline). A client is offered tasks only
// while its availability says it is on; one that goes off before its result would arrive fails
// ("offline"). Evaluation takes no simulated time. Each metrics line carries "sim_time_s" and
// "clients_on" (the connected clients available at that time). The real
// transport still carries every task and result, as fast as the machine allows: the clock only
// decides what counts and in which order, never sleeps.
//
// Asynchronous runs (a strategy that implements strategies::AsyncStrategy, e.g. fedbuff): one
// long fit phase whose tasks are handed out as slots free up (max_concurrency in flight, clients
// drawn with Rng::derive(seed, "async", {task number}); a task's "round" on the wire is its task
// number, so each draws its own client-side randomness). Results are processed one at a time in
// arrival order: real arrival without devices; simulated arrival with devices, a result being
// processed only once no task still running could arrive before it (the task's lower bound,
// DeviceModel::task_seconds_lower_bound), so the order is the simulated clock's whatever the real
// timing. An update staler than max_staleness versions is refused and counted; the others go to
// the strategy's buffer; a full buffer is one server step: "rounds" counts steps, each with its
// metrics line and checkpoint. Tasks in flight when a run stops are not saved: a resumed run hands
// out fresh ones (from the checkpointed model, at the checkpointed simulated time). Federated
// evaluation runs once, after the last step.
//
// Threading: start()/wait()/request_stop() from the owner's thread; the service methods from any
// thread (gRPC's callback threads), concurrently. The strategy is called from the engine thread
// only, except Aggregation::add, which runs on the uploading thread under fold_mu_ (one at a time).
// Lock order: fold_mu_ -> mu_ -> (registry's mutex, PollWaiters' mutex). Callbacks handed to pull()
// are invoked without any engine lock held.
#ifndef FEDTAIL_COORDINATOR_ROUND_ENGINE_H_
#define FEDTAIL_COORDINATOR_ROUND_ENGINE_H_

#include <torch/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/base/status.h"
#include "common/data/dataset.h"
#include "common/learning/run_config.h"
#include "common/privacy/rdp_accountant.h"
#include "common/wire/bundle_codec.h"
#include "coordinator/client_registry.h"
#include "coordinator/device_model.h"
#include "coordinator/options.h"
#include "coordinator/poll_waiters.h"
#include "coordinator/refusals.h"
#include "coordinator/task.h"
#include "coordinator/upload_gate.h"
#include "coordinator/upload_watch.h"
#include "fedtail/v1/federation.pb.h"
#include "strategies/async_strategy.h"
#include "strategies/strategy.h"

namespace fedtail::coordinator {

struct EngineConfig {
  CoordinatorOptions options;               // rounds, strategy name, federation
  const RunConfig* run_config = nullptr;    // borrowed; must outlive the engine (never null)
  std::string run_id;                       // logged, and recorded in metrics lines
  int num_classes = 0;                      // of the data set (RunContext)
  std::vector<int64_t> train_class_counts;  // global long-tailed training counts (may be empty)
  // The balanced test set for server-side evaluation; null: none. Borrowed, outlives the engine.
  const Dataset* server_test = nullptr;
  // The server's balanced auxiliary set (RunContext::auxiliary); null: none. Borrowed.
  const Dataset* auxiliary = nullptr;
  torch::Device device = torch::kCPU;  // for server-side evaluation and computation
  // The first round to run: 1 for a fresh run (strategy->initialize is called first), checkpoint
  // round + 1 on resume (the strategy's state has been loaded; strategy->resume is called). A value
  // above options.rounds runs nothing and goes straight to SHUTDOWN.
  int first_round = 1;
  bool resumed = false;
  // On resume with config.privacy: the "privacy" object of the last kept metrics line (the
  // accountant's state: "rdp", "steps", "clip_norm"); null otherwise.
  nlohmann::json privacy_state;
  // On resume: the last kept metrics line (its "sim_time_s" and "tasks_issued" are continued);
  // null otherwise.
  nlohmann::json resume_line;
  // Simulated devices and clock (config.devices); null: none, real time only.
  std::shared_ptr<const DeviceModel> devices;
  // Called on the engine thread after each round with the round and its metrics line; a non-OK
  // status ends the run with that status. Empty: nothing is called.
  std::function<Status(int round, const nlohmann::json& line,
                       const strategies::ServerStrategy& strategy)>
      on_round_end;
};

// Where a phase's time went, summed over its accepted results (seconds).
struct PhaseTiming {
  double compute_s = 0;    // the clients' own training/evaluation time ("compute_s" they report)
  double upload_s = 0;     // first byte of an upload to its decoded, checked bundle
  double aggregate_s = 0;  // inside Aggregation::add (the strategy's fold)
};

// What a live display (coordinator/live_feed.h) sees of the engine at one moment.
struct EngineSnapshot {
  int round = 0;  // the round in progress (0 before the first)
  // "fit", "evaluate" or "secagg" while a phase is open; "idle" between phases (waiting for
  // clients, server-side evaluation); "done" once the engine thread has ended.
  std::string phase = "idle";
  std::chrono::system_clock::time_point phase_since;  // when the phase opened (or last closed)
  int selected = 0;                                   // tasks of the open phase
  int received = 0;                                   // ... answered and accepted so far
  std::vector<strategies::ClientFailure> failures;    // ... failed so far, in arrival order
};

// A result upload being received: the task it answers and the decoder its chunks go to. Made by
// begin_push, consumed by complete_push or abandon_push. Not thread-safe (one stream feeds it).
class PendingUpload {
 public:
  // Feeds one bundle chunk to the decoder; the first error is kept (sticky) and returned.
  Status add(const v1::BundleChunk& chunk);
  const std::string& task_id() const { return task_->id; }
  uint64_t chunks() const { return chunks_; }

 private:
  friend class RoundEngine;
  PendingUpload(std::shared_ptr<const Task> task, std::string session_token, int64_t num_examples,
                nlohmann::json metrics, const DecodeLimits& limits);

  std::shared_ptr<const Task> task_;
  std::string session_token_;
  int64_t num_examples_;
  nlohmann::json metrics_;
  BundleDecoder decoder_;
  uint64_t chunks_ = 0;
  SteadyClock::time_point started_ = SteadyClock::now();  // begin_push: the upload's first byte
};

class RoundEngine {
 public:
  // `strategy` and `registry` are borrowed and must outlive the engine.
  RoundEngine(EngineConfig config, strategies::ServerStrategy* strategy, ClientRegistry* registry);
  // Stops the run (request_stop) and joins the thread.
  ~RoundEngine();

  RoundEngine(const RoundEngine&) = delete;
  RoundEngine& operator=(const RoundEngine&) = delete;

  // Starts the engine thread. kFailedPrecondition when called twice.
  Status start();
  // Blocks until the engine thread ends and returns the run's status: OK when every round ran,
  // kUnavailable("stopped ...") after request_stop, or the first error (a strategy hook,
  // on_round_end). Called once.
  Status wait();
  // Makes the engine thread end soon: a round in progress is abandoned (no checkpoint for it).
  // Thread-safe, idempotent.
  void request_stop();
  // True once the engine thread has ended (for any reason).
  bool done() const;
  // Called (once, on the engine thread, with no lock held) when the thread is about to end.
  void set_on_done(std::function<void()> on_done);
  // Replaces federation.min_available_clients from now on (e.g. a simulation lowers it when a
  // worker process and its clients are gone, so the run goes on without them). >= 1. Thread-safe.
  void set_min_available_clients(int n);
  // The number of connected clients a round waits for.
  int min_available_clients() const;
  // A copy of the round and the open phase's progress. Thread-safe (takes mu_ briefly).
  EngineSnapshot snapshot() const;

  // ---- Service side: any thread ----

  // The outcome of pull(): an immediate answer, or the id of the parked poll.
  struct PullStart {
    Status status;                     // not OK: refused (too many polls parked by the session)
    std::optional<PollAnswer> answer;  // set: answer now (`done` was dropped)
    uint64_t parked_id = 0;            // else: `done` will be called once, from another thread
  };
  // A PullTask of `session`: a queued task for one of its clients, SHUTDOWN when the run is
  // over, else parks the poll for min(max_wait, poll_timeout_ms); `done` is then called once with
  // a task, WAIT or SHUTDOWN. A task handed out counts as delivered (see delivery_failed).
  PullStart pull(const SessionView& session, std::chrono::milliseconds max_wait,
                 PollWaiters::Callback done);
  // The parked poll's RPC was cancelled (the client went away): removes it. False when it had
  // already been completed (its callback runs or ran).
  bool cancel_pull(uint64_t parked_id);
  // A task handed to a PullTask could not be sent whole: it is queued again for its client.
  void delivery_failed(const std::string& task_id);

  // The outcome of begin_push().
  struct PushStart {
    Status status;  // not OK: answer the RPC with this error (e.g. kUnavailable: retry later)
    std::optional<v1::PushResultResponse> response;  // answer now without reading a bundle
    std::unique_ptr<PendingUpload> upload;           // else: read the bundle into it
  };
  // Checks a result header from `session`: the task must be of the current phase, for a client of
  // the session, not yet answered, and not late. Answers duplicates (duplicate = true, the first
  // outcome repeated), late or unknown tasks (accepted = false, with the reason) and client-side
  // failures (ok = false: recorded as the client's failure) at once; otherwise returns the upload
  // to read the bundle into (the task is then "receiving": a concurrent second push of it gets
  // kUnavailable).
  PushStart begin_push(const SessionView& session, const v1::ResultHeader& header);
  // Ends an upload whose stream ended normally: decodes, checks finiteness, folds (fit) or records
  // (evaluate) the result, and returns the answer. A refused result becomes the client's failure.
  v1::PushResultResponse complete_push(std::unique_ptr<PendingUpload> upload);
  // Ends an upload whose stream broke: the task is again awaiting a result (the client may retry).
  void abandon_push(std::unique_ptr<PendingUpload> upload);
  // Ends an upload that UploadWatch stopped (stalled or too slow; counted as kStalledUpload). The
  // first time for a task it is abandoned (the client may retry, as after a network cut: its new
  // stream is no longer blocked by the stalled one) and `reason` is kept for the deadline's
  // failure message; the second time the task fails at once.
  void stalled_push(std::unique_ptr<PendingUpload> upload, const std::string& reason);
  // Whether `task_id` no longer takes a result now (its phase closed, or it is not receiving).
  bool upload_closed(const std::string& task_id);
  // Ends uploads that stall or belong to a closed phase (federation.upload_idle_timeout_s, ...).
  UploadWatch& upload_watch() { return *watch_; }
  // Bounds concurrent decodes: the service takes a slot before reading an upload's bundle.
  UploadGate& upload_gate() { return gate_; }
  // Counts of refused inputs; the engine counts the results it refuses, the service the rest.
  // Each round's metrics line carries the refusals since the previous line ("refused").
  RefusalCounters& refusals() { return refusals_; }

  // A heartbeat for `task_id`: true when the task is no longer wanted (round over, answered,
  // unknown), i.e. the client should cancel it.
  bool heartbeat(const SessionView& session, const std::string& task_id);

  // A Join succeeded: wakes the engine; tasks of taken-over clients are offered again.
  void clients_joined(const Admission& admission);
  // A session left or was found dead: its clients' outstanding tasks fail with `reason`.
  void clients_gone(const RemovedSession& session, const std::string& reason);

  // After the run: blocks until every live session has been answered SHUTDOWN, or `timeout`.
  // True when all have been.
  bool wait_sessions_shut_down(std::chrono::milliseconds timeout);

  // Test hooks.
  // Times the engine thread woke from a wait (to check that waiting does not spin).
  uint64_t TEST_wakeups() const { return wakeups_.load(); }
  // The round in progress (0 before the first).
  int TEST_round() const;

 private:
  struct TaskEntry {
    enum class State { kQueued, kDelivered, kReceiving, kDone };
    std::shared_ptr<const Task> task;
    State state = State::kQueued;
    std::string delivered_to;  // session token, when delivered or receiving
    // Outcome, when kDone.
    bool received = false;  // a push of it arrived (so a later push is a duplicate)
    bool accepted = false;
    std::string reason;       // why it failed or was refused
    int stalls = 0;           // uploads of it that UploadWatch stopped
    std::string last_stall;   // why the last one was stopped
    uint64_t done_order = 0;  // when it became kDone, counting from 1 within the phase
    // Simulated clock (config.devices): when the task was handed out, a lower bound of its
    // arrival, and, once known, when it arrived or failed (< 0: unknown, or a real-time failure).
    double sim_start = 0;
    double sim_lower = 0;
    double sim_end = -1;
    // Asynchronous runs: the model version it was handed, its task number, when it was handed out
    // (real clock, for federation.round_timeout_s), and its accepted update until the engine
    // thread processes it (the entry then leaves the phase).
    int64_t version = 0;
    uint64_t seq = 0;
    SteadyClock::time_point issued;
    std::shared_ptr<strategies::ClientUpdate> held;
  };
  struct Phase {
    int round = 0;
    TaskKind kind = TaskKind::kFit;
    bool open = false;
    SteadyClock::time_point deadline;
    std::map<std::string, TaskEntry> tasks;                 // by task id
    std::map<std::string, std::deque<std::string>> queued;  // client id -> queued task ids
    int pending = 0;                                        // tasks not kDone
    int selected = 0;
    std::vector<strategies::ClientFailure> failures;
    std::vector<strategies::EvalReport> reports;
    strategies::Aggregation* aggregation = nullptr;  // fit only; owned by the engine thread
    bool hold = false;  // asynchronous: accepted updates are held in their TaskEntry, not folded
    uint64_t done_count = 0;  // tasks that became kDone (TaskEntry::done_order)
    uint64_t bytes_down = 0;  // payload bytes of the tasks handed out (re-deliveries count again)
    uint64_t bytes_up = 0;    // payload bytes of the results received whole
    PhaseTiming timing;
  };
  struct PhaseOutcome {
    int selected = 0;
    int answered = 0;
    uint64_t bytes_down = 0;
    uint64_t bytes_up = 0;
    PhaseTiming timing;
    std::vector<strategies::ClientFailure> failures;
    std::vector<strategies::EvalReport> reports;
    double sim_seconds = 0;  // simulated duration of the phase (devices only)
  };
  struct Delivery {
    PollWaiters::Callback done;
    std::shared_ptr<const Task> task;
  };

  void thread_main();
  Status run_rounds();
  Status run_round(int round);
  // Waits until enough clients are live: `needed`, or min_available_clients() when `needed` is 0
  // (re-read while waiting). False when stopped.
  bool wait_for_clients(int needed, const char* why);
  // Configures and runs one phase. Fails with kUnavailable when stopped.
  // `timeout_s` > 0 replaces federation.round_timeout_s as the phase's deadline.
  Result<PhaseOutcome> run_phase(int round, TaskKind kind,
                                 const std::vector<strategies::TaskSpec>& specs,
                                 strategies::Aggregation* aggregation, double timeout_s = 0);

  // A task for `spec` (its bundle's digest computed once per bundle, cached in *digests).
  std::shared_ptr<const Task> make_task(
      std::string id, int round, TaskKind kind, const strategies::TaskSpec& spec,
      uint64_t deadline_unix_ms,
      std::map<const TensorBundle*, std::shared_ptr<const PayloadDigest>>* digests) const;
  // Federated evaluation (when `federated`) and server-side evaluation after round `round`, into
  // *line; adds the phases' timing and bytes.
  Status evaluate_round(int round, bool federated, nlohmann::json* line, nlohmann::json* timing,
                        uint64_t* bytes_down, uint64_t* bytes_up);
  // Completes the round's metrics line (seconds, bytes, timing, refusals, sim_time_s), logs it and
  // hands it to on_round_end.
  Status finish_line(int round, const std::string& where, SteadyClock::time_point started,
                     nlohmann::json line, nlohmann::json timing, uint64_t bytes_down,
                     uint64_t bytes_up);
  // The connected clients that may take a task now: all of them without devices, those available
  // at the simulated time sim_now_ with devices.
  std::vector<strategies::ClientInfo> clients_now() const;
  // With devices: the ids of the connected clients off at sim_now_, but those in `except`.
  std::vector<std::string> clients_off_now(const std::set<std::string>& except) const;

  // Asynchronous runs (round_engine_async.cc).
  Status run_async(strategies::AsyncStrategy* async);

  // Secure aggregation and differential privacy (round_engine_private.cc).
  struct PrivateFit {
    PhaseOutcome outcome;    // of the fit (masked-input) phase, failures of every stage merged
    nlohmann::json metrics;  // what the strategy's Aggregation::finish returned
    nlohmann::json secagg;   // the metrics line's "secagg" object (null without secagg)
    nlohmann::json privacy;  // its "privacy" object (null without config.privacy)
  };
  // Checks, before the first round, that the strategy supports mean aggregation and the options
  // fit the run; sets up the accountant (restored from config_.privacy_state on resume) and
  // calibrates the noise multiplier from privacy.target_epsilon when none is given.
  Status prepare_privacy();
  bool private_fit() const;
  // Whether round `round` may run within privacy.target_epsilon (false: the run ends before it),
  // and whether it is the last one that may (*last). kInvalidArgument when no noise multiplier can
  // keep the planned rounds within the budget (calibration, at the first DP round).
  Result<bool> privacy_allows(int round, int selected, bool* last);
  Result<PrivateFit> run_private_fit(int round, const std::vector<strategies::TaskSpec>& specs);
  Result<PrivateFit> run_secure_fit(int round, const std::vector<strategies::TaskSpec>& specs,
                                    std::shared_ptr<const TensorBundle> base);
  Result<PrivateFit> run_central_dp_fit(int round, const std::vector<strategies::TaskSpec>& specs,
                                        std::shared_ptr<const TensorBundle> base);
  // Hands the strategy's Aggregation the round's mean (none: a failed round) and finishes it.
  Result<nlohmann::json> finish_with_mean(int round, std::optional<TensorBundle> mean,
                                          const std::map<std::string, int64_t>& contributors,
                                          nlohmann::json loss,
                                          const std::vector<strategies::ClientFailure>& failures);
  // Accounts one DP round and returns the metrics line's "privacy" object.
  nlohmann::json account_privacy_round(int selected, double effective_noise_multiplier);
  void finish_run();

  // With mu_ held.
  void expire_sessions_locked();
  void fail_locked(TaskEntry& entry, const std::string& reason);
  // Marks `entry` kDone (accepted or not): its done_order, the phase's pending count.
  void mark_done_locked(TaskEntry& entry);
  // Simulated clock: where a result of `entry` arrives (sim_end), and the reason it does not count
  // (offline before it arrives, or after devices.deadline_s of a synchronous fit), if any.
  std::optional<std::string> settle_simulated_locked(TaskEntry& entry,
                                                     const nlohmann::json& metrics,
                                                     int64_t num_examples, uint64_t bytes_up);
  void requeue_locked(TaskEntry& entry, std::vector<Delivery>* deliveries);
  TaskEntry* find_current_locked(const std::string& task_id);
  static void deliver(std::vector<Delivery>& deliveries);
  v1::PushResultResponse refuse_locked(TaskEntry& entry, Refusal kind, const std::string& reason);

  // Constant after construction.
  const EngineConfig config_;
  strategies::ServerStrategy* const strategy_;
  ClientRegistry* const registry_;
  const std::string incarnation_;  // random, makes task ids unique across coordinator restarts
  const std::shared_ptr<const TensorBundle> empty_bundle_;
  const std::shared_ptr<const PayloadDigest> empty_digest_;

  UploadGate gate_;
  PollWaiters waiters_;
  RefusalCounters refusals_;
  nlohmann::json refusals_reported_;  // engine thread only: the snapshot in the last metrics line
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> wakeups_{0};
  std::atomic<int> min_available_override_{0};  // > 0: replaces federation.min_available_clients
  int completed_round_ = 0;   // engine thread only: the last round whose checkpoint was written
  double sim_now_ = 0;        // engine thread only: the simulated clock (devices), seconds
  uint64_t async_tasks_ = 0;  // engine thread only: asynchronous tasks handed out so far
  // Engine thread only: differential privacy's state (config.privacy).
  privacy::RdpAccountant accountant_;
  double dp_clip_norm_ = 0;            // the current clip norm (adaptive clipping changes it)
  double dp_noise_multiplier_ = 0;     // z, configured or calibrated
  int64_t dp_population_ = 0;          // the clients rounds sample from
  bool privacy_budget_spent_ = false;  // the run ended early at privacy.target_epsilon

  // Serialises folding into the Aggregation, and the engine thread's closing of a phase.
  std::mutex fold_mu_;

  mutable std::mutex mu_;
  std::condition_variable cv_;    // phase progress, clients joining or leaving, stop, shutdown sent
  std::unique_ptr<Phase> phase_;  // guarded by mu_; null between phases
  std::map<std::string, TaskEntry> retired_;  // guarded by mu_; the previous phase's tasks
  int round_ = 0;                             // guarded by mu_
  bool finished_ = false;                     // guarded by mu_; SHUTDOWN is being answered
  bool done_ = false;                         // guarded by mu_
  bool started_ = false;                      // guarded by mu_
  // Guarded by mu_: when the phase last opened or closed (EngineSnapshot::phase_since).
  std::chrono::system_clock::time_point phase_since_;
  std::set<std::string> shutdown_sent_;  // guarded by mu_; session tokens
  std::function<void()> on_done_;        // guarded by mu_
  Status result_;                        // written by the engine thread before done_

  // Last: its timer thread calls upload_closed(), so it stops before anything else goes.
  std::unique_ptr<UploadWatch> watch_;
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_ROUND_ENGINE_H_

// TaskRunner: the clients one fedtail-client process hosts, and the execution of their tasks.
//
// A process hosts one client (client.json) or a range of virtual clients (--clients A-B: partitions
// A..B, ids "client-<k>"). prepare() builds, from the run config the coordinator sent at Join, what
// the tasks need, once for all hosted clients: the FederatedData (config.data, with data_root
// overriding config.data.root), each client's train and personalised test Dataset, one Model per
// architecture in use (shared by the virtual clients of that architecture: an algorithm loads the
// task's bundle or the client's own state into it first; with config.model.groups the client with
// partition k uses groups[k % size], and reports that architecture at Join), and the
// ClientAlgorithm of the run's strategy from the registry.
//
// handle() runs one task end to end: decode → load the client's ClientState → fit or evaluate on a
// worker thread, with heartbeats sent meanwhile (a "cancel" answer abandons the result) → save the
// ClientState (before the upload, so that a crash after it re-runs the task from the same state) →
// push the result. A failure inside the task (bad bundle, strategy error, LibTorch exception) is
// reported to the coordinator as ok=false with the error; only a lost coordinator or a stop request
// make handle() return an error.
//
// Threading: prepare(), join_request() and handle() are called from one thread (the client loop);
// request_stop() from any thread. handle() runs the task on a worker thread it owns.
#ifndef FEDTAIL_CLIENT_TASK_RUNNER_H_
#define FEDTAIL_CLIENT_TASK_RUNNER_H_

#include <torch/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "client/attack.h"
#include "client/connection.h"
#include "client/secure_sessions.h"
#include "client/state_store.h"
#include "common/base/status.h"
#include "common/data/dataset.h"
#include "common/data/federated_data.h"
#include "common/learning/feature_cache.h"
#include "common/learning/models.h"
#include "common/learning/run_config.h"
#include "common/security/join_token.h"
#include "fedtail/v1/federation.pb.h"
#include "strategies/strategy.h"

namespace fedtail::client {

// One client a process hosts.
struct HostedClient {
  std::string id;     // "client-3"
  int partition = 0;  // index into the run's partition
};

// How long a join token that a client makes from the secret (--token-secret-file) is valid, in
// seconds from when it is made.
constexpr int64_t kDerivedTokenLifetimeS = 24 * 3600;

struct TaskRunnerOptions {
  std::vector<HostedClient> clients;  // at least one; ids unique
  // True for --clients A-B (announced as JoinRequest.virtual_clients).
  bool virtual_clients = false;
  // Where the dataset's files are on this machine (--data-root, or client.json's data_root); ""
  // = the dataset's default location (default_data_root()). Always replaces the run config's
  // config.data.root: the coordinator does not choose which folder the client reads (a differing
  // value is logged once per prepare()).
  std::string data_root;
  // Where this machine's copy of a TorchScript model is (--model-path, or client.json's
  // model_path); "" = the run config's model.path. Checked against the coordinator's pinned
  // layout and digest (torchscript_model.h) before the client joins its run.
  std::string model_path;
  // --device (auto|cpu|cuda|cuda:i); "" = the run config's "device".
  std::string device;
  // LibTorch intra-op threads; 0 = the run config's "threads".
  int threads = 0;
  // The coordinator's join-token secret, when this process may know it (a simulation worker):
  // each virtual client's JoinRequest entry then carries its own token, made at each Join for
  // `token_federation` and valid for kDerivedTokenLifetimeS. "" = none.
  std::string token_secret;
  // --federation: the coordinator's federation, named by the tokens made from token_secret.
  std::string token_federation = kDefaultFederation;
  // --attack: red-team mode for robustness benchmarks (client/attack.h). Default: honest.
  AttackOptions attack;
};

// Client-side bounds on what the coordinator asks for, so that a hostile or misconfigured
// coordinator cannot make the client spin or hang on to a result for weeks:
// JoinResponse.heartbeat_interval_ms is clamped to [kMinHeartbeatIntervalMs,
// kMaxHeartbeatIntervalMs], and a result is given up kMaxResultDeliveryMs after its upload began at
// the latest, whatever the task's deadline_unix_ms says.
constexpr uint32_t kMinHeartbeatIntervalMs = 100;
constexpr uint32_t kMaxHeartbeatIntervalMs = 60'000;
constexpr uint64_t kMaxResultDeliveryMs = 60 * 60 * 1000;

// The result of one task, as pushed (exposed for tests and logs).
struct TaskOutcome {
  enum class Kind {
    kPushed,     // the result was delivered (accepted or refused: see `response`)
    kCancelled,  // the coordinator cancelled the task; nothing was pushed
    kNoResult,   // the task was not runnable and the refusal could not be delivered either
  };
  Kind kind = Kind::kNoResult;
  bool ok = false;    // the task itself succeeded
  std::string error;  // why not, when !ok
  v1::PushResultResponse response;
};

class TaskRunner {
 public:
  // `connection` and `store` must outlive the runner.
  TaskRunner(TaskRunnerOptions options, Connection* connection, StateStore* store);
  ~TaskRunner();

  TaskRunner(const TaskRunner&) = delete;
  TaskRunner& operator=(const TaskRunner&) = delete;

  // Sets the run up from the coordinator's Join answer (see the file comment). Does nothing when
  // the run (run_id and config text) is the one already prepared. Errors name the field or file:
  // the run config (kInvalidArgument "config.…"), a partition outside [0, config.data.clients),
  // the data (kNotFound naming the file), the device, the strategy (kNotFound listing the
  // registered ones). Blocks while the data loads.
  Status prepare(const v1::JoinResponse& join);

  // The JoinRequest fields describing the hosted clients (num_examples and model_family are 0 / ""
  // until prepare() has run).
  v1::JoinRequest join_request() const;

  // Runs `task` (a FIT, EVALUATE or SECAGG task) and pushes its result, as described in the file
  // comment. Returns the outcome; kUnavailable("stopping") when stop was requested (the task is
  // abandoned: its worker may still be running, see wait_for_worker), or the connection's error
  // when the result could not be delivered (kDeadlineExceeded after the round's deadline,
  // kUnavailable when the coordinator stayed unreachable).
  Result<TaskOutcome> handle(PulledTask task);

  // Abandons the running task, if any: handle() returns promptly. Thread-safe.
  void request_stop();

  // Waits up to `timeout_ms` for an abandoned task's worker thread; true when none is running.
  bool wait_for_worker(int64_t timeout_ms);

  // The poll time to ask for (config.federation.poll_timeout_ms, default 20000, at most
  // kMaxPollTimeoutMs).
  uint32_t poll_timeout_ms() const { return poll_timeout_ms_; }
  const std::string& run_id() const { return run_id_; }
  bool prepared() const { return config_ != nullptr; }

 private:
  struct Client {
    HostedClient hosted;
    std::string arch;  // its model's architecture (config.model.arch or its group's)
    Dataset train;
    Dataset test;
    std::vector<int64_t> test_rows;  // `test` as rows of the run's balanced test set
  };

  // What the worker thread produces.
  struct WorkResult {
    Status status;
    strategies::FitOutput fit;    // FIT
    nlohmann::json eval_metrics;  // EVALUATE
    int64_t eval_examples = 0;
    double seconds = 0;
  };

  Result<strategies::ClientAlgorithm*> algorithm_for(const std::string& strategy);
  // Runs on the worker thread; touches only its arguments, the models and the run's constants.
  WorkResult run_task(const PulledTask& task, Client& client,
                      strategies::ClientAlgorithm* algorithm, const nlohmann::json& task_config,
                      strategies::ClientState* state);
  // Runs `work` on the worker thread, sending heartbeats meanwhile. Returns false when the task was
  // cancelled by the coordinator or stop was requested (then *stopped says which).
  bool run_with_heartbeats(const std::string& task_id, const std::function<void()>& work,
                           bool* stopped);
  // A SECAGG task: runs its stage (SecureSessions) and pushes the reply as metrics {"secagg"}.
  Result<TaskOutcome> handle_secagg(const v1::TaskHeader& header, const std::string& client_id,
                                    const nlohmann::json& task_config);
  Result<TaskOutcome> push(const v1::TaskHeader& header, bool ok, const std::string& error,
                           int64_t num_examples, const nlohmann::json& metrics,
                           const TensorBundle& bundle);

  // Constant after construction.
  const TaskRunnerOptions options_;
  Connection* const connection_;
  StateStore* const store_;

  // The prepared run (set by prepare(), read by handle(); same thread).
  std::string run_id_;
  std::string run_config_json_;
  std::unique_ptr<RunConfig> config_;
  std::string strategy_name_;
  nlohmann::json strategy_config_ = nlohmann::json::object();
  FederatedData data_;
  std::map<std::string, Client> clients_;  // by id
  std::map<std::string, Model> models_;    // by architecture
  // Backbone features of data_.test shared by the hosted clients' evaluations (null for one
  // client).
  std::unique_ptr<FeatureCache> test_features_;
  std::map<std::string, std::unique_ptr<strategies::ClientAlgorithm>> algorithms_;  // by strategy
  torch::Device device_ = torch::kCPU;
  uint32_t poll_timeout_ms_ = 20000;
  uint32_t heartbeat_interval_ms_ = 5000;
  uint64_t max_update_bytes_ = 0;
  // Secure aggregation's per-round keys and shares (memory only).
  SecureSessions secure_;

  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable done_cv_;
  bool worker_done_ = true;  // guarded by mu_
  std::thread worker_;
};

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_TASK_RUNNER_H_

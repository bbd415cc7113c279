// The strategy API: how a federated algorithm plugs into fedtail.
//
// A strategy is a pair registered under one name (strategies/registry.h):
//   - a ServerStrategy, driven by the coordinator's round engine: it picks clients and instructions
//     for each round, folds their updates in as they arrive (Aggregation: O(model) memory whatever
//     the number of clients), evaluates the global model, and saves/loads its whole state for exact
//     resume;
//   - a ClientAlgorithm, run by each client for each task: local training (fit) and evaluation.
// Data flow of one round (docs/architecture.md): configure_fit -> tasks -> ClientAlgorithm::fit on
// each client -> Aggregation::add per update as it arrives -> Aggregation::finish -> checkpoint.
//
// Threading: the round engine calls a ServerStrategy (and its Aggregations) from one thread at a
// time; a ClientAlgorithm is called by one thread at a time. Neither may throw: errors are Status
// values (LibTorch exceptions are caught inside, at the strategy's boundary).
// Randomness: every hook that chooses gets an Rng derived from the run seed, the round and the
// client.
#ifndef FEDTAIL_STRATEGIES_STRATEGY_H_
#define FEDTAIL_STRATEGIES_STRATEGY_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/data/dataset.h"
#include "common/learning/models.h"
#include "common/learning/run_config.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail {
class FeatureCache;  // common/learning/feature_cache.h
}  // namespace fedtail

namespace fedtail::strategies {

// ---------------------------------------------------------------------------------------------
// Server side

// What the coordinator knows of one available client (sorted by id when handed to a strategy).
struct ClientInfo {
  std::string id;
  int64_t num_examples = 0;  // local training examples, as the client reported at Join
  std::string model_family;  // its model architecture (heterogeneous federations)
};

// The run, constant for its whole length. Borrowed: the pointers stay valid for the strategy's
// lifetime.
struct RunContext {
  const RunConfig* config = nullptr;  // data, model, local, eval sections
  nlohmann::json strategy_config;     // config.strategy: the strategy's own options (an object)
  int total_rounds = 0;               // rounds planned (rounds count from 1)
  int num_classes = 0;                // classes of the data set
  std::vector<int64_t> train_class_counts;  // global long-tailed training counts (may be empty)
  // The balanced auxiliary set only the server holds (config.data.auxiliary_per_class examples
  // per class, never given to a client); null when the run has none.
  const Dataset* auxiliary = nullptr;
  torch::Device device = torch::kCPU;  // the coordinator's device, for server-side computation
};

// One client's instruction for one round. The bundle is shared by every client given the same one.
struct TaskSpec {
  std::string client_id;
  nlohmann::json config = nlohmann::json::object();  // sent to the client as the task's config
  std::shared_ptr<const TensorBundle> bundle;        // null = an empty bundle
  // Fit tasks: the tensors the client's update must carry, exactly (names, dtypes, shapes; the
  // values are not read), or null for no such check. The coordinator checks an update's header
  // against it before allocating anything, so a client cannot make it reserve more than the
  // expected model (a refusal counted as incompatible_update). FedAvgServer sets its global
  // bundle; a strategy whose updates differ from what it sends sets its own, or null.
  std::shared_ptr<const TensorBundle> expected_update;
};

// One client's answer to a fit task.
struct ClientUpdate {
  std::string client_id;
  int64_t num_examples = 0;  // training examples behind the update (> 0)
  TensorBundle bundle;       // digest verified, finite, within the size limit
  nlohmann::json metrics = nlohmann::json::object();
  // The clients behind it: 1, except for the one update that secure aggregation or central DP
  // hands over (see ServerStrategy::supports_mean_aggregation), the mean of this many clients'.
  int contributors = 1;
};

// A selected client that gave no usable answer: late, crashed, left, or its update was refused.
struct ClientFailure {
  std::string client_id;
  std::string reason;  // e.g. "deadline exceeded", "update refused: tensor \"x\": shape ..."
};

// One client's answer to an evaluate task.
struct EvalReport {
  std::string client_id;
  int64_t num_examples = 0;
  nlohmann::json metrics = nlohmann::json::object();
};

// Folds one round's updates in as they arrive. Created by ServerStrategy::begin_aggregation.
class Aggregation {
 public:
  virtual ~Aggregation() = default;

  // Folds `update` in. A non-OK status refuses it (bad names/shapes/dtypes, num_examples <= 0): the
  // update then has no effect and the engine reports the client as failed with this message.
  virtual Status add(ClientUpdate update) = 0;

  // Ends the round: installs the new global state in the strategy (or keeps the old one, e.g. with
  // too few updates) and returns the round's training metrics (a JSON object). `failures` lists the
  // selected clients that gave no usable update. Called once; the Aggregation is then destroyed.
  virtual Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) = 0;
};

// What server-side evaluation gets: the coordinator's own test set (the balanced one).
struct ServerEvalContext {
  const Dataset* test = nullptr;            // never null when evaluate() is called
  std::vector<int64_t> train_class_counts;  // for the Many/Medium/Few groups
  torch::Device device = torch::kCPU;
  int batch_size = 512;
};

class ServerStrategy {
 public:
  virtual ~ServerStrategy() = default;
  ServerStrategy() = default;
  ServerStrategy(const ServerStrategy&) = delete;
  ServerStrategy& operator=(const ServerStrategy&) = delete;

  // Builds the initial global state (e.g. a model initialised from `rng`). Called once per run,
  // before round 1, and not on resume (load_state, then resume, are called instead). `run`
  // outlives the strategy.
  virtual Status initialize(const RunContext& run, Rng& rng) = 0;

  // Called on resume, after load_state and before the first resumed round, with the same context
  // initialize got: for a strategy that borrows something of the run (e.g. the auxiliary set)
  // rather than saving it. The default does nothing.
  virtual Status resume(const RunContext& /*run*/) { return Status::OK(); }

  // The clients to train in round `round` and what each gets. `available` is sorted by id. An empty
  // list skips the round's training. kFailedPrecondition when too few clients are available.
  virtual Result<std::vector<TaskSpec>> configure_fit(int round,
                                                      const std::vector<ClientInfo>& available,
                                                      Rng& rng) = 0;

  // A fresh Aggregation for round `round` (one at a time).
  virtual Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) = 0;

  // The clients to evaluate after round `round` (federated evaluation); empty for none.
  virtual Result<std::vector<TaskSpec>> configure_evaluate(int round,
                                                           const std::vector<ClientInfo>& available,
                                                           Rng& rng) = 0;

  // Combines the clients' evaluation reports into metrics (e.g. personalised accuracy).
  virtual Result<nlohmann::json> aggregate_evaluate(int round,
                                                    const std::vector<EvalReport>& reports,
                                                    const std::vector<ClientFailure>& failures) = 0;

  // Evaluates the global model(s) on the coordinator's test set; returns metrics such as
  // {"generic": AccuracyReport JSON, ...}. Strategies without a global model return {}.
  virtual Result<nlohmann::json> evaluate(int round, const ServerEvalContext& context) = 0;

  // Whether the round's result may be computed from the example-weighted mean of its updates
  // alone, as secure aggregation (config.secagg) and central differential privacy
  // (config.privacy) need: the coordinator then computes that mean itself (masked, or clipped and
  // noised) and hands the round's Aggregation one update, client_id "(aggregate)", whose bundle is
  // the mean (the task bundle plus the mean change of its floating-point tensors), num_examples
  // the clients' sum and `contributors` their number. Called once before the first round. OK when
  // the strategy's aggregation is such a mean (the FedAvg family); otherwise kFailedPrecondition
  // saying why. Default: not supported.
  virtual Status supports_mean_aggregation() const {
    return Status::FailedPrecondition(
        "its aggregation is not a weighted mean of the clients' updates");
  }

  // The current global bundle, as the coordinator writes it out (e.g. final_model.bundle).
  virtual std::shared_ptr<const TensorBundle> global_bundle() const = 0;

  // The whole state (global model, optimiser state, anchors...) as one bundle, for checkpoints.
  // load_state(save_state()) must restore a strategy that behaves bit-identically.
  virtual Result<TensorBundle> save_state() const = 0;
  virtual Status load_state(TensorBundle state) = 0;
};

// ---------------------------------------------------------------------------------------------
// Client side

// A client's persistent state: survives rounds and restarts (the client runtime stores it after
// every task, atomically). Keep it compact: a simulation worker holds one per virtual client.
struct ClientState {
  TensorBundle tensors;                              // e.g. FedLoGe's local head φ_k
  nlohmann::json values = nlohmann::json::object();  // e.g. FedSA's previous local gap
};

// Everything a ClientAlgorithm call may use. Borrowed for the duration of one call.
struct ClientContext {
  std::string client_id;
  int round = 0;
  const RunConfig* config = nullptr;  // the run's config (from the coordinator)
  nlohmann::json strategy_config = nlohmann::json::object();  // config.strategy
  nlohmann::json task_config = nlohmann::json::object();      // the TaskSpec's config
  const Dataset* train = nullptr;                             // local training data
  const Dataset* test = nullptr;             // personalised test data (may be empty)
  std::vector<int64_t> global_train_counts;  // global counts, for class groups
  torch::Device device = torch::kCPU;
  Rng* rng = nullptr;            // derived from (seed, client, round, task)
  ClientState* state = nullptr;  // this client's persistent state
  // A model of this client's architecture, on `device`. Its weights on entry are unspecified (it is
  // shared between the virtual clients of a worker): load what you need from the task's bundle.
  Model* model = nullptr;
  // Where the host offers it (a worker of several virtual clients): `test` as rows of the run's
  // balanced test set, and a cache of backbone features over that set shared by the worker's
  // clients (common/learning/feature_cache.h). Evaluation that runs the global backbone unchanged
  // passes the global bundle's digest as the version; both null otherwise.
  const std::vector<int64_t>* test_rows = nullptr;
  FeatureCache* test_features = nullptr;
};

struct FitOutput {
  TensorBundle update;                                // what goes back to the coordinator
  int64_t num_examples = 0;                           // examples trained on (aggregation weight)
  nlohmann::json metrics = nlohmann::json::object();  // e.g. {"loss": 0.42}
};

class ClientAlgorithm {
 public:
  virtual ~ClientAlgorithm() = default;
  ClientAlgorithm() = default;
  ClientAlgorithm(const ClientAlgorithm&) = delete;
  ClientAlgorithm& operator=(const ClientAlgorithm&) = delete;

  // Local training for one fit task, starting from the task's bundle `global`.
  virtual Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) = 0;

  // Local evaluation for one evaluate task; returns metrics the server strategy understands, by
  // convention {"correct", "examples", "per_class_correct", "per_class_examples", ...}.
  virtual Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) = 0;
};

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_STRATEGY_H_

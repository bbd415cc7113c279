// FedAvg (McMahan et al., 2017): every selected client trains the global model on its data; the
// server replaces the global model by the example-weighted mean of the returned models, every
// state tensor included (BatchNorm running statistics and counters too; the FedLoGe authors' code).
//
// config.strategy keys: RoundOptions (strategies/sampling.h), "robust" included: update-norm
// clipping (streaming) or a buffered robust rule (median, trimmed mean, Krum, Multi-Krum, Bulyan)
// in place of the weighted mean, with metrics under "robust". Nothing else.
//
// FedAvgServer is also the base of FedAvg variants that change only the server update (FedAvgM)
// or only the client loss (FedProx pairs it with FedProxClient): override next_global() and the
// extra-state hooks, or FedAvgClient::train().
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_FEDAVG_FEDAVG_H_
#define FEDTAIL_STRATEGIES_FEDAVG_FEDAVG_H_

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/data/augment.h"
#include "common/learning/model_options.h"
#include "common/learning/train_loop.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"
#include "strategies/weighted_average.h"

namespace fedtail::strategies {

class FedAvgServer : public ServerStrategy {
 public:
  // A server recording `name` (e.g. "fedavg") in its bundles' metadata and its saved state.
  FedAvgServer(std::string name, RoundOptions options);

  // Builds the global model from run.config->model (num_classes from the run when 0; the other
  // sizes must be filled in) with draws from `rng`: its module_state (parameters and buffers) is
  // the global bundle, with metadata {"strategy": name, "round": 0}. Errors: those of
  // run_model_options and make_model.
  Status initialize(const RunContext& run, Rng& rng) override;

  // Samples RoundOptions::fraction_fit of `available` (sample_clients); every task shares the
  // global bundle (as its bundle and its expected_update) and has an empty config.
  // kFailedPrecondition before initialize/load_state or when fewer than min_fit_clients are
  // available.
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // A WeightedAverage over bundles shaped like the global one. The Aggregation borrows this
  // server, which must outlive it. Its finish() installs the new global model (next_global of the
  // mean, metadata round = `round`) and returns
  //   {"updated": true, "updates", "failures", "examples", "loss"}
  // where "loss" is the example-weighted mean of the clients' "loss" metrics (null if none), or,
  // keeping the old model, the same with "updated": false and a "reason": fewer valid updates
  // than min_fit_clients, or failures with accept_failures false. A second update from the same
  // client in a round is refused. kFailedPrecondition before initialize/load_state.
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // Samples fraction_evaluate / min_evaluate_clients (none when both are 0); tasks share the
  // global bundle.
  Result<std::vector<TaskSpec>> configure_evaluate(int round,
                                                   const std::vector<ClientInfo>& available,
                                                   Rng& rng) override;
  // aggregate_personalized_accuracy (strategies/classifier_eval.h).
  Result<nlohmann::json> aggregate_evaluate(int round, const std::vector<EvalReport>& reports,
                                            const std::vector<ClientFailure>& failures) override;
  // evaluate_classifier of the global bundle: {"generic", "generic_by_count_rule"}.
  Result<nlohmann::json> evaluate(int round, const ServerEvalContext& context) override;

  // OK unless config.strategy.robust is enabled (a robust rule or per-update clipping needs each
  // update). Subclasses whose aggregation is not the weighted mean override it to refuse.
  Status supports_mean_aggregation() const override;

  // Null before initialize/load_state.
  std::shared_ptr<const TensorBundle> global_bundle() const override { return global_; }

  // The state: the global tensors under their own names, then the tensors save_extra_state adds
  // (names containing '/'), with metadata {"strategy", "format": 1, "model", "input",
  // "global_metadata"}: everything evaluate() needs, so that load_state alone (without
  // initialize) restores a server that behaves bit-identically. kFailedPrecondition before
  // initialize/load_state.
  Result<TensorBundle> save_state() const override;
  // kInvalidArgument when `state` was saved by another strategy name or format, lacks the
  // metadata above, has no global tensor, or is refused by load_extra_state; the server is then
  // unchanged.
  Status load_state(TensorBundle state) override;

  const std::string& name() const { return name_; }
  const RoundOptions& round_options() const { return options_; }

 protected:
  // The new global model from the round's weighted mean `average` (same tensors as the current
  // global()). Default: `average` itself (FedAvg). Called only when the round updates the model;
  // an error fails finish() and keeps the old model.
  virtual Result<TensorBundle> next_global(int round, TensorBundle average);

  // Adds a subclass's state to `state` as tensors whose names contain '/' (e.g.
  // "velocity/fc.weight") and/or metadata keys other than the base's. Default: nothing.
  virtual Status save_extra_state(TensorBundle* state) const;
  // Gets the tensors of a saved state whose names contain '/' (and the whole state's metadata)
  // after the base part has been checked, before anything is installed: on error the server
  // stays unchanged, so validate first, then commit. `global` is the global bundle being loaded.
  // Default: kInvalidArgument when `extra` holds any tensor.
  virtual Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                  const TensorBundle& global);

  // The current global bundle. Precondition: initialized or loaded.
  const TensorBundle& global() const { return *global_; }

  // Installs `global` as the new global bundle, its metadata set to {"strategy": name, "round":
  // round} as finish() does: for subclasses that make the global model outside an Aggregation
  // (FedBuff's server steps). kFailedPrecondition before initialize/load_state; kInvalidArgument
  // (check_compatible's message) when its tensors differ from the current global bundle's (names,
  // dtypes, shapes). On error the global bundle is unchanged.
  Status install_global(TensorBundle global, int round);

 private:
  friend class FedAvgAggregation;

  // The body of FedAvgAggregation::finish: `updates` valid updates of `examples` examples in
  // all; `mean_of` computes the aggregate (the weighted mean, or a robust rule's) when the round
  // updates the model.
  Result<nlohmann::json> finish_round(int round, int updates, int64_t examples,
                                      const std::function<Result<TensorBundle>()>& mean_of,
                                      double loss_sum, double loss_weight,
                                      const std::vector<ClientFailure>& failures);
  // kFailedPrecondition when a buffered robust method would hold more than
  // robust.max_buffered_bytes for `clients` updates.
  Status check_buffered_bytes(size_t clients) const;
  Status check_ready() const;

  // Constant after construction.
  const std::string name_;
  const RoundOptions options_;

  // Set by initialize or load_state.
  ModelOptions model_options_;  // filled in: rebuilds the global model for evaluate()
  AugmentOptions input_;        // the run's local.augment: input normalisation for evaluate()
  std::shared_ptr<const TensorBundle> global_;
  // The last round's WeightedAverage, handed back by its Aggregation: the next round resets its
  // accumulators (one memset) instead of allocating fresh ones (page faults on ~2× the model's
  // bytes every round). Empty before the first round ends.
  std::optional<WeightedAverage> spare_average_;
};

// The FedAvg client: loads the task's bundle into context.model (strictly: every parameter and
// buffer), trains it with train_local on context.train (config.local options, context.rng) and
// returns its whole module_state, with num_examples = the training set size and metrics
// {"loss": mean training loss, "steps"}. evaluate() loads the bundle and returns
// evaluate_classifier_on_client (strategies/classifier_eval.h).
// Errors: kInvalidArgument for a context without model or config (fit: or train data or rng), or
// a bundle that does not fit the model; those of train_local.
class FedAvgClient : public ClientAlgorithm {
 public:
  FedAvgClient() = default;
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) override;

 protected:
  // Local training of context.model, already loaded with the global bundle. Default: train_local
  // with cross-entropy. FedProx adds its proximal term here.
  virtual Result<TrainStats> train(ClientContext& context);
};

// Factories for the registry: config.strategy is parsed with parse_round_options (unknown keys
// refused).
Result<std::unique_ptr<ServerStrategy>> make_fedavg_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedavg_client(const nlohmann::json& config);

// The registry entry "fedavg".
StrategyEntry fedavg_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDAVG_FEDAVG_H_

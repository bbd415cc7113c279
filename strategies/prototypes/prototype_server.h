// PrototypeServer: the server side shared by the prototype-based strategies (FedProto, FedSA).
// There is no global model: clients keep their own (possibly different) models and upload only a
// PrototypeSet ("prototypes" + "counts", strategies/prototypes/prototype_set.h); the server keeps
// the global prototypes P̄, the per-class mean of the round's uploads (PrototypeAverage), and
// broadcasts them. As in the FedSA authors' code, P̄ is replaced by each
// round's aggregate: a class no client of the round held is absent from P̄ until one holds it.
//
// The global bundle (every fit and evaluate task gets it; final_model.bundle) holds "prototypes"
// and "counts" (the clients behind each row, or their summed counts when weighted), plus the
// tensors a subclass adds (FedSA's "anchors"), with metadata {"strategy", "round"}.
//
// Evaluation: evaluate() returns {} (no model, so no generic accuracy); the clients score their
// own models (strategies/prototypes/prototype_client.h) and aggregate_evaluate combines the
// reports into
//   {"personalized": {"mean", "weighted", "clients"}   the nearest-global-prototype rule
//   (published)
//    "personalized_head": {...}                        each client's own classifier head
//    "rule": "nearest_global_prototype", "masked", "reports", "failures", "invalid_reports"}.
//
// Threading: as ServerStrategy (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_SERVER_H_
#define FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_SERVER_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/prototypes/prototype_set.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

class PrototypeAverage;

struct PrototypeServerOptions {
  RoundOptions round;
  // P̄_c weighted by the clients' per-class example counts (the FedProto paper) instead of the
  // plain mean over the clients holding c (the authors' FedSA / HtFLlib code). Default false.
  bool weighted = false;
};

class PrototypeServer : public ServerStrategy {
 public:
  // A server recording `name` (e.g. "fedproto") in its bundles' metadata and saved state.
  PrototypeServer(std::string name, PrototypeServerOptions options);

  // C = config.model.num_classes, or run.num_classes when 0; D = common_feature_dim(config.model)
  // (the width every client architecture emits). P̄ starts empty; then initialize_extra.
  // kFailedPrecondition when run.config is null; kInvalidArgument naming config.model.* when C < 1
  // or the clients' feature widths differ (set config.model.feature_dim); initialize_extra's
  // errors.
  Status initialize(const RunContext& run, Rng& rng) override;

  // Samples fraction_fit / min_fit_clients (sample_clients); every task shares global_bundle()
  // and has an empty config. kFailedPrecondition before initialize/load_state or when fewer than
  // min_fit_clients are available.
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // Folds each update's PrototypeSet into a PrototypeAverage. add() refuses (kInvalidArgument) a
  // second update from the same client in the round, and a bundle that is not exactly "prototypes"
  // float32 [C, D] + "counts" int64 [C] >= 0 (so no model weights can reach the server). finish()
  // replaces P̄ by the mean, calls on_global_prototypes and returns
  //   {"updated": true, "updates", "failures", "examples", "loss" (example-weighted mean of the
  //    clients' "loss"), "client_metrics" (example-weighted means of every numeric client metric),
  //    "classes" (present in P̄), "prototype_distances" (nearest_distances of P̄), ...extras}
  // or keeps P̄ with "updated": false and a "reason" (fewer valid updates than min_fit_clients, or
  // failures with accept_failures false). The Aggregation borrows this server.
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // Samples fraction_evaluate / min_evaluate_clients (none when both are 0); tasks share
  // global_bundle().
  Result<std::vector<TaskSpec>> configure_evaluate(int round,
                                                   const std::vector<ClientInfo>& available,
                                                   Rng& rng) override;
  // aggregate_prototype_evaluation.
  Result<nlohmann::json> aggregate_evaluate(int round, const std::vector<EvalReport>& reports,
                                            const std::vector<ClientFailure>& failures) override;
  // {}: there is no global model to score on the coordinator's test set.
  Result<nlohmann::json> evaluate(int round, const ServerEvalContext& context) override;

  // The global bundle described in the file comment; null before initialize/load_state.
  std::shared_ptr<const TensorBundle> global_bundle() const override;

  // The global bundle's tensors with metadata {"strategy", "format": 1, "num_classes",
  // "feature_dim", "global_metadata"}: load_state alone restores a server that behaves
  // bit-identically. kFailedPrecondition before initialize/load_state.
  Result<TensorBundle> save_state() const override;
  // kInvalidArgument (the server then unchanged) when `state` was saved by another strategy or
  // format, lacks that metadata, or does not hold exactly the expected tensors with their shapes.
  Status load_state(TensorBundle state) override;

  const std::string& name() const { return name_; }
  const PrototypeServerOptions& options() const { return options_; }
  int64_t num_classes() const { return num_classes_; }
  int64_t feature_dim() const { return feature_dim_; }
  // P̄. Precondition: initialized or loaded.
  const PrototypeSet& global_prototypes() const { return global_; }

 protected:
  // Builds the subclass's own state (num_classes() and feature_dim() are set). Default: nothing.
  virtual Status initialize_extra(const RunContext& run, Rng& rng);
  // The names of the tensors the subclass adds to the global bundle and the state. Default: none.
  virtual std::vector<std::string> extra_tensor_names() const;
  // Appends those tensors (copies) to `bundle`. Default: nothing.
  virtual Status add_extra_tensors(TensorBundle* bundle) const;
  // Validates those tensors of a state being loaded (present: checked by the caller) without
  // installing anything; install_extra_tensors then takes them. Defaults: nothing to do.
  virtual Status check_extra_tensors(const TensorBundle& state) const;
  virtual void install_extra_tensors(const TensorBundle& state);
  // Called by finish() after P̄ was replaced by the round's mean `global` (e.g. FedSA's anchor
  // EMA); may add keys to `metrics`. Default: nothing.
  virtual void on_global_prototypes(int round, const PrototypeSet& global, nlohmann::json* metrics);

 private:
  friend class PrototypeAggregation;

  Status check_ready() const;
  Result<std::vector<TaskSpec>> tasks_for(const std::vector<ClientInfo>& chosen) const;
  // The body of PrototypeAggregation::finish.
  nlohmann::json finish_round(int round, const PrototypeAverage& average,
                              const nlohmann::json& client_metrics, double loss, int64_t examples,
                              const std::vector<ClientFailure>& failures);

  // Constant after construction.
  const std::string name_;
  const PrototypeServerOptions options_;

  // Set by initialize or load_state.
  bool ready_ = false;
  int64_t num_classes_ = 0;
  int64_t feature_dim_ = 0;
  PrototypeSet global_;
  int global_round_ = 0;  // the round that produced P̄ (0: none yet)

  // Cache of global_bundle(), rebuilt when the state changes.
  mutable std::shared_ptr<const TensorBundle> bundle_;
};

// Combines the clients' evaluate_prototype_client reports as the file comment says. A report
// without valid counts is listed as invalid and left out, not an error.
nlohmann::json aggregate_prototype_evaluation(const std::vector<EvalReport>& reports,
                                              const std::vector<ClientFailure>& failures);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_SERVER_H_

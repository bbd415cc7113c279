// PrototypeClient: the client side shared by the prototype-based strategies (FedProto, FedSA).
//
// Each client trains its own model, of its own architecture (config.model.groups), and keeps it in
// its ClientState across rounds and restarts: the shared context.model only lends its shape (its
// weights are unspecified on entry). A client that has never trained starts from a model drawn
// from Rng::derive(config.seed, "<strategy>.client_model.<architecture>"): clients of one
// architecture start from identical weights, as in the authors' code, and a client's first weights
// do not depend on when it first takes part. What travels: the task's global bundle (P̄ and, for
// FedSA, the anchors) in, a PrototypeSet out ("prototypes" + "counts": one row per class the
// client holds, its mean training feature; counts 0/1, or the numbers of features when the
// strategy is `weighted`). No model weight ever leaves the client.
//
// fit: loads the client's model, asks the subclass for its LocalObjective, trains with SGD on
// config.local (lr, momentum, weight_decay, batch_size, epochs, augment, max_steps; batches
// shuffled, the last short batch dropped when `drop_last`), collecting the prototypes from the
// training forwards (detached, train mode, every batch of every epoch: FedProto/HtFLlib style,
// the FedSA authors' code), stores the model back and uploads the prototypes, with num_examples =
// the training set size and metrics {"loss", "loss_<term>"..., "steps", "classes", ...}.
// evaluate: evaluate_prototype_client with the task's P̄.
//
// Errors (Status values; LibTorch exceptions are caught here): kInvalidArgument for a context
// without model, config or state (fit: train data, rng), a global bundle that is not exactly the
// expected tensors sized for the model (C = num_classes, D = feature_dim), or a stored model of
// another architecture or shape; kFailedPrecondition for empty training data; kInternal for a
// LibTorch failure or a non-finite loss.
//
// Threading: as ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_CLIENT_H_
#define FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_CLIENT_H_

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/data/dataset.h"
#include "common/learning/models.h"
#include "common/learning/train_options.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/prototypes/prototype_set.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// What a client minimises in one fit task.
struct LocalObjective {
  // Names of the loss terms `loss` returns after the total, reported as "loss_<name>" metrics.
  std::vector<std::string> terms;
  // Given a batch's features z (B×D), the client head's logits h(z) (B×C) and labels y (B), all on
  // the training device: {total, term_1, ..., term_n} (n = terms.size()). The total, minimised,
  // carries the graph to the model's parameters; the terms are only reported.
  std::function<std::vector<torch::Tensor>(const torch::Tensor& z, const torch::Tensor& logits,
                                           const torch::Tensor& y)>
      loss;
  // Reported with the fit's metrics (e.g. FedSA's margin δ).
  nlohmann::json metrics = nlohmann::json::object();
};

struct PrototypeClientOptions {
  // Upload the per-class numbers of features as counts (the server's weighted mean) instead of 1
  // per class held. Default false.
  bool weighted = false;
  // Drop the last batch of an epoch when it is short (the authors' DataLoader, drop_last=True). A
  // client with fewer examples than a batch still trains on its one short batch. Default true.
  bool drop_last = true;
};

class PrototypeClient : public ClientAlgorithm {
 public:
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) override;

 protected:
  // `name` ("fedsa") names the client's errors and the Rng purpose of its first model.
  PrototypeClient(std::string name, PrototypeClientOptions options);

  // The exact tensors of the task bundle. Default: {"prototypes", "counts"}.
  virtual std::vector<std::string> global_tensor_names() const;
  // The objective of this fit; `global` has the names above, `prototypes` is its P̄, and
  // context.model holds the client's own model (on context.device, train mode).
  virtual Result<LocalObjective> objective(ClientContext& context, const TensorBundle& global,
                                           const PrototypeSet& prototypes) = 0;
  // Called after training with the client's new prototypes (counts = numbers of features); may
  // update context.state and add to `metrics`. Default: nothing.
  virtual Status after_fit(ClientContext& context, const PrototypeSet& local,
                           nlohmann::json* metrics);

  const std::string& name() const { return name_; }

 private:
  // Constant after construction.
  const std::string name_;
  const PrototypeClientOptions options_;
};

// Loads the client's own model (context.state->tensors, all of the model's parameters and
// buffers, strictly) into *context.model; on first use (state without tensors) draws a fresh one
// for the model's options from Rng::derive(config.seed, purpose + ".client_model." + arch).
// kInvalidArgument when the stored model is of another architecture (state value "arch") or does
// not fit the model (naming the tensor).
Status load_client_model(ClientContext& context, const std::string& purpose);
// Stores *context.model (parameters and buffers) in context.state->tensors, replacing them, and
// its architecture in context.state->values["arch"].
Status store_client_model(ClientContext& context);

// Per-class sums of features, accumulated on the device.
class PrototypeAccumulator {
 public:
  PrototypeAccumulator(int64_t num_classes, int64_t feature_dim, torch::Device device);
  // Adds each row of `features` (B×D, detached) to its class in `labels` (B, int64).
  void add(const torch::Tensor& features, const torch::Tensor& labels);
  // The per-class means (computed in double, rounded to float32) and the counts.
  PrototypeSet finish() const;

 private:
  int64_t num_classes_;
  int64_t feature_dim_;
  torch::Tensor sums_;    // C×D float64
  torch::Tensor counts_;  // C int64
};

struct PrototypeTraining {
  PrototypeSet prototypes;         // counts = features averaged per class
  double mean_loss = 0;            // example-weighted mean of the total
  std::vector<double> mean_terms;  // the same for each term
  int64_t steps = 0;
  int64_t examples = 0;
};

// The local training loop described in the file comment, minimising objective.loss. Moves the
// model to `device` and leaves it in train mode. Errors: kFailedPrecondition for empty data;
// kInvalidArgument for bad augment options; kInternal for a LibTorch failure or a non-finite loss.
Result<PrototypeTraining> train_collecting_prototypes(Model& model, const Dataset& data,
                                                      const LocalTrainOptions& options,
                                                      bool drop_last, torch::Device device,
                                                      Rng& rng, const LocalObjective& objective);

// Squared Euclidean distances (N×C) between `features` (N×D) and `rows` (C×D), computed in
// float64 in the expanded form and clamped at 0; returned in the features' dtype.
torch::Tensor squared_distances(const torch::Tensor& features, const torch::Tensor& rows);

// Scores `model` as it is on context.test (inputs normalised by config.local.augment, batches of
// config.eval.batch_size, on context.device) by two rules:
//   - the published one: the nearest present global prototype (argmin ‖z − P̄_c‖², absent classes
//     never predicted; no prototype at all: nothing is correct, as the authors' round 0);
//   - the client's own head (argmax h(z)).
// With config.eval.mask_absent_classes, classes absent from context.train are never predicted by
// either. Returns {"correct", "examples", "per_class_correct", "per_class_examples", "masked",
// "global_prototypes": classes present in P̄, "head": {"correct", "examples",
// "per_class_correct", "per_class_examples"}}; an empty or null test set gives zero counts.
// kInvalidArgument when context.config is null or P̄ does not fit the model.
Result<nlohmann::json> evaluate_prototype_client(const ClientContext& context, Model& model,
                                                 const PrototypeSet& prototypes);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_CLIENT_H_

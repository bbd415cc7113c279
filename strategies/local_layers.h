// Building blocks of the personalised strategies, whose clients keep part of the model to
// themselves (FedBN's BatchNorm layers, FedPer's and FedRep's head, FedRoD's personal head, Ditto's
// whole personal model) in their ClientState, while the rest is FedAvg's:
//
//   - which tensors a part is: batchnorm_tensor_names, head_tensor_names;
//   - moving a part between the model and ClientState::tensors: restore_local / store_local;
//   - training only a part: set_trainable;
//   - PartlyLocalClient: the client of FedBN, FedPer and FedRep. The global model, with the
//     client's own copy of its local tensors laid over it, is trained and uploaded whole; the
//     server (FedAvgServer) averages everything, so its global model holds the mean of the
//     clients' local parts too: the "generic" model the evaluation protocol scores.
//
// A client that has never trained has no local part yet and uses the global one (every client
// starts from the same initial model, as in PFLlib and the authors' code).
//
// Free functions are reentrant; a Model must not be used by two calls at once.
#ifndef FEDTAIL_STRATEGIES_LOCAL_LAYERS_H_
#define FEDTAIL_STRATEGIES_LOCAL_LAYERS_H_

#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/learning/models.h"
#include "common/learning/train_loop.h"
#include "common/learning/train_options.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The parameters and buffers (weight, bias, running_mean, running_var, num_batches_tracked) of
// every BatchNorm layer (1d, 2d or 3d) of `model`, by their state names, in state order.
std::vector<std::string> batchnorm_tensor_names(const Model& model);

// "heads.<head>.weight" and, when the head has one, "heads.<head>.bias". Aborts (FEDTAIL_CHECK)
// when the model has no such head.
std::vector<std::string> head_tensor_names(const Model& model, const std::string& head);

// The state names of `model` (parameters, then buffers, in state order) that start with none of
// `excluded_prefixes`.
std::vector<std::string> state_names_except(const Model& model,
                                            const std::vector<std::string>& excluded_prefixes);

// Loads `bundle` into `model`, which must hold exactly the model's tensors whose names start with
// none of `excluded_prefixes` (e.g. the heads a strategy adds on the client); the excluded ones are
// not touched. kInvalidArgument naming the first tensor that is extra, missing or misshapen
// ("global model: tensor \"x\": missing"); the model is unchanged on error.
Status load_global_except(Model& model, const TensorBundle& bundle,
                          const std::vector<std::string>& excluded_prefixes);

// Loads the client's own copy of the tensors `names` from state.tensors into `model`. Returns
// true when it did; false, leaving the model as it is, when the state holds none of them (the
// client has not trained yet). kInvalidArgument when the state holds only some of them, or one
// whose dtype or shape does not fit (the message names it and says "client state").
Result<bool> restore_local(const ClientState& state, Model& model,
                           const std::vector<std::string>& names);

// Copies the model's tensors `names` into state->tensors (replacing earlier copies, keeping every
// other tensor and the metadata). Errors as module_state.
Status store_local(ClientState* state, const Model& model, const std::vector<std::string>& names);

// Sets requires_grad of every parameter of `model` whose name is in `names` to `trainable`, and of
// every other parameter to `!trainable`. (train_local trains the parameters with requires_grad.)
void set_trainable(Model& model, const std::vector<std::string>& names, bool trainable);
// Makes every parameter of `model` trainable again.
void set_all_trainable(Model& model);

// `options` with `epochs` epochs (max_steps, the step cap of one train_local call, stays).
LocalTrainOptions with_epochs(LocalTrainOptions options, int epochs);

// kInvalidArgument "<strategy> client <what>: the context of client <id> lacks ..." unless the
// context has a model, config and state, and for fit (or whenever `needs_training`) training data
// and an rng.
Status require_personal_context(const ClientContext& context, const std::string& strategy,
                                const char* what, bool needs_training);

// The client of FedBN, FedPer and FedRep. fit: loads the task's bundle into context.model
// (strictly), lays the client's local tensors (local_names) from context.state over it, trains
// (train(); default: train_local with cross-entropy over the whole model), stores the local
// tensors back in context.state and returns the whole module_state, with num_examples = the
// training set size and metrics {"loss", "steps"}. evaluate: the global model with the local
// tensors laid over it, scored by evaluate_classifier_on_client (the worker's feature cache is
// used when no local tensor is in the backbone).
// Errors: kInvalidArgument for a context without model, config or state (fit: training data or
// rng), a bundle that does not fit the model, or a stored local tensor that does not; those of
// train(); kInternal for a LibTorch failure.
class PartlyLocalClient : public ClientAlgorithm {
 public:
  // `name` (e.g. "fedbn") prefixes error messages.
  explicit PartlyLocalClient(std::string name) : name_(std::move(name)) {}

  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) override;

 protected:
  // The state names of the tensors that stay on the client.
  virtual std::vector<std::string> local_names(const Model& model) const = 0;
  // Local training of context.model, loaded with the global model and the local tensors. Leaves
  // every parameter trainable.
  virtual Result<TrainStats> train(ClientContext& context, const std::vector<std::string>& local);

  const std::string& name() const { return name_; }

 private:
  // Loads the global bundle and the local tensors into context.model.
  Status load(ClientContext& context, const TensorBundle& global,
              const std::vector<std::string>& local);

  const std::string name_;  // constant after construction
};

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_LOCAL_LAYERS_H_

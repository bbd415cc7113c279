// Ditto (Li et al., "Ditto: Fair and Robust Federated Learning Through Personalization", ICML
// 2021): a global model trained as FedAvg, and on each client a personal model v_k trained on the
// local objective plus a proximal term that pulls it towards the global model:
//   min_v  CE(v; local data) + (lambda/2) ||v - w_global||^2.
// Each round a selected client, as the authors' code and PFLlib do it:
//   1. trains its personal model (from ClientState; the received global model until it has one)
//      for `personal_epochs` with the term above, anchored at the global model as received
//      (parameters only; BatchNorm statistics follow the forward passes), and stores it back;
//   2. trains the received global model exactly as FedAvg does and uploads it.
// Both use config.local's SGD (lr, momentum, weight_decay, batch_size, augment). With momentum 0
// and weight_decay 0 the personal step is PFLlib's PerturbedGradientDescent exactly:
// v <- v - lr (grad + lambda (v - w_global)). The server is FedAvg's (FedAvgServer "ditto").
//
// Models reported: generic = the global model; personalised = the client's personal model (the
// global one for a client that has not trained yet).
//
// config.strategy keys, besides RoundOptions:
//   "lambda"           1    the proximal coefficient, >= 0 (the FedRep authors' Ditto default
//                           `lam_ditto`; the Ditto paper tunes it per data set)
//   "personal_epochs"  (config.local.epochs)  epochs of personal training per round, >= 1
#ifndef FEDTAIL_STRATEGIES_DITTO_DITTO_H_
#define FEDTAIL_STRATEGIES_DITTO_DITTO_H_

#include <memory>
#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

struct DittoOptions {
  RoundOptions round;
  double lambda = 1.0;
  int personal_epochs = 0;  // 0: config.local.epochs
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.lambda: must be >= 0 (got -1)") or an unknown key.
Result<DittoOptions> parse_ditto_options(const nlohmann::json& config);

// The Ditto client. fit: the two trainings above; returns the trained global model's whole
// module_state, with num_examples = the training set size and metrics {"loss": the global model's
// mean loss, "loss_personal": the personal objective's (proximal term included), "steps"}.
// evaluate: the personal model on context.test (evaluate_classifier_on_client).
// Errors: kInvalidArgument for a context without model, config or state (fit: training data or
// rng), a bundle that does not fit the model, or a stored personal model that does not; those of
// train_local; kInternal for a LibTorch failure.
class DittoClient final : public ClientAlgorithm {
 public:
  explicit DittoClient(DittoOptions options) : options_(options) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) override;

 private:
  const DittoOptions options_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_ditto_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_ditto_client(const nlohmann::json& config);

// The registry entry "ditto".
StrategyEntry ditto_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_DITTO_DITTO_H_

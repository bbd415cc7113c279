// FedBABU (Oh et al., "FedBABU: Toward Enhanced Representation for Federated Image
// Classification", ICLR 2022): only the body is trained and averaged; the head keeps its random
// initialisation for the whole federated training, and is fine-tuned on each client for
// personalisation. As the authors' code and PFLlib do it:
//
//   - the head ("classifier") is drawn once by the server from the run seed (the global model's
//     initialisation) and never trained: clients train with it frozen (requires_grad false, so not
//     in the optimiser), the server (FedAvgServer "fedbabu") averages the uploaded models, and the
//     head, identical in every update, averages to itself bit for bit;
//   - personalisation, at each federated evaluation: the client fine-tunes a copy of the global
//     model on its training data for `finetune_epochs` (config.local's SGD, lr, batch size and
//     augmentation) — the whole model (`finetune` "whole", the authors' `--local_upt_part full`
//     and PFLlib's default) or the head only ("head") — and scores it on its test set. The
//     fine-tuned copy is not kept: the next round trains the global body again.
//
// Models reported: generic = global body + the frozen head; personalised = after fine-tuning.
//
// config.strategy keys, besides RoundOptions:
//   "finetune"          "whole"  what is fine-tuned before personalised evaluation: "whole" or
//                                "head"
//   "finetune_epochs"   5        fine-tuning epochs, >= 0 (0: score the global model); the
//                                authors' `--ft_ep` default
#ifndef FEDTAIL_STRATEGIES_FEDBABU_FEDBABU_H_
#define FEDTAIL_STRATEGIES_FEDBABU_FEDBABU_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/base/status.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

struct FedBabuOptions {
  RoundOptions round;
  bool finetune_whole = true;  // "finetune": "whole" (true) or "head"
  int finetune_epochs = 5;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.finetune: must be one of ...") or an unknown key.
Result<FedBabuOptions> parse_fedbabu_options(const nlohmann::json& config);

// The FedBABU client. fit: loads the task's bundle into context.model (strictly), trains the body
// with the head frozen (train_local), returns the whole module_state (the head unchanged), with
// num_examples = the training set size and metrics {"loss", "steps"}. evaluate: loads the bundle,
// fine-tunes as configured (skipped for a client without training data), and returns
// evaluate_classifier_on_client's report plus "finetune_loss" and "finetune_steps".
// Errors: kInvalidArgument for a context without model or config (fit, or evaluate with
// fine-tuning: training data or rng), or a bundle that does not fit the model; those of
// train_local; kInternal for a LibTorch failure.
class FedBabuClient final : public ClientAlgorithm {
 public:
  explicit FedBabuClient(FedBabuOptions options) : options_(options) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) override;

 private:
  const FedBabuOptions options_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_fedbabu_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedbabu_client(const nlohmann::json& config);

// The registry entry "fedbabu".
StrategyEntry fedbabu_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDBABU_FEDBABU_H_

// FedRep (Collins et al., "Exploiting Shared Representations for Personalized Federated
// Learning", ICML 2021): a shared representation (the body) and a local head per client. Each
// round a client, starting from the global body and its own head (ClientState; the global head
// until it has trained):
//   1. trains the head for `head_epochs` with the body frozen,
//   2. then the body for `body_epochs` with the head frozen,
// each with a fresh SGD of config.local (lr, momentum, weight_decay, batch_size, augment,
// max_steps per phase), as the authors' code (two parameter groups, one at lr 0) and PFLlib do.
// Only the body is shared: the client keeps its head, uploads body and head, and the server
// (FedAvgServer "fedrep") averages both, so the global head is the example-weighted average of
// the heads trained this round: the generic model. BatchNorm statistics follow the forward passes
// of both phases (the model is in training mode throughout, as in PFLlib).
//
// Models reported: as FedPer (generic: global body + averaged head; personalised: global body +
// own head).
//
// config.strategy keys, besides RoundOptions:
//   "head_epochs"  10  epochs of head training per round, >= 1
//   "body_epochs"   1  epochs of body training per round, >= 1
// (the paper's setting: 10 local epochs for the head, 1 for the representation; the authors' code
// has local_rep_ep = 1).
#ifndef FEDTAIL_STRATEGIES_FEDREP_FEDREP_H_
#define FEDTAIL_STRATEGIES_FEDREP_FEDREP_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "strategies/local_layers.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

struct FedRepOptions {
  RoundOptions round;
  int head_epochs = 10;
  int body_epochs = 1;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.head_epochs: must be >= 1 (got 0)") or an unknown key.
Result<FedRepOptions> parse_fedrep_options(const nlohmann::json& config);

// The FedRep client: a PartlyLocalClient whose local tensors are the "classifier" head's, trained
// in the two phases above. Metrics: {"loss": the body phase's mean loss, "loss_head": the head
// phase's, "steps": both phases'}.
class FedRepClient final : public PartlyLocalClient {
 public:
  explicit FedRepClient(FedRepOptions options) : PartlyLocalClient("fedrep"), options_(options) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;

 protected:
  std::vector<std::string> local_names(const Model& model) const override;
  Result<TrainStats> train(ClientContext& context, const std::vector<std::string>& local) override;

 private:
  const FedRepOptions options_;  // constant after construction
  double head_loss_ = 0;         // of the last train() call, for fit's metrics
};

Result<std::unique_ptr<ServerStrategy>> make_fedrep_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedrep_client(const nlohmann::json& config);

// The registry entry "fedrep".
StrategyEntry fedrep_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDREP_FEDREP_H_

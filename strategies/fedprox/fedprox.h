// FedProx (Li et al., 2020): FedAvg whose clients minimise
//   loss + (mu/2) · Σ_p ‖w_p − w_global,p‖²   (loss: config.local.loss, cross-entropy by default)
// over their trainable parameters p, which keeps heterogeneous clients near the global model.
// The server is FedAvg's (FedAvgServer, named "fedprox"); BatchNorm buffers are averaged as
// FedAvg does but carry no proximal term.
//
// config.strategy keys: RoundOptions (strategies/sampling.h) and
//   "mu": proximal coefficient, >= 0, default 0.01. 0 trains exactly as FedAvg does.
//
// Threading: as ClientAlgorithm (strategies/strategy.h).
#ifndef FEDTAIL_STRATEGIES_FEDPROX_FEDPROX_H_
#define FEDTAIL_STRATEGIES_FEDPROX_FEDPROX_H_

#include <torch/types.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/base/status.h"
#include "common/learning/classification_loss.h"
#include "common/learning/models.h"
#include "common/learning/train_loop.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"

namespace fedtail::strategies {

struct FedProxOptions {
  RoundOptions round;
  // Proximal coefficient mu (>= 0). Default 0.01.
  double mu = 0.01;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.mu: must be >= 0 (got -1)") or an unknown key.
Result<FedProxOptions> parse_fedprox_options(const nlohmann::json& config);

// The loss base(model(x), y) + (mu/2) · Σ_i ‖params[i] − anchors[i]‖² (anchors detached, on the
// training device, shaped as the params), where `base` is config.local.loss (cross-entropy by
// default). FedProx anchors at the global model's trainable parameters; Ditto's personal model
// uses it too.
LossFn proximal_loss(Model model, ClassificationLoss base, std::vector<torch::Tensor> params,
                     std::vector<torch::Tensor> anchors, double mu);

// config.local.loss for this client: its training counts (context.train) and the run's
// (context.global_train_counts), on context.device. Errors: those of ClassificationLoss::create.
Result<ClassificationLoss> client_loss(const ClientContext& context);

// FedAvgClient with the proximal term added to the loss. The anchor w_global is a detached copy of
// the trainable parameters right after the global bundle is loaded, on the training device.
class FedProxClient final : public FedAvgClient {
 public:
  explicit FedProxClient(double mu) : mu_(mu) {}
  double mu() const { return mu_; }

 protected:
  Result<TrainStats> train(ClientContext& context) override;

 private:
  const double mu_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_fedprox_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedprox_client(const nlohmann::json& config);

// The registry entry "fedprox".
StrategyEntry fedprox_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDPROX_FEDPROX_H_

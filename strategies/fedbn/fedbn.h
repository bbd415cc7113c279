// FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
// Normalization", ICLR 2021): FedAvg whose BatchNorm layers stay on the clients. Each client keeps
// its own BatchNorm affine parameters and running statistics (weight, bias, running_mean,
// running_var, num_batches_tracked) in its ClientState, and trains the global model with them
// laid over it; everything else is averaged as FedAvg does.
//
// As the authors' code and PFLlib do it, the client uploads its whole model; the server averages
// every tensor (FedAvgServer "fedbn"), so the global model holds the averaged non-BN layers with
// the example-weighted average of the clients' BN layers: the generic model. A client that has not
// trained yet uses the global BN layers.
//
// Models reported: generic = the global model on the balanced test set; personalised = the global
// model with the client's own BN layers, on the client's test set.
//
// config.strategy keys: RoundOptions (strategies/sampling.h). Nothing else.
#ifndef FEDTAIL_STRATEGIES_FEDBN_FEDBN_H_
#define FEDTAIL_STRATEGIES_FEDBN_FEDBN_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "strategies/local_layers.h"
#include "strategies/registry.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The FedBN client: a PartlyLocalClient whose local tensors are batchnorm_tensor_names.
class FedBnClient final : public PartlyLocalClient {
 public:
  FedBnClient() : PartlyLocalClient("fedbn") {}

 protected:
  std::vector<std::string> local_names(const Model& model) const override;
};

Result<std::unique_ptr<ServerStrategy>> make_fedbn_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedbn_client(const nlohmann::json& config);

// The registry entry "fedbn".
StrategyEntry fedbn_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDBN_FEDBN_H_

// FedPer (Arivazhagan et al., "Federated Learning with Personalization Layers", arXiv 2019): the
// body is federated, the classifier head stays on each client. A client trains its whole model
// (the global body with its own head, jointly, as PFLlib's clientper does) and keeps the head in
// its ClientState; a client that has not trained yet starts from the global head (every client
// starts from the same initial model).
//
// The client uploads body and head; the server (FedAvgServer "fedper") averages both, so the
// global model's head is the example-weighted average of the heads that trained this round: the
// generic model. The clients never take the averaged head: only the body is shared.
//
// Models reported: generic = global body + the averaged head; personalised = global body + the
// client's own head.
//
// config.strategy keys: RoundOptions (strategies/sampling.h). Nothing else.
#ifndef FEDTAIL_STRATEGIES_FEDPER_FEDPER_H_
#define FEDTAIL_STRATEGIES_FEDPER_FEDPER_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "strategies/local_layers.h"
#include "strategies/registry.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The FedPer client: a PartlyLocalClient whose local tensors are the "classifier" head's.
class FedPerClient final : public PartlyLocalClient {
 public:
  FedPerClient() : PartlyLocalClient("fedper") {}

 protected:
  std::vector<std::string> local_names(const Model& model) const override;
};

Result<std::unique_ptr<ServerStrategy>> make_fedper_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedper_client(const nlohmann::json& config);

// The registry entry "fedper".
StrategyEntry fedper_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDPER_FEDPER_H_

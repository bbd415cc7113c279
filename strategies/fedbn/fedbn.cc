#include "strategies/fedbn/fedbn.h"

#include <utility>

#include "strategies/fedavg/fedavg.h"
#include "strategies/sampling.h"

namespace fedtail::strategies {

std::vector<std::string> FedBnClient::local_names(const Model& model) const {
  return batchnorm_tensor_names(model);
}

Result<std::unique_ptr<ServerStrategy>> make_fedbn_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(RoundOptions options, parse_round_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgServer>("fedbn", options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedbn_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_round_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedBnClient>());
}

StrategyEntry fedbn_strategy_entry() {
  return {"fedbn", "FedBN: FedAvg with BatchNorm layers kept on each client (Li et al. 2021)",
          make_fedbn_server, make_fedbn_client};
}

}  // namespace fedtail::strategies

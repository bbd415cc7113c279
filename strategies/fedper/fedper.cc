#include "strategies/fedper/fedper.h"

#include <utility>

#include "strategies/fedavg/fedavg.h"
#include "strategies/sampling.h"

namespace fedtail::strategies {

std::vector<std::string> FedPerClient::local_names(const Model& model) const {
  return head_tensor_names(model, kClassifierHead);
}

Result<std::unique_ptr<ServerStrategy>> make_fedper_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(RoundOptions options, parse_round_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgServer>("fedper", options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedper_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_round_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedPerClient>());
}

StrategyEntry fedper_strategy_entry() {
  return {"fedper",
          "FedPer: shared body, classifier head kept on each client (Arivazhagan et al. 2019)",
          make_fedper_server, make_fedper_client};
}

}  // namespace fedtail::strategies

#include "strategies/fedproto/fedproto.h"

#include <torch/torch.h>

#include <cmath>
#include <utility>

#include "common/base/json_reader.h"
#include "strategies/sampling.h"

namespace fedtail::strategies {
namespace {

constexpr char kName[] = "fedproto";

}  // namespace

Result<FedProtoOptions> parse_fedproto_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedProtoOptions o;
  read_round_options(reader, &o.server.round);
  reader.check(
      !o.server.round.robust.enabled(), "robust",
      "fedproto averages class prototypes, not models: robust aggregation is not supported");
  reader.read("lambda", &o.lambda);
  reader.read("weighted", &o.server.weighted);
  reader.read("drop_last", &o.drop_last);
  reader.check(std::isfinite(o.lambda) && o.lambda >= 0, "lambda",
               "must be >= 0 (got " + std::to_string(o.lambda) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return o;
}

torch::Tensor prototype_regularization(const torch::Tensor& z, const torch::Tensor& prototypes,
                                       const torch::Tensor& present, const torch::Tensor& y) {
  const torch::Tensor target = torch::where(present.index_select(0, y).unsqueeze(1),
                                            prototypes.index_select(0, y), z.detach());
  return torch::nn::functional::mse_loss(z, target);
}

FedProtoServer::FedProtoServer(FedProtoOptions options) : PrototypeServer(kName, options.server) {}

FedProtoClient::FedProtoClient(FedProtoOptions options)
    : PrototypeClient(kName, {options.server.weighted, options.drop_last}), options_(options) {}

Result<LocalObjective> FedProtoClient::objective(ClientContext& context, const TensorBundle& global,
                                                 const PrototypeSet& prototypes) {
  (void)global;
  const int64_t c = prototypes.num_classes, d = prototypes.feature_dim;
  std::vector<float> rows = prototypes.rows;
  std::vector<uint8_t> present(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) present[static_cast<size_t>(k)] = prototypes.present(k) ? 1 : 0;
  const torch::Tensor p =
      torch::from_blob(rows.data(), {c, d}, torch::kFloat32).clone().to(context.device);
  const torch::Tensor mask =
      torch::from_blob(present.data(), {c}, torch::kUInt8).to(torch::kBool).to(context.device);
  const double lambda = options_.lambda;

  LocalObjective out;
  out.terms = {"ce", "mse"};
  out.loss = [p, mask, lambda](const torch::Tensor& z, const torch::Tensor& logits,
                               const torch::Tensor& y) -> std::vector<torch::Tensor> {
    torch::Tensor ce = torch::nn::functional::cross_entropy(logits, y);
    torch::Tensor mse = prototype_regularization(z, p, mask, y);
    return {ce + lambda * mse, ce, mse};
  };
  out.metrics = {{"global_prototypes", prototypes.num_present()}};
  return out;
}

Result<std::unique_ptr<ServerStrategy>> make_fedproto_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedProtoOptions options, parse_fedproto_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedProtoServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedproto_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedProtoOptions options, parse_fedproto_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedProtoClient>(options));
}

StrategyEntry fedproto_strategy_entry() {
  return {kName,
          "FedProto: clients share only class prototypes and are pulled toward the global ones "
          "(Tan et al. 2022, HtFLlib form)",
          make_fedproto_server, make_fedproto_client};
}

}  // namespace fedtail::strategies

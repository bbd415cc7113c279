#include "strategies/fedprox/fedprox.h"

#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/train_loop.h"

namespace fedtail::strategies {

Result<FedProxOptions> parse_fedprox_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedProxOptions options;
  read_round_options(reader, &options.round);
  reader.read("mu", &options.mu);
  reader.check(std::isfinite(options.mu) && options.mu >= 0, "mu",
               "must be >= 0 (got " + std::to_string(options.mu) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

Result<TrainStats> FedProxClient::train(ClientContext& context) {
  // mu = 0 is FedAvg: take its exact path (same loss graph, so bit-identical updates).
  if (mu_ == 0) return FedAvgClient::train(context);
  Model model = *context.model;
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> anchors;
  try {
    model->to(context.device);  // the anchors must live where training happens
    for (const torch::Tensor& p : model->parameters()) {
      if (!p.requires_grad()) continue;
      params.push_back(p);
      anchors.push_back(p.detach().clone());
    }
  } catch (const std::exception& e) {
    return Status::Internal("fedprox: cannot snapshot the global weights: " +
                            std::string(e.what()));
  }
  FEDTAIL_ASSIGN_OR_RETURN(ClassificationLoss loss, client_loss(context));
  return train_local(
      *context.model, *context.train, context.config->local, context.device, *context.rng,
      proximal_loss(model, std::move(loss), std::move(params), std::move(anchors), mu_));
}

Result<ClassificationLoss> client_loss(const ClientContext& context) {
  if (context.config == nullptr || context.model == nullptr || context.train == nullptr) {
    return Status::InvalidArgument("client " + context.client_id +
                                   ": the context lacks a config, model or training data");
  }
  return ClassificationLoss::create(context.config->local.loss, (*context.model)->num_classes(),
                                    context.train->class_counts(), context.global_train_counts,
                                    context.device);
}

LossFn proximal_loss(Model model, ClassificationLoss base, std::vector<torch::Tensor> params,
                     std::vector<torch::Tensor> anchors, double mu) {
  const double half_mu = mu / 2;
  return [model, base = std::move(base), params = std::move(params), anchors = std::move(anchors),
          half_mu](const torch::Tensor& x, const torch::Tensor& y) mutable {
    torch::Tensor loss = base(model->forward(x), y);
    torch::Tensor proximal = torch::zeros({}, loss.options());
    for (size_t i = 0; i < params.size(); ++i) {
      proximal = proximal + (params[i] - anchors[i]).pow(2).sum();
    }
    return loss + half_mu * proximal;
  };
}

Result<std::unique_ptr<ServerStrategy>> make_fedprox_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedProxOptions options, parse_fedprox_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgServer>("fedprox", options.round));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedprox_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedProxOptions options, parse_fedprox_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedProxClient>(options.mu));
}

StrategyEntry fedprox_strategy_entry() {
  return {"fedprox",
          "FedProx: FedAvg with a proximal term (mu/2)||w - w_global||^2 (Li et al. 2020)",
          make_fedprox_server, make_fedprox_client};
}

}  // namespace fedtail::strategies

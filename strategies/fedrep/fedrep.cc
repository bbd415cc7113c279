#include "strategies/fedrep/fedrep.h"

#include <utility>

#include "common/base/json_reader.h"
#include "strategies/fedavg/fedavg.h"

namespace fedtail::strategies {

Result<FedRepOptions> parse_fedrep_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedRepOptions options;
  read_round_options(reader, &options.round);
  reader.read("head_epochs", &options.head_epochs);
  reader.check(options.head_epochs >= 1, "head_epochs",
               "must be >= 1 (got " + std::to_string(options.head_epochs) + ")");
  reader.read("body_epochs", &options.body_epochs);
  reader.check(options.body_epochs >= 1, "body_epochs",
               "must be >= 1 (got " + std::to_string(options.body_epochs) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

std::vector<std::string> FedRepClient::local_names(const Model& model) const {
  return head_tensor_names(model, kClassifierHead);
}

Result<TrainStats> FedRepClient::train(ClientContext& context,
                                       const std::vector<std::string>& local) {
  Model& model = *context.model;
  const LocalTrainOptions& base = context.config->local;
  set_trainable(model, local, /*trainable=*/true);  // 1. the head, body frozen
  Result<TrainStats> head =
      train_local(model, *context.train, with_epochs(base, options_.head_epochs), context.device,
                  *context.rng, context.global_train_counts);
  if (!head.ok()) {
    set_all_trainable(model);
    return head.status().with_context("fedrep head phase");
  }
  set_trainable(model, local, /*trainable=*/false);  // 2. the body, head frozen
  Result<TrainStats> body =
      train_local(model, *context.train, with_epochs(base, options_.body_epochs), context.device,
                  *context.rng, context.global_train_counts);
  set_all_trainable(model);
  if (!body.ok()) return body.status().with_context("fedrep body phase");
  head_loss_ = head->mean_loss;
  TrainStats stats = std::move(body).value();
  stats.steps += head->steps;
  stats.examples += head->examples;
  stats.seconds += head->seconds;
  return stats;
}

Result<FitOutput> FedRepClient::fit(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_ASSIGN_OR_RETURN(FitOutput out, PartlyLocalClient::fit(context, global));
  out.metrics["loss_head"] = head_loss_;
  return out;
}

Result<std::unique_ptr<ServerStrategy>> make_fedrep_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedRepOptions options, parse_fedrep_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgServer>("fedrep", options.round));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedrep_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedRepOptions options, parse_fedrep_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedRepClient>(options));
}

StrategyEntry fedrep_strategy_entry() {
  return {"fedrep",
          "FedRep: local head trained first with the body frozen, then the shared body "
          "(Collins et al. 2021)",
          make_fedrep_server, make_fedrep_client};
}

}  // namespace fedtail::strategies

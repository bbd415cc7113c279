#include "strategies/fedrod/fedrod.h"

#include <torch/torch.h>

#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/classification_loss.h"
#include "common/learning/loss_epochs.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"
#include "common/wire/bundle_codec.h"
#include "strategies/classifier_eval.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/local_layers.h"
#include "strategies/sampling.h"

namespace fedtail::strategies {

namespace {

const std::vector<std::string> kPersonalPrefix = {std::string("heads.") + kPersonalHead + "."};

// Adds the personal head when missing, loads the global bundle and the personal head (from the
// state, else a copy of the generic head). Returns whether the state held the personal head.
Result<bool> load_fedrod_model(ClientContext& context, const TensorBundle& global) {
  Model& model = *context.model;
  if (!model->has_head(kPersonalHead)) {
    FEDTAIL_RETURN_IF_ERROR(model->add_head(kPersonalHead, model->num_classes(), /*bias=*/true));
  }
  FEDTAIL_RETURN_IF_ERROR(load_global_except(model, global, kPersonalPrefix));
  FEDTAIL_ASSIGN_OR_RETURN(
      bool restored, restore_local(*context.state, model, head_tensor_names(model, kPersonalHead)));
  if (!restored) {
    torch::NoGradGuard no_grad;
    torch::nn::Linear generic = model->head(kClassifierHead);
    torch::nn::Linear personal = model->head(kPersonalHead);
    personal->weight.copy_(generic->weight);
    personal->bias.copy_(generic->bias);
  }
  return restored;
}

struct RodLosses {
  double generic = 0;   // balanced softmax of the generic head
  double personal = 0;  // CE of generic + personal logits
  int64_t steps = 0;
};

Result<RodLosses> train_two_heads(Model& model, const Dataset& data,
                                  const LocalTrainOptions& options, torch::Device device,
                                  Rng& rng) {
  RodLosses out;
  try {
    model->to(device);
    model->train();
    set_all_trainable(model);
    torch::nn::Linear generic = model->head(kClassifierHead);
    torch::nn::Linear personal = model->head(kPersonalHead);
    std::vector<torch::Tensor> shared = model->backbone()->parameters();
    for (const torch::Tensor& p : generic->parameters()) shared.push_back(p);
    const auto sgd = torch::optim::SGDOptions(options.lr)
                         .momentum(options.momentum)
                         .weight_decay(options.weight_decay);
    torch::optim::SGD shared_optimizer(shared, sgd);
    torch::optim::SGD personal_optimizer(personal->parameters(), sgd);

    // Balanced softmax with the client's training counts (log 0 = -inf for absent classes).
    LocalLossOptions balanced;
    balanced.kind = LocalLossOptions::Kind::kBalancedSoftmax;
    FEDTAIL_ASSIGN_OR_RETURN(ClassificationLoss balanced_softmax,
                             ClassificationLoss::create(balanced, model->num_classes(),
                                                        data.class_counts(), {}, device));

    FEDTAIL_ASSIGN_OR_RETURN(
        LossMeans means,
        run_loss_epochs(
            data, options, /*drop_last=*/false, device, rng,
            {"of the generic head (balanced softmax)", "of the personal head"},
            "fedrod local training",
            [&](const torch::Tensor& x, const torch::Tensor& y) -> Result<torch::Tensor> {
              namespace F = torch::nn::functional;
              const torch::Tensor features = model->features(x);
              const torch::Tensor logits = generic->forward(features);
              torch::Tensor loss_generic = balanced_softmax(logits, y);
              shared_optimizer.zero_grad();
              loss_generic.backward();
              shared_optimizer.step();

              torch::Tensor loss_personal =
                  F::cross_entropy(logits.detach() + personal->forward(features.detach()), y);
              personal_optimizer.zero_grad();
              loss_personal.backward();
              personal_optimizer.step();
              return torch::stack({loss_generic.detach(), loss_personal.detach()});
            }));
    out.generic = means.means[0];
    out.personal = means.means[1];
    out.steps = means.steps;
  } catch (const std::exception& e) {
    return torch_failure("fedrod local training", e);
  }
  return out;
}

}  // namespace

Result<FitOutput> FedRodClient::fit(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(
      require_personal_context(context, "fedrod", "fit", /*needs_training=*/true));
  if (context.train->size() == 0) {
    return Status::FailedPrecondition("fedrod client fit: client " + context.client_id +
                                      " has no training data");
  }
  try {
    Model& model = *context.model;
    FEDTAIL_RETURN_IF_ERROR(load_fedrod_model(context, global).status());
    FEDTAIL_ASSIGN_OR_RETURN(RodLosses losses,
                             train_two_heads(model, *context.train, context.config->local,
                                             context.device, *context.rng));
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update,
                             module_state(*model, state_names_except(model, kPersonalPrefix)));
    FEDTAIL_RETURN_IF_ERROR(
        store_local(context.state, model, head_tensor_names(model, kPersonalHead)));
    out.num_examples = context.train->size();
    out.metrics = {
        {"loss", losses.generic}, {"loss_personal", losses.personal}, {"steps", losses.steps}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("fedrod client fit", e);
  }
}

Result<nlohmann::json> FedRodClient::evaluate(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(
      require_personal_context(context, "fedrod", "evaluate", /*needs_training=*/false));
  try {
    Model& model = *context.model;
    FEDTAIL_RETURN_IF_ERROR(load_fedrod_model(context, global).status());
    {
      // generic(f) + personal(f) as one linear map, in the "classifier" slot.
      torch::NoGradGuard no_grad;
      torch::nn::Linear slot = model->head(kClassifierHead);
      torch::nn::Linear personal = model->head(kPersonalHead);
      slot->weight.add_(personal->weight);
      slot->bias.add_(personal->bias);
    }
    const PayloadDigest version = payload_digest(global);  // the body is the global one
    return evaluate_classifier_on_client(context, model, &version);
  } catch (const std::exception& e) {
    return torch_failure("fedrod client evaluate", e);
  }
}

namespace {

// FedAvg's server, refusing a config.local.loss other than cross-entropy: the client's losses are
// FedRoD's own.
class FedRodServer final : public FedAvgServer {
 public:
  explicit FedRodServer(RoundOptions options) : FedAvgServer("fedrod", options) {}
  Status initialize(const RunContext& run, Rng& rng) override {
    if (run.config != nullptr) {
      FEDTAIL_RETURN_IF_ERROR(require_cross_entropy(run.config->local, "fedrod"));
    }
    return FedAvgServer::initialize(run, rng);
  }
};

}  // namespace

Result<std::unique_ptr<ServerStrategy>> make_fedrod_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(RoundOptions options, parse_round_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedRodServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedrod_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_round_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedRodClient>());
}

StrategyEntry fedrod_strategy_entry() {
  return {"fedrod",
          "FedRoD: balanced-softmax generic head averaged, personal head kept locally "
          "(Chen & Chao 2022)",
          make_fedrod_server, make_fedrod_client};
}

}  // namespace fedtail::strategies

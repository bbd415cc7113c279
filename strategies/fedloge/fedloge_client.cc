// FedLoGe's client half (fedloge.h): the three-optimiser local training of backbone, ψ and φ_k, φ_k
// kept in the client's state, and the personalised evaluation with the realigned head.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <string>
#include <utility>

#include "common/base/json_reader.h"
#include "common/learning/loss_epochs.h"
#include "common/learning/metrics.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"
#include "common/wire/bundle_codec.h"
#include "strategies/classifier_eval.h"
#include "strategies/fedloge/fedloge.h"
#include "strategies/fedloge/fedloge_model.h"

namespace fedtail::strategies {

using fedloge_model::ensure_heads;
using fedloge_model::kLocalBias;
using fedloge_model::kLocalWeight;
using fedloge_model::kUpdatePrefixes;
using fedloge_model::load_shared;

namespace {

// Replaces φ_k's tensors in `stored` by those of `local`, keeping any other tensor.
Status store_local_head(TensorBundle& stored, TensorBundle local) {
  TensorBundle next;
  FEDTAIL_RETURN_IF_ERROR(next.set_metadata(stored.metadata()));
  for (NamedTensor& t : stored) {
    if (t.name() == kLocalWeight || t.name() == kLocalBias) continue;
    FEDTAIL_RETURN_IF_ERROR(next.add(std::move(t)));
  }
  for (NamedTensor& t : local) FEDTAIL_RETURN_IF_ERROR(next.add(std::move(t)));
  stored = std::move(next);
  return Status::OK();
}

// Loads φ_k from context.state into the model's "local" head. On first use, initialises it like
// nn.Linear (weight then bias, U(±1/√d)) from an Rng derived from the run seed and the client id,
// and stores it in context.state.
Status load_local_head(ClientContext& context, Model& model) {
  TensorBundle& stored = context.state->tensors;
  const int64_t k = model->num_classes();
  const int64_t d = model->feature_dim();
  const bool has_weight = stored.contains(kLocalWeight);
  const bool has_bias = stored.contains(kLocalBias);
  if (has_weight != has_bias) {
    return Status::InvalidArgument("client state: holds only one of \"" + kLocalWeight +
                                   "\" and \"" + kLocalBias + "\"");
  }
  if (!has_weight) {
    Rng rng =
        Rng::derive(context.config->seed, std::string("fedloge.local_head.") + context.client_id);
    const double bound = 1.0 / std::sqrt(static_cast<double>(d));
    std::vector<float> weight(static_cast<size_t>(k * d));
    std::vector<float> bias(static_cast<size_t>(k));
    for (float& w : weight) w = static_cast<float>((2 * rng.uniform() - 1) * bound);
    for (float& b : bias) b = static_cast<float>((2 * rng.uniform() - 1) * bound);
    TensorBundle fresh;
    FEDTAIL_RETURN_IF_ERROR(
        fresh.add(NamedTensor::from_values(kLocalWeight, DType::kFloat32, {k, d}, weight)));
    FEDTAIL_RETURN_IF_ERROR(
        fresh.add(NamedTensor::from_values(kLocalBias, DType::kFloat32, {k}, bias)));
    FEDTAIL_RETURN_IF_ERROR(store_local_head(stored, std::move(fresh)));
  }
  TensorBundle view;
  FEDTAIL_RETURN_IF_ERROR(view.add(stored.find(kLocalWeight)->clone()));
  FEDTAIL_RETURN_IF_ERROR(view.add(stored.find(kLocalBias)->clone()));
  return load_module_state(*model, view, /*strict=*/false).with_context("client state (φ_k)");
}

Status require_client_context(const ClientContext& context, const char* what, bool for_fit) {
  if (context.model == nullptr || context.config == nullptr || context.state == nullptr ||
      (for_fit && (context.train == nullptr || context.rng == nullptr))) {
    return Status::InvalidArgument(std::string("fedloge client ") + what +
                                   ": the context of client " + context.client_id +
                                   " lacks a model, data, config, state or rng");
  }
  return Status::OK();
}

struct HeadLosses {
  double backbone = 0;  // CE of SSE-C(f): the backbone's objective
  double global = 0;    // CE of ψ(f.detach())
  double local = 0;     // CE of φ_k(f.detach())
  int64_t steps = 0;
  int64_t examples = 0;
};

// The client's local training (the authors' code): per batch three separate SGD steps.
Result<HeadLosses> train_heads(Model& model, const Dataset& data, const LocalTrainOptions& options,
                               torch::Device device, Rng& rng) {
  HeadLosses out;
  try {
    model->to(device);
    model->train();
    torch::nn::Linear sse_c = model->head(kSseCHead);
    torch::nn::Linear psi = model->head(kGlobalHead);
    torch::nn::Linear phi = model->head(kLocalHead);
    for (auto& p : sse_c->parameters()) p.set_requires_grad(false);  // frozen for the whole run
    std::vector<torch::Tensor> body;
    for (const auto& p : model->backbone()->parameters()) {
      if (p.requires_grad()) body.push_back(p);
    }
    const auto sgd = torch::optim::SGDOptions(options.lr)
                         .momentum(options.momentum)
                         .weight_decay(options.weight_decay);
    torch::optim::SGD body_optimizer(body, sgd);
    torch::optim::SGD psi_optimizer(psi->parameters(), sgd);
    torch::optim::SGD phi_optimizer(phi->parameters(), sgd);

    FEDTAIL_ASSIGN_OR_RETURN(
        LossMeans means,
        run_loss_epochs(
            data, options, /*drop_last=*/false, device, rng,
            {"of the backbone (SSE-C)", "of ψ", "of φ_k"}, "fedloge local training",
            [&](const torch::Tensor& x, const torch::Tensor& y) -> Result<torch::Tensor> {
              namespace F = torch::nn::functional;
              const torch::Tensor features = model->features(x);
              torch::Tensor loss_body = F::cross_entropy(sse_c->forward(features), y);
              body_optimizer.zero_grad();
              loss_body.backward();
              body_optimizer.step();

              const torch::Tensor detached = features.detach();
              torch::Tensor loss_psi = F::cross_entropy(psi->forward(detached), y);
              psi_optimizer.zero_grad();
              loss_psi.backward();
              psi_optimizer.step();

              torch::Tensor loss_phi = F::cross_entropy(phi->forward(detached), y);
              phi_optimizer.zero_grad();
              loss_phi.backward();
              phi_optimizer.step();
              return torch::stack({loss_body.detach(), loss_psi.detach(), loss_phi.detach()});
            }));
    out.backbone = means.means[0];
    out.global = means.means[1];
    out.local = means.means[2];
    out.steps = means.steps;
    out.examples = means.examples;
  } catch (const std::exception& e) {
    return torch_failure("fedloge local training", e);
  }
  return out;
}

}  // namespace

Result<FitOutput> FedLoGeClient::fit(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(require_client_context(context, "fit", /*for_fit=*/true));
  if (context.train->size() == 0) {
    return Status::FailedPrecondition("fedloge client fit: client " + context.client_id +
                                      " has no training data");
  }
  try {
    Model model = *context.model;
    FEDTAIL_RETURN_IF_ERROR(ensure_heads(model, {kSseCHead, kGlobalHead, kLocalHead}));
    FEDTAIL_RETURN_IF_ERROR(load_shared(model, global));
    FEDTAIL_RETURN_IF_ERROR(load_local_head(context, model));
    FEDTAIL_ASSIGN_OR_RETURN(
        HeadLosses losses,
        train_heads(model, *context.train, context.config->local, context.device, *context.rng));
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model, kUpdatePrefixes));
    FEDTAIL_ASSIGN_OR_RETURN(TensorBundle local,
                             module_state(*model, {std::string("heads.") + kLocalHead + "."}));
    FEDTAIL_RETURN_IF_ERROR(store_local_head(context.state->tensors, std::move(local)));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", losses.backbone},
                   {"loss_global", losses.global},
                   {"loss_local", losses.local},
                   {"steps", losses.steps}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("fedloge client fit", e);
  }
}

Result<nlohmann::json> FedLoGeClient::evaluate(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(require_client_context(context, "evaluate", /*for_fit=*/false));
  try {
    Model model = *context.model;
    FEDTAIL_RETURN_IF_ERROR(ensure_heads(model, {kSseCHead, kGlobalHead, kLocalHead}));
    FEDTAIL_RETURN_IF_ERROR(load_shared(model, global));
    FEDTAIL_RETURN_IF_ERROR(load_local_head(context, model));
    {
      // The personalised head, folded into one linear map, in the "classifier" slot.
      torch::NoGradGuard no_grad;
      torch::nn::Linear phi = model->head(kLocalHead);
      torch::nn::Linear psi = model->head(kGlobalHead);
      torch::nn::Linear slot = model->head(kClassifierHead);
      auto [weight, bias] =
          personalized_head(phi->weight, phi->bias, psi->weight, psi->bias, local_realignment_);
      slot->weight.copy_(weight);
      slot->bias.copy_(bias);
    }
    // The backbone is the global one unchanged (only the head is the client's).
    const PayloadDigest version = payload_digest(global);
    return evaluate_classifier_on_client(context, model, &version);
  } catch (const std::exception& e) {
    return torch_failure("fedloge client evaluate", e);
  }
}

}  // namespace fedtail::strategies

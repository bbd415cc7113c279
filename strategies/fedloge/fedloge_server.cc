// FedLoGe's server half (fedloge.h): builds the SSE-C, averages backbone and ψ (FedAvgServer),
// evaluates the realigned heads on the balanced test set, saves and restores the SSE-C in
// checkpoints.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include "common/base/json_reader.h"
#include "common/learning/classification_loss.h"
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
using fedloge_model::kGlobalWeight;
using fedloge_model::kName;
using fedloge_model::kSseCBias;
using fedloge_model::kSseCWeight;
using fedloge_model::kUpdatePrefixes;
using fedloge_model::load_shared;

namespace {

// FedAvgServer's documented state format (fedavg.h: save_state), which initialize() builds.
constexpr int kFedAvgStateFormat = 1;
// The SSE-C in saved states (names with '/': FedAvgServer's "extra" tensors).
constexpr char kStateSseCWeight[] = "sse_c/weight";
constexpr char kStateSseCBias[] = "sse_c/bias";

// A copy of `t` under another name.
Result<NamedTensor> renamed_copy(const NamedTensor& t, std::string name) {
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor out,
                           NamedTensor::uninitialized(std::move(name), t.dtype(), t.shape()));
  if (t.nbytes() > 0) std::memcpy(out.mutable_bytes(), t.bytes(), t.nbytes());
  return out;
}

}  // namespace

FedLoGeServer::FedLoGeServer(FedLoGeOptions options)
    : FedAvgServer(kName, options.round), options_(options) {}

Status FedLoGeServer::initialize(const RunContext& run, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options, run_model_options(run));
  FEDTAIL_RETURN_IF_ERROR(require_cross_entropy(run.config->local, kName));
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(model_options, rng));
  FEDTAIL_RETURN_IF_ERROR(ensure_heads(model, {kGlobalHead}));
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle state, module_state(*model, kUpdatePrefixes));

  Rng sse_c_rng = Rng::derive(rng.next_u64(), "fedloge.sse_c");
  FEDTAIL_ASSIGN_OR_RETURN(SseC sse_c, build_sse_c(model->feature_dim(), model->num_classes(),
                                                   options_.sse_c, sse_c_rng));
  spdlog::info(
      "fedloge: SSE-C {}x{} built in {:.2f} s: {} of {} entries pruned, column norms "
      "{:.4f}..{:.4f}, angles {:.3f}..{:.3f} deg (mean {:.3f}, ETF {:.3f})",
      sse_c.num_classes, sse_c.feature_dim, sse_c.stats.seconds, sse_c.stats.pruned,
      sse_c.num_classes * sse_c.feature_dim, sse_c.stats.min_norm, sse_c.stats.max_norm,
      sse_c.stats.min_angle, sse_c.stats.max_angle, sse_c.stats.mean_angle,
      sse_c.stats.target_angle);
  const int64_t k = sse_c.num_classes;
  FEDTAIL_RETURN_IF_ERROR(state.add(NamedTensor::from_values(
      kStateSseCWeight, DType::kFloat32, {k, sse_c.feature_dim}, sse_c.weight)));
  FEDTAIL_RETURN_IF_ERROR(
      state.add(NamedTensor::from_values(kStateSseCBias, DType::kFloat32, {k}, sse_c.bias)));
  // The whole initial state, installed through load_state: one path for both starts.
  state.mutable_metadata() = {{"strategy", kName},
                              {"format", kFedAvgStateFormat},
                              {"model", model_options_to_json(model_options)},
                              {"input", augment_options_to_json(run.config->local.augment)},
                              {"global_metadata", {{"strategy", kName}, {"round", 0}}},
                              {"sse_c", sse_c.stats.to_json()}};
  return load_state(std::move(state));
}

std::shared_ptr<const TensorBundle> FedLoGeServer::global_bundle() const {
  std::shared_ptr<const TensorBundle> base = FedAvgServer::global_bundle();
  if (!base || !sse_c_) return nullptr;
  if (base != bundle_source_) {
    TensorBundle combined = base->clone();
    for (const NamedTensor& t : *sse_c_) FEDTAIL_CHECK(combined.add(t.clone()).ok());
    bundle_ = std::make_shared<const TensorBundle>(std::move(combined));
    bundle_source_ = std::move(base);
  }
  return bundle_;
}

Result<std::vector<TaskSpec>> FedLoGeServer::configure_fit(int round,
                                                           const std::vector<ClientInfo>& available,
                                                           Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_fit(round, available, rng));
  std::shared_ptr<const TensorBundle> bundle = global_bundle();
  for (TaskSpec& task : tasks) task.bundle = bundle;
  return tasks;
}

Result<std::vector<TaskSpec>> FedLoGeServer::configure_evaluate(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_evaluate(round, available, rng));
  std::shared_ptr<const TensorBundle> bundle = global_bundle();
  for (TaskSpec& task : tasks) task.bundle = bundle;
  return tasks;
}

Result<nlohmann::json> FedLoGeServer::evaluate(int round, const ServerEvalContext& context) {
  (void)round;
  std::shared_ptr<const TensorBundle> bundle = global_bundle();
  if (!bundle) {
    return Status::FailedPrecondition("fedloge: no global model (initialize or load_state first)");
  }
  if (context.test == nullptr) return Status::InvalidArgument("fedloge evaluate: no test set");
  const Dataset& test = *context.test;
  ModelOptions model_options = model_options_;
  if (test.size() > 0) FEDTAIL_RETURN_IF_ERROR(fill_model_options_from_data(test, &model_options));
  Rng init_rng(0);  // the weights are overwritten by the bundle
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(model_options, init_rng));
  FEDTAIL_RETURN_IF_ERROR(ensure_heads(model, {kSseCHead, kGlobalHead}));
  FEDTAIL_RETURN_IF_ERROR(load_shared(model, *bundle));

  const int num_classes = static_cast<int>(model->num_classes());
  std::vector<int64_t> counts = context.train_class_counts;
  if (counts.empty()) counts.assign(num_classes, 0);  // no counts known: every class is Many
  const ClassGroups by_share = groups_by_cumulative_share(counts);
  const ClassGroups by_count = groups_by_threshold(counts);

  nlohmann::json out = {{"sse_c", sse_c_stats_},
                        {"realignment",
                         {{"global", options_.global_realignment},
                          {"norm", options_.realign_norm},
                          {"local", options_.local_realignment}}}};
  // Keys in the order of the logits below: universal (SSE-C), raw ψ, generic (ψ̃ or ψ).
  const std::vector<std::string> keys = {"universal", "generic_unrealigned", "generic"};
  try {
    model->to(context.device);
    torch::nn::Linear sse_c = model->head(kSseCHead);
    torch::nn::Linear psi = model->head(kGlobalHead);
    const torch::Tensor psi_weight = psi->weight.detach();
    const torch::Tensor psi_bias = psi->bias.detach();
    const torch::Tensor generic_weight =
        options_.global_realignment ? realign_rows(psi_weight, options_.realign_norm) : psi_weight;
    const torch::Tensor row_norms = psi_weight.norm(2, /*dim=*/{1}).to(torch::kFloat64).cpu();
    out["psi_row_norms"] = std::vector<double>(row_norms.data_ptr<double>(),
                                               row_norms.data_ptr<double>() + num_classes);
    if (test.size() == 0) {
      AccuracyReport share, count;
      share.groups = by_share;
      count.groups = by_count;
      for (const std::string& key : keys) {
        out[key] = share.to_json();
        out[key + "_by_count_rule"] = count.to_json();
      }
      return out;
    }
    LogitsFn logits_fn = [sse_c, psi, generic_weight,
                          psi_bias](const torch::Tensor& features) mutable {
      return torch::cat({sse_c->forward(features), psi->forward(features),
                         torch::addmm(psi_bias, features, generic_weight.t())},
                        /*dim=*/1);
    };
    FEDTAIL_ASSIGN_OR_RETURN(
        torch::Tensor logits,
        predict_logits(model, test, logits_fn, input_, context.device, context.batch_size));
    for (size_t i = 0; i < keys.size(); ++i) {
      const int64_t from = static_cast<int64_t>(i) * num_classes;
      const torch::Tensor predictions =
          logits.slice(/*dim=*/1, from, from + num_classes).argmax(/*dim=*/1);
      FEDTAIL_ASSIGN_OR_RETURN(AccuracyReport share,
                               accuracy_report(predictions, test.labels, num_classes, by_share));
      FEDTAIL_ASSIGN_OR_RETURN(AccuracyReport count,
                               accuracy_report(predictions, test.labels, num_classes, by_count));
      out[keys[i]] = share.to_json();
      out[keys[i] + "_by_count_rule"] = count.to_json();
    }
  } catch (const std::exception& e) {
    return torch_failure("fedloge evaluate", e);
  }
  return out;
}

Status FedLoGeServer::save_extra_state(TensorBundle* state) const {
  if (!sse_c_) return Status::FailedPrecondition("fedloge: no SSE-C to save");
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor weight,
                           renamed_copy(*sse_c_->find(kSseCWeight), kStateSseCWeight));
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor bias,
                           renamed_copy(*sse_c_->find(kSseCBias), kStateSseCBias));
  FEDTAIL_RETURN_IF_ERROR(state->add(std::move(weight)));
  FEDTAIL_RETURN_IF_ERROR(state->add(std::move(bias)));
  state->mutable_metadata()["sse_c"] = sse_c_stats_;
  return Status::OK();
}

Status FedLoGeServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                       const TensorBundle& global) {
  const std::string where = std::string(kName) + " state";
  for (const NamedTensor& t : extra) {
    if (t.name() != kStateSseCWeight && t.name() != kStateSseCBias) {
      return Status::InvalidArgument(where + ": unexpected tensor \"" + t.name() + "\"");
    }
  }
  const NamedTensor* weight = extra.find(kStateSseCWeight);
  const NamedTensor* bias = extra.find(kStateSseCBias);
  if (weight == nullptr || bias == nullptr) {
    return Status::InvalidArgument(where + ": no SSE-C (tensors \"" +
                                   std::string(kStateSseCWeight) + "\" and \"" + kStateSseCBias +
                                   "\")");
  }
  const NamedTensor* psi = global.find(kGlobalWeight);
  if (psi == nullptr || psi->dim() != 2) {
    return Status::InvalidArgument(where + ": no 2-D ψ tensor \"" + kGlobalWeight + "\"");
  }
  const std::vector<int64_t> expected_weight = psi->shape();
  const std::vector<int64_t> expected_bias = {psi->shape()[0]};
  if (weight->dtype() != DType::kFloat32 || weight->shape() != expected_weight) {
    return Status::InvalidArgument(where + ": tensor \"" + kStateSseCWeight +
                                   "\": " + dtype_name(weight->dtype()) + " " +
                                   shape_to_string(weight->shape()) + " != expected float32 " +
                                   shape_to_string(expected_weight));
  }
  if (bias->dtype() != DType::kFloat32 || bias->shape() != expected_bias) {
    return Status::InvalidArgument(
        where + ": tensor \"" + kStateSseCBias + "\": " + dtype_name(bias->dtype()) + " " +
        shape_to_string(bias->shape()) + " != expected float32 " + shape_to_string(expected_bias));
  }
  if (!metadata.contains("sse_c") || !metadata["sse_c"].is_object()) {
    return Status::InvalidArgument(where + ": metadata lacks the \"sse_c\" object");
  }
  // FedAvgServer::load_state has validated these already.
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options,
                           parse_model_options(metadata["model"], "state.model"));
  FEDTAIL_ASSIGN_OR_RETURN(AugmentOptions input,
                           parse_augment_options(metadata["input"], "state.input"));

  TensorBundle sse_c;
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor w, renamed_copy(*weight, kSseCWeight));
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor b, renamed_copy(*bias, kSseCBias));
  FEDTAIL_RETURN_IF_ERROR(sse_c.add(std::move(w)));
  FEDTAIL_RETURN_IF_ERROR(sse_c.add(std::move(b)));

  model_options_ = model_options;
  input_ = std::move(input);
  sse_c_ = std::make_shared<const TensorBundle>(std::move(sse_c));
  sse_c_stats_ = metadata["sse_c"];
  bundle_source_.reset();
  bundle_.reset();
  return Status::OK();
}

}  // namespace fedtail::strategies

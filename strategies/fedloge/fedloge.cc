#include "strategies/fedloge/fedloge.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <set>
#include <string>
#include <utility>

#include "common/wire/bundle_codec.h"
#include "common/base/json_reader.h"
#include "common/learning/metrics.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/train_loop.h"
#include "strategies/classifier_eval.h"

namespace fedtail::strategies {
namespace {

constexpr char kName[] = "fedloge";
// FedAvgServer's documented state format (fedavg.h: save_state), which initialize() builds.
constexpr int kFedAvgStateFormat = 1;
// The SSE-C in saved states (names with '/': FedAvgServer's "extra" tensors).
constexpr char kStateSseCWeight[] = "sse_c/weight";
constexpr char kStateSseCBias[] = "sse_c/bias";

const std::string kSseCWeight = std::string("heads.") + kSseCHead + ".weight";
const std::string kSseCBias = std::string("heads.") + kSseCHead + ".bias";
const std::string kGlobalWeight = std::string("heads.") + kGlobalHead + ".weight";
const std::string kLocalWeight = std::string("heads.") + kLocalHead + ".weight";
const std::string kLocalBias = std::string("heads.") + kLocalHead + ".bias";
// The tensors of the global bundle: the backbone, ψ and the SSE-C.
const std::vector<std::string> kSharedPrefixes = {"backbone.",
                                                  std::string("heads.") + kGlobalHead + ".",
                                                  std::string("heads.") + kSseCHead + "."};
// The tensors a client uploads: the backbone and ψ.
const std::vector<std::string> kUpdatePrefixes = {"backbone.",
                                                  std::string("heads.") + kGlobalHead + "."};

Status torch_failure(const std::string& where, const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    return Status::Internal(where + ": LibTorch failed: " + c10->what_without_backtrace());
  }
  return Status::Internal(where + ": LibTorch failed: " + e.what());
}

bool has_prefix(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const std::string& p : prefixes) {
    if (name.compare(0, p.size(), p) == 0) return true;
  }
  return false;
}

// Adds each head of `names` (num_classes outputs, with bias) that `model` lacks.
Status ensure_heads(Model& model, const std::vector<const char*>& names) {
  for (const char* name : names) {
    if (!model->has_head(name)) {
      FEDTAIL_RETURN_IF_ERROR(model->add_head(name, model->num_classes(), /*bias=*/true));
    }
  }
  return Status::OK();
}

// Loads `bundle` into `model`, which must hold exactly the model's backbone, ψ and SSE-C tensors
// (other heads, such as the unused "classifier" and φ_k, are not touched).
Status load_shared(Model& model, const TensorBundle& bundle) {
  std::set<std::string> expected;
  for (const auto& p : model->named_parameters(/*recurse=*/true)) {
    if (has_prefix(p.key(), kSharedPrefixes)) expected.insert(p.key());
  }
  for (const auto& b : model->named_buffers(/*recurse=*/true)) {
    if (has_prefix(b.key(), kSharedPrefixes)) expected.insert(b.key());
  }
  for (const NamedTensor& t : bundle) {
    if (expected.count(t.name()) == 0) {
      return Status::InvalidArgument("global model: tensor \"" + t.name() +
                                     "\": not a backbone, ψ or SSE-C tensor of this model");
    }
  }
  for (const std::string& name : expected) {
    if (!bundle.contains(name)) {
      return Status::InvalidArgument("global model: tensor \"" + name + "\": missing");
    }
  }
  return load_module_state(*model, bundle, /*strict=*/false).with_context("global model");
}

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

// The client's local training (research/fedloge.md §1.2): per batch three separate SGD steps.
Result<HeadLosses> train_heads(Model& model, const Dataset& data, const LocalTrainOptions& options,
                               torch::Device device, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(Augmenter augmenter,
                           Augmenter::create(options.augment, data.channels(), device));
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

    BatchOptions batches;
    batches.batch_size = options.batch_size;
    batches.shuffle = true;
    batches.augment = true;
    // Σ batch · loss for the three losses, on the device; read once per epoch.
    torch::Tensor sums =
        torch::zeros({3}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
    for (int epoch = 0; epoch < options.epochs; ++epoch) {
      if (options.max_steps > 0) {
        if (out.steps >= options.max_steps) break;
        batches.max_batches = options.max_steps - out.steps;
      }
      Status status = for_each_batch(
          data, batches, augmenter, &rng,
          [&](const torch::Tensor& x, const torch::Tensor& y) -> Status {
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

            sums.add_(torch::stack({loss_body.detach(), loss_psi.detach(), loss_phi.detach()})
                          .to(torch::kFloat64),
                      /*alpha=*/x.size(0));
            out.examples += x.size(0);
            ++out.steps;
            return Status::OK();
          });
      if (!status.ok()) return status.with_context("fedloge local training");
      const torch::Tensor host = sums.to(torch::kCPU);
      for (int i = 0; i < 3; ++i) {
        if (!std::isfinite(host[i].item<double>())) {
          return Status::Internal("fedloge local training: a loss is not finite in epoch " +
                                  std::to_string(epoch + 1) + " (try a lower local.lr)");
        }
      }
    }
    const torch::Tensor host = sums.to(torch::kCPU);
    const double n = static_cast<double>(out.examples);
    out.backbone = host[0].item<double>() / n;
    out.global = host[1].item<double>() / n;
    out.local = host[2].item<double>() / n;
  } catch (const std::exception& e) {
    return torch_failure("fedloge local training", e);
  }
  return out;
}

// A copy of `t` under another name.
Result<NamedTensor> renamed_copy(const NamedTensor& t, std::string name) {
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor out,
                           NamedTensor::uninitialized(std::move(name), t.dtype(), t.shape()));
  if (t.nbytes() > 0) std::memcpy(out.mutable_bytes(), t.bytes(), t.nbytes());
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options and GLA-FR

Result<FedLoGeOptions> parse_fedloge_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedLoGeOptions o;
  read_round_options(reader, &o.round);
  reader.read("sparsity", &o.sse_c.sparsity);
  reader.read("column_norm", &o.sse_c.column_norm);
  reader.read("sse_c_steps", &o.sse_c.steps);
  reader.read("sse_c_lr", &o.sse_c.lr);
  reader.read("global_realignment", &o.global_realignment);
  reader.read("realign_norm", &o.realign_norm);
  reader.read("local_realignment", &o.local_realignment);
  reader.check(o.sse_c.sparsity >= 0 && o.sse_c.sparsity < 1, "sparsity",
               "must be in [0, 1) (got " + std::to_string(o.sse_c.sparsity) + ")");
  reader.check(std::isfinite(o.sse_c.column_norm) && o.sse_c.column_norm > 0, "column_norm",
               "must be > 0 (got " + std::to_string(o.sse_c.column_norm) + ")");
  reader.check(o.sse_c.steps >= 0, "sse_c_steps",
               "must be >= 0 (got " + std::to_string(o.sse_c.steps) + ")");
  reader.check(std::isfinite(o.sse_c.lr) && o.sse_c.lr > 0, "sse_c_lr",
               "must be > 0 (got " + std::to_string(o.sse_c.lr) + ")");
  reader.check(std::isfinite(o.realign_norm) && o.realign_norm > 0, "realign_norm",
               "must be > 0 (got " + std::to_string(o.realign_norm) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return o;
}

torch::Tensor realign_rows(const torch::Tensor& weight, double norm) {
  const torch::Tensor norms = weight.norm(2, /*dim=*/{1}, /*keepdim=*/true);
  const torch::Tensor scale =
      torch::where(norms > 0, norm / norms.clamp_min(std::numeric_limits<float>::min()),
                   torch::zeros_like(norms));
  return weight * scale;
}

std::pair<torch::Tensor, torch::Tensor> personalized_head(const torch::Tensor& phi_weight,
                                                          const torch::Tensor& phi_bias,
                                                          const torch::Tensor& psi_weight,
                                                          const torch::Tensor& psi_bias,
                                                          bool local_realignment) {
  torch::Tensor psi_part = psi_weight;
  if (local_realignment) psi_part = phi_weight.norm(2, /*dim=*/{1}, /*keepdim=*/true) * psi_weight;
  return {phi_weight + psi_part, phi_bias + psi_bias};
}

// ---------------------------------------------------------------------------------------------
// Server

FedLoGeServer::FedLoGeServer(FedLoGeOptions options)
    : FedAvgServer(kName, options.round), options_(options) {}

Status FedLoGeServer::initialize(const RunContext& run, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options, run_model_options(run));
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

// ---------------------------------------------------------------------------------------------
// Client

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

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_fedloge_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedLoGeOptions options, parse_fedloge_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedLoGeServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedloge_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedLoGeOptions options, parse_fedloge_options(config));
  return std::unique_ptr<ClientAlgorithm>(
      std::make_unique<FedLoGeClient>(options.local_realignment));
}

StrategyEntry fedloge_strategy_entry() {
  return {kName,
          "FedLoGe: backbone on a fixed sparse ETF (SSE-C), global and local heads realigned by "
          "their norms (Xiao et al. 2024)",
          make_fedloge_server, make_fedloge_client};
}

}  // namespace fedtail::strategies

// FedLoGe's parts both halves share: the options, the GLA-FR head arithmetic, the model layout
// (fedloge_model.h) and the registration. The server is fedloge_server.cc, the client
// fedloge_client.cc.
#include "strategies/fedloge/fedloge.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <set>
#include <string>

#include "common/base/json_reader.h"
#include "common/learning/torch_bundle.h"
#include "strategies/fedloge/fedloge_model.h"

namespace fedtail::strategies {

namespace fedloge_model {

const std::string kSseCWeight = std::string("heads.") + kSseCHead + ".weight";
const std::string kSseCBias = std::string("heads.") + kSseCHead + ".bias";
const std::string kGlobalWeight = std::string("heads.") + kGlobalHead + ".weight";
const std::string kLocalWeight = std::string("heads.") + kLocalHead + ".weight";
const std::string kLocalBias = std::string("heads.") + kLocalHead + ".bias";
const std::vector<std::string> kSharedPrefixes = {"backbone.",
                                                  std::string("heads.") + kGlobalHead + ".",
                                                  std::string("heads.") + kSseCHead + "."};
const std::vector<std::string> kUpdatePrefixes = {"backbone.",
                                                  std::string("heads.") + kGlobalHead + "."};

namespace {

bool has_prefix(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const std::string& p : prefixes) {
    if (name.compare(0, p.size(), p) == 0) return true;
  }
  return false;
}

}  // namespace

Status ensure_heads(Model& model, const std::vector<const char*>& names) {
  for (const char* name : names) {
    if (!model->has_head(name)) {
      FEDTAIL_RETURN_IF_ERROR(model->add_head(name, model->num_classes(), /*bias=*/true));
    }
  }
  return Status::OK();
}

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

}  // namespace fedloge_model

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
  return {fedloge_model::kName,
          "FedLoGe: backbone on a fixed sparse ETF (SSE-C), global and local heads realigned by "
          "their norms (Xiao et al. 2024)",
          make_fedloge_server, make_fedloge_client};
}

}  // namespace fedtail::strategies

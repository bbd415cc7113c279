// SCAFFOLD (scaffold.h): the client (corrected local training, option II, c_i in the client's
// state) and its loss.
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/wire/dtype.h"
#include "strategies/fedprox/fedprox.h"
#include "strategies/scaffold/scaffold.h"

namespace fedtail::strategies {

namespace {

// Every tensor SCAFFOLD adds to a bundle or a state starts with this; no model tensor does.
constexpr char kScaffoldPrefix[] = "scaffold.";

bool has_prefix(const std::string& name, const char* prefix) {
  return name.compare(0, std::strlen(prefix), prefix) == 0;
}

std::string spec(DType dtype, const std::vector<int64_t>& shape) {
  return std::string(dtype_name(dtype)) + " " + shape_to_string(shape);
}

// A trainable parameter of the client's model.
struct Parameter {
  std::string name;
  torch::Tensor value;  // the module's own tensor (training changes it in place)
  DType dtype;
  std::vector<int64_t> shape;
};

// `t` has `p`'s dtype and shape, or kInvalidArgument "<where>: tensor "name": ... != expected ...".
Status check_like(const NamedTensor& t, const Parameter& p, const std::string& where) {
  if (t.dtype() == p.dtype && t.shape() == p.shape) return Status::OK();
  return Status::InvalidArgument(where + ": tensor \"" + t.name() +
                                 "\": " + spec(t.dtype(), t.shape()) + " != expected " +
                                 spec(p.dtype, p.shape));
}

}  // namespace

double effective_steps(int64_t steps, double momentum) {
  if (steps <= 0) return 0;
  if (momentum == 0) return static_cast<double>(steps);
  // After m steps the buffer's weight on a gradient m − 1 steps old is μ^(m−1): the weight
  // moved by step m is Σ_{j<m} μ^j = (1 − μ^m) / (1 − μ), summed without cancellation.
  double geometric = 0;
  double power = 1;
  double total = 0;
  for (int64_t m = 1; m <= steps; ++m) {
    geometric += power;
    power *= momentum;
    total += geometric;
  }
  return total;
}

LossFn control_corrected_loss(Model model, ClassificationLoss base,
                              std::vector<torch::Tensor> params,
                              std::vector<torch::Tensor> corrections) {
  return [model, base = std::move(base), params = std::move(params),
          corrections = std::move(corrections)](const torch::Tensor& x,
                                                const torch::Tensor& y) mutable {
    torch::Tensor loss = base(model->forward(x), y);
    if (params.empty()) return loss;
    torch::Tensor linear = torch::zeros({}, loss.options());
    for (size_t i = 0; i < params.size(); ++i) {
      linear = linear + (corrections[i] * params[i]).sum();
    }
    // linear − linear.detach() is 0 (the reported loss stays the base loss) with gradient
    // corrections[i] w.r.t. params[i].
    return loss + (linear - linear.detach());
  };
}

Result<FitOutput> ScaffoldClient::fit(ClientContext& context, const TensorBundle& global) {
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr ||
      context.rng == nullptr || context.state == nullptr) {
    return Status::InvalidArgument("scaffold client fit: the context of client " +
                                   context.client_id +
                                   " lacks a model, data, config, rng or state");
  }
  Model& model = *context.model;
  const LocalTrainOptions& local = context.config->local;
  try {
    // On the training device first, so that the tensors collected below are where training runs.
    model->to(context.device);
    // The model: its trainable parameters and the names of its whole state.
    std::vector<Parameter> params;
    std::map<std::string, size_t> index;  // parameter name -> position in params
    std::set<std::string> state_names;
    for (const auto& p : model->named_parameters()) {
      if (!p.value().defined()) continue;
      state_names.insert(p.key());
      if (!p.value().requires_grad()) continue;
      FEDTAIL_ASSIGN_OR_RETURN(DType dtype, dtype_from_torch(p.value().scalar_type()));
      index[p.key()] = params.size();
      params.push_back({p.key(), p.value(), dtype, p.value().sizes().vec()});
    }
    for (const auto& b : model->named_buffers()) {
      if (b.value().defined()) state_names.insert(b.key());
    }

    // The task bundle: exactly x's tensors plus one c per trainable parameter.
    for (const NamedTensor& t : global) {
      if (has_prefix(t.name(), kScaffoldPrefix)) {
        if (!has_prefix(t.name(), kScaffoldControlPrefix) ||
            index.count(t.name().substr(std::strlen(kScaffoldControlPrefix))) == 0) {
          return Status::InvalidArgument("task bundle: tensor \"" + t.name() +
                                         "\": not expected (no trainable parameter of this model "
                                         "is named so)");
        }
      } else if (state_names.count(t.name()) == 0) {
        return Status::InvalidArgument("global model: tensor \"" + t.name() +
                                       "\": not a tensor of this model");
      }
    }
    for (const std::string& name : state_names) {
      if (!global.contains(name)) {
        return Status::InvalidArgument("global model: tensor \"" + name + "\": missing");
      }
    }
    std::vector<const NamedTensor*> control(params.size(), nullptr);
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string name = kScaffoldControlPrefix + params[i].name;
      control[i] = global.find(name);
      if (control[i] == nullptr) {
        return Status::InvalidArgument("task bundle: tensor \"" + name +
                                       "\": missing (a scaffold fit task carries c for every "
                                       "trainable parameter)");
      }
      FEDTAIL_RETURN_IF_ERROR(check_like(*control[i], params[i], "task bundle"));
    }

    // c_i from the client's state: none yet (0), or one per trainable parameter.
    std::vector<const NamedTensor*> own(params.size(), nullptr);
    size_t found = 0;
    for (const NamedTensor& t : context.state->tensors) {
      if (!has_prefix(t.name(), kScaffoldClientPrefix)) continue;
      auto it = index.find(t.name().substr(std::strlen(kScaffoldClientPrefix)));
      if (it == index.end()) {
        return Status::InvalidArgument("client state: tensor \"" + t.name() +
                                       "\": not a trainable parameter of this model");
      }
      FEDTAIL_RETURN_IF_ERROR(check_like(t, params[it->second], "client state"));
      own[it->second] = &t;
      ++found;
    }
    if (found != 0 && found != params.size()) {
      for (size_t i = 0; i < params.size(); ++i) {
        if (own[i] == nullptr) {
          return Status::InvalidArgument("client state: tensor \"" +
                                         std::string(kScaffoldClientPrefix) + params[i].name +
                                         "\": missing (the state holds c_i for some parameters "
                                         "only)");
        }
      }
    }

    // y_i = x, on the training device; the corrections c − c_i (in the parameters' dtype, as
    // the reference codes compute them) beside it.
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/false).with_context("global model"));
    std::vector<torch::Tensor> weights;
    std::vector<torch::Tensor> corrections;
    double correction_norm2 = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      const torch::Tensor c = to_torch(*control[i]);
      const torch::Tensor d = own[i] != nullptr ? c - to_torch(*own[i]) : c;
      correction_norm2 += d.to(torch::kFloat64).pow(2).sum().item<double>();
      weights.push_back(params[i].value);
      corrections.push_back(d.to(context.device));
    }

    // K corrected steps. Without a correction (c = c_i, e.g. round 1) FedAvg's own training.
    Result<TrainStats> trained = Status::Internal("unset");
    if (correction_norm2 == 0) {
      trained = FedAvgClient::train(context);
    } else {
      FEDTAIL_ASSIGN_OR_RETURN(ClassificationLoss base, client_loss(context));
      trained = train_local(model, *context.train, local, context.device, *context.rng,
                            control_corrected_loss(model, std::move(base), std::move(weights),
                                                   std::move(corrections)));
    }
    FEDTAIL_RETURN_IF_ERROR(trained.status());
    const TrainStats& stats = *trained;
    if (stats.steps <= 0) {
      return Status::Internal("scaffold client fit: client " + context.client_id +
                              " took no training step");
    }
    const double k = options_.effective_steps ? effective_steps(stats.steps, local.momentum)
                                              : static_cast<double>(stats.steps);
    const double divisor = k * local.lr;

    // Option II on the CPU in float64: c_i+ = c_i − c + (x − y_i) / (K η_l); Δc_i = c_i+ − c_i.
    std::vector<NamedTensor> next_own;
    TensorBundle deltas;
    for (size_t i = 0; i < params.size(); ++i) {
      const Parameter& p = params[i];
      const torch::Tensor x = to_torch(*global.find(p.name)).to(torch::kFloat64);
      const torch::Tensor y = p.value.detach().to(torch::kCPU).to(torch::kFloat64);
      const torch::Tensor c = to_torch(*control[i]).to(torch::kFloat64);
      const torch::Tensor old =
          own[i] != nullptr ? to_torch(*own[i]).to(torch::kFloat64) : torch::zeros_like(c);
      const torch::Tensor next = (old - c + (x - y) / divisor).to(dtype_to_torch(p.dtype));
      const torch::Tensor delta = (next.to(torch::kFloat64) - old).to(dtype_to_torch(p.dtype));
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor n, from_torch(kScaffoldClientPrefix + p.name, next));
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor d, from_torch(kScaffoldDeltaPrefix + p.name, delta));
      next_own.push_back(std::move(n));
      FEDTAIL_RETURN_IF_ERROR(deltas.add(std::move(d)));
    }

    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model));
    for (NamedTensor& d : deltas) FEDTAIL_RETURN_IF_ERROR(out.update.add(std::move(d)));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats.mean_loss},
                   {"steps", stats.steps},
                   {"effective_steps", k},
                   {"correction_norm", std::sqrt(correction_norm2)}};

    // Commit c_i+ last: on any error above the state is unchanged.
    for (NamedTensor& n : next_own) {
      NamedTensor* existing = context.state->tensors.find(n.name());
      if (existing != nullptr) {
        *existing = std::move(n);  // same name, dtype and shape (checked above)
      } else {
        FEDTAIL_RETURN_IF_ERROR(context.state->tensors.add(std::move(n)));
      }
    }
    return out;
  } catch (const std::exception& e) {
    return torch_failure("scaffold client fit", e);
  }
}

}  // namespace fedtail::strategies

#include "strategies/fedopt/fedopt.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/dtype.h"
#include "common/wire/float_elements.h"

namespace fedtail::strategies {
namespace {

constexpr char kServerStepsKey[] = "server_steps";

std::string number(double value) { return nlohmann::json(value).dump(); }

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The moments of a tensor of dtype `dtype`: float64 for float64, float32 otherwise (a second
// moment Δ² in a half type would underflow).
DType moment_dtype(DType dtype) {
  return dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
}

// Element i of a floating-point tensor as double, and back (half types through float).
double load(const NamedTensor& t, int64_t i) { return load_float(t.dtype(), t.bytes(), i); }
void store(NamedTensor& t, int64_t i, double value) {
  store_float(t.dtype(), t.mutable_bytes(), i, value);
}

// What one step needs besides the tensors.
struct StepParams {
  double lr = 0;  // this step's η (FedAdam with bias correction: η_t)
  double beta1 = 0;
  double beta2 = 0;
  double tau = 0;
  double momentum = 0;
  bool mean_as_is = false;  // FedAvgM with momentum 0 and η 1: the new value is the mean itself
};

// One element's step in double: `g` the global value, `a` the mean; *m and *v the moments (in:
// the previous ones, 0 before the first step; out: the new ones). Returns the new global value.
// The FedAvgM expression is the example plugin's, operation for operation.
template <ServerOptimizer kRule>
inline double step_element(const StepParams& p, double g, double a, double* m, double* v) {
  const double d = a - g;
  if constexpr (kRule == ServerOptimizer::kMomentum) {
    (void)v;
    *m = p.momentum * *m + d;
    // g + 1·(a − g) is a exactly, but the double difference may round: take a as is.
    return p.mean_as_is ? a : g + p.lr * *m;
  } else {
    *m = p.beta1 * *m + (1 - p.beta1) * d;
    const double d2 = d * d;
    if constexpr (kRule == ServerOptimizer::kAdam) {
      *v = p.beta2 * *v + (1 - p.beta2) * d2;
    } else if constexpr (kRule == ServerOptimizer::kYogi) {
      const double gap = *v - d2;
      const double sign = gap > 0 ? 1.0 : (gap < 0 ? -1.0 : 0.0);
      *v = *v - (1 - p.beta2) * d2 * sign;
    } else {
      *v = *v + d2;
    }
    return g + p.lr * *m / (std::sqrt(*v) + p.tau);
  }
}

// The step over one tensor: `mean` and `global` alike; `m_in` / `v_in` the previous moments
// (null: zero; `v_in`, `v_out` unused by FedAvgM); `out`, `m_out`, `v_out` preallocated, `out`
// shaped as `mean`, the moments in moment_dtype. float32 takes a typed loop (the common case),
// the rest goes through load/store; both run step_element, so the numbers are the same.
template <ServerOptimizer kRule>
void step_tensor(const StepParams& p, const NamedTensor& mean, const NamedTensor& global,
                 const NamedTensor* m_in, const NamedTensor* v_in, NamedTensor& out,
                 NamedTensor& m_out, NamedTensor* v_out) {
  constexpr bool kHasV = kRule != ServerOptimizer::kMomentum;
  const int64_t n = mean.numel();
  if (mean.dtype() == DType::kFloat32) {
    const float* a = mean.data<float>();
    const float* g = global.data<float>();
    const float* mi = m_in ? m_in->data<float>() : nullptr;
    const float* vi = kHasV && v_in ? v_in->data<float>() : nullptr;
    float* o = out.data<float>();
    float* mo = m_out.data<float>();
    float* vo = kHasV ? v_out->data<float>() : nullptr;
    for (int64_t i = 0; i < n; ++i) {
      double m = mi ? static_cast<double>(mi[i]) : 0.0;
      double v = vi ? static_cast<double>(vi[i]) : 0.0;
      o[i] = static_cast<float>(step_element<kRule>(p, g[i], a[i], &m, &v));
      mo[i] = static_cast<float>(m);
      if constexpr (kHasV) vo[i] = static_cast<float>(v);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    double m = m_in ? load(*m_in, i) : 0.0;
    double v = kHasV && v_in ? load(*v_in, i) : 0.0;
    store(out, i, step_element<kRule>(p, load(global, i), load(mean, i), &m, &v));
    store(m_out, i, m);
    if constexpr (kHasV) store(*v_out, i, v);
  }
}

void step_tensor_for(ServerOptimizer rule, const StepParams& p, const NamedTensor& mean,
                     const NamedTensor& global, const NamedTensor* m_in, const NamedTensor* v_in,
                     NamedTensor& out, NamedTensor& m_out, NamedTensor* v_out) {
  switch (rule) {
    case ServerOptimizer::kAdam:
      step_tensor<ServerOptimizer::kAdam>(p, mean, global, m_in, v_in, out, m_out, v_out);
      break;
    case ServerOptimizer::kYogi:
      step_tensor<ServerOptimizer::kYogi>(p, mean, global, m_in, v_in, out, m_out, v_out);
      break;
    case ServerOptimizer::kAdagrad:
      step_tensor<ServerOptimizer::kAdagrad>(p, mean, global, m_in, v_in, out, m_out, v_out);
      break;
    case ServerOptimizer::kMomentum:
      step_tensor<ServerOptimizer::kMomentum>(p, mean, global, m_in, v_in, out, m_out, v_out);
      break;
  }
}

// The state prefixes of `rule`'s moments: first (m or velocity), then second ("" for none).
const char* first_prefix(ServerOptimizer rule) {
  return rule == ServerOptimizer::kMomentum ? "velocity/" : "m/";
}
const char* second_prefix(ServerOptimizer rule) {
  return rule == ServerOptimizer::kMomentum ? "" : "v/";
}

// A copy of `t` named `name`.
Result<NamedTensor> renamed_copy(const NamedTensor& t, std::string name) {
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy,
                           NamedTensor::uninitialized(std::move(name), t.dtype(), t.shape()));
  std::copy(t.bytes(), t.bytes() + t.nbytes(), copy.mutable_bytes());
  return copy;
}

// True when a moment tensor of the second kind holds a negative value.
bool has_negative(const NamedTensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (load(t, i) < 0) return true;
  }
  return false;
}

}  // namespace

const char* server_optimizer_strategy_name(ServerOptimizer optimizer) {
  switch (optimizer) {
    case ServerOptimizer::kAdam:
      return "fedadam";
    case ServerOptimizer::kYogi:
      return "fedyogi";
    case ServerOptimizer::kAdagrad:
      return "fedadagrad";
    case ServerOptimizer::kMomentum:
      return "fedavgm";
  }
  return "fedopt";
}

FedOptOptions fedopt_default_options(ServerOptimizer optimizer) {
  FedOptOptions o;
  o.optimizer = optimizer;
  switch (optimizer) {
    case ServerOptimizer::kAdam:
      o.server_lr = 0.1;
      o.beta1 = 0.9;
      o.beta2 = 0.99;
      o.tau = 1e-3;
      break;
    case ServerOptimizer::kYogi:
      o.server_lr = 0.01;
      o.beta1 = 0.9;
      o.beta2 = 0.99;
      o.tau = 1e-3;
      break;
    case ServerOptimizer::kAdagrad:
      o.server_lr = 0.1;
      o.beta1 = 0.0;
      o.beta2 = 0.0;  // unused
      o.tau = 1e-3;
      break;
    case ServerOptimizer::kMomentum:
      o.server_lr = 1.0;
      o.momentum = 0.9;
      break;
  }
  return o;
}

Result<FedOptOptions> parse_fedopt_options(ServerOptimizer optimizer,
                                           const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedOptOptions o = fedopt_default_options(optimizer);
  read_round_options(reader, &o.round);
  reader.read("server_lr", &o.server_lr);
  reader.check(std::isfinite(o.server_lr) && o.server_lr > 0, "server_lr",
               "must be > 0 (got " + number(o.server_lr) + ")");
  const auto in_unit_interval = [&reader](const char* key, double value) {
    reader.check(value >= 0 && value < 1, key, "must be in [0, 1) (got " + number(value) + ")");
  };
  if (optimizer == ServerOptimizer::kMomentum) {
    reader.read("momentum", &o.momentum);
    in_unit_interval("momentum", o.momentum);
  } else {
    reader.read("beta1", &o.beta1);
    in_unit_interval("beta1", o.beta1);
    if (optimizer != ServerOptimizer::kAdagrad) {
      reader.read("beta2", &o.beta2);
      in_unit_interval("beta2", o.beta2);
    }
    reader.read("tau", &o.tau);
    reader.check(std::isfinite(o.tau) && o.tau > 0, "tau",
                 "must be > 0 (got " + number(o.tau) + ")");
    if (optimizer == ServerOptimizer::kAdam) reader.read("bias_correction", &o.bias_correction);
  }
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return o;
}

bool fedopt_steps_tensor(const NamedTensor& tensor) {
  if (!dtype_is_floating(tensor.dtype())) return false;
  return !ends_with(tensor.name(), ".running_mean") && !ends_with(tensor.name(), ".running_var");
}

FedOptServer::FedOptServer(const FedOptOptions& options)
    : FedAvgServer(server_optimizer_strategy_name(options.optimizer), options.round),
      options_(options) {}

Result<TensorBundle> FedOptServer::next_global(int round, TensorBundle average) {
  (void)round;
  const ServerOptimizer rule = options_.optimizer;
  const bool has_v = rule != ServerOptimizer::kMomentum;
  const int64_t step = steps_ + 1;
  StepParams p;
  p.lr = options_.server_lr;
  p.beta1 = options_.beta1;
  p.beta2 = options_.beta2;
  p.tau = options_.tau;
  p.momentum = options_.momentum;
  p.mean_as_is =
      rule == ServerOptimizer::kMomentum && options_.momentum == 0 && options_.server_lr == 1;
  if (rule == ServerOptimizer::kAdam && options_.bias_correction) {
    const double t = static_cast<double>(step);
    p.lr = options_.server_lr * std::sqrt(1 - std::pow(options_.beta2, t)) /
           (1 - std::pow(options_.beta1, t));
  }

  TensorBundle next, first, second;
  for (NamedTensor& mean : average) {
    if (!fedopt_steps_tensor(mean)) {  // counters and BatchNorm statistics: the mean itself
      FEDTAIL_RETURN_IF_ERROR(next.add(std::move(mean)));
      continue;
    }
    const NamedTensor* g = global().find(mean.name());
    if (g == nullptr || g->dtype() != mean.dtype() || g->shape() != mean.shape()) {
      return Status::Internal(name() + ": the mean's tensor \"" + mean.name() +
                              "\" does not match the global model");
    }
    const DType md = moment_dtype(mean.dtype());
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor out,
                             NamedTensor::uninitialized(mean.name(), mean.dtype(), mean.shape()));
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor m_out,
                             NamedTensor::uninitialized(mean.name(), md, mean.shape()));
    NamedTensor v_out;
    if (has_v) {
      FEDTAIL_ASSIGN_OR_RETURN(v_out, NamedTensor::uninitialized(mean.name(), md, mean.shape()));
    }
    step_tensor_for(rule, p, mean, *g, first_.find(mean.name()), second_.find(mean.name()), out,
                    m_out, has_v ? &v_out : nullptr);
    const Status finite = check_finite(out);
    if (!finite.ok()) {
      return Status::FailedPrecondition(name() + ": the server step gave a non-finite model (" +
                                        finite.message() +
                                        "); the global model and the moments are kept");
    }
    FEDTAIL_RETURN_IF_ERROR(first.add(std::move(m_out)));
    if (has_v) FEDTAIL_RETURN_IF_ERROR(second.add(std::move(v_out)));
    FEDTAIL_RETURN_IF_ERROR(next.add(std::move(out)));
  }
  // Committed only now: an error above leaves the moments as they were.
  first_ = std::move(first);
  second_ = std::move(second);
  steps_ = step;
  return next;
}

Status FedOptServer::save_extra_state(TensorBundle* state) const {
  const ServerOptimizer rule = options_.optimizer;
  for (const NamedTensor& t : first_) {
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy, renamed_copy(t, first_prefix(rule) + t.name()));
    FEDTAIL_RETURN_IF_ERROR(state->add(std::move(copy)));
  }
  for (const NamedTensor& t : second_) {
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy, renamed_copy(t, second_prefix(rule) + t.name()));
    FEDTAIL_RETURN_IF_ERROR(state->add(std::move(copy)));
  }
  state->mutable_metadata()[kServerStepsKey] = steps_;
  return Status::OK();
}

Status FedOptServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                      const TensorBundle& global) {
  const ServerOptimizer rule = options_.optimizer;
  const std::string where = name() + " state";
  int64_t steps = -1;
  if (metadata.contains(kServerStepsKey)) {
    const nlohmann::json& s = metadata[kServerStepsKey];
    if (s.is_number_unsigned()) {
      const uint64_t u = s.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        steps = static_cast<int64_t>(u);
      }
    } else if (s.is_number_integer()) {
      steps = s.get<int64_t>();
    }
  }
  if (steps < 0) {
    return Status::InvalidArgument(
        where + ": metadata \"" + kServerStepsKey + "\" must be an integer >= 0 (got " +
        (metadata.contains(kServerStepsKey) ? metadata[kServerStepsKey].dump() : "none") + ")");
  }

  const std::string first_p = first_prefix(rule);
  const std::string second_p = second_prefix(rule);
  TensorBundle first, second;
  for (const NamedTensor& t : extra) {
    const std::string& full = t.name();
    TensorBundle* into = nullptr;
    std::string base_name;  // the global tensor's
    if (full.compare(0, first_p.size(), first_p) == 0) {
      into = &first;
      base_name = full.substr(first_p.size());
    } else if (!second_p.empty() && full.compare(0, second_p.size(), second_p) == 0) {
      into = &second;
      base_name = full.substr(second_p.size());
    } else {
      return Status::InvalidArgument(where + ": unexpected tensor \"" + full + "\"");
    }
    const NamedTensor* g = global.find(base_name);
    if (g == nullptr || !fedopt_steps_tensor(*g) || t.dtype() != moment_dtype(g->dtype()) ||
        t.shape() != g->shape()) {
      return Status::InvalidArgument(
          where + ": tensor \"" + full + "\" (" + dtype_name(t.dtype()) + " " +
          shape_to_string(t.shape()) + ") is not a moment of a stepped global tensor (expected " +
          (g == nullptr ? std::string("a global tensor \"") + base_name + "\""
                        : std::string(dtype_name(moment_dtype(g->dtype()))) + " " +
                              shape_to_string(g->shape()) + ", of a floating-point tensor that " +
                              "is not a BatchNorm statistic") +
          ")");
    }
    const Status finite = check_finite(t);
    if (!finite.ok()) return Status::InvalidArgument(where + ": " + finite.message());
    if (into == &second && has_negative(t)) {
      return Status::InvalidArgument(where + ": tensor \"" + full + "\" has a negative value");
    }
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy, renamed_copy(t, base_name));
    FEDTAIL_RETURN_IF_ERROR(into->add(std::move(copy)).with_context(where));
  }

  // Before the first step no moment; after it, every stepped tensor has each of the rule's.
  struct Kind {
    const TensorBundle* bundle;
    const std::string& prefix;
  };
  std::vector<Kind> kinds = {{&first, first_p}};
  if (rule != ServerOptimizer::kMomentum) kinds.push_back({&second, second_p});
  for (const NamedTensor& g : global) {
    if (!fedopt_steps_tensor(g)) continue;
    for (const Kind& kind : kinds) {
      const bool present = kind.bundle->contains(g.name());
      if (steps > 0 && !present) {
        return Status::InvalidArgument(where + ": tensor \"" + kind.prefix + g.name() +
                                       "\" is missing (" + kServerStepsKey + " = " +
                                       std::to_string(steps) + ")");
      }
      if (steps == 0 && present) {
        return Status::InvalidArgument(where + ": tensor \"" + kind.prefix + g.name() +
                                       "\" is present before any step (" + kServerStepsKey +
                                       " = 0)");
      }
    }
  }

  first_ = std::move(first);
  second_ = std::move(second);
  steps_ = steps;
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_fedopt_server(ServerOptimizer optimizer,
                                                           const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedOptOptions options, parse_fedopt_options(optimizer, config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedOptServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedopt_client(ServerOptimizer optimizer,
                                                            const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_fedopt_options(optimizer, config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedAvgClient>());
}

namespace {

StrategyEntry entry_for(ServerOptimizer optimizer, std::string description) {
  return {
      server_optimizer_strategy_name(optimizer), std::move(description),
      [optimizer](const nlohmann::json& config) { return make_fedopt_server(optimizer, config); },
      [optimizer](const nlohmann::json& config) { return make_fedopt_client(optimizer, config); }};
}

}  // namespace

StrategyEntry fedadam_strategy_entry() {
  return entry_for(ServerOptimizer::kAdam,
                   "FedAdam: Adam on the server over the clients' mean model change "
                   "(Reddi et al. 2021)");
}

StrategyEntry fedyogi_strategy_entry() {
  return entry_for(ServerOptimizer::kYogi,
                   "FedYogi: Yogi on the server over the clients' mean model change "
                   "(Reddi et al. 2021)");
}

StrategyEntry fedadagrad_strategy_entry() {
  return entry_for(ServerOptimizer::kAdagrad,
                   "FedAdagrad: Adagrad on the server over the clients' mean model change "
                   "(Reddi et al. 2021)");
}

StrategyEntry fedavgm_strategy_entry() {
  return entry_for(ServerOptimizer::kMomentum,
                   "FedAvgM: FedAvg with server momentum (Hsu et al. 2019)");
}

}  // namespace fedtail::strategies

// The fedavgm example plugin: FedAvgMServer (below) + the host's FedAvgClient, registered as
// "fedavgm_example" through FEDTAIL_STRATEGY_PLUGIN. Links nothing of fedtail: FedAvgServer,
// WeightedAverage, TensorBundle and the training code are the host binary's own (it exports its
// symbols).
#include "fedavgm.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <utility>

#include "common/base/json_reader.h"
#include "common/wire/float_elements.h"
#include "strategies/registry.h"

namespace fedtail::strategies::examples {
namespace {

// Element i of a floating-point tensor as double, and back (half types through float).
double load(const NamedTensor& t, int64_t i) { return load_float(t.dtype(), t.bytes(), i); }
void store(NamedTensor& t, int64_t i, double value) {
  store_float(t.dtype(), t.mutable_bytes(), i, value);
}

// True for the tensors that take the clients' mean itself: integers (BatchNorm's
// num_batches_tracked) and BatchNorm's running statistics.
bool takes_the_mean(const NamedTensor& t) {
  if (!dtype_is_floating(t.dtype())) return true;
  const std::string& name = t.name();
  for (const std::string_view suffix : {".running_mean", ".running_var"}) {
    if (name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      return true;
    }
  }
  return false;
}

// velocity ← momentum · velocity + (mean − global); out ← global + lr · velocity, in double.
// float32 tensors take a typed loop (the common case); `velocity` may be null (zero). With
// momentum 0 and lr 1, out is the mean itself: global + (mean − global) is the mean exactly, but
// the double difference of two floats of very different magnitudes may round.
void momentum_step(const NamedTensor& mean, const NamedTensor& global, const NamedTensor* velocity,
                   double momentum, double lr, NamedTensor& new_velocity, NamedTensor& out) {
  const int64_t n = mean.numel();
  const bool mean_as_is = momentum == 0 && lr == 1;
  if (mean.dtype() == DType::kFloat32) {
    const float* a = mean.data<float>();
    const float* g = global.data<float>();
    const float* v = velocity ? velocity->data<float>() : nullptr;
    float* nv = new_velocity.data<float>();
    float* o = out.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      const double gi = g[i];
      const double vi = momentum * (v ? static_cast<double>(v[i]) : 0.0) + (a[i] - gi);
      nv[i] = static_cast<float>(vi);
      o[i] = mean_as_is ? a[i] : static_cast<float>(gi + lr * vi);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const double gi = load(global, i);
    const double vi = momentum * (velocity ? load(*velocity, i) : 0.0) + (load(mean, i) - gi);
    store(new_velocity, i, vi);
    store(out, i, mean_as_is ? load(mean, i) : gi + lr * vi);
  }
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedavgm_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_fedavgm_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedAvgClient>());
}

}  // namespace

Result<FedAvgMOptions> parse_fedavgm_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedAvgMOptions options;
  read_round_options(reader, &options.round);
  reader.read("server_lr", &options.server_lr);
  reader.read("momentum", &options.momentum);
  reader.check(std::isfinite(options.server_lr) && options.server_lr > 0, "server_lr",
               "must be > 0 (got " + std::to_string(options.server_lr) + ")");
  reader.check(options.momentum >= 0 && options.momentum < 1, "momentum",
               "must be in [0, 1) (got " + std::to_string(options.momentum) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

FedAvgMServer::FedAvgMServer(const FedAvgMOptions& options)
    : FedAvgServer(kFedAvgMExampleName, options.round),
      server_lr_(options.server_lr),
      momentum_(options.momentum) {}

Result<std::unique_ptr<ServerStrategy>> FedAvgMServer::create(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedAvgMOptions options, parse_fedavgm_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgMServer>(options));
}

Result<TensorBundle> FedAvgMServer::next_global(int round, TensorBundle average) {
  (void)round;
  TensorBundle next, velocity;
  for (NamedTensor& mean : average) {
    if (takes_the_mean(mean)) {  // counters and BatchNorm statistics
      FEDTAIL_RETURN_IF_ERROR(next.add(std::move(mean)));
      continue;
    }
    const NamedTensor* g = global().find(mean.name());
    if (g == nullptr) return Status::Internal(name() + ": no global tensor " + mean.name());
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor nv,
                             NamedTensor::uninitialized(mean.name(), mean.dtype(), mean.shape()));
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor out,
                             NamedTensor::uninitialized(mean.name(), mean.dtype(), mean.shape()));
    momentum_step(mean, *g, velocity_.find(mean.name()), momentum_, server_lr_, nv, out);
    FEDTAIL_RETURN_IF_ERROR(velocity.add(std::move(nv)));
    FEDTAIL_RETURN_IF_ERROR(next.add(std::move(out)));
  }
  velocity_ = std::move(velocity);
  return next;
}

Status FedAvgMServer::save_extra_state(TensorBundle* state) const {
  for (const NamedTensor& v : velocity_) {
    FEDTAIL_ASSIGN_OR_RETURN(
        NamedTensor copy, NamedTensor::uninitialized("velocity/" + v.name(), v.dtype(), v.shape()));
    std::copy(v.bytes(), v.bytes() + v.nbytes(), copy.mutable_bytes());
    FEDTAIL_RETURN_IF_ERROR(state->add(std::move(copy)));
  }
  return Status::OK();
}

Status FedAvgMServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                       const TensorBundle& global) {
  (void)metadata;
  const std::string prefix = "velocity/";
  TensorBundle velocity;
  for (const NamedTensor& t : extra) {
    if (t.name().compare(0, prefix.size(), prefix) != 0) {
      return Status::InvalidArgument(name() + " state: unexpected tensor \"" + t.name() + "\"");
    }
    const std::string global_name = t.name().substr(prefix.size());
    const NamedTensor* g = global.find(global_name);
    if (g == nullptr || g->dtype() != t.dtype() || g->shape() != t.shape() || takes_the_mean(*g)) {
      return Status::InvalidArgument(name() + " state: tensor \"" + t.name() +
                                     "\" does not match a trainable floating-point global tensor");
    }
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor v,
                             NamedTensor::uninitialized(global_name, t.dtype(), t.shape()));
    std::copy(t.bytes(), t.bytes() + t.nbytes(), v.mutable_bytes());
    FEDTAIL_RETURN_IF_ERROR(velocity.add(std::move(v)));
  }
  velocity_ = std::move(velocity);
  return Status::OK();
}

}  // namespace fedtail::strategies::examples

FEDTAIL_STRATEGY_PLUGIN(host) {
  return host->register_strategy(
      {fedtail::strategies::examples::kFedAvgMExampleName,
       "FedAvg with server momentum: the example plugin of the built-in fedavgm",
       fedtail::strategies::examples::FedAvgMServer::create,
       fedtail::strategies::examples::make_fedavgm_client});
}

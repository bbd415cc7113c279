#include "strategies/fedbuff/fedbuff.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/dtype.h"
#include "common/wire/float_elements.h"
#include "strategies/robust_aggregation.h"

namespace fedtail::strategies {
namespace {

constexpr char kName[] = "fedbuff";
constexpr char kVersionKey[] = "version";
constexpr char kMomentumPrefix[] = "momentum/";

std::string number(double value) { return nlohmann::json(value).dump(); }

// The momentum of a tensor of dtype `dtype`: float64 for float64, float32 otherwise.
DType momentum_dtype(DType dtype) {
  return dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
}

double load(const NamedTensor& t, int64_t i) { return load_float(t.dtype(), t.bytes(), i); }
void store(NamedTensor& t, int64_t i, double value) {
  store_float(t.dtype(), t.mutable_bytes(), i, value);
}

// acc[i] += c · (y[i] − base[i]) in double. `y` and `base` are alike (checked by the caller).
// float32 takes a typed loop; the other float types go through load(), with the same numbers.
void accumulate(double c, const NamedTensor& y, const NamedTensor& base, std::vector<double>& acc) {
  const int64_t n = y.numel();
  if (y.dtype() == DType::kFloat32) {
    const float* yv = y.data<float>();
    const float* bv = base.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      acc[i] += c * (static_cast<double>(yv[i]) - static_cast<double>(bv[i]));
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) acc[i] += c * (load(y, i) - load(base, i));
}

// A copy of `t` named `name`.
Result<NamedTensor> renamed_copy(const NamedTensor& t, std::string name) {
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy,
                           NamedTensor::uninitialized(std::move(name), t.dtype(), t.shape()));
  std::copy(t.bytes(), t.bytes() + t.nbytes(), copy.mutable_bytes());
  return copy;
}

Result<StalenessOptions> parse_staleness_options(const nlohmann::json& value,
                                                 const std::string& path) {
  // A bare string names the function, with its default parameters.
  const nlohmann::json object =
      value.is_string() ? nlohmann::json{{"function", value}} : nlohmann::json(value);
  JsonReader reader(object, path);
  StalenessOptions o;
  std::string function = staleness_function_name(o.function);
  reader.read_enum("function", &function, {"constant", "polynomial", "hinge"});
  if (function == "constant") {
    o.function = StalenessFunction::kConstant;
  } else if (function == "polynomial") {
    o.function = StalenessFunction::kPolynomial;
    reader.read("exponent", &o.exponent);
    reader.check(std::isfinite(o.exponent) && o.exponent >= 0, "exponent",
                 "must be >= 0 (got " + number(o.exponent) + ")");
  } else {
    o.function = StalenessFunction::kHinge;
    reader.read("a", &o.a);
    reader.read("b", &o.b);
    reader.check(std::isfinite(o.a) && o.a >= 0, "a", "must be >= 0 (got " + number(o.a) + ")");
    reader.check(std::isfinite(o.b) && o.b >= 0, "b", "must be >= 0 (got " + number(o.b) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return o;
}

}  // namespace

const char* staleness_function_name(StalenessFunction function) {
  switch (function) {
    case StalenessFunction::kConstant:
      return "constant";
    case StalenessFunction::kPolynomial:
      return "polynomial";
    case StalenessFunction::kHinge:
      return "hinge";
  }
  return "polynomial";
}

double staleness_weight(const StalenessOptions& options, int staleness) {
  const double tau = std::max(staleness, 0);
  switch (options.function) {
    case StalenessFunction::kConstant:
      return 1.0;
    case StalenessFunction::kPolynomial:
      return 1.0 / std::pow(1.0 + tau, options.exponent);
    case StalenessFunction::kHinge:
      return tau <= options.b ? 1.0 : 1.0 / (options.a * (tau - options.b) + 1.0);
  }
  return 1.0;
}

Result<FedBuffOptions> parse_fedbuff_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedBuffOptions o;
  reader.ignore("name");  // the strategy's name, when config.strategy carries it

  reader.read("buffer_size", &o.async.buffer_size);
  reader.check(o.async.buffer_size >= 1, "buffer_size",
               "must be >= 1 (got " + std::to_string(o.async.buffer_size) + ")");
  reader.read("max_concurrency", &o.async.max_concurrency);
  reader.check(o.async.max_concurrency >= 1, "max_concurrency",
               "must be >= 1 (got " + std::to_string(o.async.max_concurrency) + ")");
  reader.read("max_staleness", &o.async.max_staleness);
  reader.check(o.async.max_staleness >= 0, "max_staleness",
               "must be >= 0 (got " + std::to_string(o.async.max_staleness) + ")");

  if (reader.has("staleness")) {
    nlohmann::json staleness;
    reader.read_raw("staleness", &staleness);
    Result<StalenessOptions> parsed =
        parse_staleness_options(staleness, reader.path() + ".staleness");
    if (parsed.ok()) {
      o.staleness = *parsed;
    } else {
      reader.absorb(parsed.status());
    }
  }

  reader.read("server_lr", &o.server_lr);
  reader.check(std::isfinite(o.server_lr) && o.server_lr > 0, "server_lr",
               "must be > 0 (got " + number(o.server_lr) + ")");
  reader.read("server_momentum", &o.server_momentum);
  reader.check(o.server_momentum >= 0 && o.server_momentum < 1, "server_momentum",
               "must be in [0, 1) (got " + number(o.server_momentum) + ")");
  reader.read("weight_by_examples", &o.weight_by_examples);

  // The RoundOptions that keep a meaning: the federated evaluation after the last step.
  reader.read("fraction_evaluate", &o.round.fraction_evaluate);
  reader.check(o.round.fraction_evaluate >= 0 && o.round.fraction_evaluate <= 1,
               "fraction_evaluate",
               "must be in [0, 1] (got " + number(o.round.fraction_evaluate) + ")");
  reader.read("min_evaluate_clients", &o.round.min_evaluate_clients);
  reader.check(o.round.min_evaluate_clients >= 0, "min_evaluate_clients",
               "must be >= 0 (got " + std::to_string(o.round.min_evaluate_clients) + ")");
  // The synchronous round's keys have no meaning here (max_concurrency sets how many clients train
  // at once). They are let through, not refused: a comparison's shared config.strategy gives them
  // to every strategy it runs.
  for (const char* key : {"fraction_fit", "min_fit_clients", "accept_failures"}) {
    reader.ignore(key);
  }
  reader.check(!reader.has("robust"), "robust",
               "not supported by fedbuff (it applies the buffered mean of the updates)");
  reader.ignore("robust");

  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return o;
}

FedBuffServer::FedBuffServer(const FedBuffOptions& options)
    : FedAvgServer(kName, options.round), options_(options) {}

Result<std::vector<TaskSpec>> FedBuffServer::configure_fit(int round,
                                                           const std::vector<ClientInfo>& available,
                                                           Rng& rng) {
  (void)round;
  (void)available;
  (void)rng;
  return Status::FailedPrecondition("fedbuff is asynchronous: the engine runs it in server steps");
}

Result<std::unique_ptr<Aggregation>> FedBuffServer::begin_aggregation(int round) {
  (void)round;
  return Status::FailedPrecondition("fedbuff is asynchronous: the engine runs it in server steps");
}

Status FedBuffServer::supports_mean_aggregation() const {
  return Status::FailedPrecondition(
      "fedbuff applies each update on its own, weighted by its staleness, in asynchronous server "
      "steps; secure aggregation (config.secagg) and central differential privacy "
      "(config.privacy) need synchronous rounds");
}

Result<TaskSpec> FedBuffServer::configure_async_fit(const ClientInfo& client, Rng& rng) {
  (void)rng;
  std::shared_ptr<const TensorBundle> global = global_bundle();
  if (!global) {
    return Status::FailedPrecondition("fedbuff: no global model (initialize or load_state first)");
  }
  TaskSpec task;
  task.client_id = client.id;
  task.bundle = global;
  task.expected_update = global;  // the client returns its whole trained model
  return task;
}

Status FedBuffServer::buffer_update(ClientUpdate update, const TensorBundle& base, int staleness) {
  std::shared_ptr<const TensorBundle> global = global_bundle();
  if (!global) {
    return Status::FailedPrecondition("fedbuff: no global model (initialize or load_state first)");
  }
  const std::string who = "update of client " + update.client_id;
  if (update.num_examples <= 0) {
    return Status::InvalidArgument(who + ": num_examples must be > 0 (got " +
                                   std::to_string(update.num_examples) + ")");
  }
  if (staleness < 0 || staleness > options_.async.max_staleness || staleness > version_) {
    return Status::InvalidArgument(
        who + ": staleness " + std::to_string(staleness) + " outside [0, " +
        std::to_string(std::min<int64_t>(options_.async.max_staleness, version_)) +
        "] (max_staleness " + std::to_string(options_.async.max_staleness) + ", model version " +
        std::to_string(version_) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(check_compatible(update.bundle, *global).with_context(who));
  FEDTAIL_RETURN_IF_ERROR(check_compatible(base, *global).with_context(who + ": its base model"));
  if (examples_ > std::numeric_limits<int64_t>::max() - update.num_examples) {
    return Status::InvalidArgument(who + ": the buffer's example count overflows int64");
  }
  if (acc_.empty()) {
    try {
      std::vector<std::vector<double>> acc(global->size());
      for (size_t i = 0; i < global->size(); ++i) {
        const NamedTensor& g = global->at(i);
        if (dtype_is_floating(g.dtype())) acc[i].assign(static_cast<size_t>(g.numel()), 0.0);
      }
      acc_ = std::move(acc);
    } catch (const std::bad_alloc&) {
      return Status::ResourceExhausted("fedbuff: cannot allocate the buffer's float64 sums (" +
                                       std::to_string(global->payload_bytes()) +
                                       " bytes of model)");
    }
  }

  // Checked: from here nothing fails, so a refused update leaves no trace.
  const double w = options_.weight_by_examples ? static_cast<double>(update.num_examples) : 1.0;
  const double s = staleness_weight(options_.staleness, staleness);
  for (size_t i = 0; i < global->size(); ++i) {
    const NamedTensor& g = global->at(i);
    if (!dtype_is_floating(g.dtype())) continue;
    accumulate(w * s, *update.bundle.find(g.name()), *base.find(g.name()), acc_[i]);
  }
  ++buffered_;
  weight_sum_ += w;
  examples_ += update.num_examples;
  const nlohmann::json& m = update.metrics;
  if (m.is_object() && m.contains("loss") && m["loss"].is_number()) {
    const double loss = m["loss"].get<double>();
    if (std::isfinite(loss)) {
      loss_sum_ += loss * static_cast<double>(update.num_examples);
      loss_weight_ += static_cast<double>(update.num_examples);
    }
  }
  staleness_sum_ += staleness;
  staleness_max_ = std::max(staleness_max_, staleness);
  staleness_weight_sum_ += s;
  return Status::OK();
}

Result<nlohmann::json> FedBuffServer::apply_buffer(int step) {
  std::shared_ptr<const TensorBundle> global = global_bundle();
  if (!global) {
    return Status::FailedPrecondition("fedbuff: no global model (initialize or load_state first)");
  }
  if (buffered_ == 0) {
    return Status::FailedPrecondition("fedbuff: apply_buffer with an empty buffer (step " +
                                      std::to_string(step) + ")");
  }
  const double norm = options_.weight_by_examples ? weight_sum_ : static_cast<double>(buffered_);
  const double lr = options_.server_lr;
  const double beta = options_.server_momentum;
  const bool with_momentum = beta > 0;

  TensorBundle next, momentum;
  for (size_t i = 0; i < global->size(); ++i) {
    const NamedTensor& g = global->at(i);
    if (!dtype_is_floating(g.dtype())) {  // counters: the global model's value
      FEDTAIL_RETURN_IF_ERROR(next.add(g.clone()));
      continue;
    }
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor out,
                             NamedTensor::uninitialized(g.name(), g.dtype(), g.shape()));
    NamedTensor m_out;
    const NamedTensor* m_in = nullptr;
    if (with_momentum) {
      FEDTAIL_ASSIGN_OR_RETURN(
          m_out, NamedTensor::uninitialized(g.name(), momentum_dtype(g.dtype()), g.shape()));
      m_in = momentum_.find(g.name());
    }
    const std::vector<double>& acc = acc_[i];
    for (int64_t j = 0; j < g.numel(); ++j) {
      const double mean = acc[j] / norm;
      double direction = mean;
      if (with_momentum) {
        direction = beta * (m_in != nullptr ? load(*m_in, j) : 0.0) + mean;
        store(m_out, j, direction);
      }
      store(out, j, load(g, j) + lr * direction);
    }
    for (const NamedTensor* t : {&out, with_momentum ? &m_out : nullptr}) {
      if (t == nullptr) continue;
      const Status finite = check_finite(*t);
      if (!finite.ok()) {
        return Status::FailedPrecondition("fedbuff: the server step gave a non-finite " +
                                          std::string(t == &out ? "model" : "momentum") + " (" +
                                          finite.message() +
                                          "); the global model, momentum and buffer are kept");
      }
    }
    FEDTAIL_RETURN_IF_ERROR(next.add(std::move(out)));
    if (with_momentum) FEDTAIL_RETURN_IF_ERROR(momentum.add(std::move(m_out)));
  }
  const int64_t clamped = sanitize_batchnorm(&next);
  FEDTAIL_RETURN_IF_ERROR(install_global(std::move(next), step).with_context("fedbuff"));

  // Installed: commit the rest (nothing below fails).
  if (with_momentum) momentum_ = std::move(momentum);
  ++version_;
  const double k = static_cast<double>(buffered_);
  nlohmann::json metrics = {
      {"updates", buffered_},
      {"examples", examples_},
      {"loss", loss_weight_ > 0 ? nlohmann::json(loss_sum_ / loss_weight_) : nlohmann::json()},
      {"staleness",
       {{"mean", staleness_sum_ / k},
        {"max", staleness_max_},
        {"mean_weight", staleness_weight_sum_ / k}}},
      {"version", version_},
      {"batchnorm_variances_clamped", clamped}};
  clear_buffer();
  return metrics;
}

void FedBuffServer::clear_buffer() {
  for (std::vector<double>& a : acc_) std::fill(a.begin(), a.end(), 0.0);
  buffered_ = 0;
  weight_sum_ = 0;
  examples_ = 0;
  loss_sum_ = 0;
  loss_weight_ = 0;
  staleness_sum_ = 0;
  staleness_max_ = 0;
  staleness_weight_sum_ = 0;
}

Status FedBuffServer::save_extra_state(TensorBundle* state) const {
  for (const NamedTensor& t : momentum_) {
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy,
                             renamed_copy(t, std::string(kMomentumPrefix) + t.name()));
    FEDTAIL_RETURN_IF_ERROR(state->add(std::move(copy)));
  }
  state->mutable_metadata()[kVersionKey] = version_;
  return Status::OK();
}

Status FedBuffServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                       const TensorBundle& global) {
  const std::string where = "fedbuff state";
  int64_t version = -1;
  if (metadata.contains(kVersionKey)) {
    const nlohmann::json& v = metadata[kVersionKey];
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        version = static_cast<int64_t>(u);
      }
    } else if (v.is_number_integer()) {
      version = v.get<int64_t>();
    }
  }
  if (version < 0) {
    return Status::InvalidArgument(
        where + ": metadata \"" + kVersionKey + "\" must be an integer >= 0 (got " +
        (metadata.contains(kVersionKey) ? metadata[kVersionKey].dump() : "none") + ")");
  }

  const std::string prefix = kMomentumPrefix;
  const bool with_momentum = options_.server_momentum > 0;
  TensorBundle momentum;
  for (const NamedTensor& t : extra) {
    const std::string& full = t.name();
    if (full.compare(0, prefix.size(), prefix) != 0) {
      return Status::InvalidArgument(where + ": unexpected tensor \"" + full + "\"");
    }
    if (!with_momentum) {
      return Status::InvalidArgument(where + ": tensor \"" + full +
                                     "\": saved with server momentum, but "
                                     "config.strategy.server_momentum is 0");
    }
    const std::string base_name = full.substr(prefix.size());
    const NamedTensor* g = global.find(base_name);
    if (g == nullptr || !dtype_is_floating(g->dtype()) || t.dtype() != momentum_dtype(g->dtype()) ||
        t.shape() != g->shape()) {
      return Status::InvalidArgument(
          where + ": tensor \"" + full + "\" (" + dtype_name(t.dtype()) + " " +
          shape_to_string(t.shape()) + ") is not the momentum of a floating-point global tensor " +
          "(expected " +
          (g == nullptr ? "a global tensor \"" + base_name + "\""
                        : std::string(dtype_name(momentum_dtype(g->dtype()))) + " " +
                              shape_to_string(g->shape())) +
          ")");
    }
    const Status finite = check_finite(t);
    if (!finite.ok()) return Status::InvalidArgument(where + ": " + finite.message());
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy, renamed_copy(t, base_name));
    FEDTAIL_RETURN_IF_ERROR(momentum.add(std::move(copy)).with_context(where));
  }
  if (with_momentum) {
    // Every step with momentum sets it for every floating-point tensor.
    for (const NamedTensor& g : global) {
      if (!dtype_is_floating(g.dtype())) continue;
      const bool present = momentum.contains(g.name());
      if (version > 0 && !present) {
        return Status::InvalidArgument(where + ": tensor \"" + prefix + g.name() +
                                       "\" is missing (" + kVersionKey + " = " +
                                       std::to_string(version) + ")");
      }
      if (version == 0 && present) {
        return Status::InvalidArgument(where + ": tensor \"" + prefix + g.name() +
                                       "\" is present before any step (" + kVersionKey + " = 0)");
      }
    }
  }

  momentum_ = std::move(momentum);
  version_ = version;
  acc_.clear();  // the loaded model may differ in shape: reallocated at the next update
  clear_buffer();
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_fedbuff_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedBuffOptions options, parse_fedbuff_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedBuffServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedbuff_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_fedbuff_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedAvgClient>());
}

StrategyEntry fedbuff_strategy_entry() {
  return {kName,
          "FedBuff: asynchronous; buffers K staleness-weighted client updates per server step "
          "(Nguyen et al. 2022)",
          make_fedbuff_server, make_fedbuff_client};
}

}  // namespace fedtail::strategies

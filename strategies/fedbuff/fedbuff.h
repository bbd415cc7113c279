// FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS
// 2022, Algorithm 1), server side: an asynchronous strategy (strategies/async_strategy.h). Clients
// run FedAvg's client (FedAvgClient) on the global model of the moment their task was handed out
// and return their whole trained model y; the server buffers the changes and applies them K at a
// time.
//
// Each buffered update k, trained from the global bundle `base` (version − τ_k, τ_k its staleness),
// adds per element of every floating-point tensor
//   acc ← acc + w_k · s(τ_k) · (y_k − base_k)
// with w_k = 1 (the paper's plain mean) or num_examples ("weight_by_examples"). A server step
// (apply_buffer) then takes, with x the global model:
//   Δ̄ = acc / K               (or acc / Σ w_k with weight_by_examples)
//   m ← β·m + Δ̄               (server momentum β > 0 only; m starts at 0)
//   x ← x + η_g·(m or Δ̄)
// and bumps the version. Staleness functions s(τ), τ = 0, 1, ...:
//   "constant":   1
//   "polynomial": 1 / (1 + τ)^a ("exponent" a, default 0.5: FedBuff's 1/√(1 + τ); FLSim's
//                 PolynomialStalenessWeight, the authors' code)
//   "hinge":      1 for τ <= b, else 1 / (a·(τ − b) + 1) (FedAsync, Xie et al. 2019; "a" 10,
//                 "b" 4)
// FLSim divides s by s(avg_staleness) (1 by default); fedtail does not (η_g absorbs a constant).
//
// Arithmetic and determinism: each update's change is computed and accumulated in float64 (one
// accumulator per floating-point tensor, 8 bytes per element: twice a float32 model, allocated
// at the first update and reused by every later step), in the order the engine calls
// buffer_update; the engine's order is therefore part of the result. The step is computed per
// element in double and rounded once to the tensor's dtype; the momentum is kept, and saved, in
// float32 (float64 for float64 tensors), and the step uses the unrounded new momentum (as FedOpt
// does, strategies/fedopt/fedopt.h). The same client may appear more than once in a buffer (it
// trains again as soon as its update is in). Which tensors: every floating-point tensor moves,
// BatchNorm running statistics included (their change is buffered like the weights'); negative
// running variances after a step are clamped to 0 (sanitize_batchnorm, counted in the metrics).
// Non-floating tensors (BatchNorm's num_batches_tracked) keep the global model's value: a stale
// counter cannot be combined meaningfully, and nothing reads it in evaluation.
//
// config.strategy keys (any other is refused, naming it: "config.strategy.x: unknown key"):
//   "buffer_size"        K, updates per server step (>= 1, default 10)
//   "max_concurrency"    fit tasks in flight at once (>= 1, default 20)
//   "max_staleness"      updates staler than this are refused by the engine (>= 0, default 10)
//   "staleness"          {"function": "constant"} | {"function": "polynomial", "exponent": a}
//                        (a >= 0, default 0.5) | {"function": "hinge", "a": a, "b": b} (a, b >= 0,
//                        defaults 10 and 4); a bare string names the function with its defaults.
//                        Default: polynomial, exponent 0.5.
//   "server_lr"          η_g (> 0, default 1.0)
//   "server_momentum"    β in [0, 1) (default 0: no momentum state)
//   "weight_by_examples" bool (default false: the plain mean over the K updates)
//   "fraction_evaluate", "min_evaluate_clients": RoundOptions (strategies/sampling.h), for the
//                        federated evaluation after the last step; "name" is ignored.
//   "fraction_fit", "min_fit_clients", "accept_failures" are accepted and ignored (the engine runs
//   max_concurrency clients at a time; a comparison's shared config.strategy gives them to every
//   strategy); "robust" is refused: no rule other than the buffered mean is implemented.
//
// State (save_state, for exact resume): the global model (FedAvgServer's part), metadata
// "version" (server steps applied), and with β > 0 after the first step the momentum of every
// floating-point tensor as "momentum/<name>" (dtype as above). Buffered updates are not saved:
// the engine checkpoints right after apply_buffer, and re-issues the tasks in flight on resume.
//
// Threading: as ServerStrategy and AsyncStrategy: one thread at a time (the engine thread).
#ifndef FEDTAIL_STRATEGIES_FEDBUFF_FEDBUFF_H_
#define FEDTAIL_STRATEGIES_FEDBUFF_FEDBUFF_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/async_strategy.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

enum class StalenessFunction { kConstant, kPolynomial, kHinge };

// "constant", "polynomial", "hinge".
const char* staleness_function_name(StalenessFunction function);

struct StalenessOptions {
  // The function. Default polynomial (FedBuff's).
  StalenessFunction function = StalenessFunction::kPolynomial;
  // Polynomial: s(τ) = 1 / (1 + τ)^exponent (>= 0). Default 0.5.
  double exponent = 0.5;
  // Hinge: s(τ) = 1 for τ <= b, else 1 / (a·(τ − b) + 1); a >= 0, b >= 0. Defaults 10 and 4.
  double a = 10;
  double b = 4;
};

// s(τ) of `options` for staleness τ >= 0 (τ < 0 counts as 0): in [0, 1] (0 only where a large
// polynomial exponent underflows).
double staleness_weight(const StalenessOptions& options, int staleness);

struct FedBuffOptions {
  // buffer_size, max_concurrency, max_staleness (strategies/async_strategy.h).
  AsyncOptions async;
  StalenessOptions staleness;
  // Server learning rate η_g (> 0). Default 1.0.
  double server_lr = 1.0;
  // Server momentum β in [0, 1). Default 0 (none).
  double server_momentum = 0.0;
  // true: each update weighs its num_examples, the sum normalised by their total; false: each
  // weighs 1, normalised by the number buffered (FedBuff's mean). Default false.
  bool weight_by_examples = false;
  // fraction_evaluate and min_evaluate_clients (federated evaluation after the last step); the
  // fit keys keep their defaults and are unused.
  RoundOptions round;
};

// Reads config.strategy (null counts as {}); see the file comment for the keys. kInvalidArgument
// naming the field for a bad value ("config.strategy.buffer_size: must be >= 1 (got 0)",
// "config.strategy.staleness.function: ..."), a refused key or an unknown one.
Result<FedBuffOptions> parse_fedbuff_options(const nlohmann::json& config);

// The FedBuff server: FedAvgServer's model, evaluation and state, run in server steps.
class FedBuffServer final : public FedAvgServer, public AsyncStrategy {
 public:
  // `options` must be valid (as parse_fedbuff_options returns them).
  explicit FedBuffServer(const FedBuffOptions& options);

  const FedBuffOptions& options() const { return options_; }

  // ServerStrategy. The synchronous path is not used: configure_fit and begin_aggregation return
  // kFailedPrecondition ("fedbuff is asynchronous: the engine runs it in server steps").
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;
  // kFailedPrecondition: secure aggregation and central DP need synchronous rounds.
  Status supports_mean_aggregation() const override;

  // AsyncStrategy.
  AsyncOptions async_options() const override { return options_.async; }
  int64_t version() const override { return version_; }
  // TaskSpec{client.id, config {}, bundle = expected_update = the global bundle}; `rng` is not
  // used. kFailedPrecondition before initialize/load_state.
  Result<TaskSpec> configure_async_fit(const ClientInfo& client, Rng& rng) override;
  // Adds w·s(τ)·(y − base) to the accumulators (see the file comment) and the update's "loss"
  // metric (example-weighted) and staleness to the step's metrics. Errors, the buffer unchanged:
  // kFailedPrecondition before initialize/load_state; kInvalidArgument when num_examples <= 0,
  // when `staleness` is outside [0, min(max_staleness, version())], or when the update's or
  // `base`'s tensors differ from the global bundle's (check_compatible's message, naming the
  // tensor). `base` is borrowed for the call.
  Status buffer_update(ClientUpdate update, const TensorBundle& base, int staleness) override;
  int buffered() const override { return buffered_; }
  // One server step (see the file comment): installs the new global model (metadata round =
  // `step`), empties the buffer, bumps the version and returns
  //   {"updates", "examples", "loss" (example-weighted mean of the clients' "loss", null if none),
  //    "staleness": {"mean", "max", "mean_weight"}, "version" (the new one),
  //    "batchnorm_variances_clamped"}.
  // kFailedPrecondition with an empty buffer, before initialize/load_state, or when the step
  // would make a value non-finite (naming the tensor): the model, momentum, version and buffer
  // are then unchanged.
  Result<nlohmann::json> apply_buffer(int step) override;

 protected:
  // Metadata "version" and the tensors "momentum/<name>".
  Status save_extra_state(TensorBundle* state) const override;
  // kInvalidArgument, naming the key or tensor, when "version" is missing or not an integer >= 0,
  // a tensor is not the momentum of a floating-point global tensor (name, dtype, shape), is not
  // finite, is present with server_momentum 0, or the momentum is not all present after a step
  // with β > 0 (all absent at version 0). Nothing is changed then; on success the buffer is
  // emptied.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  // Empties the buffer's sums (keeps the accumulators' memory).
  void clear_buffer();

  // Constant after construction.
  const FedBuffOptions options_;

  int64_t version_ = 0;
  // The momentum of every floating-point global tensor (same names and shapes, float32 or
  // float64), empty before the first step with β > 0.
  TensorBundle momentum_;

  // The buffer. acc_[i]: Σ w·s·(y − base) for global tensor i (empty for a non-floating one);
  // all empty before the first update.
  std::vector<std::vector<double>> acc_;
  int buffered_ = 0;
  double weight_sum_ = 0;            // Σ w over the buffered updates
  int64_t examples_ = 0;             // Σ num_examples
  double loss_sum_ = 0;              // Σ n_k · loss_k over updates with a finite loss
  double loss_weight_ = 0;           // Σ n_k over the same updates
  double staleness_sum_ = 0;         // Σ τ_k
  int staleness_max_ = 0;            // max τ_k
  double staleness_weight_sum_ = 0;  // Σ s(τ_k)
};

// Factories for the registry: config.strategy is parsed with parse_fedbuff_options; the client is
// FedAvgClient.
Result<std::unique_ptr<ServerStrategy>> make_fedbuff_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedbuff_client(const nlohmann::json& config);

// The registry entry "fedbuff".
StrategyEntry fedbuff_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDBUFF_FEDBUFF_H_

// Server optimisers: FedAdam, FedYogi, FedAdagrad (Reddi et al., "Adaptive Federated
// Optimization", ICLR 2021, Algorithm 2) and FedAvgM (Hsu et al., 2019). FedAvg whose server,
// instead of installing the clients' mean model, treats the mean change as a pseudo-gradient and
// takes one optimiser step with it. Clients run FedAvg's client (FedAvgClient) unchanged.
//
// Each round that updates the model, with x the global model and a the example-weighted mean of
// the clients' models (FedAvgServer's aggregate, a robust rule's when config.strategy.robust asks),
// per element:
//   Δ = a − x              (the pseudo-gradient; the optimisers see −Δ as their gradient)
//   FedAdam, FedYogi, FedAdagrad:
//     m ← β1·m + (1 − β1)·Δ
//     Adam:    v ← β2·v + (1 − β2)·Δ²
//     Yogi:    v ← v − (1 − β2)·Δ²·sign(v − Δ²)
//     Adagrad: v ← v + Δ²
//     x ← x + η_t·m / (√v + τ)
//     η_t = η, or with FedAdam's "bias_correction" η·√(1 − β2^t) / (1 − β1^t), t = this step's
//     number (1 for the first round that updates the model; rounds that keep the model do not
//     count).
//   FedAvgM:
//     velocity ← momentum·velocity + Δ
//     x ← x + η·velocity  (momentum 0 and η 1: x ← a itself, FedAvg bit for bit)
// The moments start at zero. The arithmetic is done per element in double from the stored
// tensors; the new model is rounded once to the tensor's dtype, the moments are kept in float32
// (float64 for float64 tensors), and the step uses the unrounded new moments.
//
// Which source each detail follows:
//   - The rules are Algorithm 2 of the paper, as Flower implements them
//     (flwr/server/strategy/fedadam.py, fedyogi.py, fedadagrad.py, fedopt.py, fedavgm.py, and
//     flwr/serverapp/strategy/*.py) and the authors' code (google-research/federated,
//     optimization/: Keras Adam/Adagrad and utils/optimizers/yogi.py). The Yogi update is
//     written as in the paper and Flower; the authors' v + (1 − β2)·Δ²·sign(Δ² − v) is the same.
//   - Initial v = 0: Flower (np.zeros_like) and the authors' experiments
//     (--server_{adagrad,yogi}_initial_accumulator_value=0.0,
//     optimization/docs/hyperparameters.md), not the paper's v_{-1} ≥ τ². τ > 0 keeps the step
//     finite where v = 0.
//   - Bias correction: off by default, as in the paper's Algorithm 2 and Flower's FedYogi and
//     FedAdagrad. FedAdam's "bias_correction": true gives the authors' Keras Adam
//     (α_t = η·√(1 − β2^t)/(1 − β1^t), t counted from 1). Flower's FedAdam corrects with
//     t = server_round + 1, one more than the step number: not reproduced. The authors' Yogi
//     scales η the same way; FedYogi here does not offer it (its v is not a moving average).
//   - Defaults: Flower's current ones (flwr.serverapp.strategy): FedAdam η 0.1, β1 0.9, β2 0.99,
//     τ 1e-3; FedYogi η 0.01, β1 0.9, β2 0.99, τ 1e-3; FedAdagrad η 0.1, β1 0 (Flower fixes it,
//     Keras' Adagrad has no momentum; the paper's Algorithm 2 allows it), τ 1e-3. (Flower's older
//     flwr.server.strategy has τ 1e-9 for FedAdam and FedAdagrad; the authors recommend 1e-3 and
//     tuned η and τ per task, see their hyperparameters.md: tune them.) FedAvgM: η 1.0 and
//     momentum 0.9, Hsu et al.'s and the authors' (Flower's momentum default 0 is plain FedAvg).
//     Flower's FedAvgM keeps −velocity (x − a accumulated) and subtracts it: the same steps.
//   - Which tensors: the optimiser steps the floating-point tensors except BatchNorm's running
//     statistics (".running_mean", ".running_var"); those and the integer tensors
//     (".num_batches_tracked") take the weighted mean itself, as FedAvg does. The authors' TFF code
//     (optimization/shared/fed_avg_schedule.py) averages and steps only the trainable variables
//     and leaves the non-trainable ones as they were (their models use GroupNorm); Flower steps
//     every array, which can drive a running variance negative (NaN at inference) and turns
//     integer counters into floats. fedtail's example plugin (strategies/examples/fedavgm/) makes
//     the same choice as here.
//   - Weighted mean: the example-weighted mean of FedAvg (Flower's aggregate_fit; the authors'
//     client_weight is the number of examples a client processed).
//
// config.strategy keys: RoundOptions (strategies/sampling.h), "robust" included, and
//   fedadam:    "server_lr" (η, > 0, 0.1), "beta1" ([0, 1), 0.9), "beta2" ([0, 1), 0.99),
//               "tau" (> 0, 1e-3), "bias_correction" (bool, false)
//   fedyogi:    "server_lr" (> 0, 0.01), "beta1" ([0, 1), 0.9), "beta2" ([0, 1), 0.99),
//               "tau" (> 0, 1e-3)
//   fedadagrad: "server_lr" (> 0, 0.1), "beta1" ([0, 1), 0), "tau" (> 0, 1e-3)
//   fedavgm:    "server_lr" (> 0, 1.0), "momentum" ([0, 1), 0.9)
// Any other key is refused, naming it.
//
// State (saved with the global model, so a resumed run is bit-identical): the moments of each
// stepped tensor as tensors "m/<name>" and "v/<name>" (FedAvgM: "velocity/<name>"), absent before
// the first step (zero), and the metadata key "server_steps" (steps taken so far).
//
// Threading: as ServerStrategy (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_FEDOPT_FEDOPT_H_
#define FEDTAIL_STRATEGIES_FEDOPT_FEDOPT_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The server's optimiser rule.
enum class ServerOptimizer { kAdam, kYogi, kAdagrad, kMomentum };

// The strategy name of `optimizer`: "fedadam", "fedyogi", "fedadagrad", "fedavgm".
const char* server_optimizer_strategy_name(ServerOptimizer optimizer);

struct FedOptOptions {
  // The rule. Default FedAdam.
  ServerOptimizer optimizer = ServerOptimizer::kAdam;
  RoundOptions round;
  // Server learning rate η (> 0). Default: the rule's (fedopt_default_options).
  double server_lr = 0.1;
  // First-moment decay β1 in [0, 1) (FedAdam, FedYogi, FedAdagrad).
  double beta1 = 0.9;
  // Second-moment decay β2 in [0, 1) (FedAdam, FedYogi).
  double beta2 = 0.99;
  // Adaptivity τ (> 0), added to √v (FedAdam, FedYogi, FedAdagrad).
  double tau = 1e-3;
  // FedAdam only: scale η by √(1 − β2^t)/(1 − β1^t) at step t. Default false.
  bool bias_correction = false;
  // FedAvgM only: server momentum in [0, 1). Default 0.9.
  double momentum = 0.9;
};

// The defaults of `optimizer` (see the file comment), RoundOptions' defaults.
FedOptOptions fedopt_default_options(ServerOptimizer optimizer);

// Reads config.strategy (null counts as {}) for `optimizer`: RoundOptions and that rule's keys.
// kInvalidArgument naming the field for a bad value ("config.strategy.server_lr: must be > 0
// (got 0.0)") or a key the rule does not take ("config.strategy.momentum: unknown key").
Result<FedOptOptions> parse_fedopt_options(ServerOptimizer optimizer, const nlohmann::json& config);

// FedAvgServer, named after its rule, whose next_global takes the rule's step. The moments are
// this server's; the Aggregations it hands out borrow it (as FedAvgServer's do).
class FedOptServer final : public FedAvgServer {
 public:
  // `options` must be valid (as parse_fedopt_options returns them).
  explicit FedOptServer(const FedOptOptions& options);

  const FedOptOptions& options() const { return options_; }
  // Optimiser steps taken so far (rounds that updated the model).
  int64_t steps() const { return steps_; }

 protected:
  // The rule's step from `average` (see the file comment). kFailedPrecondition, naming the
  // tensor, when the step gives a non-finite value: the model and the moments are then kept, and
  // the Aggregation's finish() fails with it (the coordinator stops the run).
  Result<TensorBundle> next_global(int round, TensorBundle average) override;
  // The moments ("m/<name>", "v/<name>" or "velocity/<name>") and metadata "server_steps".
  Status save_extra_state(TensorBundle* state) const override;
  // kInvalidArgument, naming the tensor or key, when "server_steps" is missing or not an integer
  // >= 0, or a tensor is not a moment of this rule for a stepped global tensor (prefix, dtype,
  // shape), is not finite (v: or negative), or the moments are not all present after a step
  // (all absent before the first). Nothing is changed then.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  // Constant after construction.
  const FedOptOptions options_;

  // The moments of every stepped global tensor (same names and shapes), empty before the first
  // step: first_ is m (FedAvgM: the velocity), second_ is v (empty for FedAvgM).
  TensorBundle first_;
  TensorBundle second_;
  int64_t steps_ = 0;
};

// True for the global tensors the rule steps: floating-point tensors other than BatchNorm's
// running statistics (names ending in ".running_mean" / ".running_var").
bool fedopt_steps_tensor(const NamedTensor& tensor);

// Factories for the registry: config.strategy is parsed with parse_fedopt_options for the rule;
// the client is FedAvgClient.
Result<std::unique_ptr<ServerStrategy>> make_fedopt_server(ServerOptimizer optimizer,
                                                           const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedopt_client(ServerOptimizer optimizer,
                                                            const nlohmann::json& config);

// The registry entries "fedadam", "fedyogi", "fedadagrad" and "fedavgm".
StrategyEntry fedadam_strategy_entry();
StrategyEntry fedyogi_strategy_entry();
StrategyEntry fedadagrad_strategy_entry();
StrategyEntry fedavgm_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDOPT_FEDOPT_H_

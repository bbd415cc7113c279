// FedAvgM (Hsu et al., 2019): FedAvg with server momentum, fedtail's example strategy plugin,
// registered as "fedavgm_example". fedtail has FedAvgM built in as "fedavgm"
// (strategies/fedopt/fedopt.h, with FedAdam, FedYogi and FedAdagrad), which gives the same float32
// models and velocities, bit for bit (tests/unit/plugin_test.cc checks it); this plugin shows how
// such a strategy is written and built outside fedtail.
//
// Each round, with Δ = (the example-weighted mean of the clients' models) − global:
//   velocity ← momentum · velocity + Δ
//   global   ← global + server_lr · velocity
// for the trainable floating-point tensors. BatchNorm's running statistics (".running_mean",
// ".running_var") and integer tensors (".num_batches_tracked") take the mean itself: they are not
// trained by gradients, and momentum would carry a variance that fell past zero (NaN at inference).
// The arithmetic is done in double per element from the float tensors; with momentum 0 and
// server_lr 1 the new model is the mean itself: exactly FedAvg's model. The velocity starts at zero
// and is part of the saved state. Clients run FedAvg's client algorithm (FedAvgClient, from the
// host binary).
//
// config.strategy keys: RoundOptions (strategies/sampling.h) and
//   "server_lr": step on the velocity, > 0, default 1.0;
//   "momentum":  server momentum in [0, 1), default 0.9.
//
// Built as <build>/lib/libfedtail_fedavgm.so; load it with `--plugin path/to/libfedtail_fedavgm.so`
// and select strategy "fedavgm_example". Its code lives in namespace fedtail::strategies::examples:
// the host binary exports its own symbols, and a plugin class or function with the same qualified
// name as one of the host's would silently resolve to the host's when the plugin is loaded.
// Threading: as ServerStrategy (strategies/strategy.h).
#ifndef FEDTAIL_STRATEGIES_EXAMPLES_FEDAVGM_FEDAVGM_H_
#define FEDTAIL_STRATEGIES_EXAMPLES_FEDAVGM_FEDAVGM_H_

#include <memory>
#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/sampling.h"

namespace fedtail::strategies::examples {

// The name the plugin registers (the built-in FedAvgM is "fedavgm").
inline constexpr char kFedAvgMExampleName[] = "fedavgm_example";

struct FedAvgMOptions {
  RoundOptions round;
  // Step applied to the velocity (> 0). Default 1.0.
  double server_lr = 1.0;
  // Server momentum in [0, 1); 0 with server_lr 1 is plain FedAvg. Default 0.9.
  double momentum = 0.9;
};

// Reads config.strategy (null counts as {}); kInvalidArgument naming the field or an unknown key.
Result<FedAvgMOptions> parse_fedavgm_options(const nlohmann::json& config);

class FedAvgMServer final : public FedAvgServer {
 public:
  explicit FedAvgMServer(const FedAvgMOptions& options);

  static Result<std::unique_ptr<ServerStrategy>> create(const nlohmann::json& config);

 protected:
  Result<TensorBundle> next_global(int round, TensorBundle average) override;
  // The velocity, as tensors "velocity/<name>" (floating-point tensors only; absent = zero).
  Status save_extra_state(TensorBundle* state) const override;
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  // Constant after construction.
  const double server_lr_;
  const double momentum_;

  // The velocity of each floating-point global tensor, same name, dtype and shape; empty until
  // the first update (zero).
  TensorBundle velocity_;
};

}  // namespace fedtail::strategies::examples

#endif  // FEDTAIL_STRATEGIES_EXAMPLES_FEDAVGM_FEDAVGM_H_

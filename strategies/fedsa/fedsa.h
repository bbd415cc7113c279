// FedSA (Zhou et al., AAAI 2025): prototype-based federated learning with semantic anchors, for
// clients whose models differ (config.model.groups). No model weight is shared: clients learn
// toward fixed anchors and upload only class prototypes. As the authors' code does it
// (github.com/lokinko/FedSA):
//
//   - Server: builds the anchors A (C×D) once from its Rng (strategies/fedsa/anchors.h) and sends
//     them, with the global prototypes P̄, in every task bundle ("anchors", "prototypes",
//     "counts"). After each round P̄ = the per-class mean of the uploads (PrototypeServer; the
//     unweighted mean over clients unless `weighted`), then a_c ← β·a_c + (1−β)·P̄_c for the
//     classes present.
//   - Client (PrototypeClient: its own model kept in its ClientState): per batch the four terms of
//     strategies/fedsa/fedsa_loss.h with one SGD step; δ = max(local gap of its previous
//     prototypes, global gap of the anchors), fixed for the task; the local gap of the new
//     prototypes is kept in ClientState::values["local_gap"] (null: −inf, one class) for the next
//     participation. Upload: the prototypes collected during training.
//   - Evaluation on the clients: "personalized" = nearest global prototype (published), and
//     "personalized_head" = the client's own head. No generic accuracy (no global model).
//
// config.strategy keys (published values as defaults), besides RoundOptions
// (strategies/sampling.h):
//   "gamma"     1.0     CC weight, >= 0
//   "lambda"    10.0    anchor MSE weight, >= 0
//   "mu"        1.0     MCL weight, >= 0
//   "beta"      0.9999  anchor EMA, in [0, 1]
//   "weighted"  false   P̄ weighted by per-class example counts (clients then upload counts)
//   "drop_last" true    drop an epoch's last short batch (the authors' DataLoader)
// Local training uses config.local like every strategy; the published values are lr 0.01,
// momentum 0, weight_decay 0, batch_size 10, epochs 1, no augmentation (crop_padding 0,
// horizontal_flip false). config.model.feature_dim is D, common to all clients (published 512; a
// projection maps each architecture's native width to it).
//
// Differences from the authors' code, on purpose: batches are reshuffled every epoch (their
// DataLoader has shuffle=False over data shuffled once by the generator); a client with fewer
// examples than a batch still trains on its one batch (drop_last there skips it entirely); the
// distance is floored at sqrt(kMinSquaredDistance) so that its gradient stays finite.
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_FEDSA_FEDSA_H_
#define FEDTAIL_STRATEGIES_FEDSA_FEDSA_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "strategies/fedsa/anchors.h"
#include "strategies/fedsa/fedsa_loss.h"
#include "strategies/prototypes/prototype_client.h"
#include "strategies/prototypes/prototype_server.h"
#include "strategies/registry.h"

namespace fedtail::strategies {

struct FedSaOptions {
  PrototypeServerOptions server;  // RoundOptions and "weighted"
  FedSaWeights weights;           // "gamma", "lambda", "mu"
  double beta = 0.9999;           // anchor EMA (hard-coded in the authors' code)
  bool drop_last = true;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.beta: must be in [0, 1] (got 2)") or an unknown key.
Result<FedSaOptions> parse_fedsa_options(const nlohmann::json& config);

class FedSaServer final : public PrototypeServer {
 public:
  explicit FedSaServer(FedSaOptions options);

  const FedSaOptions& fedsa_options() const { return options_; }
  // The anchors, C×D row-major. Empty before initialize/load_state.
  const std::vector<float>& anchors() const { return anchors_; }

 protected:
  // Builds the anchors from Rng::derive(rng.next_u64(), "fedsa.anchors") (kInvalidArgument for
  // fewer than 2 classes) and logs their statistics.
  Status initialize_extra(const RunContext& run, Rng& rng) override;
  std::vector<std::string> extra_tensor_names() const override;  // {"anchors"}
  Status add_extra_tensors(TensorBundle* bundle) const override;
  // "anchors" must be float32 [C, D] and finite.
  Status check_extra_tensors(const TensorBundle& state) const override;
  void install_extra_tensors(const TensorBundle& state) override;
  // The EMA; adds "anchor_shift" (largest L2 move of an anchor) and "anchor_distances".
  void on_global_prototypes(int round, const PrototypeSet& global,
                            nlohmann::json* metrics) override;

 private:
  const FedSaOptions options_;  // constant after construction
  std::vector<float> anchors_;  // C×D; set by initialize or load_state
};

class FedSaClient final : public PrototypeClient {
 public:
  explicit FedSaClient(FedSaOptions options);

 protected:
  std::vector<std::string> global_tensor_names() const override;  // anchors, prototypes, counts
  // fedsa_loss with the task's anchors and δ; metrics {"delta", "local_gap", "global_gap"}.
  Result<LocalObjective> objective(ClientContext& context, const TensorBundle& global,
                                   const PrototypeSet& prototypes) override;
  // Stores the local gap of `local` in context.state->values["local_gap"].
  Status after_fit(ClientContext& context, const PrototypeSet& local,
                   nlohmann::json* metrics) override;

 private:
  const FedSaOptions options_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_fedsa_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedsa_client(const nlohmann::json& config);

// The registry entry "fedsa".
StrategyEntry fedsa_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDSA_FEDSA_H_

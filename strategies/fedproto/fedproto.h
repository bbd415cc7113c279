// FedProto (Tan et al., AAAI 2022) in the HtFLlib form the FedSA authors compare with
// (the FedSA authors' code): clients with their own (possibly heterogeneous) models share only
// class prototypes, and are pulled toward the global ones.
//
//   - Client (PrototypeClient: its own model kept in its ClientState): per batch
//       L = CE(h(z), y) + λ · MSE(z, P̄_y)
//     where samples whose class is absent from P̄ add nothing to the MSE (their target is z
//     itself; the mean is still over B·D, as HtFLlib's clientproto.py does it), so the first
//     round, without P̄, is plain cross-entropy. Upload: the prototypes collected during training.
//   - Server (PrototypeServer): P̄ = the per-class mean of the round's uploads (unweighted over
//     clients, as HtFLlib; the paper's example-weighted mean with `weighted`).
//   - Evaluation on the clients: "personalized" = nearest global prototype (published),
//     "personalized_head" = the client's own head. No generic accuracy (no global model).
//
// config.strategy keys (published values as defaults), besides RoundOptions
// (strategies/sampling.h):
//   "lambda"    10.0   weight of the MSE to P̄_y, >= 0
//   "weighted"  false  P̄ weighted by per-class example counts (clients then upload counts)
//   "drop_last" true   drop an epoch's last short batch (HtFLlib's DataLoader)
// Local training uses config.local (see strategies/fedsa/fedsa.h for the published values).
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_FEDPROTO_FEDPROTO_H_
#define FEDTAIL_STRATEGIES_FEDPROTO_FEDPROTO_H_

#include <torch/types.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "strategies/prototypes/prototype_client.h"
#include "strategies/prototypes/prototype_server.h"
#include "strategies/registry.h"

namespace fedtail::strategies {

struct FedProtoOptions {
  PrototypeServerOptions server;  // RoundOptions and "weighted"
  double lambda = 10.0;
  bool drop_last = true;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value or
// an unknown key.
Result<FedProtoOptions> parse_fedproto_options(const nlohmann::json& config);

// MSE(z, T) over B·D where T_i = P̄_{y_i} when present[y_i], else z_i (no contribution).
// `prototypes` C×D, `present` bool C, on z's device. Throws c10::Error on bad shapes.
torch::Tensor prototype_regularization(const torch::Tensor& z, const torch::Tensor& prototypes,
                                       const torch::Tensor& present, const torch::Tensor& y);

class FedProtoServer final : public PrototypeServer {
 public:
  explicit FedProtoServer(FedProtoOptions options);
};

class FedProtoClient final : public PrototypeClient {
 public:
  explicit FedProtoClient(FedProtoOptions options);

 protected:
  // {total, ce, mse} with the task's P̄; metrics {"global_prototypes": classes in P̄}.
  Result<LocalObjective> objective(ClientContext& context, const TensorBundle& global,
                                   const PrototypeSet& prototypes) override;

 private:
  const FedProtoOptions options_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_fedproto_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedproto_client(const nlohmann::json& config);

// The registry entry "fedproto".
StrategyEntry fedproto_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDPROTO_FEDPROTO_H_

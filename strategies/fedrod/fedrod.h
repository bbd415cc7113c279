// FedRoD (Chen & Chao, "On Bridging Generic and Personalized Federated Learning for Image
// Classification", ICLR 2022): one body, two heads. The generic head ("classifier") is trained
// with the balanced-softmax loss and averaged with the body; the personal head ("personal") stays
// on the client. Per batch, as PFLlib's clientrod does it (the authors did not release code):
//
//   f = body(x);  g = generic(f)
//   body and generic head  <- one SGD step on  CE(g + log n_c, y)   (balanced softmax; n_c = the
//                             client's training examples of class c: log 0 = -inf for a class it
//                             lacks, harmless since that label never occurs)
//   personal head          <- one SGD step on  CE(g.detach() + personal(f.detach()), y)
//
// with two SGD optimisers of config.local (lr, momentum, weight_decay). The personal head starts
// as a copy of the generic head the client first receives (PFLlib copies the initial head; every
// client does so in round 1 when all take part) and lives in ClientState. This is the linear
// variant; the hypernetwork variant (FedRoD (hyper), which generates the personal head from the
// class distribution) is not built.
//
// The client uploads body and generic head; the server (FedAvgServer "fedrod") averages them.
// Models reported: generic = body + generic head; personalised = body with generic + personal
// logits (the two heads folded into one linear map: (W_g + W_p) f + b_g + b_p).
//
// config.strategy keys: RoundOptions (strategies/sampling.h). Nothing else.
#ifndef FEDTAIL_STRATEGIES_FEDROD_FEDROD_H_
#define FEDTAIL_STRATEGIES_FEDROD_FEDROD_H_

#include <memory>
#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "strategies/registry.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The client's personal head.
inline constexpr char kPersonalHead[] = "personal";

// The FedRoD client. fit: adds the "personal" head to context.model when it lacks it, loads the
// task's bundle (exactly the model's tensors other than the personal head) and the personal head
// from context.state (or the copy described above), trains as the file comment says, stores the
// personal head back and returns body and generic head, with num_examples = the training set
// size and metrics {"loss": the balanced-softmax loss, "loss_personal", "steps"}. evaluate: the
// folded personalised head on context.test (evaluate_classifier_on_client; the state is not
// changed).
// Errors: kInvalidArgument for a context without model, config or state (fit: training data or
// rng), a bundle that does not fit the model, or a stored head that does not;
// kFailedPrecondition for empty training data; kInternal for a LibTorch failure or a non-finite
// loss.
class FedRodClient final : public ClientAlgorithm {
 public:
  FedRodClient() = default;
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) override;
};

Result<std::unique_ptr<ServerStrategy>> make_fedrod_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedrod_client(const nlohmann::json& config);

// The registry entry "fedrod".
StrategyEntry fedrod_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDROD_FEDROD_H_

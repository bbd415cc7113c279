// The model layout FedLoGe's server (fedloge_server.cc) and client (fedloge_client.cc) share: the
// names of the SSE-C, ψ and φ_k tensors, which tensors travel, and loading the shared ones.
// Internal to strategies/fedloge/; the strategy's API is fedloge.h.
#ifndef FEDTAIL_STRATEGIES_FEDLOGE_FEDLOGE_MODEL_H_
#define FEDTAIL_STRATEGIES_FEDLOGE_FEDLOGE_MODEL_H_

#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/learning/models.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedloge/fedloge.h"

namespace fedtail::strategies::fedloge_model {

inline constexpr char kName[] = "fedloge";

// Names in the model (and in bundles): "heads.<head>.weight" / ".bias".
extern const std::string kSseCWeight;
extern const std::string kSseCBias;
extern const std::string kGlobalWeight;
extern const std::string kLocalWeight;
extern const std::string kLocalBias;
// The tensors of the global bundle: the backbone, ψ and the SSE-C.
extern const std::vector<std::string> kSharedPrefixes;
// The tensors a client uploads: the backbone and ψ.
extern const std::vector<std::string> kUpdatePrefixes;

// Adds each head of `names` (num_classes outputs, with bias) that `model` lacks.
Status ensure_heads(Model& model, const std::vector<const char*>& names);

// Loads `bundle` into `model`. The bundle must hold exactly the model's backbone, ψ and SSE-C
// tensors (other heads, such as the unused "classifier" and φ_k, are not touched); InvalidArgument
// names the first tensor that is extra or missing.
Status load_shared(Model& model, const TensorBundle& bundle);

}  // namespace fedtail::strategies::fedloge_model

#endif  // FEDTAIL_STRATEGIES_FEDLOGE_FEDLOGE_MODEL_H_

// FedSA's semantic anchors (the FedSA authors' code): fixed, model-agnostic class prototypes
// made once by the server and nudged by the global prototypes after every round.
//
//   A⁰ = ReLU(BN(Linear₂(ReLU(BN(Linear₁(R))))))   R ~ N(0, I) of size C×D
// with Linear(D, D) layers at PyTorch's default initialisation (weight and bias U(±1/√D)), and
// BatchNorm in training mode over the C rows (the batch): each column is normalised by its mean
// and biased variance over the rows, eps 1e-5, weight 1, bias 0. The projector is never trained.
// The final ReLU makes the anchors non-negative, like the backbones' features.
//
//   a_c ← β·a_c + (1 − β)·P̄_c   for each class c present in P̄ (β = 0.9999 published)
//
// Torch-free and computed in double (rounded to float32 at the end), so every platform builds the
// same anchors from the same Rng state. Reentrant.
#ifndef FEDTAIL_STRATEGIES_FEDSA_ANCHORS_H_
#define FEDTAIL_STRATEGIES_FEDSA_ANCHORS_H_

#include <cstdint>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "strategies/prototypes/prototype_set.h"

namespace fedtail::strategies {

// The name of the anchors in FedSA's global bundle and state: float32 [C, D].
inline constexpr char kAnchorsTensor[] = "anchors";

// The anchors A⁰ (C×D, row-major) from the next draws of `rng`, in this order: R row by row, then
// Linear₁'s weight (D×D, row = output), its bias, Linear₂'s weight, its bias. kInvalidArgument when
// num_classes < 2 (BatchNorm over a single row is undefined) or feature_dim < 1.
Result<std::vector<float>> build_semantic_anchors(int64_t num_classes, int64_t feature_dim,
                                                  Rng& rng);

// Applies the EMA above to `anchors` (C×D, row-major, the sizes of `global`), in double, for the
// classes present in `global`. Returns the largest L2 change of a row (0 when none moved).
double update_anchors(std::vector<float>* anchors, const PrototypeSet& global, double beta);

// `anchors` as a PrototypeSet with every class present (count 1), e.g. for nearest_distances.
PrototypeSet anchor_set(const std::vector<float>& anchors, int64_t num_classes,
                        int64_t feature_dim);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDSA_ANCHORS_H_

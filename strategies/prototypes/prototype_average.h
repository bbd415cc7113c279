// PrototypeAverage: the server's streaming per-class mean of the clients' prototypes (FedProto's
// proto_aggregation, which FedSA reuses).
//
// Each client's PrototypeSet is folded in as it arrives (memory O(C·D) whatever the number of
// clients). For every class c the global prototype is
//   unweighted (default, the authors' code):  P̄_c = Σ_{k ∈ S_c} p_c^k / |S_c|
//   weighted (the FedProto paper):            P̄_c = Σ_{k ∈ S_c} n_c^k p_c^k / Σ_{k ∈ S_c} n_c^k
// where S_c are the clients holding c (count > 0) and n_c^k their counts. Sums are kept in double
// and rounded to float32 once, in finish(), so the arrival order changes nothing but (rarely) the
// last bit.
//
// Thread-compatible: one thread at a time (the round engine's contract for an Aggregation).
#ifndef FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_AVERAGE_H_
#define FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_AVERAGE_H_

#include <cstdint>
#include <vector>

#include "common/base/status.h"
#include "strategies/prototypes/prototype_set.h"

namespace fedtail::strategies {

class PrototypeAverage {
 public:
  // An empty average of C×D sets (C, D >= 1).
  PrototypeAverage(int64_t num_classes, int64_t feature_dim, bool weighted);

  // Folds in `set`. kInvalidArgument, leaving the average unchanged, when its sizes are not C×D or
  // (weighted) a class's summed count would overflow int64.
  Status add(const PrototypeSet& set);

  // Sets folded in so far.
  int64_t updates() const { return updates_; }

  // The mean, as described in the file comment: rows of classes no set held are 0 and absent. Its
  // counts are the number of clients behind each row (unweighted) or their summed counts
  // (weighted).
  PrototypeSet finish() const;

 private:
  // Constant after construction.
  int64_t num_classes_;
  int64_t feature_dim_;
  bool weighted_;

  std::vector<double> sums_;      // C×D: Σ w_c^k p_c^k
  std::vector<int64_t> weight_;   // C: Σ w_c^k (w = 1 or n_c^k)
  std::vector<int64_t> holders_;  // C: clients holding the class
  int64_t updates_ = 0;
};

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_AVERAGE_H_

// WeightedAverage: the streaming, example-weighted mean of model updates that every weight-sharing
// strategy aggregates with (FedAvg and its relatives; FedLoGe's body and auxiliary head).
//
// Each update k (a TensorBundle with the reference's tensors, and its example count n_k > 0) is
// folded in as it arrives: the accumulators hold Σ n_k·w_k, so memory is O(model) whatever the
// number of clients, and finish() returns Σ n_k·w_k / Σ n_k.
//
//   - Floating-point tensors accumulate in double, element by element. float32 and the half types
//     (widened exactly first) use one double per element: n_k·w_k is exact (n_k < 2^29), and a
//     different arrival order changes the double sum by a few units in its last place, which the
//     single rounding to float32 in finish() hides except for about one element in 10^8–10^9 per
//     reordering. float64 tensors use a compensated (double-double) sum, two doubles per element,
//     for the same property at double precision. So a resumed or re-run round gives the same
//     global model whatever order the updates arrive in (half types: double → float → half).
//   - Integer and bool tensors (e.g. BatchNorm's int64 num_batches_tracked) are averaged too,
//     exactly: Σ n_k·w_k is kept in 128-bit integers (no rounding, so fully order-independent) and
//     the mean is rounded to the nearest integer, ties away from zero (bool: a weighted majority,
//     ties to true). This matches averaging "every state_dict key" (the FedLoGe
//     authors' code) better than taking the max, and keeps the value within the clients' range.
//
// Thread-compatible: one thread at a time (the round engine's contract for an Aggregation).
#ifndef FEDTAIL_STRATEGIES_WEIGHTED_AVERAGE_H_
#define FEDTAIL_STRATEGIES_WEIGHTED_AVERAGE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/base/status.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::strategies {

// How many updates of `update_bytes` bytes each a caller should hold back and fold together with
// WeightedAverage::add_all(): up to 4, as long as they total at most 96 MiB; at least 1. (Groups
// cut the accumulators' memory traffic; holding updates costs memory: a ResNet-18 update is 45 MB,
// so those fold in pairs.)
size_t fold_group_size(uint64_t update_bytes);

class WeightedAverage {
 public:
  // An empty average over bundles shaped like `reference` (names, dtypes, shapes; its values are
  // not used, its metadata neither). The reference is shared, not copied, and must stay unchanged.
  // kInvalidArgument for a null reference; kResourceExhausted when the accumulators (8 bytes per
  // float32/half element, 16 per float64 or integer element) cannot be allocated.
  static Result<WeightedAverage> create(std::shared_ptr<const TensorBundle> reference);

  WeightedAverage(WeightedAverage&&) noexcept = default;
  WeightedAverage& operator=(WeightedAverage&&) noexcept = default;
  WeightedAverage(const WeightedAverage&) = delete;
  WeightedAverage& operator=(const WeightedAverage&) = delete;

  // Folds in `update` with weight `num_examples`. Checked before anything is added, so a refused
  // update leaves the average unchanged:
  //   kInvalidArgument when num_examples <= 0, or when `update` does not have exactly the
  //   reference's tensors (by name, any order) with the same dtypes and shapes (the message is
  //   check_compatible's, naming the tensor), or when the total example count would overflow
  //   int64 (which also bounds the 128-bit integer sums: they cannot overflow).
  // Values are not checked for NaN/Inf (the engine has, on arrival).
  Status add(const TensorBundle& update, int64_t num_examples);

  // One update and its weight, for add_all().
  struct Weighted {
    const TensorBundle* update;  // borrowed for the call
    int64_t num_examples;
  };
  // Folds in several updates in one pass over the accumulators: bit for bit the result of add()
  // on each in order, with less memory traffic (each accumulator element is read and written
  // once per call, not once per update: about 2.5× faster for K = 4 large float32 updates).
  // All updates are checked first (as add() does; the message names the update's position); on
  // error none is added.
  Status add_all(const std::vector<Weighted>& updates);

  // The checks add() makes, without adding: OK when add(update, num_examples) would succeed now.
  Status check(const TensorBundle& update, int64_t num_examples) const;

  // Empties the average for bundles shaped like `reference`, keeping the accumulators' memory (no
  // allocation; one memset). kInvalidArgument (check_compatible's message, the average unchanged)
  // when `reference` differs from the current reference in names, dtypes or shapes, or is null.
  Status reset(std::shared_ptr<const TensorBundle> reference);

  // Updates folded in so far, and the sum of their num_examples.
  int64_t updates() const { return updates_; }
  int64_t total_examples() const { return total_examples_; }

  // The weighted mean as a new bundle with the reference's names, dtypes, shapes and order, and
  // empty metadata. The average itself is unchanged (finish may be called again, add too).
  // kFailedPrecondition when no update has been added; kResourceExhausted when the result cannot
  // be allocated.
  Result<TensorBundle> finish() const;

  const TensorBundle& reference() const { return *reference_; }

 private:
  __extension__ typedef __int128 Int128;

  // One reference tensor: where its accumulators are.
  struct Slot {
    DType dtype;
    bool floating;
    size_t offset;  // into float_sums_ (floating) or int_sums_ (integer/bool)
    int64_t numel;
  };

  WeightedAverage() = default;

  // Constant after create().
  std::shared_ptr<const TensorBundle> reference_;
  std::vector<Slot> slots_;  // in reference order

  std::vector<double> float_sums_;  // Σ n_k·w_k of every floating-point element (float64: hi, lo)
  std::vector<Int128> int_sums_;    // Σ n_k·w_k of every integer element, exact
  int64_t updates_ = 0;
  int64_t total_examples_ = 0;
};

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_WEIGHTED_AVERAGE_H_

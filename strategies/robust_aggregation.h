// Robust aggregation: defences against Byzantine (malicious or broken) clients for strategies that
// average model updates. Options come from config.strategy.robust:
//
//   "robust": {"method":        "none"   "none" | "clip" | "median" | "trimmed_mean" | "krum" |
//                                        "multi_krum" | "bulyan"
//              "clip_norm":     0        0 = off; > 0 clips ||update − global||_2 to clip_norm,
//                                        with every method, on arrival (before anything else)
//              "trim_fraction": 0.1      trimmed_mean: fraction dropped at each end, 0 <= f < 0.5
//              "byzantine":     1        f, the attackers krum / multi_krum / bulyan tolerate
//              "multi_krum_m":  0        multi_krum: how many updates are averaged; 0 = n − f
//              "max_buffered_bytes": 4 GiB}  buffered methods: cap on n × model per round
//
// Two modes:
//   - Streaming ("none", "clip"): each update is clipped with clip_update() as it arrives and then
//     folded into a WeightedAverage (strategies/weighted_average.h) as usual: O(model) memory.
//   - Buffered (every other method, RobustOptions::buffered()): the caller clips each update on
//     arrival (when clip_norm > 0), keeps all n of them, and calls robust_aggregate() once at the
//     end of the round: O(n × model) memory (buffered_bytes()).
//
// Numerics of robust_aggregate(): floating-point tensors (float32/64, float16, bfloat16) are
// computed in double and written back in the tensor's dtype (half types round through float).
// Integer and bool tensors (BatchNorm's num_batches_tracked) are, with every method, the
// coordinate-wise median of all n updates, rounded to the nearest integer (ties away from zero),
// so they stay within the clients' range. Krum distances use the floating-point tensors only.
// The result does not depend on the order of the updates: median, trimmed mean and Bulyan's final
// step sort each coordinate's values; Krum scores are exact functions of the pairwise distances,
// and equal scores are ordered by the updates' floating-point values (lexicographically, tensor by
// tensor), not by position; Multi-Krum averages with WeightedAverage (order-independent like
// FedAvg, see there).
//
// Values are not checked for NaN/Inf: the coordinator refuses non-finite updates on arrival.
// All functions are thread-compatible: they touch only their arguments.
#ifndef FEDTAIL_STRATEGIES_ROBUST_AGGREGATION_H_
#define FEDTAIL_STRATEGIES_ROBUST_AGGREGATION_H_

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::strategies {

enum class RobustMethod {
  kNone,         // plain example-weighted mean (FedAvg)
  kClip,         // the same, after clipping (clip_norm > 0 required)
  kMedian,       // coordinate-wise median
  kTrimmedMean,  // coordinate-wise trimmed mean
  kKrum,         // the one update with the lowest Krum score
  kMultiKrum,    // example-weighted mean of the m lowest-score updates
  kBulyan,       // Krum selection, then a trimmed mean around the median per coordinate
};

// "none", "clip", "median", "trimmed_mean", "krum", "multi_krum", "bulyan".
const char* robust_method_name(RobustMethod method);

struct RobustOptions {
  // The aggregation rule. Default: none.
  RobustMethod method = RobustMethod::kNone;
  // L2 bound on ||update − global|| over all floating-point tensors; 0 = no clipping. Applies to
  // every method (the caller runs clip_update() on each update as it arrives).
  double clip_norm = 0.0;
  // trimmed_mean: floor(trim_fraction · n) values are dropped at each end of every coordinate.
  // 0 <= trim_fraction < 0.5; default 0.1.
  double trim_fraction = 0.1;
  // krum / multi_krum / bulyan: f, the number of Byzantine clients tolerated; >= 0, default 1.
  int byzantine = 1;
  // multi_krum: m, how many lowest-score updates are averaged; 0 (default) means n − f.
  int multi_krum_m = 0;
  // Buffered methods: the most bytes a round may hold (buffered_bytes() of the selected clients'
  // updates); a round selecting more is refused before its tasks go out. >= 1; default 4 GiB.
  uint64_t max_buffered_bytes = uint64_t{4} << 30;

  // True when the method needs all n updates at once (median, trimmed_mean, krum, multi_krum,
  // bulyan); false for none and clip, which stream.
  bool buffered() const;
  // True unless every option is the default's no-op (method none, no clipping).
  bool enabled() const { return method != RobustMethod::kNone || clip_norm > 0; }
};

// Reads the "robust" object `object` whose JSON path is `path` (e.g. "config.strategy.robust");
// null counts as {} (all defaults). kInvalidArgument naming the field for an unknown key, a wrong
// type, an unknown method ("<path>.method: must be one of ..."), clip_norm < 0 or not finite,
// method "clip" with clip_norm 0, trim_fraction outside [0, 0.5), byzantine < 0,
// multi_krum_m < 0 or max_buffered_bytes 0.
Result<RobustOptions> parse_robust_options(const nlohmann::json& object, const std::string& path);

// Clips `update` towards `global` in place: with δ = update − global over the floating-point
// tensors and ‖δ‖ its L2 norm (accumulated in double over all of them), when clip_norm > 0 and
// ‖δ‖ > clip_norm every floating-point element becomes global + (clip_norm / ‖δ‖)·δ, computed in
// double and rounded to the tensor's dtype; otherwise `update` is unchanged. Integer and bool
// tensors are never changed. Returns ‖δ‖ before clipping (also with clip_norm 0, as a metric).
// O(1) extra memory: two passes over the tensors.
// Errors (update unchanged): kInvalidArgument when clip_norm is negative or not finite, when
// `update` is null, or when its tensors differ from `global`'s (check_compatible's message);
// kCorruption when ‖δ‖ is not finite.
// Both bundles are borrowed for the call.
Result<double> clip_update(const TensorBundle& global, TensorBundle* update, double clip_norm);

// What robust_aggregate() did, for the round's metrics.
struct RobustReport {
  RobustMethod method = RobustMethod::kNone;
  // n, the number of updates aggregated.
  size_t num_updates = 0;
  // krum / multi_krum / bulyan: positions (0-based, into `updates`) of the selected updates, in
  // selection order (lowest score first; Bulyan: the order Krum picked them). Empty otherwise.
  std::vector<size_t> selected;
  // krum / multi_krum / bulyan: every update's Krum score over all n updates (sum of squared L2
  // distances to its n − f − 2 nearest neighbours), by position. Empty otherwise.
  std::vector<double> scores;
  // trimmed_mean: values dropped at each end of every coordinate, floor(trim_fraction · n);
  // bulyan: values dropped around the median per coordinate in total, θ − β = 2f. 0 otherwise.
  int64_t trimmed = 0;

  // {"method": "krum", "updates": 5, "selected": [1], "scores": [...], "trimmed": 0}.
  nlohmann::json to_json() const;
};

// Aggregates n updates of identical tensors (names, dtypes, shapes; compared with the first) by
// the buffered method of `options`. `num_examples[k]` is update k's example count: it weights
// Multi-Krum's mean (as FedAvg does) and is otherwise ignored — median, trimmed mean (as in Yin et
// al. 2018), Krum and Bulyan are unweighted. Per method, with floating-point tensors:
//   median        coordinate-wise median (even n: the mean of the two middle values);
//   trimmed_mean  per coordinate, sort, drop floor(trim_fraction · n) values at each end (with a
//                 1e-9 tolerance against the rounding of trim_fraction · n), average the rest;
//   krum          (Blanchard et al. 2017) score_i = Σ of the squared distances to its n − f − 2
//                 nearest neighbours; returns a copy of the update with the lowest score (ties:
//                 the lexicographically smaller values). Requires n >= 2f + 3;
//   multi_krum    the example-weighted mean of the m lowest-score updates (m = multi_krum_m, or
//                 n − f when 0; ties as krum). Requires n >= 2f + 3 and m <= n;
//   bulyan        (El Mhamdi et al. 2018) picks θ = n − 2f updates one at a time by Krum on the
//                 updates not yet picked (k = n' − f − 2 nearest neighbours for n' remaining,
//                 clamped to [1, n' − 1]; ties as krum), then per coordinate averages the
//                 β = θ − 2f picked values closest to their median (ties: the smaller value).
//                 Requires n >= 4f + 3.
// Integer/bool tensors: the rounded coordinate-wise median of all n updates (see the file comment).
// Success: a new bundle with the first update's names, dtypes, shapes and order, and empty
// metadata; `*report` (when non-null) is overwritten with what was done.
// Errors: kInvalidArgument when the method is not buffered ("none", "clip"), `updates` is empty,
// an update is null, num_examples.size() != updates.size() or a count is <= 0, or an update's
// tensors differ from the first's (the message names the position: "updates[3]: tensor ...");
// kFailedPrecondition when n is too small for the method ("krum needs n >= 2f + 3 updates (got
// n = 4, f = 1)") or multi_krum_m > n; kResourceExhausted when the result cannot be allocated.
// The updates are borrowed for the call and not modified.
Result<TensorBundle> robust_aggregate(const RobustOptions& options,
                                      const std::vector<const TensorBundle*>& updates,
                                      const std::vector<int64_t>& num_examples,
                                      RobustReport* report);

// Clamps every value below 0 to 0 in the floating-point tensors whose name ends in "running_var"
// (BatchNorm running variances, which a median or a clipped update could push negative). Returns
// how many values were changed. Other tensors, NaNs and −0.0 are left alone (non-finite values are
// refused on arrival). `bundle` must be non-null; borrowed for the call.
int64_t sanitize_batchnorm(TensorBundle* bundle);

// Memory the buffered mode holds for one round: n updates of `update_bytes` bytes each
// (TensorBundle::payload_bytes()), i.e. n × model, saturating at UINT64_MAX. For the caller's cap
// check before it buffers; robust_aggregate() itself needs about one model more for its result
// (two more for float32 with multi_krum: WeightedAverage's double accumulators), plus n² doubles
// of Krum distances.
uint64_t buffered_bytes(uint64_t update_bytes, size_t n);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_ROBUST_AGGREGATION_H_

// Long-tailed training sets: the exponential profile of Cao et al. (2019), used by FedLoGe and most
// Fed-LT papers, and the Many/Medium/Few class groups of the evaluation protocol.
//
// Class 0 is the head, class K−1 the tail (class order is not shuffled, as in FedLoGe). Pure
// functions: thread-safe, given distinct Rng objects.
#ifndef FEDTAIL_COMMON_DATA_LONG_TAIL_H_
#define FEDTAIL_COMMON_DATA_LONG_TAIL_H_

#include <cstdint>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"

namespace fedtail {

// The target count of each class: n_c = floor(n_max · IF^(−c/(K−1))) for c = 0..K−1, computed as
// FedLoGe does (int(n_max · (1/IF)^(c/(K−1.0)))). IF = 1 gives n_max for every class; K = 1 gives
// {n_max}. For n_max 6000, IF 100, K 10: 6000 3596 2156 1292 774 464 278 166 100 60.
// Preconditions (FEDTAIL_CHECK): n_max >= 0, imbalance_factor >= 1, num_classes >= 1.
std::vector<int64_t> long_tail_counts(int64_t n_max, double imbalance_factor, int num_classes);

// Chooses the examples a long-tailed training set keeps: n_max = the largest class count of
// `labels`, class c keeps min(n_c, its count) examples, a uniformly random subset drawn from `rng`
// (classes in order 0..K−1). Returns the kept indices into `labels`, ascending. imbalance_factor 1
// keeps everything. kInvalidArgument if imbalance_factor < 1 (or not finite), num_classes < 1, or a
// label is outside [0, num_classes).
Result<std::vector<int64_t>> long_tail_indices(const std::vector<int64_t>& labels, int num_classes,
                                               double imbalance_factor, Rng& rng);

enum class ClassGroup { kMany, kMedium, kFew };

// "many", "medium" or "few".
const char* class_group_name(ClassGroup group);

// The FedLoGe Many/Medium/Few split (util.py shot_split, thresholds 75 and 95): classes sorted by
// training count, largest first (ties: lower class index first); a class whose preceding classes
// hold less than 75% of all samples is Many, else less than 95% Medium, else Few. Returns the group
// of each class (indexed by class). All-zero counts give all Many.
std::vector<ClassGroup> many_medium_few(const std::vector<int64_t>& class_counts);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_DATA_LONG_TAIL_H_

// Partitions of a labelled training set across N clients, and the personalised test sets that
// mirror each client's label distribution.
//
// Each partition function takes the label vector (labels in [0, num_classes)) and returns, for each
// of the N clients, the indices into `labels` it receives, ascending; every index appears in
// exactly one client. All randomness comes from `rng`, so the same labels, options and Rng state
// give the same partition in every process. Pure functions: thread-safe, given distinct Rng
// objects.
#ifndef FEDTAIL_COMMON_DATA_PARTITION_H_
#define FEDTAIL_COMMON_DATA_PARTITION_H_

#include <cstdint>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/data/data_options.h"

namespace fedtail {

// Indices per client: partition[k] = the indices client k holds.
using Partition = std::vector<std::vector<int64_t>>;

// The FedLoGe rule (sampling.py non_iid_dirichlet_sampling): for each class c in order, its indices
// are shuffled, p ~ Dirichlet(alpha·1_N) is drawn over all N clients, and each example goes to a
// client drawn from p. If a client ends with fewer than min_client_size examples, the whole
// partition is redrawn, continuing the same rng stream, up to 100 draws in all. kInvalidArgument
// for num_clients < 1, alpha <= 0 or a label outside [0, num_classes); kFailedPrecondition when 100
// draws all leave a client too small (or the set is smaller than num_clients · min_client_size).
Result<Partition> partition_dirichlet(const std::vector<int64_t>& labels, int num_classes,
                                      int num_clients, double alpha, int64_t min_client_size,
                                      Rng& rng);

// The shards partition of McMahan et al. (FedAvg): the examples are sorted by label (the order
// within a class shuffled), cut into num_clients · shards_per_client contiguous shards whose sizes
// differ by at most one, and each client gets shards_per_client shards chosen at random. When every
// class size is a multiple of the shard size, a client sees at most shards_per_client classes
// (fewer if two of its shards share a class); otherwise a shard may straddle two classes.
// kInvalidArgument for num_clients < 1, shards_per_client outside [1, num_classes] or a bad label;
// kFailedPrecondition when there are fewer examples than shards, or a client gets fewer than
// min_client_size examples.
Result<Partition> partition_pathological(const std::vector<int64_t>& labels, int num_classes,
                                         int num_clients, int shards_per_client,
                                         int64_t min_client_size, Rng& rng);

// IID: the indices are shuffled and dealt into num_clients blocks whose sizes differ by at most
// one. kInvalidArgument for num_clients < 1; kFailedPrecondition when a client would get fewer than
// min_client_size examples.
Result<Partition> partition_iid(const std::vector<int64_t>& labels, int num_clients,
                                int64_t min_client_size, Rng& rng);

// Dispatches on options.partition ("dirichlet", "pathological", "iid") with options.clients,
// options.alpha, options.classes_per_client and options.min_client_size. Errors as above, prefixed
// with "data.partition: ".
Result<Partition> partition_labels(const std::vector<int64_t>& labels, int num_classes,
                                   const DataOptions& options, Rng& rng);

// Per-client, per-class counts of a partition: counts[k][c] (num_clients × num_classes).
// Precondition: every index is valid for `labels` and every label is in [0, num_classes).
std::vector<std::vector<int64_t>> partition_class_counts(const Partition& partition,
                                                         const std::vector<int64_t>& labels,
                                                         int num_classes);

// Personalised test sets (FedLoGe dataset.py get_imbalanced_dataset): for client k and class j,
// floor(n_kj / total_train · N_test) examples of class j drawn without replacement from the test
// pool of class j (capped at the pool size), where n_kj = client_train_counts[k][j] and N_test =
// test_labels.size(). Sets overlap across clients. Returns indices into test_labels, ascending, per
// client. kInvalidArgument when a row of client_train_counts is not num_classes long, a count is
// negative, total_train < 1, or a test label is outside [0, num_classes).
Result<Partition> personalised_test_indices(
    const std::vector<std::vector<int64_t>>& client_train_counts, int64_t total_train,
    const std::vector<int64_t>& test_labels, int num_classes, Rng& rng);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_DATA_PARTITION_H_

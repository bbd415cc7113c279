// FederatedData: the data of one federated run: the long-tailed train set, the balanced test set,
// each client's share of the train set and each client's personalised test set.
//
// build_federated_data() is a function of (DataOptions, seed) alone: every process (coordinator,
// workers, remote clients) that calls it with the same arguments gets the same sets, so no data is
// shipped. A FederatedData is a value; copies share tensor storage (treat it as immutable), and
// const methods may be called from several threads.
#ifndef FEDTAIL_COMMON_DATA_FEDERATED_DATA_H_
#define FEDTAIL_COMMON_DATA_FEDERATED_DATA_H_

#include <cstdint>
#include <vector>

#include "common/base/status.h"
#include "common/data/data_options.h"
#include "common/data/dataset.h"

namespace fedtail {

struct FederatedData {
  Dataset train;      // the long-tailed training set
  Dataset test;       // the balanced test set, untouched
  Dataset auxiliary;  // the server's balanced auxiliary set (data.auxiliary_per_class; else empty)
  std::vector<std::vector<int64_t>> client_train;  // client_train[k]: indices into train, ascending
  std::vector<std::vector<int64_t>> client_test;   // client_test[k]: indices into test, ascending
  std::vector<int64_t> train_class_counts;         // examples per class in train

  int num_clients() const { return static_cast<int>(client_train.size()); }
  int num_classes() const { return train.num_classes; }
  // Client k's training / personalised test examples as their own Dataset. Precondition: 0 <= k <
  // N.
  Dataset client_train_set(int k) const;
  Dataset client_test_set(int k) const;
  // Per-client, per-class training counts (num_clients × num_classes).
  std::vector<std::vector<int64_t>> client_train_class_counts() const;
};

// Loads options.dataset (train and test splits), holds out the validation set and the auxiliary
// set when asked (DataOptions::validation_per_class, auxiliary_per_class), trims each train class
// to options.max_examples_per_class when set, long-tails the train set with
// options.imbalance_factor, partitions it with options.partition, and draws the personalised test
// sets. Each random step uses its own Rng::derive(seed, "<step>"): "long_tail", "partition",
// "personal_test". Errors: those of load_dataset(), long_tail_indices() and partition_labels();
// kInvalidArgument when the train and test splits disagree on classes or image shape.
Result<FederatedData> build_federated_data(const DataOptions& options, uint64_t seed);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_DATA_FEDERATED_DATA_H_

#include "common/data/federated_data.h"

#include <torch/torch.h>

#include <string>

#include "common/base/rng.h"
#include "common/data/dataset_readers.h"
#include "common/data/long_tail.h"
#include "common/data/partition.h"

namespace fedtail {
namespace {

// The first `max_per_class` examples of each class, in file order (all of them when 0).
std::vector<int64_t> trim_per_class(const std::vector<int64_t>& labels, int num_classes,
                                    int64_t max_per_class) {
  std::vector<int64_t> kept;
  std::vector<int64_t> seen(num_classes, 0);
  for (size_t i = 0; i < labels.size(); ++i) {
    if (max_per_class == 0 || seen[labels[i]]++ < max_per_class)
      kept.push_back(static_cast<int64_t>(i));
  }
  return kept;
}

// Splits off the last `per_class` examples of each class (file order): {kept, held out}.
// kInvalidArgument naming `field` and the class when a class has no more than `per_class` examples.
Result<std::pair<std::vector<int64_t>, std::vector<int64_t>>> hold_out_per_class(
    const std::vector<int64_t>& labels, int num_classes, int64_t per_class,
    const std::string& field) {
  std::vector<int64_t> total(num_classes, 0);
  for (int64_t label : labels) ++total[label];
  for (int c = 0; c < num_classes; ++c) {
    if (total[c] <= per_class) {
      return Status::InvalidArgument("data." + field + ": class " + std::to_string(c) + " has " +
                                     std::to_string(total[c]) + " training examples; holding out " +
                                     std::to_string(per_class) + " would leave none");
    }
  }
  std::pair<std::vector<int64_t>, std::vector<int64_t>> out;
  std::vector<int64_t> seen(num_classes, 0);
  for (size_t i = 0; i < labels.size(); ++i) {
    const int64_t label = labels[i];
    (seen[label]++ < total[label] - per_class ? out.first : out.second)
        .push_back(static_cast<int64_t>(i));
  }
  return out;
}

}  // namespace

Dataset FederatedData::client_train_set(int k) const { return train.subset(client_train.at(k)); }

Dataset FederatedData::client_test_set(int k) const { return test.subset(client_test.at(k)); }

std::vector<std::vector<int64_t>> FederatedData::client_train_class_counts() const {
  return partition_class_counts(client_train, train.label_vector(), train.num_classes);
}

Result<FederatedData> build_federated_data(const DataOptions& options, uint64_t seed) {
  FederatedData fd;
  FEDTAIL_ASSIGN_OR_RETURN(Dataset train, load_dataset(options, Split::kTrain));
  FEDTAIL_ASSIGN_OR_RETURN(fd.test, load_dataset(options, Split::kTest));
  if (train.num_classes != fd.test.num_classes) {
    return Status::InvalidArgument("data: train split has " + std::to_string(train.num_classes) +
                                   " classes but test split has " +
                                   std::to_string(fd.test.num_classes));
  }
  if (train.images.sizes().slice(1) != fd.test.images.sizes().slice(1)) {
    return Status::InvalidArgument(
        "data: train images are " + c10::str(train.images.sizes().slice(1)) +
        " but test images are " + c10::str(fd.test.images.sizes().slice(1)));
  }
  const int num_classes = train.num_classes;

  std::vector<int64_t> labels = train.label_vector();
  if (options.validation_per_class > 0) {
    FEDTAIL_ASSIGN_OR_RETURN(auto split,
                             hold_out_per_class(labels, num_classes, options.validation_per_class,
                                                "validation_per_class"));
    fd.test = train.subset(split.second);
    train = train.subset(split.first);
    labels = train.label_vector();
  }
  if (options.auxiliary_per_class > 0) {
    FEDTAIL_ASSIGN_OR_RETURN(auto split,
                             hold_out_per_class(labels, num_classes, options.auxiliary_per_class,
                                                "auxiliary_per_class"));
    fd.auxiliary = train.subset(split.second);
    train = train.subset(split.first);
    labels = train.label_vector();
  }
  if (options.max_examples_per_class > 0) {
    train = train.subset(trim_per_class(labels, num_classes, options.max_examples_per_class));
    labels = train.label_vector();
  }

  Rng lt_rng = Rng::derive(seed, "long_tail");
  auto kept = long_tail_indices(labels, num_classes, options.imbalance_factor, lt_rng);
  if (!kept.ok()) return kept.status().with_context("data.imbalance_factor");
  if (static_cast<int64_t>(kept->size()) != train.size()) {
    train = train.subset(*kept);
    labels = train.label_vector();
  }
  fd.train = std::move(train);
  fd.train_class_counts = fd.train.class_counts();

  Rng partition_rng = Rng::derive(seed, "partition");
  FEDTAIL_ASSIGN_OR_RETURN(fd.client_train,
                           partition_labels(labels, num_classes, options, partition_rng));

  Rng test_rng = Rng::derive(seed, "personal_test");
  FEDTAIL_ASSIGN_OR_RETURN(
      fd.client_test,
      personalised_test_indices(partition_class_counts(fd.client_train, labels, num_classes),
                                fd.train.size(), fd.test.label_vector(), num_classes, test_rng));
  return fd;
}

}  // namespace fedtail

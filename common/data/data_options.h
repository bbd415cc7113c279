// DataOptions: which dataset to load and how to make it long-tailed and federated.
//
// A plain struct (the "data" section of a run config, and the flags of fedtail-data). Every process
// of a run derives the same long-tailed train set, partition and personalised test sets from these
// options and the run seed (see common/data/federated_data.h).
#ifndef FEDTAIL_COMMON_DATA_DATA_OPTIONS_H_
#define FEDTAIL_COMMON_DATA_DATA_OPTIONS_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail {

struct DataOptions {
  // "fashion-mnist" (IDX files), "cifar10" / "cifar100" (binary batches, or an image folder with
  // train/ and test/), or "folder" (root/train/<class>/*.jpg|png and root/test/<class>/...).
  std::string dataset = "fashion-mnist";
  // Where the files are; "" means the dataset's default (default_data_root()). fashion-mnist has
  // the default /usr/share/datasets/fashion-mnist; the others have none and need a root.
  std::string root;
  // Ratio of the largest to the smallest training class, >= 1: class c keeps
  // floor(n_max · IF^(−c/(K−1))) examples. 1 keeps the training set as it is (balanced).
  double imbalance_factor = 1.0;
  // How the long-tailed training set is split across clients: "dirichlet", "pathological" or "iid".
  std::string partition = "dirichlet";
  // Concentration of the per-class Dirichlet(α·1_N) over clients (partition "dirichlet"), > 0.
  // Small values give very skewed clients; large values approach an even split.
  double alpha = 0.5;
  // Shards per client for partition "pathological" (roughly the number of classes a client sees),
  // in [1, number of classes].
  int classes_per_client = 2;
  // Number of clients N, >= 1.
  int clients = 1;
  // Every client must receive at least this many training examples, >= 0. The Dirichlet partition
  // is redrawn (up to 100 times) until it holds; the other partitions fail if it cannot hold.
  int64_t min_client_size = 1;
  // 0 keeps every example. Otherwise each class of the TRAIN set is first trimmed to its first
  // max_examples_per_class examples (file order), before long-tailing; the test set is untouched.
  // Keeps tests and smoke runs small.
  int64_t max_examples_per_class = 0;
  // 0 (default) evaluates on the dataset's test split. Otherwise the last validation_per_class
  // examples of each TRAIN class (file order) are held out first, before trimming and
  // long-tailing, and take the test split's place everywhere (server evaluation, personalised
  // test sets): a balanced validation set for choosing settings without looking at the test set.
  // Every class needs more than validation_per_class training examples.
  int64_t validation_per_class = 0;
  // 0 (default): none. Otherwise the last auxiliary_per_class examples of each TRAIN class that
  // remain after the validation hold-out are held out too, before trimming and long-tailing: a
  // small balanced set that only the server holds (RunContext::auxiliary), for strategies that
  // assume one (Ratio Loss). No client trains or is tested on it. Every class needs more than
  // validation_per_class + auxiliary_per_class training examples.
  int64_t auxiliary_per_class = 0;
};

// The datasets DataOptions::dataset accepts.
const std::vector<std::string>& known_datasets();

// Number of classes of a built-in dataset (10, 10, 100), or 0 for "folder" (known only after
// loading).
int builtin_num_classes(const std::string& dataset);

// Reads DataOptions from the JSON object `j`, whose path in the config is `path` (e.g.
// "config.data"). Absent keys keep their defaults. Returns kInvalidArgument naming the field, e.g.
// "config.data.alpha: must be > 0 (got -1)", for a wrong type, a bad value or an unknown key.
Result<DataOptions> parse_data_options(const nlohmann::json& j, const std::string& path);

// The options as a JSON object (every field), e.g. for a run summary. parse_data_options() reads it
// back.
nlohmann::json data_options_to_json(const DataOptions& options);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_DATA_DATA_OPTIONS_H_

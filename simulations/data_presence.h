// Whether a run's data set is where its config says, without loading it: the places load_dataset
// (common/data/dataset_readers.h) reads, looked at with stat() and directory listings only (no
// file is opened, no image decoded), so a missing data set is reported once, before any run.
// What a present data set holds (a truncated file, a class folder without images) is found only
// by loading it. Free functions; thread-safe.
#ifndef FEDTAIL_SIMULATIONS_DATA_PRESENCE_H_
#define FEDTAIL_SIMULATIONS_DATA_PRESENCE_H_

#include <string>

#include "common/base/status.h"
#include "common/data/data_options.h"

namespace fedtail::simulation {

// What a data set's name alone tells about it; 0 where only the files can tell.
struct KnownShape {
  int num_classes = 0;  // fashion-mnist and cifar10 10, cifar100 100, folder 0
  int in_channels = 0;  // fashion-mnist 1, cifar10/cifar100 3, folder 0
  int image_size = 0;   // fashion-mnist 28, cifar10/cifar100 32 (as published), folder 0
};

// The shape of a built-in data set (all zeros for "folder" or an unknown name).
KnownShape known_shape(const std::string& dataset);

// OK when both splits of options.dataset can be found where load_dataset looks (options.root,
// or the dataset's default root when it is empty): fashion-mnist's four IDX files (plain or .gz),
// CIFAR's binary files (all five training batches for cifar10), or an image folder root/train and
// root/test with the dataset's number of class folders and the same class folders in both.
// `path` is the JSON path of the data section (e.g. "config.data"); messages start with its root
// key and say where relative roots are resolved (the current directory):
//   kNotFound "config.data.root: data/cifar-100-binary (relative to /home/me) is not a directory"
//   kNotFound "config.data.root: /d: no cifar100 train data (looked for train.bin in /d or
//             /d/cifar-100-binary, or the image folder /d/train)"
//   kInvalidArgument "config.data.root: dataset cifar10 needs a root folder ..."
//   kInvalidArgument "config.data.root: /d/train has 9 class folders; cifar10 needs 10"
Status check_data_present(const DataOptions& options, const std::string& path);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_DATA_PRESENCE_H_

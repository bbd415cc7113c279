#include "simulations/data_presence.h"

#include <sys/stat.h>

#include <filesystem>
#include <vector>

#include "common/data/dataset_readers.h"
#include "common/data/image_folder.h"

namespace fedtail::simulation {
namespace {

namespace fs = std::filesystem;

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// As dataset_readers.cc joins them, so that messages show the paths load_dataset would read.
std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

// `root` as the user reads it: a relative root says what it is relative to.
std::string shown(const std::string& root) {
  if (fs::path(root).is_absolute()) return root;
  std::error_code ec;
  const fs::path cwd = fs::current_path(ec);
  return ec ? root : root + " (relative to " + cwd.string() + ")";
}

// The missing files among fashion-mnist's four, each as "<stem>[.gz]".
std::vector<std::string> missing_idx_files(const std::string& root) {
  std::vector<std::string> missing;
  for (const char* stem : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) {
    const std::string plain = join_path(root, stem);
    if (!file_exists(plain) && !file_exists(plain + ".gz")) missing.push_back(plain + "[.gz]");
  }
  return missing;
}

// CIFAR's binary files of `split`, where load_dataset takes them: in the first of root and its
// conventional sub-folder that holds the first file. Sets *found when there is such a folder;
// returns the files missing from it ("" when none).
std::string missing_cifar_binaries(const std::string& dataset, const std::string& root, Split split,
                                   bool* found) {
  const bool cifar10 = dataset == "cifar10";
  const std::string sub = cifar10 ? "cifar-10-batches-bin" : "cifar-100-binary";
  std::vector<std::string> names;
  if (!cifar10) {
    names.push_back(split == Split::kTrain ? "train.bin" : "test.bin");
  } else if (split == Split::kTest) {
    names.push_back("test_batch.bin");
  } else {
    for (int b = 1; b <= 5; ++b) names.push_back("data_batch_" + std::to_string(b) + ".bin");
  }
  *found = false;
  for (const std::string& dir : {root, join_path(root, sub)}) {
    if (!file_exists(join_path(dir, names.front()))) continue;
    *found = true;
    std::string missing;
    for (const std::string& name : names) {
      if (!file_exists(join_path(dir, name))) {
        missing += (missing.empty() ? "" : ", ") + join_path(dir, name);
      }
    }
    return missing;
  }
  return "";
}

// What load_dataset's error would list as looked for, for one split.
std::string looked_for(const std::string& dataset, const std::string& root, Split split) {
  std::string binary;
  if (dataset == "cifar10") {
    binary = split == Split::kTrain ? "data_batch_1..5.bin" : "test_batch.bin";
    binary += " in " + root + " or " + join_path(root, "cifar-10-batches-bin") + ", or ";
  } else if (dataset == "cifar100") {
    binary = std::string(split == Split::kTrain ? "train.bin" : "test.bin") + " in " + root +
             " or " + join_path(root, "cifar-100-binary") + ", or ";
  }
  return binary + "the image folder " + join_path(root, split_name(split));
}

// The image folder root/<split>: its class folders, checked against the dataset's class count
// and, for the test split, against the train split's.
Status check_folder_split(const std::string& dataset, const std::string& root, Split split,
                          const std::string& key) {
  const std::string dir = join_path(root, split_name(split));
  Result<std::vector<std::string>> classes = image_folder_classes(dir);
  if (!classes.ok()) return classes.status().with_context(key);
  const int want = builtin_num_classes(dataset);
  if (want > 0 && static_cast<int>(classes->size()) != want) {
    return Status::InvalidArgument(key + ": " + dir + " has " + std::to_string(classes->size()) +
                                   " class folders; " + dataset + " needs " + std::to_string(want));
  }
  if (split == Split::kTest) {
    Result<std::vector<std::string>> train = image_folder_classes(join_path(root, "train"));
    if (train.ok() && *train != *classes) {
      return Status::InvalidArgument(key + ": " + dir + ": class folders differ from those of " +
                                     join_path(root, "train"));
    }
  }
  return Status::OK();
}

}  // namespace

KnownShape known_shape(const std::string& dataset) {
  KnownShape shape;
  shape.num_classes = builtin_num_classes(dataset);
  if (dataset == "fashion-mnist") {
    shape.in_channels = 1;
    shape.image_size = 28;
  } else if (dataset == "cifar10" || dataset == "cifar100") {
    shape.in_channels = 3;
    shape.image_size = 32;
  }
  return shape;
}

Status check_data_present(const DataOptions& options, const std::string& path) {
  const std::string key = path + ".root";
  const std::string& dataset = options.dataset;
  if (builtin_num_classes(dataset) == 0 && dataset != "folder") {
    return Status::InvalidArgument(path + ".dataset: unknown dataset \"" + dataset + "\"");
  }
  const bool default_root = options.root.empty();
  const std::string root = default_root ? default_data_root(dataset) : options.root;
  if (root.empty()) {
    return Status::InvalidArgument(key + ": dataset " + dataset +
                                   " needs a root folder (binary files, or train/ and test/ "
                                   "image folders)");
  }
  if (!dir_exists(root)) {
    if (default_root) {
      return Status::NotFound(key + ": not set, and " + dataset + "'s default root " + root +
                              " is not a directory (install the data set there, or set " + key +
                              ")");
    }
    return Status::NotFound(key + ": " + shown(root) + " is not a directory");
  }

  if (dataset == "fashion-mnist") {
    const std::vector<std::string> missing = missing_idx_files(root);
    if (missing.empty()) return Status::OK();
    std::string list;
    for (const std::string& file : missing) list += (list.empty() ? "" : ", ") + file;
    return Status::NotFound(key + ": " + shown(root) + ": missing " + list);
  }
  for (Split split : {Split::kTrain, Split::kTest}) {
    if (dataset == "cifar10" || dataset == "cifar100") {
      bool found = false;
      const std::string missing = missing_cifar_binaries(dataset, root, split, &found);
      if (found && missing.empty()) continue;
      if (found) return Status::NotFound(key + ": " + shown(root) + ": missing " + missing);
    }
    if (dir_exists(join_path(root, split_name(split)))) {
      FEDTAIL_RETURN_IF_ERROR(check_folder_split(dataset, root, split, key));
      continue;
    }
    return Status::NotFound(key + ": " + shown(root) + ": no " + dataset + " " + split_name(split) +
                            " data (looked for " + looked_for(dataset, root, split) + ")");
  }
  return Status::OK();
}

}  // namespace fedtail::simulation

#include "common/data/dataset_readers.h"

#include <sys/stat.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>

#include "common/data/image_folder.h"

namespace fedtail {
namespace {

constexpr const char* kFashionMnistRoot = "/usr/share/datasets/fashion-mnist";
constexpr int64_t kCifarPixels = 3 * 32 * 32;

const std::vector<std::string>& fashion_mnist_names() {
  static const std::vector<std::string> kNames = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                                  "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                                  "Bag",         "Ankle boot"};
  return kNames;
}

const std::vector<std::string>& cifar10_names() {
  static const std::vector<std::string> kNames = {
      "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  return kNames;
}

const std::vector<std::string>& cifar100_names() {
  static const std::vector<std::string> kNames = {
      "apple",       "aquarium_fish", "baby",      "bear",       "beaver",       "bed",
      "bee",         "beetle",        "bicycle",   "bottle",     "bowl",         "boy",
      "bridge",      "bus",           "butterfly", "camel",      "can",          "castle",
      "caterpillar", "cattle",        "chair",     "chimpanzee", "clock",        "cloud",
      "cockroach",   "couch",         "crab",      "crocodile",  "cup",          "dinosaur",
      "dolphin",     "elephant",      "flatfish",  "forest",     "fox",          "girl",
      "hamster",     "house",         "kangaroo",  "keyboard",   "lamp",         "lawn_mower",
      "leopard",     "lion",          "lizard",    "lobster",    "man",          "maple_tree",
      "motorcycle",  "mountain",      "mouse",     "mushroom",   "oak_tree",     "orange",
      "orchid",      "otter",         "palm_tree", "pear",       "pickup_truck", "pine_tree",
      "plain",       "plate",         "poppy",     "porcupine",  "possum",       "rabbit",
      "raccoon",     "ray",           "road",      "rocket",     "rose",         "sea",
      "seal",        "shark",         "shrew",     "skunk",      "skyscraper",   "snail",
      "snake",       "spider",        "squirrel",  "streetcar",  "sunflower",    "sweet_pepper",
      "table",       "tank",          "telephone", "television", "tiger",        "tractor",
      "train",       "trout",         "tulip",     "turtle",     "wardrobe",     "whale",
      "willow_tree", "wolf",          "woman",     "worm"};
  return kNames;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A sequential byte source over a gzipped or a plain file (told apart by the gzip magic 1f 8b).
class ByteReader {
 public:
  ~ByteReader() {
    if (gz_) gzclose(gz_);
    if (plain_) std::fclose(plain_);
  }

  Status open(const std::string& path) {
    path_ = path;
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return Status::NotFound(path + ": cannot open (" + std::strerror(errno) + ")");
    unsigned char magic[2] = {0, 0};
    const size_t got = std::fread(magic, 1, 2, f);
    if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
      std::fclose(f);
      gz_ = gzopen(path.c_str(), "rb");
      if (!gz_) return Status::IOError(path + ": cannot open gzip stream");
      gzbuffer(gz_, 1 << 18);
    } else {
      std::rewind(f);
      plain_ = f;
    }
    return Status::OK();
  }

  // Reads up to n bytes; returns how many were read, or -1 on a read or decompression error.
  int64_t read(void* data, int64_t n) {
    auto* p = static_cast<char*>(data);
    int64_t total = 0;
    while (total < n) {
      const int64_t want = std::min<int64_t>(n - total, 1 << 30);
      int64_t got;
      if (gz_) {
        got = gzread(gz_, p + total, static_cast<unsigned>(want));
        if (got < 0) return -1;
      } else {
        got = static_cast<int64_t>(std::fread(p + total, 1, static_cast<size_t>(want), plain_));
        if (got < want && std::ferror(plain_)) return -1;
      }
      if (got == 0) break;
      total += got;
    }
    return total;
  }

  // Reads exactly n bytes or fails with kCorruption naming the file and `what`.
  Status read_exact(void* data, int64_t n, const std::string& what) {
    const int64_t got = read(data, n);
    if (got < 0)
      return Status::Corruption(path_ + ": read error in " + what + " (damaged gzip data?)");
    if (got != n) {
      return Status::Corruption(path_ + ": truncated " + what + " (expected " + std::to_string(n) +
                                " bytes, got " + std::to_string(got) + ")");
    }
    return Status::OK();
  }

  // kCorruption if any byte remains.
  Status expect_end() {
    char extra;
    const int64_t got = read(&extra, 1);
    if (got != 0) return Status::Corruption(path_ + ": unexpected bytes after the data");
    return Status::OK();
  }

 private:
  std::string path_;
  gzFile gz_ = nullptr;
  std::FILE* plain_ = nullptr;
};

uint32_t big_endian_u32(const unsigned char* b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

// Reads an IDX header: the magic (00 00 08 <ndims>) and the dimensions. kCorruption unless the data
// type is uint8 and the number of dimensions is `ndims`.
Status read_idx_header(ByteReader* in, const std::string& path, int ndims,
                       std::vector<int64_t>* dims) {
  unsigned char magic[4];
  FEDTAIL_RETURN_IF_ERROR(in->read_exact(magic, 4, "IDX header"));
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != ndims) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%08x", big_endian_u32(magic));
    return Status::Corruption(path + ": bad IDX magic " + hex + " (expected 0x0000080" +
                              std::to_string(ndims) + ": uint8 with " + std::to_string(ndims) +
                              " dimensions)");
  }
  dims->clear();
  for (int i = 0; i < ndims; ++i) {
    unsigned char b[4];
    FEDTAIL_RETURN_IF_ERROR(in->read_exact(b, 4, "IDX header"));
    const uint32_t d = big_endian_u32(b);
    // 2^30 per dimension is far above any real IDX file and keeps products within int64.
    if (d > (1u << 30) || (i > 0 && d == 0)) {
      return Status::Corruption(path + ": implausible IDX dimension " + std::to_string(d));
    }
    dims->push_back(static_cast<int64_t>(d));
  }
  return Status::OK();
}

Result<std::vector<uint8_t>> read_whole_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return Status::NotFound(path + ": cannot open (" + std::strerror(errno) + ")");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(f, &std::fclose);
  struct stat st;
  if (::fstat(fileno(f), &st) != 0) return Status::IOError(path + ": cannot stat");
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  if (std::fread(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
    return Status::IOError(path + ": short read");
  }
  return bytes;
}

// Reads CIFAR binary records (`label_bytes` label bytes, then 3072 pixels; the last label byte is
// the class) from each file in order.
Result<Dataset> read_cifar_records(const std::vector<std::string>& files, int label_bytes,
                                   int num_classes, const std::vector<std::string>& names) {
  const int64_t record = label_bytes + kCifarPixels;
  std::vector<std::vector<uint8_t>> contents;
  int64_t n = 0;
  for (const auto& path : files) {
    FEDTAIL_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, read_whole_file(path));
    const int64_t size = static_cast<int64_t>(bytes.size());
    if (size == 0 || size % record != 0) {
      return Status::Corruption(path + ": size " + std::to_string(size) +
                                " is not a positive multiple of the " + std::to_string(record) +
                                "-byte CIFAR record");
    }
    n += size / record;
    contents.push_back(std::move(bytes));
  }
  Dataset d;
  d.images = torch::empty({n, 3, 32, 32}, torch::kUInt8);
  d.labels = torch::empty({n}, torch::kInt64);
  uint8_t* images = d.images.data_ptr<uint8_t>();
  int64_t* labels = d.labels.data_ptr<int64_t>();
  int64_t i = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    const auto& bytes = contents[f];
    const int64_t records = static_cast<int64_t>(bytes.size()) / record;
    for (int64_t r = 0; r < records; ++r, ++i) {
      const uint8_t* rec = bytes.data() + r * record;
      const int label = rec[label_bytes - 1];
      if (label_bytes == 2 && rec[0] >= 20) {
        return Status::Corruption(files[f] + ": record " + std::to_string(r) +
                                  " has coarse label " + std::to_string(rec[0]) +
                                  " (must be < 20)");
      }
      if (label >= num_classes) {
        return Status::Corruption(files[f] + ": record " + std::to_string(r) + " has label " +
                                  std::to_string(label) + " (must be < " +
                                  std::to_string(num_classes) + ")");
      }
      labels[i] = label;
      // The record's pixels are already planar: 1024 R, 1024 G, 1024 B.
      std::memcpy(images + i * kCifarPixels, rec + label_bytes, kCifarPixels);
    }
  }
  d.num_classes = num_classes;
  d.class_names = names;
  return d;
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

// Loads root/<split> as an image folder, checking the class count when `want_classes` > 0 and, for
// the test split, that the class folders match the train split's.
Result<Dataset> load_folder_split(const std::string& root, Split split, int want_classes,
                                  const std::string& dataset) {
  const std::string dir = join_path(root, split_name(split));
  FEDTAIL_ASSIGN_OR_RETURN(Dataset d, load_image_folder(dir));
  if (want_classes > 0 && d.num_classes != want_classes) {
    return Status::InvalidArgument(dir + ": " + dataset + " needs " + std::to_string(want_classes) +
                                   " class folders, found " + std::to_string(d.num_classes));
  }
  if (split == Split::kTest) {
    const std::string train_dir = join_path(root, split_name(Split::kTrain));
    FEDTAIL_ASSIGN_OR_RETURN(std::vector<std::string> train_classes,
                             image_folder_classes(train_dir));
    if (train_classes != d.class_names) {
      return Status::InvalidArgument(dir + ": class folders differ from those of " + train_dir);
    }
  }
  return d;
}

}  // namespace

const char* split_name(Split split) { return split == Split::kTrain ? "train" : "test"; }

Result<Dataset> read_idx(const std::string& images_path, const std::string& labels_path,
                         int num_classes) {
  ByteReader images_in;
  FEDTAIL_RETURN_IF_ERROR(images_in.open(images_path));
  std::vector<int64_t> idims;
  FEDTAIL_RETURN_IF_ERROR(read_idx_header(&images_in, images_path, /*ndims=*/3, &idims));
  ByteReader labels_in;
  FEDTAIL_RETURN_IF_ERROR(labels_in.open(labels_path));
  std::vector<int64_t> ldims;
  FEDTAIL_RETURN_IF_ERROR(read_idx_header(&labels_in, labels_path, /*ndims=*/1, &ldims));
  const int64_t n = idims[0], h = idims[1], w = idims[2];
  if (n != ldims[0]) {
    return Status::Corruption(images_path + " holds " + std::to_string(n) + " images but " +
                              labels_path + " holds " + std::to_string(ldims[0]) + " labels");
  }
  // Each dimension is at most 2^30, so h·w fits in int64; the division keeps n·h·w from
  // overflowing.
  constexpr int64_t kMaxPixels = int64_t{1} << 36;
  if (h * w > kMaxPixels || n > kMaxPixels / (h * w)) {
    return Status::Corruption(images_path + ": implausible size " + std::to_string(n) + "x" +
                              std::to_string(h) + "x" + std::to_string(w));
  }
  Dataset d;
  try {
    d.images = torch::empty({n, 1, h, w}, torch::kUInt8);
  } catch (const std::exception& e) {  // c10::Error or std::bad_alloc
    return Status::ResourceExhausted(images_path + ": cannot allocate " + std::to_string(n) +
                                     " images (" + e.what() + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(
      images_in.read_exact(d.images.data_ptr<uint8_t>(), n * h * w, "image data"));
  FEDTAIL_RETURN_IF_ERROR(images_in.expect_end());
  std::vector<uint8_t> raw(static_cast<size_t>(n));
  FEDTAIL_RETURN_IF_ERROR(labels_in.read_exact(raw.data(), n, "label data"));
  FEDTAIL_RETURN_IF_ERROR(labels_in.expect_end());
  d.labels = torch::empty({n}, torch::kInt64);
  int64_t* labels = d.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (raw[i] >= num_classes) {
      return Status::Corruption(labels_path + ": label " + std::to_string(raw[i]) + " at index " +
                                std::to_string(i) + " is not in [0, " +
                                std::to_string(num_classes) + ")");
    }
    labels[i] = raw[i];
  }
  d.num_classes = num_classes;
  for (int c = 0; c < num_classes; ++c) d.class_names.push_back(std::to_string(c));
  return d;
}

Result<Dataset> read_cifar10_binary(const std::vector<std::string>& files) {
  return read_cifar_records(files, /*label_bytes=*/1, /*num_classes=*/10, cifar10_names());
}

Result<Dataset> read_cifar100_binary(const std::string& file) {
  return read_cifar_records({file}, /*label_bytes=*/2, /*num_classes=*/100, cifar100_names());
}

std::string default_data_root(const std::string& dataset) {
  return dataset == "fashion-mnist" ? kFashionMnistRoot : "";
}

Result<Dataset> load_dataset(const DataOptions& options, Split split) {
  const std::string& dataset = options.dataset;
  const std::string root = options.root.empty() ? default_data_root(dataset) : options.root;
  if (builtin_num_classes(dataset) == 0 && dataset != "folder") {
    return Status::InvalidArgument("data.dataset: unknown dataset \"" + dataset + "\"");
  }
  if (root.empty()) {
    return Status::InvalidArgument("data.root: dataset " + dataset +
                                   " needs a root folder (binary files, or train/ and test/ image "
                                   "folders)");
  }
  if (!dir_exists(root)) return Status::NotFound(root + ": data root is not a directory");

  if (dataset == "fashion-mnist") {
    const std::string prefix = split == Split::kTrain ? "train" : "t10k";
    auto find = [&](const std::string& stem) {
      const std::string gz = join_path(root, stem + ".gz");
      return file_exists(gz) ? gz : join_path(root, stem);
    };
    const std::string images = find(prefix + "-images-idx3-ubyte");
    const std::string labels = find(prefix + "-labels-idx1-ubyte");
    FEDTAIL_ASSIGN_OR_RETURN(Dataset d, read_idx(images, labels, /*num_classes=*/10));
    d.class_names = fashion_mnist_names();
    return d;
  }
  if (dataset == "cifar10") {
    for (const std::string& dir : {root, join_path(root, "cifar-10-batches-bin")}) {
      if (split == Split::kTrain && file_exists(join_path(dir, "data_batch_1.bin"))) {
        std::vector<std::string> files;
        for (int b = 1; b <= 5; ++b)
          files.push_back(join_path(dir, "data_batch_" + std::to_string(b) + ".bin"));
        return read_cifar10_binary(files);
      }
      if (split == Split::kTest && file_exists(join_path(dir, "test_batch.bin"))) {
        return read_cifar10_binary({join_path(dir, "test_batch.bin")});
      }
    }
  }
  if (dataset == "cifar100") {
    const std::string name = split == Split::kTrain ? "train.bin" : "test.bin";
    for (const std::string& dir : {root, join_path(root, "cifar-100-binary")}) {
      if (file_exists(join_path(dir, name))) return read_cifar100_binary(join_path(dir, name));
    }
  }
  if (dir_exists(join_path(root, split_name(split)))) {
    return load_folder_split(root, split, builtin_num_classes(dataset), dataset);
  }
  std::string tried;
  if (dataset == "cifar10") {
    tried = split == Split::kTrain ? "data_batch_1.bin" : "test_batch.bin";
    tried += " (in " + root + " or " + join_path(root, "cifar-10-batches-bin") + ") or ";
  } else if (dataset == "cifar100") {
    tried = std::string(split == Split::kTrain ? "train.bin" : "test.bin") + " (in " + root +
            " or " + join_path(root, "cifar-100-binary") + ") or ";
  }
  return Status::NotFound(root + ": no " + dataset + " " + split_name(split) +
                          " data found (looked for " + tried + "the image folder " +
                          join_path(root, split_name(split)) + ")");
}

}  // namespace fedtail

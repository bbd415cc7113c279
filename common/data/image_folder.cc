#include "common/data/image_folder.h"

#include <spdlog/spdlog.h>
#include <stb/stb_image.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <mutex>
#include <thread>

#include "common/base/temp_file.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;

constexpr char kCacheMagic[8] = {'F', 'T', 'A', 'I', 'L', 'I', 'M', 'G'};
// Bump when the cache layout or the decoder's output changes: old caches then read as stale.
constexpr uint32_t kCacheVersion = 1;
constexpr const char* kCacheName = ".fedtail-cache.bin";
// Indices handed to a decoder thread at a time.
constexpr int64_t kDecodeChunk = 64;

struct ImageFile {
  std::string path;  // root/<class>/<name>
  std::string name;  // <class>/<name>, what the fingerprint records
  int64_t label = 0;
  int64_t size = 0;      // bytes
  int64_t mtime_ns = 0;  // modification time, ns since the epoch
};

bool has_image_extension(const std::string& name) {
  auto dot = name.rfind('.');
  if (dot == std::string::npos) return false;
  std::string ext = name.substr(dot + 1);
  for (auto& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return ext == "jpg" || ext == "jpeg" || ext == "png";
}

// FNV-1a over the bytes fed to it: a stable 64-bit fingerprint.
class Fnv64 {
 public:
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) {
      h_ ^= p[i];
      h_ *= 0x100000001B3ULL;
    }
  }
  void update(const std::string& s) {
    update_i64(static_cast<int64_t>(s.size()));
    update(s.data(), s.size());
  }
  void update_i64(int64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; ++i)
      b[i] = static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i));
    update(b, 8);
  }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 0xCBF29CE484222325ULL;
};

Result<std::vector<ImageFile>> list_images(const std::string& root,
                                           const std::vector<std::string>& classes) {
  std::vector<ImageFile> files;
  for (size_t label = 0; label < classes.size(); ++label) {
    const std::string dir = root + "/" + classes[label];
    std::vector<std::string> names;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.empty() || name[0] == '.' || !has_image_extension(name)) continue;
      std::error_code type_ec;
      if (!it->is_regular_file(type_ec)) continue;
      names.push_back(name);
    }
    if (ec) return Status::IOError(dir + ": cannot list directory (" + ec.message() + ")");
    if (names.empty())
      return Status::NotFound(dir + ": no .jpg, .jpeg or .png files in class folder");
    std::sort(names.begin(), names.end());
    for (const auto& name : names) {
      ImageFile f;
      f.path = dir + "/" + name;
      f.name = classes[label] + "/" + name;
      f.label = static_cast<int64_t>(label);
      struct stat st;
      if (::stat(f.path.c_str(), &st) != 0) {
        return Status::IOError(f.path + ": cannot stat (" + std::strerror(errno) + ")");
      }
      f.size = static_cast<int64_t>(st.st_size);
      f.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
      files.push_back(std::move(f));
    }
  }
  return files;
}

uint64_t fingerprint(const std::vector<std::string>& classes, const std::vector<ImageFile>& files) {
  Fnv64 h;
  h.update(std::string("fedtail-image-folder"));
  h.update_i64(kCacheVersion);
  h.update_i64(static_cast<int64_t>(classes.size()));
  for (const auto& c : classes) h.update(c);
  h.update_i64(static_cast<int64_t>(files.size()));
  for (const auto& f : files) {
    h.update(f.name);
    h.update_i64(f.size);
    h.update_i64(f.mtime_ns);
  }
  return h.value();
}

// The cache locations for root, in the order they are tried: inside root, then the user cache dir.
std::vector<std::string> cache_candidates(const std::string& root) {
  std::vector<std::string> out = {root + "/" + kCacheName};
  std::string base;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    base = xdg;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    base = std::string(home) + "/.cache";
  }
  if (!base.empty()) {
    std::error_code ec;
    fs::path absolute = fs::absolute(root, ec);
    fs::path canonical = ec ? fs::path() : fs::weakly_canonical(absolute, ec);
    Fnv64 h;
    h.update(ec ? root : canonical.string());
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h.value()));
    out.push_back(base + "/fedtail/" + hex + ".bin");
  }
  return out;
}

// Sequential reads or writes of a cache file that keep a running CRC-32 of every byte after the
// magic.
class CacheFile {
 public:
  CacheFile(const std::string& path, const char* mode) : f_(std::fopen(path.c_str(), mode)) {
    if (f_) std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  }
  // Takes ownership of an open stream.
  explicit CacheFile(std::FILE* f) : f_(f) {
    if (f_) std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  }
  ~CacheFile() {
    if (f_) std::fclose(f_);
  }
  CacheFile(const CacheFile&) = delete;
  CacheFile& operator=(const CacheFile&) = delete;

  bool is_open() const { return f_ != nullptr; }
  bool ok() const { return f_ != nullptr && ok_; }
  uint32_t crc() const { return static_cast<uint32_t>(crc_); }

  void read(void* data, size_t n, bool checksum = true) {
    if (!ok()) return;
    if (std::fread(data, 1, n, f_) != n) ok_ = false;
    if (checksum && ok_) crc_ = crc32_update(data, n);
  }
  void write(const void* data, size_t n, bool checksum = true) {
    if (!ok()) return;
    if (std::fwrite(data, 1, n, f_) != n) ok_ = false;
    if (checksum) crc_ = crc32_update(data, n);
  }
  template <typename T>
  void read_pod(T* v) {
    read(v, sizeof(T));
  }
  template <typename T>
  void write_pod(T v) {
    write(&v, sizeof(T));
  }
  int64_t position() const { return f_ ? static_cast<int64_t>(std::ftell(f_)) : -1; }
  int64_t file_size() const {
    struct stat st;
    return f_ && ::fstat(fileno(f_), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
  }
  // Flushes to the disk and closes; false if anything failed.
  bool close() {
    if (!f_) return false;
    bool good = ok_ && std::fflush(f_) == 0 && ::fsync(fileno(f_)) == 0;
    good = (std::fclose(f_) == 0) && good;
    f_ = nullptr;
    return good;
  }

 private:
  uLong crc32_update(const void* data, size_t n) {
    // zlib's crc32 takes a uInt length: feed large buffers in pieces.
    const auto* p = static_cast<const Bytef*>(data);
    uLong crc = crc_;
    while (n > 0) {
      uInt piece = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
      crc = ::crc32(crc, p, piece);
      p += piece;
      n -= piece;
    }
    return crc;
  }

  std::FILE* f_;
  bool ok_ = true;
  uLong crc_ = ::crc32(0L, Z_NULL, 0);
};

// Reads the cache at path into *out. False (and *out untouched) when the file is absent, stale
// (another fingerprint or version) or damaged; damage is logged.
bool read_cache(const std::string& path, uint64_t want_fingerprint, int64_t want_images,
                Dataset* out) {
  CacheFile f(path, "rb");
  if (!f.is_open()) return false;
  char magic[8];
  f.read(magic, sizeof(magic), /*checksum=*/false);
  uint32_t version = 0;
  uint64_t fp = 0;
  f.read_pod(&version);
  f.read_pod(&fp);
  if (!f.ok() || std::memcmp(magic, kCacheMagic, sizeof(magic)) != 0 || version != kCacheVersion ||
      fp != want_fingerprint) {
    return false;  // stale or not ours: silently decode again
  }
  int64_t n = 0, c = 0, h = 0, w = 0;
  uint32_t num_classes = 0;
  f.read_pod(&n);
  f.read_pod(&c);
  f.read_pod(&h);
  f.read_pod(&w);
  f.read_pod(&num_classes);
  auto damaged = [&](const char* why) {
    spdlog::warn("{}: ignoring damaged image cache ({}); decoding again", path, why);
    return false;
  };
  if (!f.ok() || n != want_images || c < 1 || c > 4 || h < 1 || h > 65536 || w < 1 || w > 65536 ||
      num_classes < 1 || num_classes > 1000000) {
    return damaged("bad header");
  }
  std::vector<std::string> names(num_classes);
  for (auto& name : names) {
    uint32_t len = 0;
    f.read_pod(&len);
    if (!f.ok() || len > 4096) return damaged("bad class name");
    name.resize(len);
    f.read(name.data(), len);
  }
  const int64_t pixels = n * c * h * w;
  // What remains: labels, pixels, the CRC. Checked before allocating so a bad header cannot ask for
  // a huge tensor.
  if (!f.ok() || f.file_size() != f.position() + n * static_cast<int64_t>(sizeof(int64_t)) +
                                      pixels + static_cast<int64_t>(sizeof(uint32_t))) {
    return damaged("wrong size");
  }
  Dataset d;
  d.labels = torch::empty({n}, torch::kInt64);
  d.images = torch::empty({n, c, h, w}, torch::kUInt8);
  f.read(d.labels.data_ptr<int64_t>(), static_cast<size_t>(n) * sizeof(int64_t));
  f.read(d.images.data_ptr<uint8_t>(), static_cast<size_t>(pixels));
  const uint32_t computed = f.crc();
  uint32_t stored = 0;
  f.read(&stored, sizeof(stored), /*checksum=*/false);
  if (!f.ok()) return damaged("truncated");
  if (stored != computed) return damaged("checksum mismatch");
  auto labels_ok = (d.labels.min().item<int64_t>() >= 0) &&
                   (d.labels.max().item<int64_t>() < static_cast<int64_t>(num_classes));
  if (!labels_ok) return damaged("label out of range");
  d.num_classes = static_cast<int>(num_classes);
  d.class_names = std::move(names);
  *out = std::move(d);
  return true;
}

// Writes the cache atomically (temporary file + rename). False if any step failed.
bool write_cache(const std::string& path, uint64_t fp, const Dataset& d) {
  {
    std::error_code ec;
    fs::create_directories(fs::path(path).parent_path(), ec);
  }
  // Exclusive and never through a planted symlink (common/base/temp_file.h).
  Result<TempFile> temp = create_temp_file(path, /*mode=*/0644);
  if (!temp.ok()) return false;
  const std::string tmp = temp->path;
  std::FILE* stream = ::fdopen(temp->fd, "wb");
  if (stream == nullptr) {
    ::close(temp->fd);
    std::remove(tmp.c_str());
    return false;
  }
  CacheFile f(stream);
  if (!f.is_open()) return false;
  f.write(kCacheMagic, sizeof(kCacheMagic), /*checksum=*/false);
  f.write_pod(kCacheVersion);
  f.write_pod(fp);
  f.write_pod(static_cast<int64_t>(d.size()));
  f.write_pod(d.channels());
  f.write_pod(d.height());
  f.write_pod(d.width());
  f.write_pod(static_cast<uint32_t>(d.class_names.size()));
  for (const auto& name : d.class_names) {
    f.write_pod(static_cast<uint32_t>(name.size()));
    f.write(name.data(), name.size());
  }
  f.write(d.labels.data_ptr<int64_t>(), static_cast<size_t>(d.size()) * sizeof(int64_t));
  f.write(d.images.data_ptr<uint8_t>(), static_cast<size_t>(d.images.numel()));
  const uint32_t crc = f.crc();
  f.write(&crc, sizeof(crc), /*checksum=*/false);
  if (!f.close() || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

// Decodes one file into `buf`-backed pixels. On success *pixels is stbi-allocated (caller frees).
Status decode_file(const ImageFile& file, std::vector<unsigned char>* buf, unsigned char** pixels,
                   int* w, int* h, int* c) {
  std::FILE* f = std::fopen(file.path.c_str(), "rb");
  if (!f) return Status::IOError(file.path + ": cannot open (" + std::strerror(errno) + ")");
  buf->resize(static_cast<size_t>(file.size));
  const size_t got = std::fread(buf->data(), 1, buf->size(), f);
  std::fclose(f);
  if (got != buf->size()) return Status::IOError(file.path + ": short read");
  *pixels = stbi_load_from_memory(buf->data(), static_cast<int>(buf->size()), w, h, c,
                                  /*desired_channels=*/0);
  if (!*pixels) {
    const char* why = stbi_failure_reason();
    return Status::Corruption(file.path + ": cannot decode image (" + (why ? why : "unknown") +
                              ")");
  }
  return Status::OK();
}

Result<Dataset> decode_all(const std::string& root, const std::vector<std::string>& classes,
                           const std::vector<ImageFile>& files, int threads) {
  // The first image fixes the size every other image must have.
  std::vector<unsigned char> buf;
  unsigned char* first = nullptr;
  int w0 = 0, h0 = 0, c0 = 0;
  FEDTAIL_RETURN_IF_ERROR(decode_file(files[0], &buf, &first, &w0, &h0, &c0));
  stbi_image_free(first);

  const int64_t n = static_cast<int64_t>(files.size());
  const int64_t plane = static_cast<int64_t>(w0) * h0;
  Dataset d;
  try {
    d.images = torch::empty({n, c0, h0, w0}, torch::kUInt8);
    d.labels = torch::empty({n}, torch::kInt64);
  } catch (const std::exception& e) {  // c10::Error or std::bad_alloc
    return Status::ResourceExhausted(root + ": cannot allocate " + std::to_string(n) +
                                     " images of " + std::to_string(w0) + "x" + std::to_string(h0) +
                                     "x" + std::to_string(c0) + " (" + e.what() + ")");
  }
  uint8_t* images = d.images.data_ptr<uint8_t>();
  int64_t* labels = d.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) labels[i] = files[i].label;

  std::atomic<int64_t> next{0};
  std::mutex mu;
  int64_t error_index = n;  // guarded by mu: the lowest failing index so far
  Status error;             // guarded by mu
  std::atomic<int64_t> stop_at{n};

  auto worker = [&]() {
    std::vector<unsigned char> local;
    while (true) {
      const int64_t begin = next.fetch_add(kDecodeChunk);
      // Chunks are handed out in order, so every index below the first failure is still decoded and
      // the error reported is the lowest failing index, whatever the thread timing.
      if (begin >= n || begin >= stop_at.load()) return;
      const int64_t end = std::min(n, begin + kDecodeChunk);
      for (int64_t i = begin; i < end; ++i) {
        unsigned char* px = nullptr;
        int w = 0, h = 0, c = 0;
        Status s = decode_file(files[i], &local, &px, &w, &h, &c);
        if (s.ok() && (w != w0 || h != h0 || c != c0)) {
          s = Status::Corruption(files[i].path + ": image is " + std::to_string(w) + "x" +
                                 std::to_string(h) + "x" + std::to_string(c) + " but " +
                                 files[0].path + " is " + std::to_string(w0) + "x" +
                                 std::to_string(h0) + "x" + std::to_string(c0) +
                                 " (width x height x channels); all images must match");
          stbi_image_free(px);
        }
        if (!s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (i < error_index) {
            error_index = i;
            error = s;
            stop_at.store(i);
          }
          return;
        }
        // stb returns interleaved H×W×C; the Dataset wants planar C×H×W.
        uint8_t* dst = images + i * c0 * plane;
        for (int64_t p = 0; p < plane; ++p) {
          for (int ch = 0; ch < c0; ++ch) dst[ch * plane + p] = px[p * c0 + ch];
        }
        stbi_image_free(px);
      }
    }
  };
  if (threads <= 1) {
    worker();
  } else {
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
    for (auto& t : pool) t.join();
  }
  if (!error.ok()) return error;
  d.num_classes = static_cast<int>(classes.size());
  d.class_names = classes;
  return d;
}

}  // namespace

Result<std::vector<std::string>> image_folder_classes(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return Status::NotFound(root + ": not a directory");
  std::vector<std::string> classes;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (name.empty() || name[0] == '.' || !it->is_directory(type_ec)) continue;
    classes.push_back(name);
  }
  if (ec) return Status::IOError(root + ": cannot list directory (" + ec.message() + ")");
  if (classes.empty()) {
    return Status::InvalidArgument(root + ": no class folders (expected root/<class>/*.jpg|png)");
  }
  std::sort(classes.begin(), classes.end());
  return classes;
}

Result<Dataset> load_image_folder(const std::string& root, const ImageFolderOptions& options,
                                  ImageFolderStats* stats) {
  ImageFolderStats local_stats;
  ImageFolderStats& st = stats ? *stats : local_stats;
  st = ImageFolderStats();
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<std::string> classes, image_folder_classes(root));
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<ImageFile> files, list_images(root, classes));
  st.images = static_cast<int64_t>(files.size());
  const uint64_t fp = fingerprint(classes, files);
  const std::vector<std::string> candidates = cache_candidates(root);

  if (options.use_cache) {
    for (const auto& path : candidates) {
      Dataset cached;
      if (read_cache(path, fp, st.images, &cached)) {
        st.from_cache = true;
        st.cache_path = path;
        return cached;
      }
    }
  }

  int threads = options.threads > 0
                    ? options.threads
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads =
      static_cast<int>(std::min<int64_t>(threads, (st.images + kDecodeChunk - 1) / kDecodeChunk));
  spdlog::info("{}: decoding {} images in {} classes on {} thread(s){}", root, st.images,
               classes.size(), threads,
               options.use_cache ? " (first load, or the folder changed; cached afterwards)" : "");
  const auto start = std::chrono::steady_clock::now();
  FEDTAIL_ASSIGN_OR_RETURN(Dataset d, decode_all(root, classes, files, threads));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("{}: decoded {} images ({}x{}x{}) in {:.2f} s", root, st.images, d.width(),
               d.height(), d.channels(), seconds);

  if (options.use_cache) {
    for (const auto& path : candidates) {
      if (write_cache(path, fp, d)) {
        st.cache_written = true;
        st.cache_path = path;
        break;
      }
    }
    if (!st.cache_written) {
      spdlog::warn("{}: could not write an image cache (tried {}); the next load decodes again",
                   root, candidates.back());
    }
  }
  return d;
}

}  // namespace fedtail

#include "common/wire/bundle_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <system_error>

#include "common/base/temp_file.h"

namespace fedtail {

namespace {

constexpr char kMagic[8] = {'F', 'T', 'B', 'U', 'N', 'D', 'L', '\n'};
constexpr size_t kPrefixBytes = sizeof(kMagic) + sizeof(uint32_t);
// Payload bytes per chunk record in files: larger than on the wire (fewer records, fewer syscalls).
constexpr size_t kFileChunkBytes = size_t{4} << 20;

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

void put_u32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t get_u32(const uint8_t* in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(in[i]) << (8 * i);
  return v;
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Writes all `size` bytes, retrying short writes and EINTR. Returns 0 or an errno value.
int write_all(int fd, const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

// Reads exactly `size` bytes. Returns 0, an errno value, or -1 at a premature end of file.
int read_exact(int fd, void* data, size_t size) {
  auto* p = static_cast<uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::read(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return -1;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

// Closes a descriptor on scope exit unless released.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  // Closes now and returns 0 or the errno of close().
  int close_now() {
    const int fd = fd_;
    fd_ = -1;
    return ::close(fd) == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

Status write_records(int fd, const std::string& tmp, const TensorBundle& bundle) {
  uint8_t prefix[kPrefixBytes];
  std::memcpy(prefix, kMagic, sizeof(kMagic));
  put_u32(prefix + sizeof(kMagic), kBundleFileVersion);
  if (int err = write_all(fd, prefix, sizeof(prefix)); err != 0) {
    return Status::IOError("write " + tmp + ": " + errno_text(err));
  }
  BundleEncoder encoder(bundle, kFileChunkBytes);
  v1::BundleChunk chunk;
  std::string record;
  while (encoder.next(&chunk)) {
    const size_t size = chunk.ByteSizeLong();
    // Records are parsed with protobuf's int-sized API.
    if (size > static_cast<size_t>(std::numeric_limits<int>::max())) {
      return Status::InvalidArgument("chunk " + std::to_string(chunk.index()) + " of " +
                                     std::to_string(size) +
                                     " bytes does not fit a record (metadata too large?)");
    }
    record.resize(4 + size);
    put_u32(reinterpret_cast<uint8_t*>(record.data()), static_cast<uint32_t>(size));
    if (!chunk.SerializeToArray(record.data() + 4, static_cast<int>(size))) {
      return Status::Internal("cannot serialize chunk " + std::to_string(chunk.index()));
    }
    if (int err = write_all(fd, record.data(), record.size()); err != 0) {
      return Status::IOError("write " + tmp + ": " + errno_text(err));
    }
  }
  return Status::OK();
}

}  // namespace

Status write_bundle_file(const std::string& path, const TensorBundle& bundle) {
  // A fresh, exclusively created name (never an existing entry: see common/base/temp_file.h).
  Result<TempFile> temp = create_temp_file(path, /*mode=*/0600);
  if (!temp.ok()) return temp.status().with_context(path);
  const std::string tmp = temp->path;
  const int fd = temp->fd;
  FdCloser closer(fd);
  Status status = write_records(fd, tmp, bundle);
  if (status.ok() && ::fsync(fd) != 0) {
    status = Status::IOError("fsync " + tmp + ": " + errno_text(errno));
  }
  // close() can report a deferred write error (e.g. on network file systems).
  if (int err = closer.close_now(); status.ok() && err != 0) {
    status = Status::IOError("close " + tmp + ": " + errno_text(err));
  }
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = Status::IOError("rename " + tmp + " to " + path + ": " + errno_text(errno));
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status.with_context(path);
  }
  // Make the rename itself durable.
  const std::string dir = parent_dir(path);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    return Status::IOError(path + ": open directory " + dir + ": " + errno_text(errno));
  }
  FdCloser dir_closer(dir_fd);
  if (::fsync(dir_fd) != 0) {
    return Status::IOError(path + ": fsync directory " + dir + ": " + errno_text(errno));
  }
  return Status::OK();
}

Result<TensorBundle> read_bundle_file(const std::string& path, const DecodeLimits& limits) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return Status::NotFound(path + ": no such bundle file");
    return Status::IOError(path + ": open: " + errno_text(err));
  }
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::IOError(path + ": fstat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) return Status::IOError(path + ": not a regular file");
  uint64_t remaining = static_cast<uint64_t>(st.st_size);

  auto read_error = [&path](int err, const std::string& what) {
    if (err < 0) return Status::Corruption(path + ": truncated file (in " + what + ")");
    return Status::IOError(path + ": read: " + errno_text(err));
  };

  uint8_t prefix[kPrefixBytes];
  if (remaining < sizeof(prefix)) {
    return Status::Corruption(path + ": not a bundle file (too short for the magic)");
  }
  if (int err = read_exact(fd, prefix, sizeof(prefix)); err != 0) return read_error(err, "magic");
  remaining -= sizeof(prefix);
  if (std::memcmp(prefix, kMagic, sizeof(kMagic)) != 0) {
    return Status::Corruption(path + ": not a bundle file (bad magic)");
  }
  const uint32_t version = get_u32(prefix + sizeof(kMagic));
  if (version != kBundleFileVersion) {
    return Status::Corruption(path + ": unsupported bundle file version " +
                              std::to_string(version) + " (this build reads version " +
                              std::to_string(kBundleFileVersion) + ")");
  }

  BundleDecoder decoder(limits);
  v1::BundleChunk chunk;
  std::string record;
  uint64_t record_index = 0;
  while (remaining > 0) {
    if (decoder.complete()) {
      return Status::Corruption(path + ": " + std::to_string(remaining) +
                                " trailing bytes after the last chunk");
    }
    const std::string what = "record " + std::to_string(record_index);
    uint8_t length_bytes[4];
    if (remaining < sizeof(length_bytes)) return read_error(-1, what);
    if (int err = read_exact(fd, length_bytes, sizeof(length_bytes)); err != 0) {
      return read_error(err, what);
    }
    remaining -= sizeof(length_bytes);
    const uint32_t length = get_u32(length_bytes);
    // The file's size bounds the allocation: a record cannot be longer than what is left.
    if (length > remaining) return read_error(-1, what);
    if (length > static_cast<uint32_t>(std::numeric_limits<int>::max())) {
      return Status::Corruption(path + ": " + what + " is longer than any valid record");
    }
    record.resize(length);
    if (int err = read_exact(fd, record.data(), length); err != 0) return read_error(err, what);
    remaining -= length;
    if (!chunk.ParseFromArray(record.data(), static_cast<int>(length))) {
      return Status::Corruption(path + ": " + what + " is not a valid BundleChunk");
    }
    Status added = decoder.add(chunk);
    if (!added.ok()) return added.with_context(path);
    ++record_index;
  }
  Result<TensorBundle> bundle = decoder.finish();
  if (!bundle.ok()) return bundle.status().with_context(path);
  return bundle;
}

}  // namespace fedtail

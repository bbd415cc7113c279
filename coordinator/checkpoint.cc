#include "coordinator/checkpoint.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/base/temp_file.h"
#include "common/security/crypto.h"
#include "common/wire/bundle_file.h"

namespace fedtail::coordinator {
namespace {

Status os_error(const std::string& path, const char* step) {
  return Status::IOError(path + ": " + step + " failed: " + std::strerror(errno));
}

// Writes all `size` bytes at `data` to `fd`, retrying on EINTR and short writes.
bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

Status fsync_directory_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return os_error(dir, "open");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return os_error(dir, "fsync");
  return Status::OK();
}

std::string dir_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

std::string key_path_in(const std::string& dir) {
  return (std::filesystem::path(dir) / kCheckpointKeyFile).string();
}

std::string octal_mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

void put_u64(Sha256* hash, uint64_t v) {
  uint8_t bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(v >> (8 * i));
  hash->update(bytes, sizeof(bytes));
}

void put_string(Sha256* hash, std::string_view text) {
  put_u64(hash, text.size());
  hash->update(text);
}

// HMAC-SHA256 under `key` of the SHA-256 of an unambiguous encoding of `bundle`: its metadata
// (without kCheckpointMacKey) as compact JSON, then every tensor's name, dtype, shape and bytes,
// each length-prefixed. Hashing first keeps one pass over the tensor bytes; SHA-256's collision
// resistance keeps the MAC as strong as an HMAC of the encoding itself. The metadata's JSON text
// survives the bundle file's dump/parse round trip unchanged (sorted keys, round-trip doubles).
Sha256Digest checkpoint_mac(std::string_view key, const TensorBundle& bundle) {
  Sha256 hash;
  put_string(&hash, "fedtail checkpoint mac v1");
  nlohmann::json metadata =
      bundle.metadata().is_object() ? bundle.metadata() : nlohmann::json::object();
  metadata.erase(kCheckpointMacKey);
  put_string(&hash, metadata.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  put_u64(&hash, bundle.size());
  for (const NamedTensor& tensor : bundle) {
    put_string(&hash, tensor.name());
    put_u64(&hash, static_cast<uint64_t>(tensor.dtype()));
    put_u64(&hash, tensor.shape().size());
    for (int64_t d : tensor.shape()) put_u64(&hash, static_cast<uint64_t>(d));
    put_u64(&hash, tensor.nbytes());
    hash.update(tensor.bytes(), tensor.nbytes());
  }
  const Sha256Digest digest = hash.finish();
  return hmac_sha256(key,
                     std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

// Test hook for tests/integration/coordinator_faults_test.cc, not a feature:
// FEDTAIL_FAULT_PAUSE_CHECKPOINT=<round> makes the checkpoint write of that round sleep (600 s)
// after its metrics line is on disk, so that a kill certainly falls between the two. Unset: no
// effect.
void maybe_pause_before_checkpoint(int round) {
  const char* text = std::getenv("FEDTAIL_FAULT_PAUSE_CHECKPOINT");
  if (text == nullptr || std::atoi(text) != round) return;
  spdlog::warn("fault injection: pausing the checkpoint write of round {}", round);
  std::this_thread::sleep_for(std::chrono::seconds(600));
}

}  // namespace

Status prepare_state_directory(const std::string& dir) {
  std::string leaf = dir;
  while (leaf.size() > 1 && leaf.back() == '/') leaf.pop_back();
  if (leaf.empty()) return Status::InvalidArgument("state directory: empty path");
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(leaf).parent_path();
  if (!parent.empty()) {
    std::filesystem::create_directories(parent, ec);
    if (ec)
      return Status::IOError(leaf + ": cannot create " + parent.string() + ": " + ec.message());
  }
  // mkdir applies the umask, which can only remove bits from 0700.
  if (::mkdir(leaf.c_str(), 0700) == 0) return Status::OK();
  if (errno != EEXIST) return os_error(leaf, "mkdir");
  struct stat st;
  if (::stat(leaf.c_str(), &st) != 0) return os_error(leaf, "stat");
  if (!S_ISDIR(st.st_mode)) return Status::IOError(leaf + ": exists and is not a directory");
  if ((st.st_mode & 077) == 0) return Status::OK();
  const std::string mode = octal_mode(st.st_mode);
  if (st.st_uid == ::geteuid() && ::chmod(leaf.c_str(), st.st_mode & 07700) == 0) {
    spdlog::warn("{}: mode {} let group/others reach the checkpoint and its key; changed to 0700",
                 leaf, mode);
  } else {
    spdlog::warn(
        "{}: mode {} lets group/others reach the checkpoint and its key, and it cannot "
        "be changed ({}); restrict it to its owner (chmod 700)",
        leaf, mode, st.st_uid == ::geteuid() ? std::strerror(errno) : "not our directory");
  }
  return Status::OK();
}

Result<std::string> read_checkpoint_key(const std::string& dir) {
  const std::string path = key_path_in(dir);
  // O_NONBLOCK: a FIFO planted here must not hang the open; O_NOFOLLOW: nor a symlink redirect it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound(path + ": no checkpoint key");
    return os_error(path, "open");
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Status status = os_error(path, "fstat");
    ::close(fd);
    return status;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::FailedPrecondition(path + ": not a regular file");
  }
  if ((st.st_mode & 077) != 0 || (st.st_uid != ::geteuid() && st.st_uid != 0)) {
    ::close(fd);
    return Status::FailedPrecondition(
        path + ": mode " + octal_mode(st.st_mode) + ", owner uid " + std::to_string(st.st_uid) +
        ": the key must be readable by its owner (this user or root) alone (chmod 600)");
  }
  std::string key(kCheckpointKeyBytes + 1, '\0');
  ssize_t n;
  do {
    n = ::read(fd, key.data(), key.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    Status status = os_error(path, "read");
    ::close(fd);
    return status;
  }
  ::close(fd);
  if (static_cast<size_t>(n) != kCheckpointKeyBytes) {
    OPENSSL_cleanse(key.data(), key.size());
    return Status::Corruption(path + ": " + std::to_string(n) + " bytes, expected " +
                              std::to_string(kCheckpointKeyBytes));
  }
  key.resize(kCheckpointKeyBytes);
  return key;
}

Result<std::string> load_or_create_checkpoint_key(const std::string& dir) {
  Result<std::string> existing = read_checkpoint_key(dir);
  if (existing.ok() || existing.status().code() != StatusCode::kNotFound) return existing;
  const std::string path = key_path_in(dir);
  std::string key(kCheckpointKeyBytes, '\0');
  FEDTAIL_CHECK(
      RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size())) == 1);
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, S_IRUSR | S_IWUSR);
  if (fd < 0) {
    OPENSSL_cleanse(key.data(), key.size());
    // Another process created it first: use theirs.
    if (errno == EEXIST) return read_checkpoint_key(dir);
    return os_error(path, "create");
  }
  // A partly written key is removed, so that the next run creates a whole one.
  if (!write_all(fd, key.data(), key.size()) || ::fsync(fd) != 0) {
    Status status = os_error(path, "write");
    ::close(fd);
    ::unlink(path.c_str());
    OPENSSL_cleanse(key.data(), key.size());
    return status;
  }
  if (::close(fd) != 0) {
    Status status = os_error(path, "close");
    ::unlink(path.c_str());
    OPENSSL_cleanse(key.data(), key.size());
    return status;
  }
  FEDTAIL_RETURN_IF_ERROR(fsync_directory_of(path));
  return key;
}

nlohmann::json CheckpointInfo::to_json() const {
  return {{"round", round},
          {"run_id", run_id},
          {"config_sha256", config_sha256},
          {"metrics_lines", metrics_lines},
          {"wall_seconds", wall_seconds},
          {"strategy", strategy}};
}

Result<CheckpointInfo> CheckpointInfo::from_json(const nlohmann::json& json) {
  if (!json.is_object()) return Status::Corruption("checkpoint record: not an object");
  CheckpointInfo info;
  auto field = [&](const char* key) -> const nlohmann::json* {
    auto it = json.find(key);
    return it == json.end() ? nullptr : &*it;
  };
  const nlohmann::json* round = field("round");
  const nlohmann::json* run_id = field("run_id");
  const nlohmann::json* digest = field("config_sha256");
  const nlohmann::json* lines = field("metrics_lines");
  const nlohmann::json* wall = field("wall_seconds");
  const nlohmann::json* strategy = field("strategy");
  if (!round || !round->is_number_integer() || round->get<int64_t>() < 1) {
    return Status::Corruption("checkpoint record: round: missing or not an integer >= 1");
  }
  if (!run_id || !run_id->is_string()) {
    return Status::Corruption("checkpoint record: run_id: missing or not a string");
  }
  if (!digest || !digest->is_string()) {
    return Status::Corruption("checkpoint record: config_sha256: missing or not a string");
  }
  if (!lines || !lines->is_number_integer() || lines->get<int64_t>() < 0) {
    return Status::Corruption("checkpoint record: metrics_lines: missing or not an integer >= 0");
  }
  if (!wall || !wall->is_number()) {
    return Status::Corruption("checkpoint record: wall_seconds: missing or not a number");
  }
  if (!strategy || !strategy->is_string()) {
    return Status::Corruption("checkpoint record: strategy: missing or not a string");
  }
  info.round = round->get<int>();
  info.run_id = run_id->get<std::string>();
  info.config_sha256 = digest->get<std::string>();
  info.metrics_lines = lines->get<int64_t>();
  info.wall_seconds = wall->get<double>();
  info.strategy = strategy->get<std::string>();
  return info;
}

std::string config_digest(const nlohmann::json& config) { return to_hex(sha256(config.dump())); }

Status write_checkpoint(const std::string& path, const CheckpointInfo& info, TensorBundle state) {
  if (state.metadata().is_object() && state.metadata().contains(kCheckpointKey)) {
    return Status::InvalidArgument(std::string("strategy state: metadata key \"") + kCheckpointKey +
                                   "\" is reserved for the coordinator");
  }
  if (state.metadata().is_object() && state.metadata().contains(kCheckpointMacKey)) {
    return Status::InvalidArgument(std::string("strategy state: metadata key \"") +
                                   kCheckpointMacKey + "\" is reserved for the coordinator");
  }
  maybe_pause_before_checkpoint(info.round);
  FEDTAIL_ASSIGN_OR_RETURN(std::string key, load_or_create_checkpoint_key(dir_of(path)));
  state.mutable_metadata()[kCheckpointKey] = info.to_json();
  const Sha256Digest mac = checkpoint_mac(key, state);
  OPENSSL_cleanse(key.data(), key.size());
  state.mutable_metadata()[kCheckpointMacKey] = to_hex(mac);
  return write_bundle_file(path, state);
}

Result<Checkpoint> read_checkpoint(const std::string& path) {
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle state, read_bundle_file(path));
  // Authenticate before trusting anything in the file.
  auto mac_entry = state.metadata().find(kCheckpointMacKey);
  if (mac_entry == state.metadata().end() || !mac_entry->is_string()) {
    return Status::Corruption(path + ": no MAC (\"" + std::string(kCheckpointMacKey) +
                              "\"): not written by this fedtail version, or modified");
  }
  Result<std::string> key = read_checkpoint_key(dir_of(path));
  if (!key.ok()) {
    return key.status().with_context(path + ": cannot verify the checkpoint's MAC");
  }
  const Sha256Digest expected = checkpoint_mac(*key, state);
  OPENSSL_cleanse(key->data(), key->size());
  const std::string found = mac_entry->get<std::string>();
  if (!constant_time_equal(found, to_hex(expected))) {
    return Status::Corruption(path + ": MAC mismatch: the file was modified or written with " +
                              "another key (" + key_path_in(dir_of(path)) + ")");
  }
  state.mutable_metadata().erase(kCheckpointMacKey);
  auto record = state.metadata().find(kCheckpointKey);
  if (record == state.metadata().end()) {
    return Status::Corruption(path + ": not a coordinator checkpoint (no \"" +
                              std::string(kCheckpointKey) + "\" record)");
  }
  Result<CheckpointInfo> info = CheckpointInfo::from_json(*record);
  if (!info.ok()) return info.status().with_context(path);
  state.mutable_metadata().erase(kCheckpointKey);
  return Checkpoint{std::move(info).value(), std::move(state)};
}

Status append_metrics_line(const std::string& path, const nlohmann::json& line) {
  // Non-finite numbers dump as null; error_handler::replace keeps odd strings from throwing.
  const std::string text =
      line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return os_error(path, "open");
  struct stat before;
  if (::fstat(fd, &before) != 0) {
    Status status = os_error(path, "fstat");
    ::close(fd);
    return status;
  }
  // A failed append (e.g. a short write, then ENOSPC) is cut back off: the file keeps only
  // complete lines, and stays readable by read_metrics_lines without a resume.
  auto fail = [&](const char* step) {
    Status status = os_error(path, step);
    if (::ftruncate(fd, before.st_size) == 0) ::fsync(fd);
    ::close(fd);
    return status;
  };
  if (!write_all(fd, text.data(), text.size())) return fail("write");
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) return os_error(path, "close");
  return Status::OK();
}

Status truncate_metrics_lines(const std::string& path, int64_t lines) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (lines == 0) return Status::OK();
    return Status::Corruption(path + ": missing, but the checkpoint records " +
                              std::to_string(lines) + " metrics line(s)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return os_error(path, "open");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int64_t seen = 0;
  size_t offset = 0;
  while (seen < lines) {
    size_t newline = text.find('\n', offset);
    if (newline == std::string::npos) {
      return Status::Corruption(path + ": has " + std::to_string(seen) +
                                " complete line(s), but the checkpoint records " +
                                std::to_string(lines));
    }
    offset = newline + 1;
    ++seen;
  }
  if (offset == text.size()) return Status::OK();
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return os_error(path, "open");
  if (::ftruncate(fd, static_cast<off_t>(offset)) != 0 || ::fsync(fd) != 0) {
    Status status = os_error(path, "truncate");
    ::close(fd);
    return status;
  }
  ::close(fd);
  return Status::OK();
}

Result<std::vector<nlohmann::json>> read_metrics_lines(const std::string& path) {
  std::vector<nlohmann::json> lines;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return lines;
  std::ifstream in(path);
  if (!in) return os_error(path, "open");
  std::string text;
  int number = 0;
  while (std::getline(in, text)) {
    ++number;
    if (text.empty()) continue;
    nlohmann::json line = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!line.is_object()) {
      return Status::Corruption(path + ":" + std::to_string(number) + ": not a JSON object");
    }
    lines.push_back(std::move(line));
  }
  return lines;
}

Status write_file_atomic(const std::string& path, const std::string& text) {
  // Exclusive, never a planted symlink or FIFO (common/base/temp_file.h).
  Result<TempFile> temp = create_temp_file(path, /*mode=*/0600);
  if (!temp.ok()) return temp.status().with_context(path);
  const std::string temporary = temp->path;
  const int fd = temp->fd;
  if (!write_all(fd, text.data(), text.size()) || ::fsync(fd) != 0) {
    Status status = os_error(temporary, "write");
    ::close(fd);
    ::unlink(temporary.c_str());
    return status;
  }
  if (::close(fd) != 0) {
    Status status = os_error(temporary, "close");
    ::unlink(temporary.c_str());
    return status;
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    Status status = os_error(path, "rename");
    ::unlink(temporary.c_str());
    return status;
  }
  return fsync_directory_of(path);
}

}  // namespace fedtail::coordinator

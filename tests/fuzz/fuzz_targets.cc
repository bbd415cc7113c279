#include "tests/fuzz/fuzz_targets.h"

#include <google/protobuf/stubs/logging.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/data/data_options.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/bundle_file.h"
#include "common/wire/payload_digest.h"

namespace fedtail::fuzz {
namespace {

// Aborts with `what` and `detail` when `condition` is false: a fuzzer-found bug. (FEDTAIL_CHECK
// prints only the condition; the detail, often a Status message, saves a debugging round.)
void require(bool condition, const char* what, const std::string& detail = "") {
  if (condition) return;
  std::fprintf(stderr, "fuzz invariant violated: %s%s%s\n", what, detail.empty() ? "" : ": ",
               detail.c_str());
  std::fflush(stderr);
  std::abort();
}

// A memfd holding the current input, reachable by a path, for the readers that take a file name.
// One per process, reused (truncated) by every call: no disk I/O, nothing left behind.
class ScratchFile {
 public:
  static ScratchFile& instance() {
    static ScratchFile* file = new ScratchFile();  // never destroyed: used until exit
    return *file;
  }

  // Replaces the contents with the `size` bytes at `data` and returns a path that opens them.
  const std::string& write(const uint8_t* data, size_t size) {
    require(::ftruncate(fd_, 0) == 0, "ftruncate(memfd)");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      require(n > 0, "pwrite(memfd)");
      done += static_cast<size_t>(n);
    }
    return path_;
  }

 private:
  ScratchFile() : fd_(::memfd_create("fedtail-fuzz", MFD_CLOEXEC)) {
    require(fd_ >= 0, "memfd_create");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }

  int fd_;
  std::string path_;
};

// ---- Bundles ----

// Re-encoding chunk sizes selectable by flag bits 2-4: single bytes, odd sizes that split elements,
// and sizes larger than any fuzz input (one chunk).
constexpr size_t kReencodeChunkBytes[8] = {1, 3, 16, 100, 1024, 4096, 65536, size_t{1} << 20};

// Splits `size` bytes into length-prefixed records (little-endian uint32 length, then the bytes).
// A length that runs past the end takes what is left; 1-3 trailing bytes make a short length.
std::vector<std::string_view> split_records(const uint8_t* data, size_t size) {
  std::vector<std::string_view> records;
  while (size > 0) {
    const size_t prefix = std::min<size_t>(4, size);
    uint32_t length = 0;
    for (size_t i = 0; i < prefix; ++i) length |= static_cast<uint32_t>(data[i]) << (8 * i);
    data += prefix;
    size -= prefix;
    const size_t take = std::min<size_t>(length, size);
    records.emplace_back(reinterpret_cast<const char*>(data), take);
    data += take;
    size -= take;
  }
  return records;
}

// Applies the flag-selected digest repairs to the first header in `chunks` (see the header).
void repair_digests(uint8_t flags, std::vector<v1::BundleChunk>* chunks) {
  if ((flags & (kFixHeaderDigest | kFixPayloadDigest)) == 0) return;
  for (size_t i = 0; i < chunks->size(); ++i) {
    v1::BundleChunk& chunk = (*chunks)[i];
    if (!chunk.has_header()) continue;
    v1::BundleHeader* header = chunk.mutable_header();
    if (flags & kFixPayloadDigest) {
      PayloadHasher hasher;
      for (size_t j = i + 1; j < chunks->size(); ++j) {
        if ((*chunks)[j].body_case() == v1::BundleChunk::kData) hasher.update((*chunks)[j].data());
      }
      const PayloadDigest digest = hasher.finish();
      header->set_payload_digest(digest.data(), digest.size());
    }
    const PayloadDigest sealed = header_digest(*header);
    header->set_header_digest(sealed.data(), sealed.size());
    return;
  }
}

// The invariants every successfully decoded bundle must satisfy (see the header).
void check_decoded(const TensorBundle& bundle, uint64_t declared_payload, size_t chunk_bytes) {
  require(bundle.payload_bytes() == declared_payload, "decoded payload size != declared size");
  require(bundle.metadata().is_object(), "decoded metadata is not an object");
  const Status compatible = check_compatible(bundle, bundle);
  require(compatible.ok(), "bundle incompatible with itself", compatible.to_string());
  (void)check_finite(bundle);  // any verdict is fine; it must only not crash

  BundleEncoder encoder(bundle, chunk_bytes);
  require(encoder.payload_bytes() == declared_payload, "encoder payload size");
  // Re-dumped metadata can be longer than the text it came from ("1e5" becomes "100000.0"): the
  // metadata size limit does not apply to this check.
  DecodeLimits limits = fuzz_decode_limits();
  limits.max_metadata_bytes = std::numeric_limits<uint64_t>::max();
  BundleDecoder decoder(limits);
  v1::BundleChunk chunk;
  uint64_t chunks = 0;
  while (encoder.next(&chunk)) {
    const Status added = decoder.add(chunk);
    require(added.ok(), "re-encoded chunk rejected", added.to_string());
    ++chunks;
  }
  require(chunks == encoder.num_data_chunks() + 1, "encoder chunk count");
  Result<TensorBundle> again = decoder.finish();
  require(again.ok(), "re-encoded bundle rejected", again.status().to_string());
  require(again->bitwise_equal(bundle), "re-encoded bundle differs from the decoded one");
}

// Feeds `chunks` to a fresh decoder and checks the outcome (see the header).
void decode_and_check(const std::vector<v1::BundleChunk>& chunks, size_t chunk_bytes) {
  BundleDecoder decoder(fuzz_decode_limits());
  Status status;
  for (const v1::BundleChunk& chunk : chunks) {
    status = decoder.add(chunk);
    if (!status.ok()) break;
  }
  if (!status.ok()) {
    // Errors are sticky: the same Status from every later call.
    const Status again = decoder.add(chunks.front());
    require(again.code() == status.code() && again.message() == status.message(),
            "add() after an error returned a different status", again.to_string());
    Result<TensorBundle> finished = decoder.finish();
    require(!finished.ok() && finished.status().message() == status.message(),
            "finish() after an error returned a different status");
    return;
  }
  Result<TensorBundle> bundle = decoder.finish();
  if (!bundle.ok()) return;
  require(decoder.complete(), "finish() succeeded on an incomplete stream");
  check_decoded(*bundle, decoder.payload_bytes(), chunk_bytes);
  Result<TensorBundle> twice = decoder.finish();
  require(!twice.ok() && twice.status().code() == StatusCode::kFailedPrecondition,
          "second finish() after a success", twice.status().to_string());
}

// ---- Config ----

// True when `text` is valid UTF-8 (as nlohmann::json's strict dump judges it).
bool valid_utf8(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

// The exact value of an integral JSON number: an integer, or a float with no fractional part
// within int64's range (JsonReader accepts 1e3 for 1000). Empty for anything else.
std::optional<__int128> integral_value(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return static_cast<__int128>(v.get<uint64_t>());
  if (v.is_number_integer()) return static_cast<__int128>(v.get<int64_t>());
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::trunc(d) == d && d >= -0x1p63 && d < 0x1p63) return static_cast<__int128>(d);
  }
  return std::nullopt;
}

// Reads `key` of `object` as an integer of type T with a fresh reader and checks the result against
// the JSON value: success exactly when the value is null or an integer T can hold, and then *out
// holds that integer.
template <typename T>
void check_integer_read(const nlohmann::json& object, const std::string& key) {
  JsonReader r(object, "f");
  T out = 7;
  r.read(key, &out);
  const nlohmann::json& v = object.at(key);
  if (v.is_null()) {
    require(r.status().ok() && out == 7, "null integer read");
    return;
  }
  const std::optional<__int128> expected = integral_value(v);
  const bool fits = expected && *expected >= std::numeric_limits<T>::min() &&
                    *expected <= std::numeric_limits<T>::max();
  if (r.status().ok() != fits) {  // (the detail is built only on failure: this runs per key)
    require(false, "integer read accepts exactly the integers that fit",
            key + " = " + v.dump() + ": " + r.status().to_string());
  }
  if (fits) require(static_cast<__int128>(out) == *expected, "integer read changed the value");
  require(valid_utf8(r.status().message()), "error message is not UTF-8");
}

// Reads `key` with every other JsonReader accessor, each with a fresh reader, and checks that a
// success stores the JSON value and a failure's message is valid UTF-8.
void check_other_reads(const nlohmann::json& object, const std::string& key) {
  const nlohmann::json& v = object.at(key);
  auto check = [&](JsonReader& r, bool should_succeed, const char* what) {
    if (r.status().ok() != should_succeed) require(false, what, key + " = " + v.dump());
    require(valid_utf8(r.status().message()), "error message is not UTF-8");
    require(r.finish().ok() == should_succeed || object.size() > 1, "finish() verdict", what);
  };
  {
    JsonReader r(object, "f");
    bool out = false;
    r.read(key, &out);
    check(r, v.is_null() || v.is_boolean(), "read(bool)");
    if (v.is_boolean()) require(out == v.get<bool>(), "read(bool) value");
  }
  {
    JsonReader r(object, "f");
    double out = 0.5;
    r.read(key, &out);
    check(r, v.is_null() || v.is_number(), "read(double)");
    if (v.is_number()) require(out == v.get<double>(), "read(double) value");
  }
  {
    JsonReader r(object, "f");
    std::string out;
    r.read(key, &out);
    check(r, v.is_null() || v.is_string(), "read(string)");
    if (v.is_string()) require(out == v.get<std::string>(), "read(string) value");
  }
  {
    JsonReader r(object, "f");
    std::vector<int> out;
    r.read(key, &out);
    bool all_fit = v.is_array();
    for (size_t i = 0; all_fit && i < v.size(); ++i) {
      const std::optional<__int128> e =
          v[i].is_number_float() ? std::nullopt : integral_value(v[i]);
      all_fit = e && *e >= std::numeric_limits<int>::min() && *e <= std::numeric_limits<int>::max();
      if (all_fit && r.status().ok()) require(out.at(i) == *e, "read(vector<int>) value");
    }
    check(r, v.is_null() || all_fit, "read(vector<int>)");
  }
  {
    JsonReader r(object, "f");
    std::vector<double> out;
    r.read(key, &out);
    bool all_numbers = v.is_array();
    for (size_t i = 0; all_numbers && i < v.size(); ++i) all_numbers = v[i].is_number();
    check(r, v.is_null() || all_numbers, "read(vector<double>)");
  }
  {
    JsonReader r(object, "f");
    std::vector<std::string> out;
    r.read(key, &out);
    bool all_strings = v.is_array() || v.is_string();
    for (size_t i = 0; v.is_array() && all_strings && i < v.size(); ++i) {
      all_strings = v[i].is_string();
    }
    check(r, v.is_null() || all_strings, "read(vector<string>)");
  }
  {
    JsonReader r(object, "f");
    std::string out = "a";
    r.read_enum(key, &out, {"a", "b"});
    check(r, v.is_null() || v == "a" || v == "b", "read_enum");
  }
}

// Exercises JsonReader on every key of `object` and of its nested objects, `depth` levels deep.
void check_reader(const nlohmann::json& object, int depth) {
  JsonReader whole(object, "config");
  if (!object.is_object() && !object.is_null()) {
    require(!whole.status().ok(), "a non-object read as an object");
    return;
  }
  if (!object.is_object()) return;
  int budget = 64;  // keys per level: keeps an input of many keys fast
  for (auto it = object.begin(); it != object.end() && budget-- > 0; ++it) {
    const std::string& key = it.key();
    check_integer_read<int>(object, key);
    check_integer_read<int64_t>(object, key);
    check_integer_read<uint64_t>(object, key);
    check_other_reads(object, key);
    nlohmann::json raw;
    whole.read_raw(key, &raw);
    require(raw == it.value(), "read_raw changed the value");
    JsonReader child = whole.child(key);
    const Status child_status = child.finish();
    require(valid_utf8(child_status.message()), "child error message is not UTF-8");
    if (depth > 0 && it.value().is_object()) check_reader(it.value(), depth - 1);
  }
  const Status finished = whole.finish();
  require(budget < 0 || finished.ok(), "finish() after reading every key", finished.to_string());
}

// parse_data_options on the "data" section, as parse_run_config calls it, plus its round trip.
void check_data_options(const nlohmann::json& config) {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  const nlohmann::json& section =
      config.is_object() && config.contains("data") ? config.at("data") : kEmpty;
  Result<DataOptions> options = parse_data_options(section, "config.data");
  if (!options.ok()) {
    require(valid_utf8(options.status().message()), "data options error is not UTF-8");
    return;
  }
  const nlohmann::json written = data_options_to_json(*options);
  Result<DataOptions> again = parse_data_options(written, "config.data");
  require(again.ok(), "data_options_to_json output rejected", again.status().to_string());
  require(data_options_to_json(*again) == written, "data options changed in a round trip");
}

}  // namespace

DecodeLimits fuzz_decode_limits() {
  DecodeLimits limits;
  limits.max_payload_bytes = uint64_t{1} << 20;
  limits.max_tensors = 1024;
  limits.max_metadata_bytes = uint64_t{64} << 10;
  limits.max_name_bytes = 256;
  limits.max_metadata_depth = 64;
  return limits;
}

int fuzz_bundle_stream(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // Proto3 strings with invalid UTF-8 fail to parse with an ERROR log line: silence it.
  google::protobuf::LogSilencer silence;
  const uint8_t flags = data[0];
  std::vector<v1::BundleChunk> chunks;
  for (std::string_view record : split_records(data + 1, size - 1)) {
    v1::BundleChunk chunk;
    if (chunk.ParseFromArray(record.data(), static_cast<int>(record.size()))) {
      chunks.push_back(std::move(chunk));
    }
  }
  if (chunks.empty()) return 0;
  repair_digests(flags, &chunks);
  decode_and_check(chunks, kReencodeChunkBytes[(flags >> 2) & 7]);
  return 0;
}

std::string bundle_stream_input(const TensorBundle& bundle, size_t chunk_bytes, uint8_t flags) {
  std::string out(1, static_cast<char>(flags));
  for (const v1::BundleChunk& chunk : encode_all(bundle, chunk_bytes)) {
    const std::string bytes = chunk.SerializeAsString();
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(bytes.size() >> (8 * i)));
    out += bytes;
  }
  return out;
}

int fuzz_bundle_file(const uint8_t* data, size_t size) {
  google::protobuf::LogSilencer silence;
  const std::string& path = ScratchFile::instance().write(data, size);
  Result<TensorBundle> bundle = read_bundle_file(path, fuzz_decode_limits());
  if (!bundle.ok()) return 0;
  check_decoded(*bundle, bundle->payload_bytes(), kDefaultChunkBytes);
  return 0;
}

int fuzz_run_config(const uint8_t* data, size_t size) {
  const std::string& path = ScratchFile::instance().write(data, size);
  Result<nlohmann::json> config = load_json_file(path);
  if (!config.ok()) return 0;
  check_reader(*config, /*depth=*/2);
  check_data_options(*config);
  return 0;
}

}  // namespace fedtail::fuzz

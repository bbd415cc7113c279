// JsonReader: reads one JSON object into plain option structs, with errors that name the JSON path.
//
// Usage (sticky errors: the first failure is kept, later calls are no-ops):
//   JsonReader r(json, "config.local");
//   r.read("lr", &options.lr);              // optional: absent keeps the in-class default
//   r.read_required("epochs", &options.epochs);
//   r.check(options.lr > 0, "lr", "must be > 0");
//   JsonReader aug = r.child("augment");     // nested object, path "config.local.augment"
//   ... r.absorb(aug.finish());
//   return r.finish();                       // also fails on keys no read() asked for
// Messages look like "config.local.lr: expected a number (got \"0.1\")". Not thread-safe.
#ifndef FEDTAIL_COMMON_BASE_JSON_READER_H_
#define FEDTAIL_COMMON_BASE_JSON_READER_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"

namespace fedtail {

// Deepest nesting of arrays and objects load_json_file accepts. Config files nest a few levels; the
// limit keeps the recursive copies and dumps of a loaded value far from overflowing a stack.
constexpr int kMaxJsonDepth = 256;

// Deepest nesting of arrays and objects in a JSON text (brackets inside strings ignored), valid
// JSON or not.
int64_t json_nesting_depth(std::string_view text);

// Parses JSON from an untrusted source; never throws. kInvalidArgument with the parser's position
// when `text` is not valid JSON (a number beyond a double's range included), or when it nests
// deeper than `max_depth` (checked before parsing).
Result<nlohmann::json> parse_json_text(std::string_view text, int64_t max_depth = kMaxJsonDepth);

// Reads and parses a JSON file. kNotFound when it cannot be opened; kInvalidArgument naming the
// file and the parser's position when it is not valid JSON (a number beyond a double's range
// included), or naming the file when it nests deeper than kMaxJsonDepth.
Result<nlohmann::json> load_json_file(const std::string& path);

class JsonReader {
 public:
  // `object` must outlive the reader. A non-object value gives the error "<path>: expected an
  // object".
  JsonReader(const nlohmann::json& object, std::string path);

  bool has(const std::string& key) const;

  // Optional fields: an absent key (or null) leaves *out unchanged. The integer reads accept a
  // float with no fractional part (1e3) and fail with "integer out of range" for a value the type
  // cannot hold (never wrapping it); the uint64 read takes the whole uint64 range and fails with
  // "must be >= 0" for a negative value.
  void read(const std::string& key, bool* out);
  void read(const std::string& key, int* out);
  void read(const std::string& key, int64_t* out);
  void read(const std::string& key, uint64_t* out);
  void read(const std::string& key, double* out);
  void read(const std::string& key, std::string* out);
  void read(const std::string& key, std::vector<int>* out);
  void read(const std::string& key, std::vector<double>* out);
  void read(const std::string& key, std::vector<std::string>* out);
  // A string that must be one of `allowed`.
  void read_enum(const std::string& key, std::string* out, const std::vector<std::string>& allowed);
  // Takes the raw JSON value of an optional key (any type) and marks it as known.
  void read_raw(const std::string& key, nlohmann::json* out);

  // Required fields: an absent key is "<path>.<key>: missing required field".
  template <typename T>
  void read_required(const std::string& key, T* out) {
    if (!status_.ok()) return;
    if (!has(key)) {
      fail(key, "missing required field");
      return;
    }
    read(key, out);
  }

  // Fails with "<path>.<key>: <message>" when `condition` is false.
  void check(bool condition, const std::string& key, const std::string& message);

  // A reader for the nested object at `key` (an empty object when absent). Its errors are its own:
  // pass its finish() to absorb().
  JsonReader child(const std::string& key);
  // Keeps `status` as this reader's error if none is recorded yet.
  void absorb(const Status& status);

  // Marks a key as known without reading it (handled elsewhere).
  void ignore(const std::string& key) { known_.insert(key); }

  // The first error; otherwise "<path>.<key>: unknown key" for a key nothing read; otherwise OK.
  Status finish() const;
  const Status& status() const { return status_; }
  const std::string& path() const { return path_; }

 private:
  const nlohmann::json* find(const std::string& key);
  void fail(const std::string& key, const std::string& message);
  void type_error(const std::string& key, const char* expected, const nlohmann::json& got);

  static const nlohmann::json& empty_object();

  const nlohmann::json& object_;
  std::string path_;
  std::set<std::string> known_;
  Status status_;
};

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_JSON_READER_H_

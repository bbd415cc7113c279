#include "common/base/json_reader.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

namespace fedtail {

int64_t json_nesting_depth(std::string_view text) {
  int64_t depth = 0;
  int64_t deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

Result<nlohmann::json> parse_json_text(std::string_view text, int64_t max_depth) {
  // nlohmann's parser is iterative, but copying, comparing and dumping a value recurse once per
  // level: a text of 20000 nested [ would parse, then overflow the stack in the first copy.
  if (json_nesting_depth(text) > max_depth) {
    return Status::InvalidArgument("JSON nested deeper than " + std::to_string(max_depth) +
                                   " levels");
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    return Status::InvalidArgument("not valid JSON at byte " + std::to_string(e.byte) + " (" +
                                   e.what() + ")");
  } catch (const nlohmann::json::exception& e) {
    // The parser reports some errors with other exception types: a number too large for a double
    // ("1e999") is out_of_range.406, not a parse_error.
    return Status::InvalidArgument(std::string("not valid JSON (") + e.what() + ")");
  }
}

Result<nlohmann::json> load_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound(path + ": cannot open file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  Result<nlohmann::json> parsed = parse_json_text(buffer.str());
  if (!parsed.ok()) return Status::InvalidArgument(path + ": " + parsed.status().message());
  return parsed;
}

JsonReader::JsonReader(const nlohmann::json& object, std::string path)
    : object_(object.is_null() ? empty_object() : object), path_(std::move(path)) {
  if (!object_.is_object()) {
    status_ = Status::InvalidArgument(path_ + ": expected an object (got " +
                                      std::string(object_.type_name()) + ")");
  }
}

const nlohmann::json& JsonReader::empty_object() {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  return kEmpty;
}

bool JsonReader::has(const std::string& key) const {
  if (!object_.is_object()) return false;
  auto it = object_.find(key);
  return it != object_.end() && !it->is_null();
}

const nlohmann::json* JsonReader::find(const std::string& key) {
  known_.insert(key);
  if (!status_.ok() || !has(key)) return nullptr;
  return &object_.at(key);
}

void JsonReader::fail(const std::string& key, const std::string& message) {
  if (status_.ok()) status_ = Status::InvalidArgument(path_ + "." + key + ": " + message);
}

void JsonReader::type_error(const std::string& key, const char* expected,
                            const nlohmann::json& got) {
  std::string shown = got.dump();
  if (shown.size() > 40) {
    // Cut at a character boundary, not inside a multi-byte UTF-8 sequence: messages end up in JSON
    // (summaries, failure lists), whose dump() throws on invalid UTF-8.
    size_t cut = 37;
    while (cut > 0 && (static_cast<unsigned char>(shown[cut]) & 0xC0) == 0x80) --cut;
    shown = shown.substr(0, cut) + "...";
  }
  fail(key, std::string("expected ") + expected + " (got " + shown + ")");
}

void JsonReader::read(const std::string& key, bool* out) {
  const nlohmann::json* v = find(key);
  if (!v) return;
  if (!v->is_boolean()) return type_error(key, "true or false", *v);
  *out = v->get<bool>();
}

void JsonReader::read(const std::string& key, int64_t* out) {
  const nlohmann::json* v = find(key);
  if (!v) return;
  if (v->is_number_unsigned()) {
    // Non-negative integers parse as unsigned; get<int64_t>() would wrap those above INT64_MAX.
    if (v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return fail(key, "integer out of range");
    }
    *out = static_cast<int64_t>(v->get<uint64_t>());
  } else if (v->is_number_integer()) {
    *out = v->get<int64_t>();
  } else if (v->is_number_float() && std::trunc(v->get<double>()) == v->get<double>()) {
    // 1e3 is an integer too. Casting a double outside int64's range is undefined behaviour:
    // check the range first ([-2^63, 2^63); an integer literal too long for uint64 parses as a
    // double as well).
    const double d = v->get<double>();
    if (d < -0x1p63 || d >= 0x1p63) return fail(key, "integer out of range");
    *out = static_cast<int64_t>(d);
  } else {
    type_error(key, "an integer", *v);
  }
}

void JsonReader::read(const std::string& key, int* out) {
  int64_t wide = *out;
  read(key, &wide);
  if (!status_.ok() || !has(key)) return;
  if (wide < INT32_MIN || wide > INT32_MAX) return fail(key, "integer out of range");
  *out = static_cast<int>(wide);
}

void JsonReader::read(const std::string& key, uint64_t* out) {
  if (const nlohmann::json* v = find(key); v && v->is_number_unsigned()) {
    *out = v->get<uint64_t>();  // the whole uint64 range (the int64 path below stops at 2^63)
    return;
  }
  int64_t wide = static_cast<int64_t>(*out);
  read(key, &wide);
  if (!status_.ok() || !has(key)) return;
  if (wide < 0) return fail(key, "must be >= 0 (got " + std::to_string(wide) + ")");
  *out = static_cast<uint64_t>(wide);
}

void JsonReader::read(const std::string& key, double* out) {
  const nlohmann::json* v = find(key);
  if (!v) return;
  if (!v->is_number()) return type_error(key, "a number", *v);
  *out = v->get<double>();
}

void JsonReader::read(const std::string& key, std::string* out) {
  const nlohmann::json* v = find(key);
  if (!v) return;
  if (!v->is_string()) return type_error(key, "a string", *v);
  *out = v->get<std::string>();
}

void JsonReader::read(const std::string& key, std::vector<int>* out) {
  const nlohmann::json* v = find(key);
  if (!v) return;
  if (!v->is_array()) return type_error(key, "an array of integers", *v);
  std::vector<int> values;
  for (size_t i = 0; i < v->size(); ++i) {
    const auto& e = (*v)[i];
    const std::string element = key + "[" + std::to_string(i) + "]";
    if (!e.is_number_integer()) return type_error(element, "an integer", e);
    // get<int>() would silently wrap a value outside int's range.
    const bool fits = e.is_number_unsigned()
                          ? e.get<uint64_t>() <= static_cast<uint64_t>(INT32_MAX)
                          : e.get<int64_t>() >= INT32_MIN && e.get<int64_t>() <= INT32_MAX;
    if (!fits) return fail(element, "integer out of range");
    values.push_back(e.get<int>());
  }
  *out = std::move(values);
}

void JsonReader::read(const std::string& key, std::vector<double>* out) {
  const nlohmann::json* v = find(key);
  if (!v) return;
  if (!v->is_array()) return type_error(key, "an array of numbers", *v);
  std::vector<double> values;
  for (size_t i = 0; i < v->size(); ++i) {
    const auto& e = (*v)[i];
    if (!e.is_number()) return type_error(key + "[" + std::to_string(i) + "]", "a number", e);
    values.push_back(e.get<double>());
  }
  *out = std::move(values);
}

void JsonReader::read(const std::string& key, std::vector<std::string>* out) {
  const nlohmann::json* v = find(key);
  if (!v) return;
  if (v->is_string()) {  // "a" is accepted for ["a"]
    *out = {v->get<std::string>()};
    return;
  }
  if (!v->is_array()) return type_error(key, "an array of strings", *v);
  std::vector<std::string> values;
  for (size_t i = 0; i < v->size(); ++i) {
    const auto& e = (*v)[i];
    if (!e.is_string()) return type_error(key + "[" + std::to_string(i) + "]", "a string", e);
    values.push_back(e.get<std::string>());
  }
  *out = std::move(values);
}

void JsonReader::read_enum(const std::string& key, std::string* out,
                           const std::vector<std::string>& allowed) {
  std::string value = *out;
  read(key, &value);
  if (!status_.ok() || !has(key)) return;
  for (const auto& a : allowed) {
    if (a == value) {
      *out = value;
      return;
    }
  }
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  fail(key, "must be one of " + list + " (got \"" + value + "\")");
}

void JsonReader::read_raw(const std::string& key, nlohmann::json* out) {
  const nlohmann::json* v = find(key);
  if (v) *out = *v;
}

void JsonReader::check(bool condition, const std::string& key, const std::string& message) {
  if (!condition) fail(key, message);
}

JsonReader JsonReader::child(const std::string& key) {
  const nlohmann::json* v = find(key);
  return JsonReader(v ? *v : empty_object(), path_ + "." + key);
}

void JsonReader::absorb(const Status& status) {
  if (status_.ok() && !status.ok()) status_ = status;
}

Status JsonReader::finish() const {
  if (!status_.ok()) return status_;
  for (auto it = object_.begin(); it != object_.end(); ++it) {
    if (!known_.count(it.key()))
      return Status::InvalidArgument(path_ + "." + it.key() + ": unknown key");
  }
  return Status::OK();
}

}  // namespace fedtail

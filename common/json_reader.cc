#include "common/json_reader.h"

#include <fstream>
#include <sstream>

namespace fedtail {

Result<nlohmann::json> load_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound(path + ": cannot open file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::parse_error& e) {
    return Status::InvalidArgument(path + ": not valid JSON at byte " + std::to_string(e.byte) +
                                   " (" + e.what() + ")");
  }
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

void JsonReader::type_error(const std::string& key, const char* expected, const nlohmann::json& got) {
  std::string shown = got.dump();
  if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
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
  if (v->is_number_integer()) {
    *out = v->get<int64_t>();
  } else if (v->is_number_float() && v->get<double>() == static_cast<double>(
                                                            static_cast<int64_t>(v->get<double>()))) {
    *out = static_cast<int64_t>(v->get<double>());  // 1e3 is an integer too
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
    if (!e.is_number_integer()) return type_error(key + "[" + std::to_string(i) + "]", "an integer", e);
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
    if (!known_.count(it.key())) return Status::InvalidArgument(path_ + "." + it.key() + ": unknown key");
  }
  return Status::OK();
}

}  // namespace fedtail

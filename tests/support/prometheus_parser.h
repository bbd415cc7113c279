// Test support: a strict parser of the Prometheus text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/), for tests of /metrics.
// Header-only.
//
// Stricter than Prometheus itself where the format says "must" or "should":
//   - every line ends in '\n' (the last one too); empty lines are allowed;
//   - metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* (not
//     starting with "__"); a label appears once per sample; label values escape only \\, \" and \n;
//   - values are floats ("1", "-2.5e3", "NaN", "+Inf", "-Inf"); an optional timestamp is an
//   integer;
//   - "# HELP name text" and "# TYPE name type" (counter, gauge, histogram, summary, untyped) come
//     at most once per family, before the family's first sample; other "#" lines are comments;
//   - a family's lines are contiguous (no family reappears after another one started), and no
//     series (name + labels) appears twice;
//   - counters are >= 0 and not NaN;
//   - histograms: for each label set (without "le"), _bucket samples with an "le" label in
//     strictly increasing order ending in "+Inf", cumulative (non-decreasing) counts, a _count
//     equal to the +Inf bucket, and a _sum.
// Errors are kInvalidArgument "line N: what".
#ifndef FEDTAIL_TESTS_SUPPORT_PROMETHEUS_PARSER_H_
#define FEDTAIL_TESTS_SUPPORT_PROMETHEUS_PARSER_H_

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/base/status.h"

namespace fedtail::test_support {

struct PromSample {
  std::string name;  // as written, e.g. "x_bucket"
  std::map<std::string, std::string> labels;
  double value = 0;
  std::optional<int64_t> timestamp_ms;
  int line = 0;  // 1-based
};

struct PromFamily {
  std::string name;
  std::string type = "untyped";
  std::string help;
  bool has_help = false;
  bool has_type = false;
  std::vector<PromSample> samples;
};

struct PromText {
  std::vector<PromFamily> families;  // in the order of the text

  const PromFamily* family(const std::string& name) const {
    for (const PromFamily& family : families) {
      if (family.name == name) return &family;
    }
    return nullptr;
  }
  // The value of the sample `name` with exactly `labels`; nullopt when there is none.
  std::optional<double> value(const std::string& name,
                              const std::map<std::string, std::string>& labels = {}) const {
    for (const PromFamily& family : families) {
      for (const PromSample& sample : family.samples) {
        if (sample.name == name && sample.labels == labels) return sample.value;
      }
    }
    return std::nullopt;
  }
};

namespace prometheus_parser_internal {

inline bool name_start(char c, bool colon) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}
inline bool name_char(char c, bool colon) { return name_start(c, colon) || (c >= '0' && c <= '9'); }

inline bool valid_name(const std::string& name, bool colon) {
  if (name.empty() || !name_start(name[0], colon)) return false;
  for (char c : name) {
    if (!name_char(c, colon)) return false;
  }
  return true;
}

inline Status error(int line, const std::string& what) {
  return Status::InvalidArgument("line " + std::to_string(line) + ": " + what);
}

// A float as the format writes it.
inline std::optional<double> parse_value(const std::string& text) {
  if (text == "NaN") return std::nan("");
  if (text == "+Inf" || text == "Inf") return HUGE_VAL;
  if (text == "-Inf") return -HUGE_VAL;
  if (text.empty()) return std::nullopt;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) {
      return std::nullopt;
    }
  }
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || errno == ERANGE) return std::nullopt;
  return value;
}

inline std::optional<int64_t> parse_timestamp(const std::string& text) {
  if (text.empty()) return std::nullopt;
  size_t i = text[0] == '-' ? 1 : 0;
  if (i == text.size()) return std::nullopt;
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return std::nullopt;
  }
  errno = 0;
  const long long value = std::strtoll(text.c_str(), nullptr, 10);
  if (errno == ERANGE) return std::nullopt;
  return static_cast<int64_t>(value);
}

inline void skip_blanks(const std::string& s, size_t* i) {
  while (*i < s.size() && (s[*i] == ' ' || s[*i] == '\t')) ++(*i);
}

// The family a sample named `name` belongs to, given the TYPEs seen so far.
inline std::string family_of(const std::string& name,
                             const std::map<std::string, std::string>& types) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s = suffix;
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      const std::string base = name.substr(0, name.size() - s.size());
      auto it = types.find(base);
      if (it == types.end()) continue;
      if (it->second == "histogram") return base;
      if (it->second == "summary" && s != "_bucket") return base;
    }
  }
  return name;
}

// Parses one sample line into `sample`.
inline Status parse_sample(const std::string& s, int line, PromSample* sample) {
  size_t i = 0;
  while (i < s.size() && name_char(s[i], true)) ++i;
  sample->name = s.substr(0, i);
  sample->line = line;
  if (!valid_name(sample->name, true)) {
    return error(line, "invalid metric name \"" + sample->name + "\"");
  }
  if (i < s.size() && s[i] == '{') {
    ++i;
    for (;;) {
      skip_blanks(s, &i);
      if (i < s.size() && s[i] == '}') {
        ++i;
        break;
      }
      size_t start = i;
      while (i < s.size() && name_char(s[i], false)) ++i;
      const std::string label = s.substr(start, i - start);
      if (!valid_name(label, false)) return error(line, "invalid label name \"" + label + "\"");
      if (label.rfind("__", 0) == 0) return error(line, "reserved label name \"" + label + "\"");
      skip_blanks(s, &i);
      if (i >= s.size() || s[i] != '=') return error(line, "expected '=' after label " + label);
      ++i;
      skip_blanks(s, &i);
      if (i >= s.size() || s[i] != '"') return error(line, "expected '\"' for label " + label);
      ++i;
      std::string value;
      bool closed = false;
      while (i < s.size()) {
        const char c = s[i++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c == '\\') {
          if (i >= s.size()) break;
          const char e = s[i++];
          if (e == '\\') {
            value += '\\';
          } else if (e == '"') {
            value += '"';
          } else if (e == 'n') {
            value += '\n';
          } else {
            return error(line, std::string("invalid escape \\") + e + " in label " + label);
          }
        } else {
          value += c;
        }
      }
      if (!closed) return error(line, "unterminated value of label " + label);
      if (!sample->labels.emplace(label, value).second) {
        return error(line, "label " + label + " repeated");
      }
      skip_blanks(s, &i);
      if (i < s.size() && s[i] == ',') {
        ++i;
        continue;
      }
      if (i < s.size() && s[i] == '}') {
        ++i;
        break;
      }
      return error(line, "expected ',' or '}' after label " + label);
    }
  }
  if (i >= s.size() || (s[i] != ' ' && s[i] != '\t')) {
    return error(line, "expected a blank before the value");
  }
  skip_blanks(s, &i);
  size_t start = i;
  while (i < s.size() && s[i] != ' ' && s[i] != '\t') ++i;
  const std::string value_text = s.substr(start, i - start);
  std::optional<double> value = parse_value(value_text);
  if (!value) return error(line, "invalid value \"" + value_text + "\"");
  sample->value = *value;
  skip_blanks(s, &i);
  if (i < s.size()) {
    start = i;
    while (i < s.size() && s[i] != ' ' && s[i] != '\t') ++i;
    const std::string ts_text = s.substr(start, i - start);
    std::optional<int64_t> ts = parse_timestamp(ts_text);
    if (!ts) return error(line, "invalid timestamp \"" + ts_text + "\"");
    sample->timestamp_ms = ts;
    skip_blanks(s, &i);
    if (i < s.size()) return error(line, "unexpected text after the timestamp");
  }
  return Status::OK();
}

// Checks a histogram family's samples.
inline Status check_histogram(const PromFamily& family) {
  struct Series {
    std::vector<std::pair<double, const PromSample*>> buckets;
    const PromSample* count = nullptr;
    const PromSample* sum = nullptr;
    int line = 0;
  };
  std::map<std::map<std::string, std::string>, Series> series;
  for (const PromSample& sample : family.samples) {
    std::map<std::string, std::string> key = sample.labels;
    if (sample.name == family.name + "_bucket") {
      auto le = key.find("le");
      if (le == key.end()) return error(sample.line, "bucket without an \"le\" label");
      std::optional<double> bound = parse_value(le->second);
      if (!bound || std::isnan(*bound)) {
        return error(sample.line, "invalid le \"" + le->second + "\"");
      }
      key.erase(le);
      Series& s = series[key];
      if (s.line == 0) s.line = sample.line;
      if (s.count || s.sum) return error(sample.line, "bucket after _sum or _count");
      s.buckets.emplace_back(*bound, &sample);
    } else if (sample.name == family.name + "_count" || sample.name == family.name + "_sum") {
      if (key.count("le")) return error(sample.line, "\"le\" label outside a bucket");
      Series& s = series[key];
      if (s.line == 0) s.line = sample.line;
      const PromSample** slot = sample.name == family.name + "_count" ? &s.count : &s.sum;
      *slot = &sample;
    } else {
      return error(sample.line, "histogram " + family.name + " has sample " + sample.name);
    }
  }
  for (const auto& [labels, s] : series) {
    if (s.buckets.empty()) return error(s.line, family.name + ": no buckets");
    for (size_t k = 0; k < s.buckets.size(); ++k) {
      const PromSample& bucket = *s.buckets[k].second;
      if (std::isnan(bucket.value) || bucket.value < 0) {
        return error(bucket.line, "bucket count must be a number >= 0");
      }
      if (k > 0 && !(s.buckets[k].first > s.buckets[k - 1].first)) {
        return error(bucket.line, "le not in increasing order");
      }
      if (k > 0 && bucket.value < s.buckets[k - 1].second->value) {
        return error(bucket.line, "bucket counts not cumulative (decreasing)");
      }
    }
    const auto& last = s.buckets.back();
    if (!std::isinf(last.first) || last.first < 0) {
      return error(last.second->line, family.name + ": the last bucket is not le=\"+Inf\"");
    }
    if (!s.count) return error(s.line, family.name + ": no _count");
    if (!s.sum) return error(s.line, family.name + ": no _sum");
    if (s.count->value != last.second->value) {
      return error(s.count->line, family.name + ": _count differs from the +Inf bucket");
    }
  }
  return Status::OK();
}

}  // namespace prometheus_parser_internal

// Parses `text` strictly (see the file comment).
inline Result<PromText> parse_prometheus_text(const std::string& text) {
  namespace in = prometheus_parser_internal;
  PromText parsed;
  std::map<std::string, std::string> types;  // family -> type, of TYPE lines seen
  std::set<std::string> finished;            // families whose lines are over
  std::set<std::pair<std::string, std::map<std::string, std::string>>> seen_series;
  // Makes `name` the current (last) family, creating it, enforcing contiguity. The pointer is
  // valid until the next call.
  auto enter = [&](const std::string& name, int line) -> Result<PromFamily*> {
    if (!parsed.families.empty() && parsed.families.back().name == name) {
      return &parsed.families.back();
    }
    if (finished.count(name)) {
      return in::error(line, "family " + name + " is not contiguous (it appeared before)");
    }
    if (!parsed.families.empty()) finished.insert(parsed.families.back().name);
    parsed.families.push_back(PromFamily());
    parsed.families.back().name = name;
    return &parsed.families.back();
  };
  if (!text.empty() && text.back() != '\n') {
    int lines = 1;
    for (char c : text) lines += c == '\n';
    return in::error(lines, "the last line does not end in '\\n'");
  }
  size_t pos = 0;
  int line_no = 0;
  while (pos < text.size()) {
    const size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    if (line.find('\r') != std::string::npos) return in::error(line_no, "carriage return");
    if (line[0] == '#') {
      size_t i = 1;
      in::skip_blanks(line, &i);
      const size_t keyword_start = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      const std::string keyword = line.substr(keyword_start, i - keyword_start);
      if (i == 1 || (keyword != "HELP" && keyword != "TYPE")) continue;  // a comment
      in::skip_blanks(line, &i);
      const size_t name_start = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      const std::string name = line.substr(name_start, i - name_start);
      if (!in::valid_name(name, true)) {
        return in::error(line_no, "invalid metric name \"" + name + "\" in " + keyword);
      }
      if (i < line.size()) ++i;  // the one blank before the text
      const std::string rest = line.substr(i);
      FEDTAIL_ASSIGN_OR_RETURN(PromFamily * family, enter(name, line_no));
      if (!family->samples.empty()) {
        return in::error(line_no, keyword + " for " + name + " after its samples");
      }
      if (keyword == "HELP") {
        if (family->has_help) return in::error(line_no, "second HELP for " + name);
        family->has_help = true;
        std::string help;
        for (size_t k = 0; k < rest.size(); ++k) {
          if (rest[k] == '\\' && k + 1 < rest.size() &&
              (rest[k + 1] == '\\' || rest[k + 1] == 'n')) {
            help += rest[k + 1] == 'n' ? '\n' : '\\';
            ++k;
          } else if (rest[k] == '\\') {
            return in::error(line_no, "invalid escape in HELP for " + name);
          } else {
            help += rest[k];
          }
        }
        family->help = help;
      } else {
        if (family->has_type) return in::error(line_no, "second TYPE for " + name);
        static const std::set<std::string> kTypes = {"counter", "gauge", "histogram", "summary",
                                                     "untyped"};
        if (!kTypes.count(rest)) return in::error(line_no, "unknown type \"" + rest + "\"");
        family->has_type = true;
        family->type = rest;
        types[name] = rest;
      }
      continue;
    }
    PromSample sample;
    FEDTAIL_RETURN_IF_ERROR(in::parse_sample(line, line_no, &sample));
    const std::string family_name = in::family_of(sample.name, types);
    FEDTAIL_ASSIGN_OR_RETURN(PromFamily * family, enter(family_name, line_no));
    if (!seen_series.emplace(sample.name, sample.labels).second) {
      return in::error(line_no, "series " + sample.name + " repeated");
    }
    if (family->type == "counter" && (std::isnan(sample.value) || sample.value < 0)) {
      return in::error(line_no, "counter " + sample.name + " must be >= 0");
    }
    if ((family->type == "counter" || family->type == "gauge" || family->type == "untyped") &&
        sample.name != family->name) {
      return in::error(line_no, "sample " + sample.name + " in family " + family->name);
    }
    family->samples.push_back(std::move(sample));
  }
  for (const PromFamily& family : parsed.families) {
    if (family.type == "histogram") FEDTAIL_RETURN_IF_ERROR(in::check_histogram(family));
  }
  return parsed;
}

}  // namespace fedtail::test_support

#endif  // FEDTAIL_TESTS_SUPPORT_PROMETHEUS_PARSER_H_

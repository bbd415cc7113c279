#include "coordinator/device_model.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "common/base/json_reader.h"

namespace fedtail::coordinator {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// "0.5", "1e+06": a number in a message.
std::string number_text(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

// Which values a distribution may take: a slowdown and a bandwidth must be positive, a latency
// only non-negative.
enum class Bound { kPositive, kNonNegative };

bool within(double value, Bound bound) {
  return bound == Bound::kPositive ? value > 0 : value >= 0;
}

const char* bound_text(Bound bound) { return bound == Bound::kPositive ? "> 0" : ">= 0"; }

// Reads one distribution (the header's forms) at JSON path `path`.
Result<Distribution> parse_distribution(const nlohmann::json& json, const std::string& path,
                                        Bound bound) {
  Distribution d;
  if (json.is_number()) {
    d.a = json.get<double>();
    if (!within(d.a, bound)) {
      return Status::InvalidArgument(path + ": must be " + bound_text(bound) + " (got " +
                                     number_text(d.a) + ")");
    }
    return d;
  }
  if (!json.is_object()) {
    return Status::InvalidArgument(path + ": expected a number or a distribution object (got " +
                                   json.dump() + ")");
  }
  JsonReader reader(json, path);
  std::string kind;
  if (!reader.has("distribution")) {
    return Status::InvalidArgument(path + ".distribution: missing required field");
  }
  reader.read_enum("distribution", &kind, {"constant", "uniform", "lognormal"});
  FEDTAIL_RETURN_IF_ERROR(reader.status());
  const std::string must = std::string("must be ") + bound_text(bound);
  if (kind == "constant") {
    d.kind = Distribution::Kind::kConstant;
    reader.read_required("value", &d.a);
    reader.check(within(d.a, bound), "value", must + " (got " + number_text(d.a) + ")");
  } else if (kind == "uniform") {
    d.kind = Distribution::Kind::kUniform;
    reader.read_required("min", &d.a);
    reader.read_required("max", &d.b);
    reader.check(within(d.a, bound), "min", must + " (got " + number_text(d.a) + ")");
    reader.check(d.b >= d.a, "max",
                 "must be >= min (got " + number_text(d.b) + " < " + number_text(d.a) + ")");
  } else {
    d.kind = Distribution::Kind::kLogNormal;
    reader.read_required("median", &d.a);
    reader.read_required("sigma", &d.b);
    reader.check(d.a > 0, "median", "must be > 0 (got " + number_text(d.a) + ")");
    reader.check(d.b >= 0, "sigma", "must be >= 0 (got " + number_text(d.b) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return d;
}

double draw(const Distribution& d, Rng& rng) {
  switch (d.kind) {
    case Distribution::Kind::kConstant:
      return d.a;
    case Distribution::Kind::kUniform:
      return d.a + (d.b - d.a) * rng.uniform();
    case Distribution::Kind::kLogNormal:
      return std::exp(std::log(d.a) + d.b * rng.normal());
  }
  return d.a;
}

std::string resolved(const std::string& path, const std::string& base_dir) {
  namespace fs = std::filesystem;
  if (base_dir.empty() || fs::path(path).is_absolute()) return path;
  return (fs::path(base_dir) / path).lexically_normal().string();
}

// ---- CSV traces ----

std::string trimmed(const std::string& text) {
  const char* space = " \t\r\n";
  const size_t begin = text.find_first_not_of(space);
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> fields;
  size_t begin = 0;
  for (;;) {
    const size_t comma = line.find(',', begin);
    fields.push_back(trimmed(line.substr(begin, comma - begin)));
    if (comma == std::string::npos) return fields;
    begin = comma + 1;
  }
}

// One data row: its line number (from 1) and the fields of the asked columns, in their order.
struct CsvRow {
  int line = 0;
  std::vector<std::string> fields;
};

// Reads `file`: '#' comment lines and blank lines skipped, a header line naming the columns (in
// any order; other columns ignored), then rows with as many fields as the header.
Result<std::vector<CsvRow>> read_csv(const std::string& file,
                                     const std::vector<std::string>& columns) {
  std::ifstream in(file);
  if (!in) {
    return Status::NotFound(file + ": cannot open (" + std::strerror(errno) + ")");
  }
  std::string joined_columns;
  for (const std::string& c : columns) joined_columns += (joined_columns.empty() ? "" : ",") + c;
  std::vector<int> where;  // column index of each asked column
  size_t width = 0;        // fields per row
  std::vector<CsvRow> rows;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const std::string text = trimmed(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<std::string> fields = split_fields(text);
    const std::string at = file + ":" + std::to_string(number) + ": ";
    if (where.empty()) {  // the header
      for (size_t i = 0; i < fields.size(); ++i) {
        if (std::find(fields.begin(), fields.begin() + i, fields[i]) != fields.begin() + i) {
          return Status::InvalidArgument(at + "column \"" + fields[i] + "\" appears twice");
        }
      }
      for (const std::string& column : columns) {
        auto it = std::find(fields.begin(), fields.end(), column);
        if (it == fields.end()) {
          return Status::InvalidArgument(at + "the header has no column \"" + column +
                                         "\" (expected a header line " + joined_columns + ")");
        }
        where.push_back(static_cast<int>(it - fields.begin()));
      }
      width = fields.size();
      continue;
    }
    if (fields.size() != width) {
      return Status::InvalidArgument(at + "expected " + std::to_string(width) +
                                     " comma-separated fields, like the header (got " +
                                     std::to_string(fields.size()) + ")");
    }
    CsvRow& row = rows.emplace_back();
    row.line = number;
    for (int i : where) row.fields.push_back(std::move(fields[i]));
  }
  if (in.bad()) return Status::IOError(file + ": read error");
  if (where.empty()) {
    return Status::InvalidArgument(file + ": no header line (expected " + joined_columns + ")");
  }
  return rows;
}

// Parses a whole field as a number; kInvalidArgument "<file>:<line>: <column>: ..." otherwise.
// +inf only where `allow_inf`.
Result<double> parse_number(const std::string& text, bool allow_inf, const std::string& where) {
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(begin, &end);
  const bool whole = !text.empty() && end == begin + text.size();
  if (!whole || std::isnan(value) || (std::isinf(value) && !(allow_inf && value > 0)) ||
      (errno == ERANGE && std::isinf(value) && !allow_inf)) {
    return Status::InvalidArgument(where + ": expected a " +
                                   (allow_inf ? "number or inf" : "finite number") + " (got \"" +
                                   text + "\")");
  }
  return value;
}

Result<double> parse_bounded(const CsvRow& row, size_t i, const std::string& file,
                             const std::string& column, Bound bound) {
  const std::string where = file + ":" + std::to_string(row.line) + ": " + column;
  FEDTAIL_ASSIGN_OR_RETURN(double value, parse_number(row.fields[i], false, where));
  if (!within(value, bound)) {
    return Status::InvalidArgument(where + ": must be " + bound_text(bound) + " (got " +
                                   row.fields[i] + ")");
  }
  return value;
}

Result<std::vector<DeviceProfile>> read_device_trace(const std::string& file) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<CsvRow> rows,
                           read_csv(file, {"slowdown", "bandwidth_mbps", "latency_ms"}));
  if (rows.empty()) return Status::InvalidArgument(file + ": no device rows (a header only)");
  std::vector<DeviceProfile> profiles;
  profiles.reserve(rows.size());
  for (const CsvRow& row : rows) {
    DeviceProfile& p = profiles.emplace_back();
    FEDTAIL_ASSIGN_OR_RETURN(p.slowdown, parse_bounded(row, 0, file, "slowdown", Bound::kPositive));
    FEDTAIL_ASSIGN_OR_RETURN(double mbps,
                             parse_bounded(row, 1, file, "bandwidth_mbps", Bound::kPositive));
    FEDTAIL_ASSIGN_OR_RETURN(double ms,
                             parse_bounded(row, 2, file, "latency_ms", Bound::kNonNegative));
    p.bandwidth_bps = mbps * 1e6;
    p.latency_s = ms / 1000;
  }
  return profiles;
}

// Merges sorted intervals that overlap or touch.
void merge_sorted(std::vector<std::pair<double, double>>* intervals) {
  std::vector<std::pair<double, double>> merged;
  for (const auto& interval : *intervals) {
    if (!merged.empty() && interval.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, interval.second);
    } else {
      merged.push_back(interval);
    }
  }
  *intervals = std::move(merged);
}

Result<std::map<uint64_t, std::vector<std::pair<double, double>>>> read_availability_trace(
    const std::string& file) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<CsvRow> rows,
                           read_csv(file, {"client", "off_from_s", "off_to_s"}));
  std::map<uint64_t, std::vector<std::pair<double, double>>> off;
  for (const CsvRow& row : rows) {
    const std::string at = file + ":" + std::to_string(row.line) + ": ";
    const std::string& client = row.fields[0];
    if (client.empty()) return Status::InvalidArgument(at + "client: empty");
    const bool is_index =
        std::all_of(client.begin(), client.end(), [](char c) { return c >= '0' && c <= '9'; });
    // "3" and "client-3" are the same client.
    const uint64_t index = device_index(is_index ? "client-" + client : client);
    FEDTAIL_ASSIGN_OR_RETURN(double from,
                             parse_bounded(row, 1, file, "off_from_s", Bound::kNonNegative));
    FEDTAIL_ASSIGN_OR_RETURN(double to, parse_number(row.fields[2], true, at + "off_to_s"));
    if (!(to > from)) {
      return Status::InvalidArgument(at + "off_to_s: must be > off_from_s (got " + row.fields[2] +
                                     " <= " + row.fields[1] + ")");
    }
    off[index].emplace_back(from, to);
  }
  for (auto& [index, intervals] : off) {
    std::sort(intervals.begin(), intervals.end());
    merge_sorted(&intervals);
  }
  return off;
}

// The first interval whose end is after `t` (the one holding `t`, or the next), or end().
std::vector<std::pair<double, double>>::const_iterator first_ending_after(
    const std::vector<std::pair<double, double>>& off, double t) {
  return std::partition_point(off.begin(), off.end(),
                              [t](const std::pair<double, double>& i) { return i.second <= t; });
}

// A positive exponential draw with mean `mean` (> 0): no period has length 0.
double exponential(Rng& rng, double mean) {
  double u = 0;
  while (u == 0) u = rng.uniform();
  return -mean * std::log(u);
}

}  // namespace

Result<DeviceOptions> parse_device_options(const nlohmann::json& json, const std::string& path,
                                           const std::string& base_dir) {
  DeviceOptions options;
  if (json.is_null()) return options;
  if (!json.is_object()) {
    return Status::InvalidArgument(path + ": expected an object (got " + json.dump() + ")");
  }
  options.enabled = true;
  JsonReader reader(json, path);
  std::string compute = "measured";
  reader.read_enum("compute", &compute, {"measured", "modeled"});
  options.modeled_compute = compute == "modeled";
  reader.read("seconds_per_example", &options.seconds_per_example);
  reader.check(options.seconds_per_example >= 0, "seconds_per_example",
               "must be > 0 (got " + number_text(options.seconds_per_example) + ")");
  if (options.modeled_compute) {
    reader.check(options.seconds_per_example > 0, "seconds_per_example",
                 "must be > 0 with \"compute\": \"modeled\" (compute seconds per example at "
                 "slowdown 1)");
  }
  reader.read("deadline_s", &options.deadline_s);
  reader.check(options.deadline_s >= 0, "deadline_s",
               "must be >= 0 (0 = no deadline; got " + number_text(options.deadline_s) + ")");
  reader.read("trace", &options.trace);
  reader.check(!reader.has("trace") || !options.trace.empty(), "trace", "must not be empty");
  FEDTAIL_RETURN_IF_ERROR(reader.status());

  const struct {
    const char* key;
    Distribution* out;
    Bound bound;
  } distributions[] = {{"slowdown", &options.slowdown, Bound::kPositive},
                       {"bandwidth_mbps", &options.bandwidth_mbps, Bound::kPositive},
                       {"latency_ms", &options.latency_ms, Bound::kNonNegative}};
  for (const auto& d : distributions) {
    nlohmann::json value;
    reader.read_raw(d.key, &value);
    if (value.is_null()) continue;
    if (!options.trace.empty()) {
      return Status::InvalidArgument(path + "." + d.key +
                                     ": not with \"trace\" (the trace's rows give every device; "
                                     "give either the trace or the distributions)");
    }
    FEDTAIL_ASSIGN_OR_RETURN(*d.out, parse_distribution(value, path + "." + d.key, d.bound));
  }
  if (!options.trace.empty()) options.trace = resolved(options.trace, base_dir);

  if (reader.has("availability")) {
    JsonReader availability = reader.child("availability");
    std::string model;
    availability.read_enum("model", &model, {"always", "exponential"});
    availability.read("mean_on_s", &options.mean_on_s);
    availability.read("mean_off_s", &options.mean_off_s);
    availability.read("trace", &options.availability_trace);
    const bool traced = availability.has("trace");
    const bool means = availability.has("mean_on_s") || availability.has("mean_off_s");
    if (traced) {
      availability.check(!options.availability_trace.empty(), "trace", "must not be empty");
      availability.check(model.empty(), "model", "not with \"trace\" (give one of them)");
      availability.check(!means, availability.has("mean_on_s") ? "mean_on_s" : "mean_off_s",
                         "only with \"model\": \"exponential\"");
      options.availability = DeviceOptions::Availability::kTrace;
      options.availability_trace = resolved(options.availability_trace, base_dir);
    } else if (model == "exponential") {
      availability.check(options.mean_on_s > 0, "mean_on_s",
                         "must be > 0 with \"model\": \"exponential\" (got " +
                             number_text(options.mean_on_s) + ")");
      availability.check(options.mean_off_s > 0, "mean_off_s",
                         "must be > 0 with \"model\": \"exponential\" (got " +
                             number_text(options.mean_off_s) + ")");
      options.availability = DeviceOptions::Availability::kExponential;
    } else {
      availability.check(!means, availability.has("mean_on_s") ? "mean_on_s" : "mean_off_s",
                         "only with \"model\": \"exponential\"");
    }
    reader.absorb(availability.finish());
  }
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

uint64_t device_index(const std::string& client_id) {
  constexpr const char kPrefix[] = "client-";
  constexpr size_t kPrefixLength = sizeof(kPrefix) - 1;
  constexpr uint64_t kMask = (uint64_t{1} << 63) - 1;
  if (client_id.size() > kPrefixLength && client_id.size() <= kPrefixLength + 18 &&
      client_id.compare(0, kPrefixLength, kPrefix) == 0 &&
      std::all_of(client_id.begin() + kPrefixLength, client_id.end(),
                  [](char c) { return c >= '0' && c <= '9'; })) {
    // At most 18 digits: below 10^18 < 2^63.
    return std::strtoull(client_id.c_str() + kPrefixLength, nullptr, 10);
  }
  uint64_t h = 0xCBF29CE484222325ULL;  // FNV-1a (std::hash differs between libraries)
  for (unsigned char c : client_id) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h & kMask;
}

DeviceModel::DeviceModel(DeviceOptions options, uint64_t seed)
    : options_(std::move(options)), seed_(seed) {}

Result<std::unique_ptr<DeviceModel>> DeviceModel::create(const DeviceOptions& options,
                                                         uint64_t seed) {
  std::unique_ptr<DeviceModel> model(new DeviceModel(options, seed));
  if (!options.trace.empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(model->trace_rows_, read_device_trace(options.trace));
  }
  if (options.availability == DeviceOptions::Availability::kTrace) {
    FEDTAIL_ASSIGN_OR_RETURN(model->trace_off_,
                             read_availability_trace(options.availability_trace));
  }
  return model;
}

DeviceProfile DeviceModel::profile(const std::string& client_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = profiles_.find(client_id);
  if (it != profiles_.end()) return it->second;
  Rng rng = Rng::derive(seed_, "devices", {device_index(client_id)});
  DeviceProfile p;
  if (!trace_rows_.empty()) {
    p = trace_rows_[rng.uniform_int(trace_rows_.size())];
  } else {
    // One stream, always drawn in this order.
    p.slowdown = draw(options_.slowdown, rng);
    p.bandwidth_bps = draw(options_.bandwidth_mbps, rng) * 1e6;
    p.latency_s = draw(options_.latency_ms, rng) / 1000;
  }
  profiles_.emplace(client_id, p);
  return p;
}

double DeviceModel::task_seconds(const std::string& client_id, double measured_compute_s,
                                 int64_t examples, uint64_t bytes_down, uint64_t bytes_up) const {
  const DeviceProfile p = profile(client_id);
  const double compute =
      options_.modeled_compute
          ? static_cast<double>(std::max<int64_t>(examples, 0)) * options_.seconds_per_example
          : std::max(measured_compute_s, 0.0);
  const double bits = (static_cast<double>(bytes_down) + static_cast<double>(bytes_up)) * 8;
  return compute * p.slowdown + bits / p.bandwidth_bps + 2 * p.latency_s;
}

double DeviceModel::task_seconds_lower_bound(const std::string& client_id, int64_t examples,
                                             uint64_t bytes_down) const {
  return task_seconds(client_id, /*measured_compute_s=*/0, examples, bytes_down, /*bytes_up=*/0);
}

DeviceModel::ClientAvailability& DeviceModel::availability_locked(
    const std::string& client_id) const {
  auto it = availability_.find(client_id);
  if (it != availability_.end()) return it->second;
  ClientAvailability a;
  switch (options_.availability) {
    case DeviceOptions::Availability::kAlways:
      a.known_until = kInf;
      break;
    case DeviceOptions::Availability::kTrace: {
      a.known_until = kInf;
      auto listed = trace_off_.find(device_index(client_id));
      if (listed != trace_off_.end()) a.off = listed->second;
      break;
    }
    case DeviceOptions::Availability::kExponential: {
      // The stationary start: on with probability mean_on / (mean_on + mean_off); by the
      // exponential's memorylessness the first period then has the usual length.
      a.rng.emplace(Rng::derive(seed_, "availability", {device_index(client_id)}));
      const double p_on = options_.mean_on_s / (options_.mean_on_s + options_.mean_off_s);
      a.next_is_off = a.rng->uniform() >= p_on;
      a.known_until = 0;
      break;
    }
  }
  return availability_.emplace(client_id, std::move(a)).first->second;
}

void DeviceModel::extend_locked(ClientAvailability* a) const {
  const double start = a->known_until;
  const double length =
      exponential(*a->rng, a->next_is_off ? options_.mean_off_s : options_.mean_on_s);
  a->known_until = start + length;
  if (a->next_is_off) a->off.emplace_back(start, a->known_until);
  a->next_is_off = !a->next_is_off;
}

bool DeviceModel::available(const std::string& client_id, double t) const {
  FEDTAIL_CHECK(std::isfinite(t));  // an "exponential" record would grow without end
  std::lock_guard<std::mutex> lock(mu_);
  ClientAvailability& a = availability_locked(client_id);
  while (a.known_until <= t) extend_locked(&a);
  auto it = first_ending_after(a.off, t);
  return it == a.off.end() || it->first > t;
}

std::optional<double> DeviceModel::next_offline(const std::string& client_id, double t,
                                                double until) const {
  FEDTAIL_CHECK(std::isfinite(t));
  if (!(t < until)) return std::nullopt;
  std::lock_guard<std::mutex> lock(mu_);
  ClientAvailability& a = availability_locked(client_id);
  while (a.known_until <= t) extend_locked(&a);
  // Generated far enough when an interval ends after t (it holds t or starts after it), or when
  // everything before `until` is known.
  while (first_ending_after(a.off, t) == a.off.end() && a.known_until < until) extend_locked(&a);
  auto it = first_ending_after(a.off, t);
  if (it == a.off.end()) return std::nullopt;
  const double from = std::max(it->first, t);
  if (from < until) return from;
  return std::nullopt;
}

std::optional<double> DeviceModel::next_online(const std::vector<std::string>& client_ids,
                                               double t) const {
  FEDTAIL_CHECK(std::isfinite(t));
  std::lock_guard<std::mutex> lock(mu_);
  std::optional<double> earliest;
  for (const std::string& client_id : client_ids) {
    ClientAvailability& a = availability_locked(client_id);
    // An "exponential" client always has another off period (hence an on period after it).
    while (first_ending_after(a.off, t) == a.off.end() && a.known_until < kInf) extend_locked(&a);
    auto it = first_ending_after(a.off, t);
    if (it == a.off.end() || std::isinf(it->second)) continue;  // never (again) off, or gone
    if (!earliest.has_value() || it->second < *earliest) earliest = it->second;
  }
  return earliest;
}

}  // namespace fedtail::coordinator

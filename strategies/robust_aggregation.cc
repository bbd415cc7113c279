#include "strategies/robust_aggregation.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <utility>

#include "common/base/json_reader.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/dtype.h"
#include "common/wire/float_elements.h"
#include "strategies/weighted_average.h"

namespace fedtail::strategies {
namespace {

__extension__ typedef __int128 Int128;

// Element i of an integer/bool tensor as a signed 64-bit value.
inline int64_t load_int(DType dtype, const uint8_t* bytes, int64_t i) {
  switch (dtype) {
    case DType::kInt64:
      return reinterpret_cast<const int64_t*>(bytes)[i];
    case DType::kInt32:
      return reinterpret_cast<const int32_t*>(bytes)[i];
    case DType::kUInt8:
    case DType::kBool:
      return bytes[i];
    default:
      FEDTAIL_CHECK(false);
      return 0;
  }
}

// Stores a value known to lie within the dtype's range (a median of its values).
inline void store_int(DType dtype, uint8_t* bytes, int64_t i, int64_t value) {
  switch (dtype) {
    case DType::kInt64:
      reinterpret_cast<int64_t*>(bytes)[i] = value;
      break;
    case DType::kInt32:
      reinterpret_cast<int32_t*>(bytes)[i] = static_cast<int32_t>(value);
      break;
    case DType::kUInt8:
      bytes[i] = static_cast<uint8_t>(value);
      break;
    case DType::kBool:
      bytes[i] = value != 0 ? 1 : 0;
      break;
    default:
      FEDTAIL_CHECK(false);
  }
}

// The median of v (reordered), n = v.size() >= 1; even n: the mean of the two middle values.
double median_of(std::vector<double>& v) {
  const size_t n = v.size();
  const auto mid = v.begin() + static_cast<std::ptrdiff_t>(n / 2);
  std::nth_element(v.begin(), mid, v.end());
  if (n % 2 == 1) return *mid;
  const double lower = *std::max_element(v.begin(), mid);
  // Halves first: cannot overflow, and exact unless subnormal.
  return 0.5 * lower + 0.5 * *mid;
}

// The median of integers, even n rounded to nearest with ties away from zero (as WeightedAverage
// rounds): between the two middle values, so within the dtype's range.
int64_t int_median_of(std::vector<int64_t>& v) {
  const size_t n = v.size();
  const auto mid = v.begin() + static_cast<std::ptrdiff_t>(n / 2);
  std::nth_element(v.begin(), mid, v.end());
  if (n % 2 == 1) return *mid;
  const Int128 sum = static_cast<Int128>(*std::max_element(v.begin(), mid)) + *mid;
  Int128 q = sum / 2;
  if (sum % 2 != 0) q += sum < 0 ? -1 : 1;
  return static_cast<int64_t>(q);
}

// Sorts v and averages v[trim, n - trim) in ascending order (so the result does not depend on the
// order of the updates).
double trimmed_mean_of(std::vector<double>& v, size_t trim) {
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (size_t i = trim; i < v.size() - trim; ++i) sum += v[i];
  return sum / static_cast<double>(v.size() - 2 * trim);
}

// Bulyan's coordinate rule: the mean of the `beta` values of v closest to v's median. In sorted
// order they form a window; shrinking [l, r) from the end farther from the median finds it (equal
// distances drop the larger value, so ties keep the smaller).
double closest_to_median_mean(std::vector<double>& v, size_t beta) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double m = n % 2 == 1 ? v[n / 2] : 0.5 * v[n / 2 - 1] + 0.5 * v[n / 2];
  size_t l = 0, r = n;
  while (r - l > beta) {
    if (std::fabs(v[l] - m) > std::fabs(v[r - 1] - m)) {
      ++l;
    } else {
      --r;
    }
  }
  double sum = 0;
  for (size_t i = l; i < r; ++i) sum += v[i];
  return sum / static_cast<double>(beta);
}

// Σ (a_i − b_i)² over one floating-point tensor pair of the same dtype and size, in double.
double squared_distance(const NamedTensor& a, const NamedTensor& b) {
  const int64_t n = a.numel();
  double s0 = 0, s1 = 0;
  if (a.dtype() == DType::kFloat32) {
    const float* x = reinterpret_cast<const float*>(a.bytes());
    const float* y = reinterpret_cast<const float*>(b.bytes());
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const double d0 = static_cast<double>(x[i]) - y[i];
      const double d1 = static_cast<double>(x[i + 1]) - y[i + 1];
      s0 += d0 * d0;
      s1 += d1 * d1;
    }
    for (; i < n; ++i) {
      const double d = static_cast<double>(x[i]) - y[i];
      s0 += d * d;
    }
    return s0 + s1;
  }
  for (int64_t i = 0; i < n; ++i) {
    const double d = load_float(a.dtype(), a.bytes(), i) - load_float(b.dtype(), b.bytes(), i);
    s0 += d * d;
  }
  return s0;
}

// A new tensor shaped like `like`, contents unspecified.
Result<NamedTensor> empty_like(const NamedTensor& like) {
  return NamedTensor::uninitialized(like.name(), like.dtype(), like.shape());
}

// The tensors called `name` in each of `updates` (present: checked compatible).
std::vector<const NamedTensor*> tensors_named(const std::vector<const TensorBundle*>& updates,
                                              const std::string& name) {
  std::vector<const NamedTensor*> out(updates.size());
  for (size_t k = 0; k < updates.size(); ++k) out[k] = updates[k]->find(name);
  return out;
}

// out[i] = combine(values of coordinate i over `sources`), for a floating-point tensor. `combine`
// gets a scratch vector it may reorder.
template <typename Combine>
void combine_floats(const std::vector<const NamedTensor*>& sources, NamedTensor* out,
                    Combine combine) {
  std::vector<double> values(sources.size());
  const DType dtype = out->dtype();
  for (int64_t i = 0; i < out->numel(); ++i) {
    for (size_t k = 0; k < sources.size(); ++k) {
      values[k] = load_float(dtype, sources[k]->bytes(), i);
    }
    store_float(dtype, out->mutable_bytes(), i, combine(values));
  }
}

// out = the rounded coordinate-wise median of an integer/bool tensor over `sources`.
void median_ints(const std::vector<const NamedTensor*>& sources, NamedTensor* out) {
  std::vector<int64_t> values(sources.size());
  const DType dtype = out->dtype();
  for (int64_t i = 0; i < out->numel(); ++i) {
    for (size_t k = 0; k < sources.size(); ++k) {
      values[k] = load_int(dtype, sources[k]->bytes(), i);
    }
    store_int(dtype, out->mutable_bytes(), i, int_median_of(values));
  }
}

// Builds the result in the first update's tensor order: floating-point tensors from
// `float_combine(sources, &out)`, integer tensors the median over all updates.
template <typename FloatCombine>
Result<TensorBundle> build_result(const std::vector<const TensorBundle*>& updates,
                                  FloatCombine float_combine) {
  TensorBundle result;
  for (const NamedTensor& like : *updates[0]) {
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor t, empty_like(like));
    const std::vector<const NamedTensor*> sources = tensors_named(updates, like.name());
    if (dtype_is_floating(like.dtype())) {
      float_combine(sources, &t);
    } else {
      median_ints(sources, &t);
    }
    FEDTAIL_RETURN_IF_ERROR(result.add(std::move(t)));
  }
  return result;
}

// The symmetric n×n matrix of squared L2 distances between updates (floating-point tensors only),
// row-major.
std::vector<double> pairwise_distances(const std::vector<const TensorBundle*>& updates) {
  const size_t n = updates.size();
  std::vector<double> d(n * n, 0.0);
  for (const NamedTensor& like : *updates[0]) {
    if (!dtype_is_floating(like.dtype())) continue;
    const std::vector<const NamedTensor*> t = tensors_named(updates, like.name());
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = i + 1; j < n; ++j) d[i * n + j] += squared_distance(*t[i], *t[j]);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) d[j * n + i] = d[i * n + j];
  }
  return d;
}

// Krum scores of the updates in `active` (positions), each the sum of its `neighbours` smallest
// distances to the other active updates, summed in ascending order.
std::vector<double> krum_scores(const std::vector<double>& distances, size_t n,
                                const std::vector<size_t>& active, size_t neighbours) {
  std::vector<double> scores(active.size(), 0.0);
  std::vector<double> row;
  for (size_t a = 0; a < active.size(); ++a) {
    row.clear();
    for (size_t b = 0; b < active.size(); ++b) {
      if (b != a) row.push_back(distances[active[a] * n + active[b]]);
    }
    const size_t k = std::min(neighbours, row.size());
    std::partial_sort(row.begin(), row.begin() + static_cast<std::ptrdiff_t>(k), row.end());
    for (size_t i = 0; i < k; ++i) scores[a] += row[i];
  }
  return scores;
}

// Orders updates a and b by their floating-point values, lexicographically, tensor by tensor in
// `order`'s tensor order: the Krum tie-break. Unlike a tie-break by position it does not depend
// on the order the updates arrived in (mutually nearest updates tie whenever one neighbour is
// counted, as in Bulyan's last rounds). Updates whose values all compare equal are
// interchangeable for the floating-point result.
bool values_less(const TensorBundle& a, const TensorBundle& b, const TensorBundle& order) {
  for (const NamedTensor& like : order) {
    if (!dtype_is_floating(like.dtype())) continue;
    const NamedTensor& x = *a.find(like.name());
    const NamedTensor& y = *b.find(like.name());
    for (int64_t i = 0; i < like.numel(); ++i) {
      const double xi = load_float(like.dtype(), x.bytes(), i);
      const double yi = load_float(like.dtype(), y.bytes(), i);
      if (xi != yi) return xi < yi;
    }
  }
  return false;
}

// The Krum order of updates p and q (positions): lower score first, then values_less.
bool krum_less(const std::vector<const TensorBundle*>& updates, double score_p, size_t p,
               double score_q, size_t q) {
  if (score_p != score_q) return score_p < score_q;
  return values_less(*updates[p], *updates[q], *updates[0]);
}

std::string n_and_f(size_t n, int f) {
  return "(got n = " + std::to_string(n) + ", f = " + std::to_string(f) + ")";
}

Status check_updates(const RobustOptions& options, const std::vector<const TensorBundle*>& updates,
                     const std::vector<int64_t>& num_examples) {
  if (!options.buffered()) {
    return Status::InvalidArgument(std::string("robust_aggregate: method \"") +
                                   robust_method_name(options.method) +
                                   "\" streams (use WeightedAverage)");
  }
  if (updates.empty()) return Status::InvalidArgument("robust_aggregate: no updates");
  if (num_examples.size() != updates.size()) {
    return Status::InvalidArgument("robust_aggregate: " + std::to_string(num_examples.size()) +
                                   " example counts for " + std::to_string(updates.size()) +
                                   " updates");
  }
  for (size_t k = 0; k < updates.size(); ++k) {
    const std::string where = "updates[" + std::to_string(k) + "]";
    if (updates[k] == nullptr) return Status::InvalidArgument(where + ": null");
    if (num_examples[k] <= 0) {
      return Status::InvalidArgument(where + ": num_examples must be > 0 (got " +
                                     std::to_string(num_examples[k]) + ")");
    }
    if (k > 0)
      FEDTAIL_RETURN_IF_ERROR(check_compatible(*updates[k], *updates[0]).with_context(where));
  }
  const size_t n = updates.size();
  const size_t f = static_cast<size_t>(options.byzantine);
  switch (options.method) {
    case RobustMethod::kKrum:
    case RobustMethod::kMultiKrum:
      if (n < 2 * f + 3) {
        return Status::FailedPrecondition(std::string(robust_method_name(options.method)) +
                                          " needs n >= 2f + 3 updates " +
                                          n_and_f(n, options.byzantine));
      }
      if (options.method == RobustMethod::kMultiKrum &&
          static_cast<size_t>(options.multi_krum_m) > n) {
        return Status::FailedPrecondition("multi_krum_m = " + std::to_string(options.multi_krum_m) +
                                          " exceeds the " + std::to_string(n) + " updates");
      }
      break;
    case RobustMethod::kBulyan:
      if (n < 4 * f + 3) {
        return Status::FailedPrecondition("bulyan needs n >= 4f + 3 updates " +
                                          n_and_f(n, options.byzantine));
      }
      break;
    default:
      break;
  }
  return Status::OK();
}

// A copy of update `chosen`'s floating-point tensors; integer tensors the median over all.
Result<TensorBundle> krum_result(const std::vector<const TensorBundle*>& updates, size_t chosen) {
  return build_result(updates, [&](const std::vector<const NamedTensor*>&, NamedTensor* out) {
    const NamedTensor* src = updates[chosen]->find(out->name());
    std::memcpy(out->mutable_bytes(), src->bytes(), src->nbytes());
  });
}

Result<TensorBundle> multi_krum_result(const std::vector<const TensorBundle*>& updates,
                                       const std::vector<int64_t>& num_examples,
                                       const std::vector<size_t>& selected) {
  // Shares updates[0] without owning it (an aliasing pointer with no owner): it outlives `avg`.
  std::shared_ptr<const TensorBundle> reference(std::shared_ptr<void>(), updates[0]);
  FEDTAIL_ASSIGN_OR_RETURN(WeightedAverage avg, WeightedAverage::create(reference));
  std::vector<WeightedAverage::Weighted> chosen;
  for (size_t k : selected) chosen.push_back({updates[k], num_examples[k]});
  FEDTAIL_RETURN_IF_ERROR(avg.add_all(chosen));
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle mean, avg.finish());
  // Integer tensors: the median over all n, as with every method (WeightedAverage's rounded
  // mean of the selected would be close, but the rule is the same everywhere).
  for (NamedTensor& t : mean) {
    if (!dtype_is_floating(t.dtype())) median_ints(tensors_named(updates, t.name()), &t);
  }
  return mean;
}

}  // namespace

const char* robust_method_name(RobustMethod method) {
  switch (method) {
    case RobustMethod::kNone:
      return "none";
    case RobustMethod::kClip:
      return "clip";
    case RobustMethod::kMedian:
      return "median";
    case RobustMethod::kTrimmedMean:
      return "trimmed_mean";
    case RobustMethod::kKrum:
      return "krum";
    case RobustMethod::kMultiKrum:
      return "multi_krum";
    case RobustMethod::kBulyan:
      return "bulyan";
  }
  return "unknown";
}

bool RobustOptions::buffered() const {
  return method != RobustMethod::kNone && method != RobustMethod::kClip;
}

Result<RobustOptions> parse_robust_options(const nlohmann::json& object, const std::string& path) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(object.is_null() ? empty : object, path);
  RobustOptions options;
  const std::vector<RobustMethod> methods = {RobustMethod::kNone,   RobustMethod::kClip,
                                             RobustMethod::kMedian, RobustMethod::kTrimmedMean,
                                             RobustMethod::kKrum,   RobustMethod::kMultiKrum,
                                             RobustMethod::kBulyan};
  std::vector<std::string> names;
  for (RobustMethod m : methods) names.push_back(robust_method_name(m));
  std::string method = robust_method_name(options.method);
  reader.read_enum("method", &method, names);
  for (RobustMethod m : methods) {
    if (method == robust_method_name(m)) options.method = m;
  }
  reader.read("clip_norm", &options.clip_norm);
  reader.read("trim_fraction", &options.trim_fraction);
  reader.read("byzantine", &options.byzantine);
  reader.read("multi_krum_m", &options.multi_krum_m);
  reader.read("max_buffered_bytes", &options.max_buffered_bytes);
  reader.check(options.max_buffered_bytes >= 1, "max_buffered_bytes", "must be >= 1 (got 0)");
  reader.check(std::isfinite(options.clip_norm) && options.clip_norm >= 0, "clip_norm",
               "must be >= 0 (got " + std::to_string(options.clip_norm) + ")");
  reader.check(options.method != RobustMethod::kClip || options.clip_norm > 0, "clip_norm",
               "must be > 0 when method is \"clip\"");
  reader.check(options.trim_fraction >= 0 && options.trim_fraction < 0.5, "trim_fraction",
               "must be >= 0 and < 0.5 (got " + std::to_string(options.trim_fraction) + ")");
  reader.check(options.byzantine >= 0, "byzantine",
               "must be >= 0 (got " + std::to_string(options.byzantine) + ")");
  reader.check(options.multi_krum_m >= 0, "multi_krum_m",
               "must be >= 0 (got " + std::to_string(options.multi_krum_m) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

Result<double> clip_update(const TensorBundle& global, TensorBundle* update, double clip_norm) {
  if (!std::isfinite(clip_norm) || clip_norm < 0) {
    return Status::InvalidArgument("clip_norm: must be >= 0 (got " + std::to_string(clip_norm) +
                                   ")");
  }
  if (update == nullptr) return Status::InvalidArgument("clip_update: null update");
  FEDTAIL_RETURN_IF_ERROR(check_compatible(*update, global));
  double sum = 0;
  for (const NamedTensor& u : *update) {
    if (dtype_is_floating(u.dtype())) sum += squared_distance(u, *global.find(u.name()));
  }
  const double norm = std::sqrt(sum);
  if (!std::isfinite(norm)) {
    return Status::Corruption(
        "clip_update: the update's distance to the global model is not "
        "finite");
  }
  if (clip_norm == 0 || norm <= clip_norm) return norm;
  const double scale = clip_norm / norm;
  for (NamedTensor& u : *update) {
    if (!dtype_is_floating(u.dtype())) continue;
    const NamedTensor& g = *global.find(u.name());
    const DType dtype = u.dtype();
    uint8_t* out = u.mutable_bytes();
    for (int64_t i = 0; i < u.numel(); ++i) {
      const double gi = load_float(dtype, g.bytes(), i);
      store_float(dtype, out, i, gi + scale * (load_float(dtype, out, i) - gi));
    }
  }
  return norm;
}

Result<TensorBundle> robust_aggregate(const RobustOptions& options,
                                      const std::vector<const TensorBundle*>& updates,
                                      const std::vector<int64_t>& num_examples,
                                      RobustReport* report) {
  FEDTAIL_RETURN_IF_ERROR(check_updates(options, updates, num_examples));
  const size_t n = updates.size();
  const size_t f = static_cast<size_t>(options.byzantine);
  RobustReport local;
  local.method = options.method;
  local.num_updates = n;

  Result<TensorBundle> result = Status::Internal("robust_aggregate: unhandled method");
  switch (options.method) {
    case RobustMethod::kMedian:
      result = build_result(updates, [](const auto& sources, NamedTensor* out) {
        combine_floats(sources, out, median_of);
      });
      break;
    case RobustMethod::kTrimmedMean: {
      // The tolerance keeps e.g. 0.29 · 100 = 28.999999999999996 from dropping 28.
      const size_t trim =
          static_cast<size_t>(std::floor(options.trim_fraction * static_cast<double>(n) + 1e-9));
      local.trimmed = static_cast<int64_t>(trim);
      result = build_result(updates, [trim](const auto& sources, NamedTensor* out) {
        combine_floats(sources, out,
                       [trim](std::vector<double>& v) { return trimmed_mean_of(v, trim); });
      });
      break;
    }
    case RobustMethod::kKrum:
    case RobustMethod::kMultiKrum: {
      const std::vector<double> distances = pairwise_distances(updates);
      std::vector<size_t> all(n);
      for (size_t k = 0; k < n; ++k) all[k] = k;
      local.scores = krum_scores(distances, n, all, n - f - 2);
      // Lowest score first; ties by value (krum_less), then by position (equal values).
      std::stable_sort(all.begin(), all.end(), [&](size_t a, size_t b) {
        return krum_less(updates, local.scores[a], a, local.scores[b], b);
      });
      const size_t m = options.method == RobustMethod::kKrum ? 1
                       : options.multi_krum_m == 0           ? n - f
                                                   : static_cast<size_t>(options.multi_krum_m);
      local.selected.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(m));
      result = options.method == RobustMethod::kKrum
                   ? krum_result(updates, local.selected[0])
                   : multi_krum_result(updates, num_examples, local.selected);
      break;
    }
    case RobustMethod::kBulyan: {
      const std::vector<double> distances = pairwise_distances(updates);
      std::vector<size_t> active(n);
      for (size_t k = 0; k < n; ++k) active[k] = k;
      local.scores = krum_scores(distances, n, active, n - f - 2);
      const size_t theta = n - 2 * f;
      const size_t beta = theta - 2 * f;
      local.trimmed = static_cast<int64_t>(theta - beta);
      while (local.selected.size() < theta) {
        const size_t remaining = active.size();
        // Krum on the remaining updates; near the end n' − f − 2 drops below 1, and at least one
        // neighbour keeps the score meaningful.
        const size_t neighbours =
            remaining <= 1
                ? 0
                : std::clamp<size_t>(remaining - std::min(remaining, f + 2), 1, remaining - 1);
        const std::vector<double> scores = krum_scores(distances, n, active, neighbours);
        size_t pick = 0;
        for (size_t a = 1; a < active.size(); ++a) {
          if (krum_less(updates, scores[a], active[a], scores[pick], active[pick])) pick = a;
        }
        local.selected.push_back(active[pick]);
        active.erase(active.begin() + static_cast<std::ptrdiff_t>(pick));
      }
      std::vector<const TensorBundle*> chosen;
      for (size_t k : local.selected) chosen.push_back(updates[k]);
      result = build_result(updates, [&](const auto&, NamedTensor* out) {
        combine_floats(tensors_named(chosen, out->name()), out,
                       [beta](std::vector<double>& v) { return closest_to_median_mean(v, beta); });
      });
      break;
    }
    default:
      break;  // not buffered: refused by check_updates
  }
  if (result.ok() && report != nullptr) *report = std::move(local);
  return result;
}

nlohmann::json RobustReport::to_json() const {
  return {{"method", robust_method_name(method)},
          {"updates", num_updates},
          {"selected", selected},
          {"scores", scores},
          {"trimmed", trimmed}};
}

int64_t sanitize_batchnorm(TensorBundle* bundle) {
  FEDTAIL_CHECK(bundle != nullptr);
  static constexpr std::string_view kSuffix = "running_var";
  int64_t changed = 0;
  for (NamedTensor& t : *bundle) {
    const std::string& name = t.name();
    if (!dtype_is_floating(t.dtype()) || name.size() < kSuffix.size() ||
        name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) {
      continue;
    }
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (load_float(t.dtype(), t.bytes(), i) < 0) {
        store_float(t.dtype(), t.mutable_bytes(), i, 0.0);
        ++changed;
      }
    }
  }
  return changed;
}

uint64_t buffered_bytes(uint64_t update_bytes, size_t n) {
  uint64_t total = 0;
  if (__builtin_mul_overflow(update_bytes, static_cast<uint64_t>(n), &total)) {
    return std::numeric_limits<uint64_t>::max();
  }
  return total;
}

}  // namespace fedtail::strategies

#include "strategies/qfedavg/qffl_sum.h"

#include <cmath>
#include <functional>
#include <new>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>

#include "common/wire/bundle_checks.h"
#include "common/wire/dtype.h"

namespace fedtail::strategies {
namespace {

std::string number(double value) { return nlohmann::json(value).dump(); }

// Calls fn(i, w_i, u_i) for every element of `w` and `u` (same floating-point dtype and numel),
// the values widened exactly to double. The loop is typed per dtype (no switch per element).
template <typename Fn>
void for_each_pair(const NamedTensor& w, const NamedTensor& u, Fn&& fn) {
  const int64_t n = w.numel();
  switch (w.dtype()) {
    case DType::kFloat32: {
      const float* a = w.data<float>();
      const float* b = u.data<float>();
      for (int64_t i = 0; i < n; ++i) fn(i, static_cast<double>(a[i]), static_cast<double>(b[i]));
      break;
    }
    case DType::kFloat64: {
      const double* a = w.data<double>();
      const double* b = u.data<double>();
      for (int64_t i = 0; i < n; ++i) fn(i, a[i], b[i]);
      break;
    }
    case DType::kFloat16: {
      const uint16_t* a = w.data<uint16_t>();
      const uint16_t* b = u.data<uint16_t>();
      for (int64_t i = 0; i < n; ++i) {
        fn(i, static_cast<double>(half_to_float(a[i])), static_cast<double>(half_to_float(b[i])));
      }
      break;
    }
    case DType::kBFloat16: {
      const uint16_t* a = w.data<uint16_t>();
      const uint16_t* b = u.data<uint16_t>();
      for (int64_t i = 0; i < n; ++i) {
        fn(i, static_cast<double>(bfloat16_to_float(a[i])),
           static_cast<double>(bfloat16_to_float(b[i])));
      }
      break;
    }
    default:
      FEDTAIL_CHECK(false);
  }
}

// out_i = w_i − scale · d_i, rounded once to out's dtype (w's).
void write_step(const NamedTensor& w, const double* d, double scale, NamedTensor* out) {
  const int64_t n = w.numel();
  switch (w.dtype()) {
    case DType::kFloat32: {
      const float* a = w.data<float>();
      float* o = out->data<float>();
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(a[i] - scale * d[i]);
      break;
    }
    case DType::kFloat64: {
      const double* a = w.data<double>();
      double* o = out->data<double>();
      for (int64_t i = 0; i < n; ++i) o[i] = a[i] - scale * d[i];
      break;
    }
    case DType::kFloat16: {
      const uint16_t* a = w.data<uint16_t>();
      uint16_t* o = out->data<uint16_t>();
      for (int64_t i = 0; i < n; ++i) {
        o[i] = float_to_half(
            static_cast<float>(static_cast<double>(half_to_float(a[i])) - scale * d[i]));
      }
      break;
    }
    case DType::kBFloat16: {
      const uint16_t* a = w.data<uint16_t>();
      uint16_t* o = out->data<uint16_t>();
      for (int64_t i = 0; i < n; ++i) {
        o[i] = float_to_bfloat16(
            static_cast<float>(static_cast<double>(bfloat16_to_float(a[i])) - scale * d[i]));
      }
      break;
    }
    default:
      FEDTAIL_CHECK(false);
  }
}

}  // namespace

QfflTerms qffl_terms(double loss, double squared_distance, double q, double lipschitz) {
  const double base = loss + kQfflLossEpsilon;
  QfflTerms t;
  t.loss = loss;
  t.weight = std::pow(base, q);
  t.squared_distance = squared_distance;
  // ‖L (w − w̄_k)‖² = L² ‖w − w̄_k‖²; with q = 0 the first term is 0 · (finite) = 0.
  t.h =
      q * std::pow(base, q - 1) * (lipschitz * lipschitz * squared_distance) + lipschitz * t.weight;
  return t;
}

Result<QfflSum> QfflSum::create(std::shared_ptr<const TensorBundle> global,
                                const std::vector<std::string>& norm_names, double q,
                                double lipschitz) {
  if (!global || global->empty()) {
    return Status::InvalidArgument("QfflSum: the global model is null or empty");
  }
  if (!std::isfinite(q) || q < 0) {
    return Status::InvalidArgument("QfflSum: q must be >= 0 (got " + number(q) + ")");
  }
  if (!std::isfinite(lipschitz) || lipschitz <= 0) {
    return Status::InvalidArgument("QfflSum: L must be > 0 (got " + number(lipschitz) + ")");
  }
  const std::set<std::string> in_norm(norm_names.begin(), norm_names.end());
  for (const std::string& name : in_norm) {
    const NamedTensor* t = global->find(name);
    if (t == nullptr || !dtype_is_floating(t->dtype())) {
      return Status::InvalidArgument("QfflSum: norm tensor \"" + name +
                                     "\" is not a floating-point tensor of the global model");
    }
  }
  QfflSum sum;
  size_t floating_elements = 0;
  TensorBundle integer_reference;
  for (size_t i = 0; i < global->size(); ++i) {
    const NamedTensor& t = global->at(i);
    Slot slot;
    slot.index = i;
    slot.floating = dtype_is_floating(t.dtype());
    slot.in_norm = in_norm.count(t.name()) != 0;
    slot.offset = floating_elements;
    if (slot.floating) {
      floating_elements += static_cast<size_t>(t.numel());
    } else {
      FEDTAIL_RETURN_IF_ERROR(integer_reference.add(t.clone()));
    }
    sum.slots_.push_back(slot);
  }
  try {
    sum.sums_.assign(floating_elements, 0.0);
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("QfflSum: cannot allocate sums for " +
                                     std::to_string(floating_elements) + " elements");
  }
  if (!integer_reference.empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(WeightedAverage integers,
                             WeightedAverage::create(std::make_shared<const TensorBundle>(
                                 std::move(integer_reference))));
    sum.integers_.emplace(std::move(integers));
  }
  sum.global_ = std::move(global);
  sum.q_ = q;
  sum.lipschitz_ = lipschitz;
  return sum;
}

Result<QfflTerms> QfflSum::add(const TensorBundle& model, double loss) {
  return add(model, loss, []() { return Status::OK(); });
}

Result<QfflTerms> QfflSum::add(const TensorBundle& model, double loss,
                               const std::function<Status()>& gate) {
  FEDTAIL_RETURN_IF_ERROR(check_compatible(model, *global_));
  if (!std::isfinite(loss) || loss < 0) {
    return Status::InvalidArgument("the client's loss F_k must be finite and >= 0 (got " +
                                   number(loss) + ")");
  }
  // The integer tensors' share, checked before anything is folded.
  TensorBundle integers;
  if (integers_) {
    for (const Slot& slot : slots_) {
      if (slot.floating) continue;
      FEDTAIL_RETURN_IF_ERROR(
          integers.add(model.find(global_->at(slot.index).name())->clone()));  // checked above
    }
    FEDTAIL_RETURN_IF_ERROR(integers_->check(integers, /*num_examples=*/1));
  }
  // Pass 1: ‖w − w̄_k‖², then the terms.
  double squared = 0;
  for (const Slot& slot : slots_) {
    if (!slot.in_norm) continue;
    const NamedTensor& w = global_->at(slot.index);
    for_each_pair(w, *model.find(w.name()), [&squared](int64_t, double a, double b) {
      const double d = a - b;
      squared += d * d;
    });
  }
  const QfflTerms terms = qffl_terms(loss, squared, q_, lipschitz_);
  if (!std::isfinite(terms.weight) || terms.weight <= 0 || !std::isfinite(terms.h) ||
      terms.h <= 0) {
    return Status::InvalidArgument(
        "the q-FFL terms of this update are not finite and > 0 (F_k = " + number(loss) +
        ", |w - w_k|^2 = " + number(squared) + ", (F_k + 1e-10)^q = " + number(terms.weight) +
        ", h_k = " + number(terms.h) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(gate());
  // From here nothing can fail: the integer share passed integers_->check() above (WeightedAverage
  // guarantees add() then succeeds), and pass 2 only adds.
  if (integers_) FEDTAIL_CHECK(integers_->add(integers, /*num_examples=*/1).ok());
  // Pass 2: D += a_k (w − w̄_k).
  const double a = terms.weight;
  for (const Slot& slot : slots_) {
    if (!slot.floating) continue;
    const NamedTensor& w = global_->at(slot.index);
    double* d = sums_.data() + slot.offset;
    for_each_pair(w, *model.find(w.name()),
                  [d, a](int64_t i, double x, double y) { d[i] += a * (x - y); });
  }
  ++updates_;
  weight_sum_ += terms.weight;
  h_sum_ += terms.h;
  return terms;
}

Result<TensorBundle> QfflSum::finish() const {
  if (updates_ == 0) return Status::FailedPrecondition("QfflSum: no update was added");
  if (!std::isfinite(h_sum_) || h_sum_ <= 0) {
    return Status::InvalidArgument("q-FFL: the sum of the h_k is not finite and > 0 (" +
                                   number(h_sum_) + ")");
  }
  std::optional<TensorBundle> integers;
  if (integers_) {
    FEDTAIL_ASSIGN_OR_RETURN(integers, integers_->finish());
  }
  const double scale = lipschitz_ / h_sum_;
  TensorBundle out;
  for (const Slot& slot : slots_) {
    const NamedTensor& w = global_->at(slot.index);
    if (!slot.floating) {
      FEDTAIL_RETURN_IF_ERROR(out.add(integers->find(w.name())->clone()));
      continue;
    }
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor t,
                             NamedTensor::uninitialized(w.name(), w.dtype(), w.shape()));
    write_step(w, sums_.data() + slot.offset, scale, &t);
    const Status finite = check_finite(t);
    if (!finite.ok()) {
      return Status::InvalidArgument("q-FFL: the new global model: " + finite.message());
    }
    FEDTAIL_RETURN_IF_ERROR(out.add(std::move(t)));
  }
  return out;
}

}  // namespace fedtail::strategies

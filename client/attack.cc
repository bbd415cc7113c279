#include "client/attack.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "common/base/rng.h"
#include "common/wire/bundle_checks.h"

namespace fedtail::client {
namespace {

Status usage(const std::string& spec, const std::string& why) {
  return Status::InvalidArgument("--attack \"" + spec + "\": " + why +
                                 " (one of sign_flip[:s], scale:s, noise:sigma, overclaim:n)");
}

// Applies f(g, w) -> w' to every element of the float32/float64 tensors of `update` that `global`
// holds with the same dtype and shape.
template <typename T>
void transform(const NamedTensor& g, NamedTensor* w,
               const std::function<double(double, double)>& f) {
  const size_t n = w->nbytes() / sizeof(T);
  const T* gv = reinterpret_cast<const T*>(g.bytes());
  T* wv = reinterpret_cast<T*>(w->mutable_bytes());
  for (size_t i = 0; i < n; ++i) wv[i] = static_cast<T>(f(gv[i], wv[i]));
}

}  // namespace

Result<AttackOptions> parse_attack(const std::string& spec) {
  AttackOptions attack;
  attack.spec = spec;
  if (spec.empty() || spec == "none") return attack;
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  double value = 0;
  bool has_value = colon != std::string::npos;
  if (has_value) {
    const std::string text = spec.substr(colon + 1);
    char* end = nullptr;
    value = std::strtod(text.c_str(), &end);
    if (text.empty() || end == nullptr || *end != '\0' || !std::isfinite(value)) {
      return usage(spec, "\"" + text + "\" is not a number");
    }
  }
  if (name == "sign_flip") {
    attack.kind = AttackOptions::Kind::kSignFlip;
    attack.strength = has_value ? value : 1.0;
  } else if (name == "scale") {
    attack.kind = AttackOptions::Kind::kScale;
    attack.strength = value;
  } else if (name == "noise") {
    attack.kind = AttackOptions::Kind::kNoise;
    attack.strength = value;
  } else if (name == "overclaim") {
    attack.kind = AttackOptions::Kind::kOverclaim;
    attack.strength = value;
  } else {
    return usage(spec, "unknown attack \"" + name + "\"");
  }
  if (attack.kind != AttackOptions::Kind::kSignFlip && !has_value) {
    return usage(spec, name + " needs a value");
  }
  if (attack.strength <= 0) return usage(spec, "the value must be > 0");
  if (attack.kind == AttackOptions::Kind::kOverclaim && attack.strength >= 9.2e18) {
    return usage(spec, "n must be below 2^63");
  }
  return attack;
}

Status apply_attack(const AttackOptions& attack, const TensorBundle& global,
                    const std::string& client_id, uint64_t seed, int64_t round,
                    TensorBundle* update, int64_t* num_examples) {
  using Kind = AttackOptions::Kind;
  if (attack.kind == Kind::kNone) return Status::OK();
  if (attack.kind == Kind::kOverclaim) {
    *num_examples = static_cast<int64_t>(attack.strength);
    return Status::OK();
  }
  uint64_t id_hash = 1469598103934665603ull;  // FNV-1a of the client id
  for (unsigned char c : client_id) id_hash = (id_hash ^ c) * 1099511628211ull;
  Rng rng = Rng::derive(seed, "attack", {static_cast<uint64_t>(round), id_hash});
  const double s = attack.strength;
  std::function<double(double, double)> f;
  switch (attack.kind) {
    case Kind::kSignFlip:
      f = [s](double g, double w) { return g - s * (w - g); };
      break;
    case Kind::kScale:
      f = [s](double g, double w) { return g + s * (w - g); };
      break;
    case Kind::kNoise:
      f = [s, &rng](double, double w) { return w + s * rng.normal(); };
      break;
    default:
      return Status::Internal("apply_attack: unhandled kind");
  }
  for (size_t i = 0; i < update->size(); ++i) {
    NamedTensor& w = update->at(i);
    const NamedTensor* g = global.find(w.name());
    if (g == nullptr || g->dtype() != w.dtype() || g->shape() != w.shape()) continue;
    if (w.dtype() == DType::kFloat32) {
      transform<float>(*g, &w, f);
    } else if (w.dtype() == DType::kFloat64) {
      transform<double>(*g, &w, f);
    }
  }
  return check_finite(*update).with_context("--attack " + attack.spec);
}

}  // namespace fedtail::client

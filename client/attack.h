// Red-team mode, for robustness benchmarks (fedtail-client --attack): the client trains honestly,
// then turns its update into a hostile one before uploading it, as a Byzantine participant would.
// It exists so that defences (strategy.robust, the coordinator's bounds) can be measured against
// real processes over the real transport; a production client never sets it.
//
//   sign_flip[:s]   w' = g − s·(w − g)          (default s = 1): the honest step, reversed
//   scale:s         w' = g + s·(w − g)          e.g. scale:100: the step blown up
//   noise:sigma     w' = w + N(0, sigma²) per element of every floating-point tensor
//   overclaim:n     num_examples' = n            e.g. overclaim:1e12: the update claims n examples
// where g is the global model the task carried and w the honest update, over the floating-point
// tensors that g also holds (others untouched). Deterministic: the noise comes from
// Rng::derive(seed, "attack", {round}) with the client id folded in.
#ifndef FEDTAIL_CLIENT_ATTACK_H_
#define FEDTAIL_CLIENT_ATTACK_H_

#include <cstdint>
#include <string>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::client {

struct AttackOptions {
  enum class Kind { kNone, kSignFlip, kScale, kNoise, kOverclaim };
  Kind kind = Kind::kNone;
  double strength = 0;  // s, sigma or n
  std::string spec;     // as given, for logs
};

// Parses --attack's value (see above). kInvalidArgument naming --attack and the accepted forms.
Result<AttackOptions> parse_attack(const std::string& spec);

// Applies `attack` to the honest result of round `round` of `client_id`: `update` (trained from
// `global`) and `num_examples`, in place. The result is finite (a non-finite outcome is an
// error). No-op for kNone.
Status apply_attack(const AttackOptions& attack, const TensorBundle& global,
                    const std::string& client_id, uint64_t seed, int64_t round,
                    TensorBundle* update, int64_t* num_examples);

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_ATTACK_H_

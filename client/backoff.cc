#include "client/backoff.h"

#include <algorithm>
#include <cmath>

#include "common/security/crypto.h"

namespace fedtail::client {

uint64_t seed_from_string(const std::string& text) {
  Sha256Digest digest = sha256(text);
  uint64_t seed = 0;
  for (int i = 0; i < 8; ++i) seed = (seed << 8) | digest[i];
  return seed;
}

Backoff::Backoff(const std::string& client_id, BackoffOptions options)
    : options_(options), rng_(Rng::derive(seed_from_string(client_id), "backoff")) {}

double Backoff::next_delay_s() {
  // 2^attempt overflows nothing: the exponent is clamped well before doubles lose range.
  const int exponent = std::min(attempt_, 60);
  const double d = std::min(options_.cap_s, options_.base_s * std::ldexp(1.0, exponent));
  ++attempt_;
  return d / 2 + rng_.uniform() * d / 2;
}

}  // namespace fedtail::client

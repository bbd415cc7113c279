// Backoff: the delays between a client's reconnection attempts — exponential with jitter, so that a
// federation of clients that lost their coordinator at the same moment does not reconnect in step.
//
// Attempt n (from 0) waits d/2 + U·d/2 with d = min(cap, base·2^n) and U uniform in [0, 1) drawn
// from an Rng seeded from the client id (never from the clock): two clients spread out, and one
// client's delays are reproducible. reset() after a success starts again from `base`.
// Not thread-safe: one Backoff per retry loop.
#ifndef FEDTAIL_CLIENT_BACKOFF_H_
#define FEDTAIL_CLIENT_BACKOFF_H_

#include <string>

#include "common/base/rng.h"

namespace fedtail::client {

struct BackoffOptions {
  double base_s = 0.5;  // delay scale of the first retry, seconds (> 0)
  double cap_s = 30.0;  // largest delay, seconds (>= base_s)
};

class Backoff {
 public:
  Backoff(const std::string& client_id, BackoffOptions options = {});

  // The delay before the next attempt, in seconds, in [d/2, d) (see above); advances the attempt.
  double next_delay_s();
  // Back to the first attempt (after a successful call).
  void reset() { attempt_ = 0; }
  // Attempts since construction or the last reset().
  int attempts() const { return attempt_; }

 private:
  const BackoffOptions options_;
  Rng rng_;
  int attempt_ = 0;
};

// A 64-bit seed that is a function of `text` alone (the first 8 bytes of its SHA-256).
uint64_t seed_from_string(const std::string& text);

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_BACKOFF_H_

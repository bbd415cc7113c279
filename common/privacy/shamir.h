// Shamir's secret sharing (Shamir, CACM 1979) of byte strings, over the prime field GF(p) with
// p = 2^61 - 1 (a Mersenne prime: reduction is a shift and an add).
//
// A secret of any length is cut into 7-byte chunks (the last one shorter), each a field element
// below 2^56 < p, and each chunk is shared with its own random polynomial of degree threshold - 1;
// share i holds the polynomials' values at x = i (1..255, never 0). Any `threshold` distinct
// shares give the secret back; fewer reveal nothing about it (every value is as likely).
//
// Randomness: the polynomials' coefficients come from the OS CSPRNG (RAND_bytes). Thread-safe.
#ifndef FEDTAIL_COMMON_PRIVACY_SHAMIR_H_
#define FEDTAIL_COMMON_PRIVACY_SHAMIR_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"

namespace fedtail::privacy {

constexpr uint64_t kShamirPrime = (uint64_t{1} << 61) - 1;

struct Share {
  uint8_t x = 0;                 // the evaluation point, 1..255
  std::vector<uint64_t> values;  // one field element per 7-byte chunk of the secret, each < p
  uint32_t secret_bytes = 0;     // the secret's length (so the last chunk's length is known)
};

// Field arithmetic modulo kShamirPrime (arguments must be < p). Exposed for tests.
uint64_t field_add(uint64_t a, uint64_t b);
uint64_t field_sub(uint64_t a, uint64_t b);
uint64_t field_mul(uint64_t a, uint64_t b);
// a^(p-2): the inverse of a != 0.
uint64_t field_inverse(uint64_t a);

// `num_shares` shares (x = 1..num_shares) of `secret`, any `threshold` of which recover it.
// kInvalidArgument unless 1 <= threshold <= num_shares <= 255 and the secret has at most 2^32 - 1
// bytes.
Result<std::vector<Share>> shamir_split(std::string_view secret, int threshold, int num_shares);

// The secret from at least `threshold` shares (Lagrange interpolation at 0 of the first
// `threshold` of them). kInvalidArgument when fewer than `threshold` are given, when two share an
// x or x is 0, when they disagree on the length or number of values, or when a value is >= p or a
// chunk decodes to more than 7 bytes (a share that was not made by shamir_split).
Result<std::string> shamir_combine(const std::vector<Share>& shares, int threshold);

// A share as bytes (x, secret_bytes, then each value as 8 little-endian bytes) and back;
// decode_share refuses (kInvalidArgument) a wrong length or a value >= p.
std::string encode_share(const Share& share);
Result<Share> decode_share(std::string_view bytes);

}  // namespace fedtail::privacy

#endif  // FEDTAIL_COMMON_PRIVACY_SHAMIR_H_

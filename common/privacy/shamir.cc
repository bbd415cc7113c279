#include "common/privacy/shamir.h"

#include <openssl/rand.h>

#include <cstddef>
#include <limits>
#include <string>

namespace fedtail::privacy {
namespace {

constexpr size_t kChunkBytes = 7;
constexpr int kMaxShares = 255;
constexpr size_t kShareHeaderBytes = 1 + 4;  // x, secret_bytes (uint32 little-endian)
constexpr size_t kValueBytes = 8;

size_t chunk_count(uint64_t secret_bytes) { return (secret_bytes + kChunkBytes - 1) / kChunkBytes; }

// The length of chunk `index` of a secret of `secret_bytes` bytes.
size_t chunk_length(uint64_t secret_bytes, size_t index) {
  const uint64_t rest = secret_bytes - index * kChunkBytes;
  return rest < kChunkBytes ? rest : kChunkBytes;
}

// A uniform field element: 61 random bits, rejecting the one value (p itself) that is not < p.
uint64_t random_field_element() {
  for (;;) {
    uint8_t bytes[8];
    FEDTAIL_CHECK(RAND_bytes(bytes, sizeof(bytes)) == 1);
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | bytes[i];
    v &= kShamirPrime;
    if (v != kShamirPrime) return v;
  }
}

uint64_t load_le(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = n; i > 0; --i) v = (v << 8) | p[i - 1];
  return v;
}

void store_le(uint64_t v, size_t n, std::string* out) {
  for (size_t i = 0; i < n; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Horner's rule: coefficients[0] + coefficients[1] x + ...
uint64_t evaluate(const std::vector<uint64_t>& coefficients, uint64_t x) {
  uint64_t y = 0;
  for (size_t i = coefficients.size(); i > 0; --i) {
    y = field_add(field_mul(y, x), coefficients[i - 1]);
  }
  return y;
}

// Checks everything shamir_combine promises to refuse except the decoded chunk lengths.
Status validate_shares(const std::vector<Share>& shares, int threshold) {
  if (threshold < 1) {
    return Status::InvalidArgument("shamir_combine: threshold must be >= 1 (got " +
                                   std::to_string(threshold) + ")");
  }
  if (shares.size() < static_cast<size_t>(threshold)) {
    return Status::InvalidArgument("shamir_combine: " + std::to_string(shares.size()) +
                                   " shares, fewer than the threshold " +
                                   std::to_string(threshold));
  }
  const uint32_t secret_bytes = shares[0].secret_bytes;
  const size_t chunks = chunk_count(secret_bytes);
  bool seen[kMaxShares + 1] = {};
  for (const Share& share : shares) {
    const std::string which = "shamir_combine: share x=" + std::to_string(share.x);
    if (share.x == 0) return Status::InvalidArgument(which + ": x must be in 1..255");
    if (seen[share.x]) return Status::InvalidArgument(which + ": duplicate x");
    seen[share.x] = true;
    if (share.secret_bytes != secret_bytes) {
      return Status::InvalidArgument(which + ": secret length " +
                                     std::to_string(share.secret_bytes) + " differs from " +
                                     std::to_string(secret_bytes));
    }
    if (share.values.size() != chunks) {
      return Status::InvalidArgument(which + ": " + std::to_string(share.values.size()) +
                                     " values, expected " + std::to_string(chunks));
    }
    for (uint64_t v : share.values) {
      if (v >= kShamirPrime) return Status::InvalidArgument(which + ": value >= p");
    }
  }
  return Status::OK();
}

// The Lagrange basis polynomials of the first `threshold` shares' x, evaluated at 0:
// l_j(0) = prod_{m != j} x_m / (x_m - x_j).
std::vector<uint64_t> lagrange_at_zero(const std::vector<Share>& shares, int threshold) {
  std::vector<uint64_t> weights(static_cast<size_t>(threshold));
  for (size_t j = 0; j < weights.size(); ++j) {
    uint64_t numerator = 1;
    uint64_t denominator = 1;
    for (size_t m = 0; m < weights.size(); ++m) {
      if (m == j) continue;
      numerator = field_mul(numerator, shares[m].x);
      denominator = field_mul(denominator, field_sub(shares[m].x, shares[j].x));
    }
    weights[j] = field_mul(numerator, field_inverse(denominator));
  }
  return weights;
}

}  // namespace

uint64_t field_add(uint64_t a, uint64_t b) {
  const uint64_t s = a + b;  // < 2p < 2^63: no overflow
  return s >= kShamirPrime ? s - kShamirPrime : s;
}

uint64_t field_sub(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kShamirPrime - b; }

uint64_t field_mul(uint64_t a, uint64_t b) {
  const unsigned __int128 product = static_cast<unsigned __int128>(a) * b;  // < 2^122
  // 2^61 = 1 (mod p): the high bits fold onto the low ones.
  uint64_t r = static_cast<uint64_t>(product & kShamirPrime) + static_cast<uint64_t>(product >> 61);
  r = (r & kShamirPrime) + (r >> 61);  // r < 2^62 before, <= p + 1 after
  return r >= kShamirPrime ? r - kShamirPrime : r;
}

uint64_t field_inverse(uint64_t a) {
  FEDTAIL_CHECK(a != 0 && a < kShamirPrime);
  uint64_t result = 1;
  uint64_t base = a;
  for (uint64_t e = kShamirPrime - 2; e != 0; e >>= 1) {
    if (e & 1) result = field_mul(result, base);
    base = field_mul(base, base);
  }
  return result;
}

Result<std::vector<Share>> shamir_split(std::string_view secret, int threshold, int num_shares) {
  if (threshold < 1 || threshold > num_shares || num_shares > kMaxShares) {
    return Status::InvalidArgument(
        "shamir_split: need 1 <= threshold <= num_shares <= 255 (got "
        "threshold " +
        std::to_string(threshold) + ", num_shares " + std::to_string(num_shares) + ")");
  }
  if (secret.size() > std::numeric_limits<uint32_t>::max()) {
    return Status::InvalidArgument("shamir_split: secret longer than 2^32 - 1 bytes");
  }
  const size_t chunks = chunk_count(secret.size());
  std::vector<Share> shares(static_cast<size_t>(num_shares));
  for (int i = 0; i < num_shares; ++i) {
    shares[i].x = static_cast<uint8_t>(i + 1);
    shares[i].secret_bytes = static_cast<uint32_t>(secret.size());
    shares[i].values.resize(chunks);
  }
  const auto* bytes = reinterpret_cast<const uint8_t*>(secret.data());
  std::vector<uint64_t> coefficients(static_cast<size_t>(threshold));
  for (size_t c = 0; c < chunks; ++c) {
    coefficients[0] = load_le(bytes + c * kChunkBytes, chunk_length(secret.size(), c));
    for (size_t k = 1; k < coefficients.size(); ++k) coefficients[k] = random_field_element();
    for (Share& share : shares) share.values[c] = evaluate(coefficients, share.x);
  }
  return shares;
}

Result<std::string> shamir_combine(const std::vector<Share>& shares, int threshold) {
  FEDTAIL_RETURN_IF_ERROR(validate_shares(shares, threshold));
  const std::vector<uint64_t> weights = lagrange_at_zero(shares, threshold);
  const uint32_t secret_bytes = shares[0].secret_bytes;
  std::string secret;
  secret.reserve(secret_bytes);
  for (size_t c = 0; c < chunk_count(secret_bytes); ++c) {
    uint64_t value = 0;
    for (size_t j = 0; j < weights.size(); ++j) {
      value = field_add(value, field_mul(weights[j], shares[j].values[c]));
    }
    const size_t length = chunk_length(secret_bytes, c);
    if ((value >> (8 * length)) != 0) {
      return Status::InvalidArgument("shamir_combine: chunk " + std::to_string(c) +
                                     " decodes to more than " + std::to_string(length) +
                                     " bytes (shares not from one shamir_split)");
    }
    store_le(value, length, &secret);
  }
  return secret;
}

std::string encode_share(const Share& share) {
  std::string out;
  out.reserve(kShareHeaderBytes + kValueBytes * share.values.size());
  out.push_back(static_cast<char>(share.x));
  store_le(share.secret_bytes, 4, &out);
  for (uint64_t v : share.values) store_le(v, kValueBytes, &out);
  return out;
}

Result<Share> decode_share(std::string_view bytes) {
  if (bytes.size() < kShareHeaderBytes) {
    return Status::InvalidArgument("decode_share: " + std::to_string(bytes.size()) +
                                   " bytes, shorter than the 5-byte header");
  }
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  Share share;
  share.x = p[0];
  share.secret_bytes = static_cast<uint32_t>(load_le(p + 1, 4));
  const size_t chunks = chunk_count(share.secret_bytes);
  if (bytes.size() - kShareHeaderBytes != chunks * kValueBytes) {
    return Status::InvalidArgument("decode_share: " + std::to_string(bytes.size()) +
                                   " bytes, expected " +
                                   std::to_string(kShareHeaderBytes + chunks * kValueBytes) +
                                   " for a " + std::to_string(share.secret_bytes) + "-byte secret");
  }
  share.values.resize(chunks);
  for (size_t c = 0; c < chunks; ++c) {
    share.values[c] = load_le(p + kShareHeaderBytes + c * kValueBytes, kValueBytes);
    if (share.values[c] >= kShamirPrime) {
      return Status::InvalidArgument("decode_share: value " + std::to_string(c) + " >= p");
    }
  }
  return share;
}

}  // namespace fedtail::privacy

#include "common/base/rng.h"

#include <cmath>
#include <numeric>

#include "common/base/status.h"

namespace fedtail {
namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// FNV-1a: a stable hash of the purpose string (std::hash is not stable across libraries).
uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h;
}

}  // namespace

Rng::Rng(uint64_t seed) {
  uint64_t x = seed;
  for (auto& s : s_) s = splitmix64(x);
}

Rng Rng::derive(uint64_t seed, std::string_view purpose, std::initializer_list<uint64_t> keys) {
  uint64_t x = seed ^ 0x6A09E667F3BCC909ULL;
  uint64_t h = splitmix64(x) ^ fnv1a(purpose);
  for (uint64_t k : keys) {
    uint64_t y = h ^ k;
    h = splitmix64(y) + 0x3C6EF372FE94F82BULL * (k + 1);
  }
  return Rng(h);
}

uint64_t Rng::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

uint64_t Rng::uniform_int(uint64_t n) {
  FEDTAIL_CHECK(n > 0);
  // Rejection keeps the draw unbiased: discard the top partial copy of [0, n).
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do {
    x = next_u64();
  } while (x >= limit);
  return x % n;
}

double Rng::normal() {
  double u, v, s;
  do {
    u = 2.0 * uniform() - 1.0;
    v = 2.0 * uniform() - 1.0;
    s = u * u + v * v;
  } while (s >= 1.0 || s == 0.0);
  return u * std::sqrt(-2.0 * std::log(s) / s);
}

double Rng::gamma(double shape) {
  FEDTAIL_CHECK(shape > 0);
  if (shape < 1.0) {
    // Gamma(a) = Gamma(a + 1) · U^(1/a).
    double u;
    do {
      u = uniform();
    } while (u == 0.0);
    return gamma(shape + 1.0) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  while (true) {
    double x, v;
    do {
      x = normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = uniform();
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (u > 0.0 && std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

std::vector<double> Rng::dirichlet(double alpha, int n) {
  FEDTAIL_CHECK(alpha > 0 && n > 0);
  std::vector<double> w(n);
  double sum = 0;
  for (auto& x : w) sum += (x = gamma(alpha));
  if (sum <= 0.0) {
    // Every draw underflowed (tiny alpha): the limit of Dirichlet(α→0) is a one-hot vector.
    w.assign(n, 0.0);
    w[uniform_int(n)] = 1.0;
    return w;
  }
  for (auto& x : w) x /= sum;
  return w;
}

int Rng::categorical(const std::vector<double>& weights) {
  double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  FEDTAIL_CHECK(total > 0);
  double r = uniform() * total;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (r < weights[i]) return static_cast<int>(i);
    r -= weights[i];
  }
  // Rounding left r just above the last positive weight.
  for (size_t i = weights.size(); i-- > 0;)
    if (weights[i] > 0) return static_cast<int>(i);
  return 0;
}

std::vector<int64_t> Rng::sample_without_replacement(int64_t n, int64_t k) {
  FEDTAIL_CHECK(k >= 0 && k <= n);
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  // Partial Fisher–Yates: the first k positions are a uniform random k-subset in random order.
  for (int64_t i = 0; i < k; ++i) {
    int64_t j = i + static_cast<int64_t>(uniform_int(static_cast<uint64_t>(n - i)));
    std::swap(idx[i], idx[j]);
  }
  idx.resize(k);
  return idx;
}

}  // namespace fedtail

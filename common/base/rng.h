// Rng: the one source of randomness in fedtail.
//
// Every random choice (partitions, client sampling, augmentation, initialisation) takes an explicit
// Rng derived from the run seed and a stable key (purpose, round, client id), so that every process
// that derives the same key draws the same numbers, on every platform: the generator (xoshiro256**)
// and every distribution below are implemented here, not taken from <random>, whose distributions
// differ between standard libraries. Not thread-safe: give each thread its own Rng.
#ifndef FEDTAIL_COMMON_BASE_RNG_H_
#define FEDTAIL_COMMON_BASE_RNG_H_

#include <cstdint>
#include <initializer_list>
#include <string_view>
#include <vector>

namespace fedtail {

class Rng {
 public:
  // A generator whose whole stream is a function of `seed`.
  explicit Rng(uint64_t seed);

  // A generator for one purpose: a function of the seed and each key, in order. Derive with a
  // distinct string per purpose (e.g. "partition"), then numbers (round, client id).
  static Rng derive(uint64_t seed, std::string_view purpose,
                    std::initializer_list<uint64_t> keys = {});

  uint64_t next_u64();
  // Uniform in [0, 1) with 53 random bits.
  double uniform();
  // Uniform integer in [0, n). Precondition: n > 0. Unbiased (rejection sampling).
  uint64_t uniform_int(uint64_t n);
  // Standard normal N(0, 1) (Marsaglia polar method).
  double normal();
  // Gamma(shape, 1). Precondition: shape > 0 (Marsaglia–Tsang, with the shape < 1 boost).
  double gamma(double shape);
  // A draw from the symmetric Dirichlet(alpha·1_n): n non-negative weights that sum to 1.
  std::vector<double> dirichlet(double alpha, int n);
  // Index drawn with probability proportional to weights[i] (non-negative, not all zero).
  int categorical(const std::vector<double>& weights);
  // Fisher–Yates shuffle.
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      size_t j = static_cast<size_t>(uniform_int(i));
      std::swap(v[i - 1], v[j]);
    }
  }
  // k distinct indices from [0, n), in random order. Precondition: k <= n.
  std::vector<int64_t> sample_without_replacement(int64_t n, int64_t k);
  // A 63-bit seed for another generator (e.g. LibTorch's), drawn from this stream.
  uint64_t seed_for_torch() { return next_u64() >> 1; }

 private:
  uint64_t s_[4];
};

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_RNG_H_

#include "common/privacy/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace fedtail::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A bundle shaped like every test's task bundle: float32 [2, 2] "w", float64 [2] "b", and
// BatchNorm's int64 step counter, which is not part of the secure input.
TensorBundle bundle(const std::vector<float>& w, const std::vector<double>& b, int64_t counter) {
  TensorBundle out;
  EXPECT_TRUE(out.add(NamedTensor::from_values<float>("w", DType::kFloat32, {2, 2}, w)).ok());
  EXPECT_TRUE(out.add(NamedTensor::from_values<double>("b", DType::kFloat64, {2}, b)).ok());
  EXPECT_TRUE(out.add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {},
                                                        {counter}))
                  .ok());
  return out;
}

// The task bundle g: w = (0, 0.5, -0.25, 1), b = (1, -2), counter 5.
TensorBundle base() { return bundle({0.0f, 0.5f, -0.25f, 1.0f}, {1.0, -2.0}, 5); }

// The hand-made update u of QuantizeUpdate*: w = (0.5, 0.5, 1.75, -2), b = (5, -2.5), counter 9.
TensorBundle hand_update() { return bundle({0.5f, 0.5f, 1.75f, -2.0f}, {5.0, -2.5}, 9); }

QuantizeParams params(double clip, int bits) {
  QuantizeParams p;
  p.clip = clip;
  p.bits = bits;
  return p;
}

bool has(const Status& s, const std::string& part) {
  return s.message().find(part) != std::string::npos;
}

void expect_invalid(const Status& s, const std::vector<std::string>& parts) {
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  for (const std::string& part : parts) EXPECT_TRUE(has(s, part)) << s.message();
}

// ---- check_quantize_params ----

TEST(QuantizeParamsTest, DefaultsAreClip1Bits20AndEveryWidthFrom1To31FitsTwoClients) {
  const QuantizeParams defaults;
  EXPECT_EQ(defaults.clip, 1.0);
  EXPECT_EQ(defaults.bits, 20);
  // Two 31-bit words sum to at most 2 · (2^31 - 1) = 2^32 - 2 < 2^32.
  for (int bits = 1; bits <= 31; ++bits) {
    EXPECT_TRUE(check_quantize_params(params(1.0, bits), 2).ok()) << bits;
  }
}

TEST(QuantizeParamsTest, RefusesBitsOutside1To31NamingTheField) {
  for (int bits : {0, 32, -1, 64}) {
    SCOPED_TRACE(bits);
    expect_invalid(check_quantize_params(params(1.0, bits), 2),
                   {"config.secagg.bits", std::to_string(bits)});
  }
}

TEST(QuantizeParamsTest, RefusesAClipThatIsNotPositiveAndFinite) {
  for (double clip : {0.0, -1.0, kInf, -kInf, kNaN}) {
    SCOPED_TRACE(clip);
    expect_invalid(check_quantize_params(params(clip, 20), 2), {"config.secagg.clip"});
  }
  EXPECT_TRUE(check_quantize_params(params(1e-6, 20), 2).ok());
}

TEST(QuantizeParamsTest, RefusesMoreClientsThanThe32BitSumHolds) {
  // bits = 20: 2^20 - 1 = 1048575 per word, and (2^32 - 1) / 1048575 = 4294967295 / 1048575
  // = 4096.0039... (1048575 · 4096 = 4294963200, remainder 4095): at most 4096 clients.
  EXPECT_TRUE(check_quantize_params(params(1.0, 20), 4096).ok());
  Status s = check_quantize_params(params(1.0, 20), 4097);
  expect_invalid(s, {"config.secagg.bits", "4097", "at most 4096"});

  // bits = 8: (2^32 - 1) / 255 = 16843009 exactly (2^32 - 1 = 255 · 0x01010101).
  EXPECT_TRUE(check_quantize_params(params(1.0, 8), 16843009).ok());
  expect_invalid(check_quantize_params(params(1.0, 8), 16843010), {"at most 16843009"});

  // bits = 31: 2 · (2^31 - 1) = 2^32 - 2 fits, 3 · (2^31 - 1) > 2^32 - 1 does not.
  EXPECT_TRUE(check_quantize_params(params(1.0, 31), 2).ok());
  expect_invalid(check_quantize_params(params(1.0, 31), 3), {"at most 2 "});

  // No clients at all is refused too, saying so.
  expect_invalid(check_quantize_params(params(1.0, 20), 0), {"at least one client", "got 0"});
}

// ---- quantize_update ----

TEST(QuantizeUpdateTest, SecureWordsCountTheFloatingPointValuesOnly) {
  // w has 4 values, b 2; the int64 counter is not part of the secure input.
  EXPECT_EQ(secure_words(base()), 6);
  EXPECT_EQ(secure_words(TensorBundle()), 0);
}

TEST(QuantizeUpdateTest, HandMadeBundleGivesHandComputedWords) {
  // clip c = 1, bits 8: 2^8 - 1 = 255 levels, q = round((v + 1) / 2 · 255) = round((v + 1) · 127.5)
  // with v = clamp(weight · (u - g), -1, 1) and weight 0.5.
  //   w: u - g = (0.5 - 0, 0.5 - 0.5, 1.75 + 0.25, -2 - 1) = (0.5, 0, 2, -3)
  //      v = (0.25, 0, 1, -1.5 -> clamped -1)
  //      q = (1.25 · 127.5 = 159.375 -> 159, 127.5 -> 128, 2 · 127.5 = 255, 0)
  //   b: u - g = (5 - 1, -2.5 + 2) = (4, -0.5)
  //      v = (2 -> clamped 1, -0.25)
  //      q = (255, 0.75 · 127.5 = 95.625 -> 96)
  // Two values were clamped (w[3], b[0]); v = 1 exactly (w[2]) is not a clamp. The counter (9
  // against 5) is skipped.
  int64_t clamped = -1;
  auto words = quantize_update(hand_update(), base(), /*weight=*/0.5, params(1.0, 8), &clamped);
  ASSERT_TRUE(words.ok()) << words.status().to_string();
  EXPECT_EQ(*words, (std::vector<uint32_t>{159, 128, 255, 0, 255, 96}));
  EXPECT_EQ(clamped, 2);

  // `clamped` may be null.
  auto again = quantize_update(hand_update(), base(), /*weight=*/0.5, params(1.0, 8), nullptr);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *words);
}

TEST(QuantizeUpdateTest, NoChangeIsTheMiddleWordAndTheCounterMayBeAbsent) {
  // u = g: v = 0, q = round(127.5) = 128 for every value (bits 8); bits 20: round(0.5 · 1048575)
  // = round(524287.5) = 524288. Nothing clamped.
  TensorBundle update;
  ASSERT_TRUE(update
                  .add(NamedTensor::from_values<float>("w", DType::kFloat32, {2, 2},
                                                       {0.0f, 0.5f, -0.25f, 1.0f}))
                  .ok());
  ASSERT_TRUE(
      update.add(NamedTensor::from_values<double>("b", DType::kFloat64, {2}, {1.0, -2.0})).ok());
  // No int64 counter at all: only the floating-point tensors of the base are read.
  int64_t clamped = -1;
  auto words = quantize_update(update, base(), /*weight=*/1.0, params(1.0, 8), &clamped);
  ASSERT_TRUE(words.ok()) << words.status().to_string();
  EXPECT_EQ(*words, std::vector<uint32_t>(6, 128));
  EXPECT_EQ(clamped, 0);

  words = quantize_update(update, base(), /*weight=*/1.0, params(1.0, 20), &clamped);
  ASSERT_TRUE(words.ok());
  EXPECT_EQ(*words, std::vector<uint32_t>(6, 524288));
}

TEST(QuantizeUpdateTest, RefusesAWeightOutside0To1) {
  for (double weight : {0.0, -0.5, 1.5, 1.0000001, kNaN, kInf}) {
    SCOPED_TRACE(weight);
    auto words = quantize_update(hand_update(), base(), weight, params(1.0, 8), nullptr);
    ASSERT_FALSE(words.ok());
    expect_invalid(words.status(), {"weight"});
  }
  // 1 itself is allowed.
  EXPECT_TRUE(quantize_update(hand_update(), base(), /*weight=*/1.0, params(1.0, 8), nullptr).ok());
}

TEST(QuantizeUpdateTest, RefusesAMissingOrMisshapenTensorNamingIt) {
  // "b" missing.
  TensorBundle missing;
  ASSERT_TRUE(missing
                  .add(NamedTensor::from_values<float>("w", DType::kFloat32, {2, 2},
                                                       {0.5f, 0.5f, 1.75f, -2.0f}))
                  .ok());
  auto words = quantize_update(missing, base(), 0.5, params(1.0, 8), nullptr);
  ASSERT_FALSE(words.ok());
  expect_invalid(words.status(), {"\"b\"", "missing"});

  // "w" of shape [4] instead of [2, 2].
  TensorBundle reshaped;
  ASSERT_TRUE(reshaped
                  .add(NamedTensor::from_values<float>("w", DType::kFloat32, {4},
                                                       {0.5f, 0.5f, 1.75f, -2.0f}))
                  .ok());
  ASSERT_TRUE(
      reshaped.add(NamedTensor::from_values<double>("b", DType::kFloat64, {2}, {5.0, -2.5})).ok());
  words = quantize_update(reshaped, base(), 0.5, params(1.0, 8), nullptr);
  ASSERT_FALSE(words.ok());
  expect_invalid(words.status(), {"\"w\"", "[4]"});

  // "b" as float32 instead of float64.
  TensorBundle retyped;
  ASSERT_TRUE(retyped
                  .add(NamedTensor::from_values<float>("w", DType::kFloat32, {2, 2},
                                                       {0.5f, 0.5f, 1.75f, -2.0f}))
                  .ok());
  ASSERT_TRUE(
      retyped.add(NamedTensor::from_values<float>("b", DType::kFloat32, {2}, {5.0f, -2.5f})).ok());
  words = quantize_update(retyped, base(), 0.5, params(1.0, 8), nullptr);
  ASSERT_FALSE(words.ok());
  expect_invalid(words.status(), {"\"b\""});
}

TEST(QuantizeUpdateTest, RefusesANonFiniteValueNamingTheTensor) {
  const float inf = std::numeric_limits<float>::infinity();
  auto words = quantize_update(bundle({0.5f, 0.5f, inf, -2.0f}, {5.0, -2.5}, 9), base(), 0.5,
                               params(1.0, 8), nullptr);
  ASSERT_FALSE(words.ok());
  expect_invalid(words.status(), {"\"w\"", "non-finite"});

  words = quantize_update(bundle({0.5f, 0.5f, 1.75f, -2.0f}, {5.0, kNaN}, 9), base(), 0.5,
                          params(1.0, 8), nullptr);
  ASSERT_FALSE(words.ok());
  expect_invalid(words.status(), {"\"b\"", "non-finite"});
}

// ---- masked layout, words_to_bundle, add_words ----

TEST(MaskedWordsTest, MaskedLayoutHasAnInt32TensorPerFloatingPointTensor) {
  auto layout = masked_layout(base());
  ASSERT_TRUE(layout.ok()) << layout.status().to_string();
  ASSERT_EQ(layout->size(), 2u);  // w, b; no counter
  EXPECT_EQ(layout->names(), (std::vector<std::string>{"w", "b"}));
  const NamedTensor& w = layout->at(0);
  const NamedTensor& b = layout->at(1);
  EXPECT_EQ(w.dtype(), DType::kInt32);
  EXPECT_EQ(w.shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(b.dtype(), DType::kInt32);
  EXPECT_EQ(b.shape(), (std::vector<int64_t>{2}));
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(w.data<int32_t>()[i], 0);
  for (int64_t i = 0; i < 2; ++i) EXPECT_EQ(b.data<int32_t>()[i], 0);
}

TEST(MaskedWordsTest, WordsToBundleAndAddWordsSumModulo2To32) {
  const std::vector<uint32_t> a = {0xFFFFFFF0u, 1, 2, 0x80000000u, 4, 0xFFFFFFFFu};
  const std::vector<uint32_t> b = {0x20u, 2, 3, 0x80000000u, 0xFFFFFFFEu, 1};
  auto ba = words_to_bundle(a, base());
  auto bb = words_to_bundle(b, base());
  ASSERT_TRUE(ba.ok()) << ba.status().to_string();
  ASSERT_TRUE(bb.ok());
  // The words' bits, as int32: 0xFFFFFFF0 = -16, 0x80000000 = INT32_MIN, 0xFFFFFFFF = -1.
  ASSERT_EQ(ba->names(), (std::vector<std::string>{"w", "b"}));
  const int32_t* w = ba->find("w")->data<int32_t>();
  EXPECT_EQ(w[0], -16);
  EXPECT_EQ(w[1], 1);
  EXPECT_EQ(w[2], 2);
  EXPECT_EQ(w[3], std::numeric_limits<int32_t>::min());
  EXPECT_EQ(ba->find("b")->data<int32_t>()[0], 4);
  EXPECT_EQ(ba->find("b")->data<int32_t>()[1], -1);

  // Sums modulo 2^32:
  //   0xFFFFFFF0 + 0x20 = 0x1_00000010 -> 0x10;  1 + 2 = 3;  2 + 3 = 5;
  //   0x80000000 + 0x80000000 = 2^32 -> 0;  4 + 0xFFFFFFFE = 0x1_00000002 -> 2;
  //   0xFFFFFFFF + 1 = 2^32 -> 0.
  std::vector<uint32_t> sum(6, 0);
  ASSERT_TRUE(add_words(*ba, sum.data(), sum.size()).ok());
  EXPECT_EQ(sum, a);
  ASSERT_TRUE(add_words(*bb, sum.data(), sum.size()).ok());
  EXPECT_EQ(sum, (std::vector<uint32_t>{0x10u, 3, 5, 0, 2, 0}));
}

TEST(MaskedWordsTest, MasksThatCancelModulo2To32LeaveTheExactSum) {
  // Client 1 uploads q1 + r, client 2 uploads q2 - r (mod 2^32): the sum is q1 + q2 exactly, even
  // though every masked word wraps.
  const std::vector<uint32_t> q1 = {159, 128, 255, 0, 255, 96};
  const std::vector<uint32_t> q2 = {1, 2, 3, 4, 5, 6};
  const std::vector<uint32_t> r = {0xDEADBEEFu, 0xFFFFFFFFu, 0x80000001u,
                                   0x7FFFFFFFu, 0xFFFFFF01u, 0x12345678u};
  std::vector<uint32_t> m1(6), m2(6);
  for (size_t i = 0; i < 6; ++i) {
    m1[i] = q1[i] + r[i];  // unsigned arithmetic: modulo 2^32
    m2[i] = q2[i] - r[i];
  }
  auto b1 = words_to_bundle(m1, base());
  auto b2 = words_to_bundle(m2, base());
  ASSERT_TRUE(b1.ok() && b2.ok());
  std::vector<uint32_t> sum(6, 0);
  ASSERT_TRUE(add_words(*b1, sum.data(), sum.size()).ok());
  ASSERT_TRUE(add_words(*b2, sum.data(), sum.size()).ok());
  EXPECT_EQ(sum, (std::vector<uint32_t>{160, 130, 258, 4, 260, 102}));
}

TEST(MaskedWordsTest, RefusesWrongSizesAndDtypes) {
  auto five = words_to_bundle(std::vector<uint32_t>(5, 1), base());
  ASSERT_FALSE(five.ok());
  expect_invalid(five.status(), {"5 words", "6"});

  auto masked = words_to_bundle(std::vector<uint32_t>(6, 1), base());
  ASSERT_TRUE(masked.ok());
  std::vector<uint32_t> sum(7, 0);
  // The model has 6 words: a sum of 5 is too short, one of 7 too long.
  expect_invalid(add_words(*masked, sum.data(), 5), {"more words"});
  expect_invalid(add_words(*masked, sum.data(), 7), {"fewer words"});
  // A float bundle is not a masked input.
  expect_invalid(add_words(base(), sum.data(), 6), {"\"w\"", "int32"});
}

// ---- dequantize_mean ----

TEST(DequantizeMeanTest, OneInputDequantisesToHandComputedValues) {
  // The words of HandMadeBundleGivesHandComputedWords: (159, 128, 255, 0, 255, 96), one
  // contributor of weight 0.5, c = 1, bits 8. value = g + (q · 2/255 - 1) / 0.5:
  //   w[0] = 0     + (318/255 - 1) · 2 = 126/255 =  0.494117...  (u was 0.5)
  //   w[1] = 0.5   + (256/255 - 1) · 2 = 0.5 + 2/255 = 0.507843...  (u was 0.5)
  //   w[2] = -0.25 + (510/255 - 1) · 2 = 1.75                       (u was 1.75)
  //   w[3] = 1     + (0 - 1) · 2 = -1                               (u was -2, clamped)
  //   b[0] = 1     + (510/255 - 1) · 2 = 3                          (u was 5, clamped)
  //   b[1] = -2    + (192/255 - 1) · 2 = -2 - 126/255 = -2.494117...  (u was -2.5)
  // The counter is the base's: 5.
  const std::vector<uint32_t> words = {159, 128, 255, 0, 255, 96};
  auto mean = dequantize_mean(words.data(), words.size(), /*contributors=*/1,
                              /*weight_sum=*/0.5, base(), params(1.0, 8));
  ASSERT_TRUE(mean.ok()) << mean.status().to_string();
  ASSERT_EQ(mean->names(), (std::vector<std::string>{"w", "b", "bn.num_batches_tracked"}));
  const float* w = mean->find("w")->data<float>();
  EXPECT_FLOAT_EQ(w[0], static_cast<float>(126.0 / 255.0));
  EXPECT_FLOAT_EQ(w[1], static_cast<float>(0.5 + 2.0 / 255.0));
  EXPECT_FLOAT_EQ(w[2], 1.75f);
  EXPECT_FLOAT_EQ(w[3], -1.0f);
  const double* b = mean->find("b")->data<double>();
  EXPECT_DOUBLE_EQ(b[0], 3.0);
  EXPECT_DOUBLE_EQ(b[1], -2.0 - 126.0 / 255.0);
  EXPECT_EQ(mean->find("bn.num_batches_tracked")->data<int64_t>()[0], 5);
}

// Three inputs, quantised, summed through masked bundles and de-quantised, against the weighted
// mean change computed in double. Each input's word is within half a step, c / (2^bits - 1), of
// (v + c) · (2^bits - 1) / (2c), so Σq · 2c / (2^bits - 1) - n·c is within n · c / (2^bits - 1) of
// Σ w_k·Δ_k, and the mean within n · c / (2^bits - 1) / weight_sum of Σ w_k·Δ_k / Σ w_k.
TEST(DequantizeMeanTest, SumOfInputsDequantisesToTheWeightedMeanChangeWithinNHalfSteps) {
  const TensorBundle g = base();
  std::vector<TensorBundle> updates;
  // Changes u - g: (0.3, -0.4, 0.85, 0.9 | 0.4, -1.1), (-0.2, 0.4, -0.75, -0.8 | -0.65, 0.85),
  // (0.05, -0.05, 0.75, 0.3 | 1, -0.8): with the weights below no w·Δ leaves [-1, 1].
  updates.push_back(bundle({0.3f, 0.1f, 0.6f, 1.9f}, {1.4, -3.1}, 9));
  updates.push_back(bundle({-0.2f, 0.9f, -1.0f, 0.2f}, {0.35, -1.15}, 10));
  updates.push_back(bundle({0.05f, 0.45f, 0.5f, 1.3f}, {2.0, -2.8}, 11));
  const std::vector<std::vector<double>> weight_sets = {{0.25, 0.5, 0.25}, {0.5, 1.0, 0.5}};
  for (int bits : {8, 16, 20}) {
    for (const std::vector<double>& weights : weight_sets) {
      SCOPED_TRACE("bits " + std::to_string(bits) + ", weights " + std::to_string(weights[0]) +
                   "/" + std::to_string(weights[1]) + "/" + std::to_string(weights[2]));
      const QuantizeParams p = params(1.0, bits);
      const int64_t n = 3;
      std::vector<uint32_t> sum(6, 0);
      double weight_sum = 0;
      for (size_t k = 0; k < updates.size(); ++k) {
        int64_t clamped = -1;
        auto words = quantize_update(updates[k], g, weights[k], p, &clamped);
        ASSERT_TRUE(words.ok()) << words.status().to_string();
        EXPECT_EQ(clamped, 0);
        auto masked = words_to_bundle(*words, g);
        ASSERT_TRUE(masked.ok());
        ASSERT_TRUE(add_words(*masked, sum.data(), sum.size()).ok());
        weight_sum += weights[k];
      }
      auto mean = dequantize_mean(sum.data(), sum.size(), n, weight_sum, g, p);
      ASSERT_TRUE(mean.ok()) << mean.status().to_string();

      const double levels = std::ldexp(1.0, bits) - 1;
      const double bound = static_cast<double>(n) * p.clip / levels / weight_sum;
      // w is float32: the result is rounded once more to float (values below 2: 2^-23 at most).
      const double float_rounding = std::ldexp(1.0, -23);
      for (int64_t i = 0; i < 4; ++i) {
        const double gi = g.find("w")->data<float>()[i];
        double change = 0;
        for (size_t k = 0; k < updates.size(); ++k) {
          change += weights[k] * (updates[k].find("w")->data<float>()[i] - gi);
        }
        const double want = gi + change / weight_sum;
        EXPECT_NEAR(mean->find("w")->data<float>()[i], want, bound + float_rounding) << "w" << i;
      }
      for (int64_t i = 0; i < 2; ++i) {
        const double gi = g.find("b")->data<double>()[i];
        double change = 0;
        for (size_t k = 0; k < updates.size(); ++k) {
          change += weights[k] * (updates[k].find("b")->data<double>()[i] - gi);
        }
        const double want = gi + change / weight_sum;
        EXPECT_NEAR(mean->find("b")->data<double>()[i], want, bound) << "b" << i;
      }
      // The counter is the base's (5), not a mean of the updates' 9, 10, 11.
      EXPECT_EQ(mean->find("bn.num_batches_tracked")->data<int64_t>()[0], 5);
    }
  }
}

TEST(DequantizeMeanTest, RefusesASizeMismatchAndANonPositiveWeightSum) {
  const std::vector<uint32_t> words(6, 128);
  auto mean = dequantize_mean(words.data(), 5, 1, 1.0, base(), params(1.0, 8));
  ASSERT_FALSE(mean.ok());
  expect_invalid(mean.status(), {"5 words", "6"});
  for (double weight_sum : {0.0, -1.0, kNaN}) {
    SCOPED_TRACE(weight_sum);
    mean = dequantize_mean(words.data(), words.size(), 1, weight_sum, base(), params(1.0, 8));
    ASSERT_FALSE(mean.ok());
    expect_invalid(mean.status(), {"weights"});
  }
}

}  // namespace
}  // namespace fedtail::privacy

#include "strategies/robust_aggregation.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace fedtail::strategies {
namespace {

// An update with a 3-element float32 tensor "w" and BatchNorm's int64 step counter.
TensorBundle update3(std::vector<float> w, int64_t batches) {
  TensorBundle b;
  EXPECT_TRUE(b.add(NamedTensor::from_values("w", DType::kFloat32, {3}, w)).ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values("bn.num_batches_tracked", DType::kInt64, {},
                                             std::vector<int64_t>{batches}))
                  .ok());
  return b;
}

// The five updates most tests use: four honest ones and u4, an outlier about 100× as large.
// Squared distances: d(0,1) = 1, d(0,2) = 6, d(0,3) = 14, d(1,2) = 3, d(1,3) = 9, d(2,3) = 14;
// u4 is more than 136000 away from each.
std::vector<TensorBundle> five_updates() {
  std::vector<TensorBundle> u;
  u.push_back(update3({1, 2, 3}, 10));
  u.push_back(update3({2, 2, 3}, 11));
  u.push_back(update3({3, 1, 4}, 12));
  u.push_back(update3({4, 3, 1}, 13));
  u.push_back(update3({100, 200, 300}, 1000));
  return u;
}

std::vector<const TensorBundle*> pointers(const std::vector<TensorBundle>& updates) {
  std::vector<const TensorBundle*> out;
  for (const TensorBundle& b : updates) out.push_back(&b);
  return out;
}

template <typename T>
std::vector<T> values(const TensorBundle& b, const std::string& name) {
  const NamedTensor* t = b.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  return std::vector<T>(t->data<T>(), t->data<T>() + t->numel());
}

RobustOptions with_method(RobustMethod method) {
  RobustOptions options;
  options.method = method;
  return options;
}

// ---- Options ----

TEST(RobustOptionsTest, NullGivesDefaults) {
  auto options = parse_robust_options(nullptr, "config.strategy.robust");
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_EQ(options->method, RobustMethod::kNone);
  EXPECT_EQ(options->clip_norm, 0.0);
  EXPECT_EQ(options->trim_fraction, 0.1);
  EXPECT_EQ(options->byzantine, 1);
  EXPECT_EQ(options->multi_krum_m, 0);
  EXPECT_FALSE(options->buffered());
}

TEST(RobustOptionsTest, ReadsEveryField) {
  auto options = parse_robust_options({{"method", "multi_krum"},
                                       {"clip_norm", 2.5},
                                       {"trim_fraction", 0.2},
                                       {"byzantine", 2},
                                       {"multi_krum_m", 3}},
                                      "config.strategy.robust");
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_EQ(options->method, RobustMethod::kMultiKrum);
  EXPECT_EQ(options->clip_norm, 2.5);
  EXPECT_EQ(options->trim_fraction, 0.2);
  EXPECT_EQ(options->byzantine, 2);
  EXPECT_EQ(options->multi_krum_m, 3);
}

TEST(RobustOptionsTest, BufferedForTheMethodsThatNeedAllUpdates) {
  for (const char* name : {"median", "trimmed_mean", "krum", "multi_krum", "bulyan"}) {
    auto options = parse_robust_options({{"method", name}}, "r");
    ASSERT_TRUE(options.ok()) << options.status().to_string();
    EXPECT_TRUE(options->buffered()) << name;
    EXPECT_EQ(robust_method_name(options->method), std::string(name));
  }
  auto clip = parse_robust_options({{"method", "clip"}, {"clip_norm", 1}}, "r");
  ASSERT_TRUE(clip.ok()) << clip.status().to_string();
  EXPECT_EQ(clip->method, RobustMethod::kClip);
  EXPECT_FALSE(clip->buffered());
}

TEST(RobustOptionsTest, ErrorsNameTheJsonPath) {
  const std::string path = "config.strategy.robust";
  struct Case {
    nlohmann::json json;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"methd", "krum"}}, path + ".methd: unknown key"},
      {{{"method", "geomedian"}}, path + ".method: must be one of none, clip, median,"},
      {{{"trim_fraction", 0.5}}, path + ".trim_fraction: must be >= 0 and < 0.5"},
      {{{"trim_fraction", -0.1}}, path + ".trim_fraction: must be >= 0 and < 0.5"},
      {{{"clip_norm", -1}}, path + ".clip_norm: must be >= 0"},
      {{{"method", "clip"}}, path + ".clip_norm: must be > 0 when method is \"clip\""},
      {{{"byzantine", -1}}, path + ".byzantine: must be >= 0"},
      {{{"byzantine", "one"}}, path + ".byzantine:"},
      {{{"multi_krum_m", -2}}, path + ".multi_krum_m: must be >= 0"},
  };
  for (const Case& c : cases) {
    auto options = parse_robust_options(c.json, path);
    ASSERT_FALSE(options.ok()) << c.json.dump();
    EXPECT_EQ(options.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(options.status().message().find(c.message), std::string::npos)
        << options.status().message();
  }
  EXPECT_FALSE(parse_robust_options(nlohmann::json::array(), path).ok());
}

// ---- Median and trimmed mean ----

TEST(RobustAggregateTest, MedianIgnoresTheOutlier) {
  const std::vector<TensorBundle> u = five_updates();
  RobustReport report;
  auto median =
      robust_aggregate(with_method(RobustMethod::kMedian), pointers(u), {1, 1, 1, 1, 1}, &report);
  ASSERT_TRUE(median.ok()) << median.status().to_string();
  // Sorted coordinates: {1,2,3,4,100}, {1,2,2,3,200}, {1,3,3,4,300}.
  EXPECT_EQ(values<float>(*median, "w"), (std::vector<float>{3, 2, 3}));
  EXPECT_EQ(values<int64_t>(*median, "bn.num_batches_tracked"), (std::vector<int64_t>{12}));
  EXPECT_EQ(median->names(), u[0].names());
  EXPECT_TRUE(median->metadata().empty());
  EXPECT_EQ(report.method, RobustMethod::kMedian);
  EXPECT_EQ(report.num_updates, 5u);
  EXPECT_TRUE(report.selected.empty());
}

TEST(RobustAggregateTest, MedianOfEvenCountAveragesTheMiddlePair) {
  std::vector<TensorBundle> u = five_updates();
  u.pop_back();
  auto median =
      robust_aggregate(with_method(RobustMethod::kMedian), pointers(u), {1, 1, 1, 1}, nullptr);
  ASSERT_TRUE(median.ok()) << median.status().to_string();
  // {1,2,3,4} -> 2.5, {1,2,2,3} -> 2, {1,3,3,4} -> 3; integers (11 + 12) / 2 = 11.5 -> 12.
  EXPECT_EQ(values<float>(*median, "w"), (std::vector<float>{2.5f, 2, 3}));
  EXPECT_EQ(values<int64_t>(*median, "bn.num_batches_tracked"), (std::vector<int64_t>{12}));
}

TEST(RobustAggregateTest, MedianOfFloat64AndHalfTensors) {
  std::vector<TensorBundle> u;
  const std::vector<std::vector<double>> v = {{0.1, -3}, {0.7, 5}, {1e300, 0.25}};
  const std::vector<uint16_t> h = {float_to_half(1.5f), float_to_half(-2.0f),
                                   float_to_half(65504.0f)};
  const std::vector<uint16_t> bf = {float_to_bfloat16(0.5f), float_to_bfloat16(-8.0f),
                                    float_to_bfloat16(0.75f)};
  for (size_t k = 0; k < 3; ++k) {
    TensorBundle b;
    ASSERT_TRUE(b.add(NamedTensor::from_values("d", DType::kFloat64, {2}, v[k])).ok());
    ASSERT_TRUE(
        b.add(NamedTensor::from_values("h", DType::kFloat16, {1}, std::vector<uint16_t>{h[k]}))
            .ok());
    ASSERT_TRUE(
        b.add(NamedTensor::from_values("bf", DType::kBFloat16, {1}, std::vector<uint16_t>{bf[k]}))
            .ok());
    ASSERT_TRUE(
        b.add(NamedTensor::from_values("flag", DType::kBool, {1},
                                       std::vector<uint8_t>{static_cast<uint8_t>(k == 0 ? 0 : 1)}))
            .ok());
    u.push_back(std::move(b));
  }
  auto median =
      robust_aggregate(with_method(RobustMethod::kMedian), pointers(u), {1, 1, 1}, nullptr);
  ASSERT_TRUE(median.ok()) << median.status().to_string();
  EXPECT_EQ(values<double>(*median, "d"), (std::vector<double>{0.7, 0.25}));
  EXPECT_EQ(half_to_float(values<uint16_t>(*median, "h")[0]), 1.5f);
  EXPECT_EQ(bfloat16_to_float(values<uint16_t>(*median, "bf")[0]), 0.5f);
  EXPECT_EQ(values<uint8_t>(*median, "flag"), (std::vector<uint8_t>{1}));
  EXPECT_EQ(median->find("h")->dtype(), DType::kFloat16);
  EXPECT_EQ(median->find("bf")->dtype(), DType::kBFloat16);
}

TEST(RobustAggregateTest, TrimmedMeanDropsEachEndAndIgnoresExampleCounts) {
  const std::vector<TensorBundle> u = five_updates();
  RobustOptions options = with_method(RobustMethod::kTrimmedMean);
  options.trim_fraction = 0.2;  // floor(0.2 · 5) = 1 per end
  RobustReport report;
  auto mean = robust_aggregate(options, pointers(u), {1, 7, 2, 9, 1000}, &report);
  ASSERT_TRUE(mean.ok()) << mean.status().to_string();
  // Middle three of {1,2,3,4,100}, {1,2,2,3,200}, {1,3,3,4,300}: 9/3, 7/3, 10/3.
  EXPECT_EQ(values<float>(*mean, "w"),
            (std::vector<float>{3, static_cast<float>(7.0 / 3), static_cast<float>(10.0 / 3)}));
  EXPECT_EQ(values<int64_t>(*mean, "bn.num_batches_tracked"), (std::vector<int64_t>{12}));
  EXPECT_EQ(report.trimmed, 1);
}

TEST(RobustAggregateTest, TrimmedMeanWithNothingTrimmedIsThePlainMean) {
  const std::vector<TensorBundle> u = five_updates();
  RobustOptions options = with_method(RobustMethod::kTrimmedMean);
  options.trim_fraction = 0.1;  // floor(0.5) = 0: the outlier stays in
  auto mean = robust_aggregate(options, pointers(u), {1, 1, 1, 1, 1}, nullptr);
  ASSERT_TRUE(mean.ok()) << mean.status().to_string();
  EXPECT_EQ(values<float>(*mean, "w"), (std::vector<float>{22, 41.6f, 62.2f}));
}

// ---- Krum, Multi-Krum, Bulyan ----

TEST(RobustAggregateTest, KrumPicksTheUpdateClosestToItsNeighbours) {
  const std::vector<TensorBundle> u = five_updates();
  RobustOptions options = with_method(RobustMethod::kKrum);
  options.byzantine = 1;  // n - f - 2 = 2 neighbours
  RobustReport report;
  auto krum = robust_aggregate(options, pointers(u), {1, 1, 1, 1, 1}, &report);
  ASSERT_TRUE(krum.ok()) << krum.status().to_string();
  // Scores: u0 = 1 + 6, u1 = 1 + 3, u2 = 3 + 6, u3 = 9 + 14, u4 = 136626 + 137017.
  EXPECT_EQ(report.scores, (std::vector<double>{7, 4, 9, 23, 273643}));
  EXPECT_EQ(report.selected, (std::vector<size_t>{1}));
  EXPECT_EQ(values<float>(*krum, "w"), (std::vector<float>{2, 2, 3}));
  // Integers: the median of all five, not u1's 11.
  EXPECT_EQ(values<int64_t>(*krum, "bn.num_batches_tracked"), (std::vector<int64_t>{12}));
  const nlohmann::json json = report.to_json();
  EXPECT_EQ(json["method"], "krum");
  EXPECT_EQ(json["updates"], 5);
  EXPECT_EQ(json["selected"], nlohmann::json::array({1}));
  EXPECT_EQ(json["scores"].size(), 5u);
}

TEST(RobustAggregateTest, MultiKrumAveragesTheLowestScoresByExamples) {
  const std::vector<TensorBundle> u = five_updates();
  RobustOptions options = with_method(RobustMethod::kMultiKrum);
  options.multi_krum_m = 2;
  RobustReport report;
  auto mean = robust_aggregate(options, pointers(u), {1, 3, 5, 5, 5}, &report);
  ASSERT_TRUE(mean.ok()) << mean.status().to_string();
  EXPECT_EQ(report.selected, (std::vector<size_t>{1, 0}));
  // (1 · {1,2,3} + 3 · {2,2,3}) / 4.
  EXPECT_EQ(values<float>(*mean, "w"), (std::vector<float>{1.75f, 2, 3}));
  EXPECT_EQ(values<int64_t>(*mean, "bn.num_batches_tracked"), (std::vector<int64_t>{12}));

  options.multi_krum_m = 0;  // n - f = 4: everything but the outlier
  auto all = robust_aggregate(options, pointers(u), {1, 1, 1, 1, 1}, &report);
  ASSERT_TRUE(all.ok()) << all.status().to_string();
  EXPECT_EQ(report.selected, (std::vector<size_t>{1, 0, 2, 3}));
  EXPECT_EQ(values<float>(*all, "w"), (std::vector<float>{2.5f, 2, 2.75f}));
}

TEST(RobustAggregateTest, BulyanSelectsByKrumThenAveragesAroundTheMedian) {
  // n = 7, f = 1: θ = 5 picked, β = 3 values per coordinate.
  const std::vector<std::vector<float>> points = {{0, 0}, {1, 0}, {0, 2},     {3, 1},
                                                  {1, 3}, {6, 5}, {100, -100}};
  std::vector<TensorBundle> u;
  for (const auto& p : points) {
    TensorBundle b;
    ASSERT_TRUE(b.add(NamedTensor::from_values("w", DType::kFloat32, {2}, p)).ok());
    u.push_back(std::move(b));
  }
  RobustOptions options = with_method(RobustMethod::kBulyan);
  options.byzantine = 1;
  RobustReport report;
  auto bulyan = robust_aggregate(options, pointers(u), std::vector<int64_t>(7, 1), &report);
  ASSERT_TRUE(bulyan.ok()) << bulyan.status().to_string();
  // Krum rounds (neighbours n' - f - 2, at least 1):
  //   all 7, 4 neighbours: scores 25, 20, 21, 33, 29, 149, 79272 -> u1;
  //   {0,2,3,4,5,6}, 3:    24, 16, 28, 20, 99, ...                -> u2;
  //   {0,3,4,5,6}, 2:      20, 18, 18, 54, ...                    -> u4 (tie: (1,3) < (3,1));
  //   {0,3,5,6}, 1:        10, 10, 25, ...                        -> u0 (tie: (0,0) < (3,1));
  //   {3,5,6}, 1:          25, 25, ...                            -> u3 (tie: (3,1) < (6,5)).
  // Ties go to the lexicographically smaller values, not the lower position (order-independent).
  EXPECT_EQ(report.selected, (std::vector<size_t>{1, 2, 4, 0, 3}));
  EXPECT_EQ(report.scores, (std::vector<double>{25, 20, 21, 33, 29, 149, 79272}));
  EXPECT_EQ(report.trimmed, 2);
  // Coordinate 0: {0,0,1,1,3}, median 1, closest three {0,1,1} -> 2/3.
  // Coordinate 1: {0,0,1,2,3}, median 1, closest three {0,0,1} (tie 0 vs 2: the smaller) -> 1/3.
  EXPECT_EQ(values<float>(*bulyan, "w"),
            (std::vector<float>{static_cast<float>(2.0 / 3), static_cast<float>(1.0 / 3)}));
}

TEST(RobustAggregateTest, ResultsDoNotDependOnUpdateOrder) {
  // 7 updates of 64 pseudo-random float32 values; the same updates reversed.
  std::vector<TensorBundle> u;
  uint32_t state = 12345;
  for (int k = 0; k < 7; ++k) {
    std::vector<float> w(64);
    for (float& x : w) {
      state = state * 1664525u + 1013904223u;
      x = static_cast<float>(state >> 8) / static_cast<float>(1 << 24) - 0.5f;
    }
    TensorBundle b;
    ASSERT_TRUE(b.add(NamedTensor::from_values("w", DType::kFloat32, {64}, w)).ok());
    u.push_back(std::move(b));
  }
  std::vector<const TensorBundle*> forward = pointers(u);
  std::vector<const TensorBundle*> backward(forward.rbegin(), forward.rend());
  for (RobustMethod method :
       {RobustMethod::kMedian, RobustMethod::kTrimmedMean, RobustMethod::kKrum,
        RobustMethod::kMultiKrum, RobustMethod::kBulyan}) {
    RobustOptions options = with_method(method);
    options.trim_fraction = 0.3;
    auto a = robust_aggregate(options, forward, std::vector<int64_t>(7, 1), nullptr);
    auto b = robust_aggregate(options, backward, std::vector<int64_t>(7, 1), nullptr);
    ASSERT_TRUE(a.ok() && b.ok()) << robust_method_name(method);
    EXPECT_TRUE(a->bitwise_equal(*b)) << robust_method_name(method);
  }
}

// ---- Refusals ----

TEST(RobustAggregateTest, KrumAndBulyanRefuseTooFewUpdates) {
  std::vector<TensorBundle> u = five_updates();
  u.pop_back();  // n = 4 < 2f + 3 = 5
  RobustOptions krum = with_method(RobustMethod::kKrum);
  auto refused = robust_aggregate(krum, pointers(u), {1, 1, 1, 1}, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("n = 4, f = 1"), std::string::npos)
      << refused.status().message();

  u = five_updates();
  u.push_back(update3({1, 1, 1}, 1));  // n = 6 < 4f + 3 = 7
  auto bulyan = robust_aggregate(with_method(RobustMethod::kBulyan), pointers(u),
                                 std::vector<int64_t>(6, 1), nullptr);
  ASSERT_FALSE(bulyan.ok());
  EXPECT_EQ(bulyan.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(bulyan.status().message().find("bulyan needs n >= 4f + 3 updates (got n = 6, f = 1)"),
            std::string::npos)
      << bulyan.status().message();

  RobustOptions multi = with_method(RobustMethod::kMultiKrum);
  multi.multi_krum_m = 7;
  auto too_many = robust_aggregate(multi, pointers(u), std::vector<int64_t>(6, 1), nullptr);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), StatusCode::kFailedPrecondition);
}

TEST(RobustAggregateTest, MismatchedUpdateNamesItsPosition) {
  std::vector<TensorBundle> u = five_updates();
  TensorBundle wrong;
  ASSERT_TRUE(
      wrong.add(NamedTensor::from_values("w", DType::kFloat32, {2}, std::vector<float>{1, 2}))
          .ok());
  ASSERT_TRUE(wrong
                  .add(NamedTensor::from_values("bn.num_batches_tracked", DType::kInt64, {},
                                                std::vector<int64_t>{1}))
                  .ok());
  u[2] = std::move(wrong);
  auto refused =
      robust_aggregate(with_method(RobustMethod::kMedian), pointers(u), {1, 1, 1, 1, 1}, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("updates[2]: tensor \"w\""), std::string::npos)
      << refused.status().message();
}

TEST(RobustAggregateTest, RefusesStreamingMethodsAndBadArguments) {
  const std::vector<TensorBundle> u = five_updates();
  EXPECT_EQ(
      robust_aggregate(with_method(RobustMethod::kNone), pointers(u), {1, 1, 1, 1, 1}, nullptr)
          .status()
          .code(),
      StatusCode::kInvalidArgument);
  const RobustOptions median = with_method(RobustMethod::kMedian);
  EXPECT_EQ(robust_aggregate(median, {}, {}, nullptr).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(robust_aggregate(median, pointers(u), {1, 1}, nullptr).status().code(),
            StatusCode::kInvalidArgument);
  auto zero = robust_aggregate(median, pointers(u), {1, 1, 1, 0, 1}, nullptr);
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("updates[3]: num_examples"), std::string::npos);
  std::vector<const TensorBundle*> with_null = pointers(u);
  with_null[1] = nullptr;
  EXPECT_EQ(robust_aggregate(median, with_null, {1, 1, 1, 1, 1}, nullptr).status().code(),
            StatusCode::kInvalidArgument);
}

// ---- Clipping ----

// global: a = {1, 1} float32, b = {0} float64, n = {3} int64.
TensorBundle clip_bundle(std::vector<float> a, double b, int64_t n) {
  TensorBundle bundle;
  EXPECT_TRUE(bundle.add(NamedTensor::from_values("a", DType::kFloat32, {2}, a)).ok());
  EXPECT_TRUE(
      bundle.add(NamedTensor::from_values("b", DType::kFloat64, {1}, std::vector<double>{b})).ok());
  EXPECT_TRUE(
      bundle.add(NamedTensor::from_values("n", DType::kInt64, {1}, std::vector<int64_t>{n})).ok());
  return bundle;
}

TEST(ClipUpdateTest, ScalesTheDeltaOverAllFloatTensorsAndLeavesIntegersAlone) {
  const TensorBundle global = clip_bundle({1, 1}, 0, 3);
  TensorBundle update = clip_bundle({4, 5}, 12, 7);  // δ = (3, 4, 12): norm 13
  auto norm = clip_update(global, &update, /*clip_norm=*/6.5);
  ASSERT_TRUE(norm.ok()) << norm.status().to_string();
  EXPECT_EQ(*norm, 13.0);
  // Scale 0.5: global + δ/2.
  EXPECT_EQ(values<float>(update, "a"), (std::vector<float>{2.5f, 3}));
  EXPECT_EQ(values<double>(update, "b"), (std::vector<double>{6}));
  EXPECT_EQ(values<int64_t>(update, "n"), (std::vector<int64_t>{7}));
  // Now within the bound: unchanged, and the norm reported is the clipped one.
  auto again = clip_update(global, &update, /*clip_norm=*/6.5);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 6.5);
  EXPECT_EQ(values<float>(update, "a"), (std::vector<float>{2.5f, 3}));
}

TEST(ClipUpdateTest, BelowTheBoundOrOffLeavesTheUpdateUnchanged) {
  const TensorBundle global = clip_bundle({1, 1}, 0, 3);
  for (double clip_norm : {13.0, 100.0, 0.0}) {
    TensorBundle update = clip_bundle({4, 5}, 12, 7);
    const TensorBundle before = update.clone();
    auto norm = clip_update(global, &update, clip_norm);
    ASSERT_TRUE(norm.ok()) << norm.status().to_string();
    EXPECT_EQ(*norm, 13.0);
    EXPECT_TRUE(update.bitwise_equal(before)) << clip_norm;
  }
}

TEST(ClipUpdateTest, RefusesBadArguments) {
  const TensorBundle global = clip_bundle({1, 1}, 0, 3);
  TensorBundle update = clip_bundle({4, 5}, 12, 7);
  EXPECT_EQ(clip_update(global, &update, -1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(clip_update(global, &update, std::numeric_limits<double>::infinity()).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(clip_update(global, nullptr, 1).status().code(), StatusCode::kInvalidArgument);
  TensorBundle other;
  ASSERT_TRUE(
      other.add(NamedTensor::from_values("a", DType::kFloat32, {1}, std::vector<float>{1})).ok());
  auto mismatch = clip_update(global, &other, 1);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("tensor \"a\""), std::string::npos)
      << mismatch.status().message();
  EXPECT_EQ(values<float>(other, "a"), (std::vector<float>{1}));
}

// ---- BatchNorm, memory ----

TEST(SanitizeBatchnormTest, ClampsNegativeRunningVariancesOnly) {
  TensorBundle b;
  ASSERT_TRUE(b.add(NamedTensor::from_values("bn1.running_var", DType::kFloat32, {4},
                                             std::vector<float>{-1, 0.5f, -0.0f, -2}))
                  .ok());
  ASSERT_TRUE(b.add(NamedTensor::from_values("bn2.running_var", DType::kFloat64, {2},
                                             std::vector<double>{-1e-9, 3}))
                  .ok());
  ASSERT_TRUE(b.add(NamedTensor::from_values("bn1.running_mean", DType::kFloat32, {1},
                                             std::vector<float>{-5}))
                  .ok());
  ASSERT_TRUE(b.add(NamedTensor::from_values("running_var_scale", DType::kFloat32, {1},
                                             std::vector<float>{-5}))
                  .ok());
  EXPECT_EQ(sanitize_batchnorm(&b), 3);
  EXPECT_EQ(values<float>(b, "bn1.running_var"), (std::vector<float>{0, 0.5f, -0.0f, 0}));
  EXPECT_EQ(values<double>(b, "bn2.running_var"), (std::vector<double>{0, 3}));
  EXPECT_EQ(values<float>(b, "bn1.running_mean"), (std::vector<float>{-5}));
  EXPECT_EQ(values<float>(b, "running_var_scale"), (std::vector<float>{-5}));
  EXPECT_EQ(sanitize_batchnorm(&b), 0);
}

TEST(BufferedBytesTest, IsNTimesTheModelSaturating) {
  EXPECT_EQ(buffered_bytes(45000000, 10), 450000000u);
  EXPECT_EQ(buffered_bytes(0, 10), 0u);
  EXPECT_EQ(buffered_bytes(uint64_t{1} << 40, size_t{1} << 30),
            std::numeric_limits<uint64_t>::max());
}

}  // namespace
}  // namespace fedtail::strategies

#include "coordinator/private_aggregation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/privacy/quantize.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::coordinator {
namespace {

using strategies::ClientUpdate;

// ---- SecureSum ----

// The task bundle of the SecureSum tests: float32 [2, 2] "w", float64 [2] "b" (6 secure words)
// and an int64 counter outside the secure input.
TensorBundle secure_base() {
  TensorBundle b;
  EXPECT_TRUE(b.add(NamedTensor::from_values<float>("w", DType::kFloat32, {2, 2},
                                                    {0.0f, 0.5f, -0.25f, 1.0f}))
                  .ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values<double>("b", DType::kFloat64, {2}, {1.0, -2.0})).ok());
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {}, {5}))
          .ok());
  return b;
}

// A masked upload of `words` (privacy::words_to_bundle) from `client`.
ClientUpdate masked_update(const std::string& client, int64_t num_examples,
                           const std::vector<uint32_t>& words, nlohmann::json metrics) {
  ClientUpdate u;
  u.client_id = client;
  u.num_examples = num_examples;
  auto bundle = privacy::words_to_bundle(words, secure_base());
  EXPECT_TRUE(bundle.ok()) << bundle.status().to_string();
  if (bundle.ok()) u.bundle = std::move(bundle).value();
  u.metrics = std::move(metrics);
  return u;
}

std::vector<uint32_t> sum_of(SecureSum& sum) {
  return std::vector<uint32_t>(sum.sum(), sum.sum() + sum.words());
}

TEST(SecureSumTest, SumsMaskedWordsModulo2To32AndRecordsTheContributors) {
  SecureSum sum(secure_base());
  EXPECT_EQ(sum.words(), 6u);  // 4 (w) + 2 (b); the counter is not secure input
  EXPECT_EQ(sum_of(sum), std::vector<uint32_t>(6, 0));
  EXPECT_TRUE(sum.mean_loss().is_null());
  EXPECT_TRUE(sum.contributors().empty());

  ASSERT_TRUE(sum.add(masked_update("client-a", 10, {0xFFFFFFF0u, 1, 2, 3, 0x80000000u, 5},
                                    {{"loss", 2.0}}))
                  .ok());
  ASSERT_TRUE(sum.add(masked_update("client-b", 30, {0x20u, 10, 20, 30, 0x80000000u, 0xFFFFFFFFu},
                                    {{"loss", 1.0}}))
                  .ok());
  // Word sums modulo 2^32: 0xFFFFFFF0 + 0x20 = 0x1_00000010 -> 0x10; 1 + 10 = 11; 2 + 20 = 22;
  // 3 + 30 = 33; 0x80000000 + 0x80000000 = 2^32 -> 0; 5 + 0xFFFFFFFF = 0x1_00000004 -> 4.
  EXPECT_EQ(sum_of(sum), (std::vector<uint32_t>{0x10u, 11, 22, 33, 0, 4}));
  EXPECT_EQ(sum.contributors(),
            (std::map<std::string, int64_t>{{"client-a", 10}, {"client-b", 30}}));
  // Example-weighted loss: (10 · 2.0 + 30 · 1.0) / (10 + 30) = 50 / 40 = 1.25.
  ASSERT_TRUE(sum.mean_loss().is_number());
  EXPECT_DOUBLE_EQ(sum.mean_loss().get<double>(), 1.25);

  // A client without a "loss" metric adds its words and itself, but not to the loss.
  ASSERT_TRUE(
      sum.add(masked_update("client-c", 60, std::vector<uint32_t>(6, 1), {{"steps", 3}})).ok());
  EXPECT_EQ(sum_of(sum), (std::vector<uint32_t>{0x11u, 12, 23, 34, 1, 5}));
  EXPECT_EQ(sum.contributors().size(), 3u);
  EXPECT_EQ(sum.contributors().at("client-c"), 60);
  EXPECT_DOUBLE_EQ(sum.mean_loss().get<double>(), 1.25);
}

TEST(SecureSumTest, RefusesASecondUploadAndANonInt32BundleLeavingTheSumUnchanged) {
  SecureSum sum(secure_base());
  ASSERT_TRUE(sum.add(masked_update("client-a", 10, {1, 2, 3, 4, 5, 6}, {{"loss", 2.0}})).ok());

  Status again = sum.add(masked_update("client-a", 10, {1, 1, 1, 1, 1, 1}, {{"loss", 9.0}}));
  EXPECT_EQ(again.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(again.message().find("second update"), std::string::npos) << again.message();
  EXPECT_NE(again.message().find("client-a"), std::string::npos) << again.message();

  // An unmasked float upload (the task bundle itself) is not an int32 masked input.
  ClientUpdate plain;
  plain.client_id = "client-d";
  plain.num_examples = 5;
  plain.bundle = secure_base();
  plain.metrics = {{"loss", 7.0}};
  Status refused = sum.add(std::move(plain));
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("int32"), std::string::npos) << refused.message();

  EXPECT_EQ(sum_of(sum), (std::vector<uint32_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(sum.contributors(), (std::map<std::string, int64_t>{{"client-a", 10}}));
  EXPECT_DOUBLE_EQ(sum.mean_loss().get<double>(), 2.0);
}

// Aggregation::add's contract: a refused update has no effect. An upload whose first tensor is
// right and whose second is not is refused before anything is added (SecureSum checks the whole
// layout first; the engine also checks each masked upload's header against masked_layout).
TEST(SecureSumTest, AHalfValidUploadLeavesTheSumUnchanged) {
  SecureSum sum(secure_base());
  ClientUpdate bad;
  bad.client_id = "client-e";
  bad.num_examples = 5;
  ASSERT_TRUE(
      bad.bundle.add(NamedTensor::from_values<int32_t>("w", DType::kInt32, {2, 2}, {1, 1, 1, 1}))
          .ok());
  ASSERT_TRUE(
      bad.bundle.add(NamedTensor::from_values<float>("b", DType::kFloat32, {2}, {1.0f, 1.0f}))
          .ok());
  EXPECT_FALSE(sum.add(std::move(bad)).ok());
  EXPECT_EQ(sum_of(sum), std::vector<uint32_t>(6, 0));
}

TEST(SecureSumTest, FinishIsNotUsed) {
  SecureSum sum(secure_base());
  Result<nlohmann::json> finished = sum.finish({});
  ASSERT_FALSE(finished.ok());
  EXPECT_EQ(finished.status().code(), StatusCode::kInternal);
}

// ---- ClippedSum ----

// The task bundle of the ClippedSum tests: float32 [4] "w" = (0.5, -1, 2, 0), float64 [1] "b" = (3)
// and an int64 counter 7. Every value below is a dyadic fraction, so each change, norm, clipped
// change and mean is exact in float32 and double.
std::shared_ptr<const TensorBundle> clipped_base() {
  auto b = std::make_shared<TensorBundle>();
  EXPECT_TRUE(
      b->add(NamedTensor::from_values<float>("w", DType::kFloat32, {4}, {0.5f, -1.0f, 2.0f, 0.0f}))
          .ok());
  EXPECT_TRUE(b->add(NamedTensor::from_values<double>("b", DType::kFloat64, {1}, {3.0})).ok());
  EXPECT_TRUE(
      b->add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {}, {7}))
          .ok());
  return b;
}

ClientUpdate plain_update(const std::string& client, int64_t num_examples,
                          const std::vector<float>& w, double b, nlohmann::json metrics) {
  ClientUpdate u;
  u.client_id = client;
  u.num_examples = num_examples;
  EXPECT_TRUE(u.bundle.add(NamedTensor::from_values<float>("w", DType::kFloat32, {4}, w)).ok());
  EXPECT_TRUE(u.bundle.add(NamedTensor::from_values<double>("b", DType::kFloat64, {1}, {b})).ok());
  // The counter differs from the base's 7: it is not part of the sum.
  EXPECT_TRUE(u.bundle
                  .add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64,
                                                         {}, {100}))
                  .ok());
  u.metrics = std::move(metrics);
  return u;
}

// Update 1: change (0.25, 0.25, 0.25, 0 | 0.25), norm sqrt(4 · 0.0625) = sqrt(0.25) = 0.5.
ClientUpdate small_update() {
  return plain_update("client-a", 10, {0.75f, -0.75f, 2.25f, 0.0f}, 3.25, {{"loss", 1.0}});
}
// Update 2: change (1, -1, 1, 0 | -1), norm sqrt(4) = 2 (spread over both tensors); clipped to
// norm 1 it is scaled by 1/2: (0.5, -0.5, 0.5, 0 | -0.5).
ClientUpdate large_update() {
  return plain_update("client-b", 30, {1.5f, -2.0f, 3.0f, 0.0f}, 2.0, {{"loss", 3.0}});
}

TEST(ClippedSumTest, ClipsEachChangeAndSumsThem) {
  ClippedSum sum(clipped_base(), /*clip_norm=*/1.0);
  EXPECT_EQ(sum.unclipped(), 0);
  EXPECT_EQ(sum.max_norm(), 0.0);
  EXPECT_TRUE(sum.mean_loss().is_null());

  ASSERT_TRUE(sum.add(small_update()).ok());
  ASSERT_TRUE(sum.add(large_update()).ok());
  EXPECT_EQ(sum.unclipped(), 1);   // 0.5 <= 1; 2 > 1
  EXPECT_EQ(sum.max_norm(), 2.0);  // before clipping
  EXPECT_EQ(sum.contributors(),
            (std::map<std::string, int64_t>{{"client-a", 10}, {"client-b", 30}}));
  // (10 · 1.0 + 30 · 3.0) / 40 = 100 / 40 = 2.5.
  EXPECT_DOUBLE_EQ(sum.mean_loss().get<double>(), 2.5);

  // Sum of the clipped changes: w (0.25 + 0.5, 0.25 - 0.5, 0.25 + 0.5, 0) = (0.75, -0.25, 0.75, 0),
  // b (0.25 - 0.5) = (-0.25). Without noise, over denominator 2:
  //   w = (0.5 + 0.375, -1 - 0.125, 2 + 0.375, 0) = (0.875, -1.125, 2.375, 0)
  //   b = 3 - 0.125 = 2.875; the counter stays the base's 7.
  Rng rng(1);
  auto mean = sum.noised_mean(/*noise_stddev=*/0, /*denominator=*/2, rng);
  ASSERT_TRUE(mean.ok()) << mean.status().to_string();
  ASSERT_EQ(mean->names(), (std::vector<std::string>{"w", "b", "bn.num_batches_tracked"}));
  const float* w = mean->find("w")->data<float>();
  EXPECT_EQ(w[0], 0.875f);
  EXPECT_EQ(w[1], -1.125f);
  EXPECT_EQ(w[2], 2.375f);
  EXPECT_EQ(w[3], 0.0f);
  EXPECT_EQ(mean->find("b")->data<double>()[0], 2.875);
  EXPECT_EQ(mean->find("bn.num_batches_tracked")->data<int64_t>()[0], 7);
}

TEST(ClippedSumTest, MaxNormOfAPythagoreanChange) {
  // Change (1.2, 1.6, 0, 0): norm sqrt(1.44 + 2.56) = sqrt(4) = 2 (up to double rounding, since
  // 1.2 and 1.6 are not exact); clipped to norm 1 it becomes (0.6, 0.8, 0, 0).
  auto base = std::make_shared<TensorBundle>();
  ASSERT_TRUE(
      base->add(NamedTensor::from_values<double>("v", DType::kFloat64, {4}, {0, 0, 0, 0})).ok());
  ClippedSum sum(base, /*clip_norm=*/1.0);
  ClientUpdate u;
  u.client_id = "client-a";
  u.num_examples = 1;
  ASSERT_TRUE(
      u.bundle.add(NamedTensor::from_values<double>("v", DType::kFloat64, {4}, {1.2, 1.6, 0, 0}))
          .ok());
  ASSERT_TRUE(sum.add(std::move(u)).ok());
  EXPECT_DOUBLE_EQ(sum.max_norm(), 2.0);
  EXPECT_EQ(sum.unclipped(), 0);
  Rng rng(1);
  auto mean = sum.noised_mean(0, /*denominator=*/1, rng);
  ASSERT_TRUE(mean.ok());
  const double* v = mean->find("v")->data<double>();
  EXPECT_NEAR(v[0], 0.6, 1e-12);
  EXPECT_NEAR(v[1], 0.8, 1e-12);
  EXPECT_EQ(v[2], 0.0);
  EXPECT_EQ(v[3], 0.0);
}

TEST(ClippedSumTest, RefusesASecondUpdateAndAnIncompatibleOneWithoutATrace) {
  ClippedSum sum(clipped_base(), /*clip_norm=*/1.0);
  ASSERT_TRUE(sum.add(small_update()).ok());

  ClientUpdate again = large_update();
  again.client_id = "client-a";
  Status second = sum.add(std::move(again));
  EXPECT_EQ(second.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(second.message().find("second update"), std::string::npos) << second.message();

  // Without "b".
  ClientUpdate missing;
  missing.client_id = "client-c";
  missing.num_examples = 5;
  ASSERT_TRUE(
      missing.bundle
          .add(NamedTensor::from_values<float>("w", DType::kFloat32, {4}, {9.0f, 9.0f, 9.0f, 9.0f}))
          .ok());
  Status incompatible = sum.add(std::move(missing));
  EXPECT_EQ(incompatible.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(incompatible.message().find("tensor \"b\": missing"), std::string::npos)
      << incompatible.message();

  // A non-finite change: clip_update's kCorruption.
  ClientUpdate infinite =
      plain_update("client-d", 5, {std::numeric_limits<float>::infinity(), 0, 0, 0}, 3.0, {});
  EXPECT_EQ(sum.add(std::move(infinite)).code(), StatusCode::kCorruption);

  // Only update 1 is in: max norm 0.5, unclipped 1, and the mean over 1 is base + its change:
  // w (0.75, -0.75, 2.25, 0), b 3.25.
  EXPECT_EQ(sum.contributors(), (std::map<std::string, int64_t>{{"client-a", 10}}));
  EXPECT_EQ(sum.unclipped(), 1);
  EXPECT_EQ(sum.max_norm(), 0.5);
  EXPECT_DOUBLE_EQ(sum.mean_loss().get<double>(), 1.0);
  Rng rng(1);
  auto mean = sum.noised_mean(0, /*denominator=*/1, rng);
  ASSERT_TRUE(mean.ok());
  const float* w = mean->find("w")->data<float>();
  EXPECT_EQ(w[0], 0.75f);
  EXPECT_EQ(w[1], -0.75f);
  EXPECT_EQ(w[2], 2.25f);
  EXPECT_EQ(w[3], 0.0f);
  EXPECT_EQ(mean->find("b")->data<double>()[0], 3.25);
}

TEST(ClippedSumTest, NoisedMeanRefusesANonPositiveDenominatorAndFinishIsNotUsed) {
  ClippedSum sum(clipped_base(), /*clip_norm=*/1.0);
  Rng rng(1);
  for (double denominator : {0.0, -2.0, std::numeric_limits<double>::quiet_NaN()}) {
    auto mean = sum.noised_mean(0, denominator, rng);
    ASSERT_FALSE(mean.ok());
    EXPECT_EQ(mean.status().code(), StatusCode::kInvalidArgument);
  }
  // Nothing added: the mean is the base.
  auto mean = sum.noised_mean(0, 3, rng);
  ASSERT_TRUE(mean.ok());
  EXPECT_TRUE(mean->bitwise_equal(*clipped_base()));

  Result<nlohmann::json> finished = sum.finish({});
  ASSERT_FALSE(finished.ok());
  EXPECT_EQ(finished.status().code(), StatusCode::kInternal);
}

// A bundle of kHalf float32 zeros "f", kHalf float64 values "d" (a ramp) and a counter.
constexpr int64_t kHalf = 50000;

std::shared_ptr<const TensorBundle> large_base() {
  auto b = std::make_shared<TensorBundle>();
  std::vector<double> ramp(kHalf);
  for (int64_t i = 0; i < kHalf; ++i) ramp[i] = 0.001 * static_cast<double>(i) - 20;
  EXPECT_TRUE(b->add(NamedTensor::from_values<float>("f", DType::kFloat32, {kHalf},
                                                     std::vector<float>(kHalf, 0.0f)))
                  .ok());
  EXPECT_TRUE(b->add(NamedTensor::from_values<double>("d", DType::kFloat64, {kHalf}, ramp)).ok());
  EXPECT_TRUE(
      b->add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {}, {3}))
          .ok());
  return b;
}

// The noise of noised_mean(stddev, denominator): (noised - noiseless) · denominator per value.
std::vector<double> noise_of(const TensorBundle& noised, const TensorBundle& noiseless,
                             double denominator) {
  std::vector<double> out;
  const NamedTensor& f = *noised.find("f");
  const NamedTensor& f0 = *noiseless.find("f");
  for (int64_t i = 0; i < f.numel(); ++i) {
    out.push_back((static_cast<double>(f.data<float>()[i]) - f0.data<float>()[i]) * denominator);
  }
  const NamedTensor& d = *noised.find("d");
  const NamedTensor& d0 = *noiseless.find("d");
  for (int64_t i = 0; i < d.numel(); ++i) {
    out.push_back((d.data<double>()[i] - d0.data<double>()[i]) * denominator);
  }
  return out;
}

TEST(ClippedSumTest, NoiseHasTheRequestedStandardDeviation) {
  auto base = large_base();
  ClippedSum sum(base, /*clip_norm=*/1.0);
  // One client that changed nothing: the noiseless mean is the base.
  ClientUpdate u;
  u.client_id = "client-a";
  u.num_examples = 1;
  u.bundle = base->clone();
  ASSERT_TRUE(sum.add(std::move(u)).ok());
  EXPECT_EQ(sum.max_norm(), 0.0);

  const double denominator = 4;
  Rng quiet(99);
  auto noiseless = sum.noised_mean(0, denominator, quiet);
  ASSERT_TRUE(noiseless.ok());
  ASSERT_TRUE(noiseless->bitwise_equal(*base));

  // 100000 draws: the sample mean has standard error 1/sqrt(1e5) = 0.0032 (the bound 0.02 is
  // 6 of them) and the sample standard deviation sqrt(1/(2·1e5)) = 0.0022 (5% is 22 of them).
  for (double stddev : {1.0, 3.0}) {
    SCOPED_TRACE(stddev);
    Rng rng(20240607);
    auto noised = sum.noised_mean(stddev, denominator, rng);
    ASSERT_TRUE(noised.ok()) << noised.status().to_string();
    EXPECT_EQ(noised->find("bn.num_batches_tracked")->data<int64_t>()[0], 3);
    const std::vector<double> noise = noise_of(*noised, *base, denominator);
    ASSERT_EQ(noise.size(), static_cast<size_t>(2 * kHalf));
    double mean = 0;
    for (double x : noise) mean += x;
    mean /= static_cast<double>(noise.size());
    double var = 0;
    for (double x : noise) var += (x - mean) * (x - mean);
    const double sd = std::sqrt(var / static_cast<double>(noise.size() - 1));
    EXPECT_NEAR(mean, 0.0, 0.02 * stddev);
    EXPECT_NEAR(sd, stddev, 0.05 * stddev);

    // The same Rng seed gives the same noise; another seed other noise.
    Rng same(20240607);
    auto repeat = sum.noised_mean(stddev, denominator, same);
    ASSERT_TRUE(repeat.ok());
    EXPECT_TRUE(repeat->bitwise_equal(*noised));
    Rng other(7);
    auto different = sum.noised_mean(stddev, denominator, other);
    ASSERT_TRUE(different.ok());
    EXPECT_FALSE(different->bitwise_equal(*noised));
  }
}

// ---- The strategy side: supports_mean_aggregation and ClientUpdate::contributors ----

class MeanAggregationStrategyTest : public ::testing::Test {
 protected:
  void SetUp() override { strategies::register_builtin_strategies(); }

  std::unique_ptr<strategies::ServerStrategy> server(const std::string& name,
                                                     const nlohmann::json& config) {
    auto s = strategies::make_server_strategy(name, config);
    EXPECT_TRUE(s.ok()) << name << ": " << s.status().to_string();
    return s.ok() ? std::move(s).value() : nullptr;
  }
};

TEST_F(MeanAggregationStrategyTest, FedAvgSupportsItUnlessRobust) {
  auto plain = server("fedavg", nlohmann::json::object());
  ASSERT_NE(plain, nullptr);
  EXPECT_TRUE(plain->supports_mean_aggregation().ok());

  auto clipped = server("fedavg", {{"robust", {{"clip_norm", 1.0}}}});
  ASSERT_NE(clipped, nullptr);
  Status s = clipped->supports_mean_aggregation();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("robust"), std::string::npos) << s.message();

  auto median = server("fedavg", {{"robust", {{"method", "median"}}}});
  ASSERT_NE(median, nullptr);
  EXPECT_EQ(median->supports_mean_aggregation().code(), StatusCode::kFailedPrecondition);
}

TEST_F(MeanAggregationStrategyTest, ScaffoldRefusesIt) {
  auto scaffold = server("scaffold", nlohmann::json::object());
  ASSERT_NE(scaffold, nullptr);
  Status s = scaffold->supports_mean_aggregation();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("control variates"), std::string::npos) << s.message();
}

// A FedAvg round fed the one update the engine hands over for secure aggregation / central DP:
// its `contributors` count toward min_fit_clients and the "updates" metric.
TEST_F(MeanAggregationStrategyTest, FedAvgCountsTheContributorsBehindAMeanUpdate) {
  const RunConfig config = strategies::testing::tiny_config();
  const strategies::RunContext run = strategies::testing::run_context(config);
  auto s = server("fedavg", {{"min_fit_clients", 2}});
  ASSERT_NE(s, nullptr);
  Rng init = Rng::derive(config.seed, "init");
  ASSERT_TRUE(s->initialize(run, init).ok());
  const std::shared_ptr<const TensorBundle> global = s->global_bundle();
  ASSERT_NE(global, nullptr);

  // The round's mean: every floating-point value of the global model plus 0.5 (the int64
  // counters as they are).
  TensorBundle mean = global->clone();
  for (NamedTensor& t : mean) {
    if (t.dtype() != DType::kFloat32) continue;
    float* v = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) v[i] += 0.5f;
  }
  const TensorBundle expected = mean.clone();

  // contributors = 1 (the default): one update < min_fit_clients = 2, the model is kept.
  {
    auto aggregation = s->begin_aggregation(1);
    ASSERT_TRUE(aggregation.ok()) << aggregation.status().to_string();
    ClientUpdate u;
    u.client_id = "(aggregate)";
    u.num_examples = 120;
    u.bundle = mean.clone();
    u.metrics = {{"loss", 0.75}};
    ASSERT_TRUE((*aggregation)->add(std::move(u)).ok());
    auto metrics = (*aggregation)->finish({});
    ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
    EXPECT_EQ((*metrics)["updated"], false) << metrics->dump();
    EXPECT_EQ((*metrics)["updates"], 1);
    EXPECT_TRUE(s->global_bundle()->bitwise_equal(*global));
  }

  // contributors = 3: three clients >= 2, the model becomes the mean (a weighted mean of one
  // update is that update: 120 · x / 120 = x exactly in double, rounded back to float32).
  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok()) << aggregation.status().to_string();
  ClientUpdate u;
  u.client_id = "(aggregate)";
  u.num_examples = 120;
  u.bundle = std::move(mean);
  u.metrics = {{"loss", 0.75}};
  u.contributors = 3;
  ASSERT_TRUE((*aggregation)->add(std::move(u)).ok());
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  EXPECT_EQ((*metrics)["updated"], true) << metrics->dump();
  EXPECT_EQ((*metrics)["updates"], 3);
  EXPECT_EQ((*metrics)["examples"], 120);
  EXPECT_EQ((*metrics)["failures"], 0);
  EXPECT_DOUBLE_EQ((*metrics)["loss"].get<double>(), 0.75);

  const TensorBundle& now = *s->global_bundle();
  EXPECT_EQ(now.metadata()["round"], 1);
  ASSERT_EQ(now.names(), expected.names());
  for (const NamedTensor& t : expected) {
    EXPECT_TRUE(now.find(t.name())->bitwise_equal(t)) << t.name();
  }
  // And it did move: the first float tensor is 0.5 above the old global's.
  const NamedTensor& first = now.at(0);
  ASSERT_EQ(first.dtype(), DType::kFloat32);
  EXPECT_EQ(first.data<float>()[0], global->at(0).data<float>()[0] + 0.5f);
}

}  // namespace
}  // namespace fedtail::coordinator

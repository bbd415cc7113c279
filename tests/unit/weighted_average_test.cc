#include "strategies/weighted_average.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "common/base/rng.h"

namespace fedtail::strategies {
namespace {

// A BatchNorm-like layer: weight, bias, running statistics and the int64 step counter.
std::shared_ptr<const TensorBundle> layer_reference() {
  auto b = std::make_shared<TensorBundle>();
  EXPECT_TRUE(b->add_zeros("fc.weight", DType::kFloat32, {2, 2}).ok());
  EXPECT_TRUE(b->add_zeros("bn.running_mean", DType::kFloat32, {2}).ok());
  EXPECT_TRUE(b->add_zeros("bn.num_batches_tracked", DType::kInt64, {}).ok());
  return b;
}

TensorBundle layer(std::vector<float> weight, std::vector<float> running_mean, int64_t batches) {
  TensorBundle b;
  EXPECT_TRUE(b.add(NamedTensor::from_values("fc.weight", DType::kFloat32, {2, 2}, weight)).ok());
  EXPECT_TRUE(
      b.add(NamedTensor::from_values("bn.running_mean", DType::kFloat32, {2}, running_mean)).ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values("bn.num_batches_tracked", DType::kInt64, {},
                                             std::vector<int64_t>{batches}))
                  .ok());
  return b;
}

template <typename T>
std::vector<T> values(const TensorBundle& b, const std::string& name) {
  const NamedTensor* t = b.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  return std::vector<T>(t->data<T>(), t->data<T>() + t->numel());
}

TEST(WeightedAverageTest, HandComputedMeansIncludingBatchNormBuffersAndCounters) {
  auto avg = WeightedAverage::create(layer_reference());
  ASSERT_TRUE(avg.ok()) << avg.status().to_string();
  ASSERT_TRUE(avg->add(layer({1, 2, 3, 4}, {0.5f, -1}, 10), /*num_examples=*/1).ok());
  ASSERT_TRUE(avg->add(layer({5, 6, 7, 8}, {1.5f, 3}, 21), /*num_examples=*/3).ok());
  EXPECT_EQ(avg->updates(), 2);
  EXPECT_EQ(avg->total_examples(), 4);
  auto mean = avg->finish();
  ASSERT_TRUE(mean.ok()) << mean.status().to_string();
  // (1·w1 + 3·w2) / 4
  EXPECT_EQ(values<float>(*mean, "fc.weight"), (std::vector<float>{4, 5, 6, 7}));
  EXPECT_EQ(values<float>(*mean, "bn.running_mean"), (std::vector<float>{1.25f, 2}));
  // (10 + 63) / 4 = 18.25 -> 18
  EXPECT_EQ(values<int64_t>(*mean, "bn.num_batches_tracked"), (std::vector<int64_t>{18}));
  // Same names, order and dtypes as the reference; empty metadata.
  EXPECT_EQ(mean->names(), layer_reference()->names());
  EXPECT_EQ(mean->find("bn.num_batches_tracked")->dtype(), DType::kInt64);
  EXPECT_TRUE(mean->metadata().empty());
  // finish() leaves the sums alone: a third update continues the same average.
  ASSERT_TRUE(avg->add(layer({0, 0, 0, 0}, {0, 0}, 0), /*num_examples=*/4).ok());
  auto mean3 = avg->finish();
  ASSERT_TRUE(mean3.ok());
  EXPECT_EQ(values<float>(*mean3, "fc.weight"), (std::vector<float>{2, 2.5f, 3, 3.5f}));
  EXPECT_EQ(values<int64_t>(*mean3, "bn.num_batches_tracked"), (std::vector<int64_t>{9}));
}

TEST(WeightedAverageTest, IntegerMeansRoundToNearestTiesAwayFromZero) {
  auto ref = std::make_shared<TensorBundle>();
  ASSERT_TRUE(ref->add_zeros("i64", DType::kInt64, {4}).ok());
  ASSERT_TRUE(ref->add_zeros("i32", DType::kInt32, {2}).ok());
  ASSERT_TRUE(ref->add_zeros("flag", DType::kBool, {3}).ok());
  ASSERT_TRUE(ref->add_zeros("u8", DType::kUInt8, {1}).ok());
  auto make = [](std::vector<int64_t> a, std::vector<int32_t> b, std::vector<uint8_t> c,
                 uint8_t d) {
    TensorBundle u;
    EXPECT_TRUE(u.add(NamedTensor::from_values("i64", DType::kInt64, {4}, a)).ok());
    EXPECT_TRUE(u.add(NamedTensor::from_values("i32", DType::kInt32, {2}, b)).ok());
    EXPECT_TRUE(u.add(NamedTensor::from_values("flag", DType::kBool, {3}, c)).ok());
    EXPECT_TRUE(
        u.add(NamedTensor::from_values("u8", DType::kUInt8, {1}, std::vector<uint8_t>{d})).ok());
    return u;
  };
  auto avg = WeightedAverage::create(ref);
  ASSERT_TRUE(avg.ok());
  ASSERT_TRUE(avg->add(make({1, -1, 7, 1000000000000LL}, {-3, 2}, {1, 0, 1}, 255), 1).ok());
  ASSERT_TRUE(avg->add(make({2, -2, 8, 3000000000000LL}, {-4, 3}, {0, 0, 1}, 0), 1).ok());
  auto mean = avg->finish();
  ASSERT_TRUE(mean.ok());
  // 1.5 -> 2, -1.5 -> -2, 7.5 -> 8, exact at 2e12.
  EXPECT_EQ(values<int64_t>(*mean, "i64"), (std::vector<int64_t>{2, -2, 8, 2000000000000LL}));
  EXPECT_EQ(values<int32_t>(*mean, "i32"), (std::vector<int32_t>{-4, 3}));  // -3.5, 2.5
  // A tie between true and false goes to true.
  EXPECT_EQ(values<uint8_t>(*mean, "flag"), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_EQ(values<uint8_t>(*mean, "u8"), (std::vector<uint8_t>{128}));  // 127.5
}

TEST(WeightedAverageTest, Float64AndHalfTensorsAreAveragedInTheirOwnDtype) {
  auto ref = std::make_shared<TensorBundle>();
  ASSERT_TRUE(ref->add_zeros("d", DType::kFloat64, {2}).ok());
  ASSERT_TRUE(ref->add_zeros("h", DType::kFloat16, {2}).ok());
  ASSERT_TRUE(ref->add_zeros("bf", DType::kBFloat16, {1}).ok());
  auto make = [](double d0, double d1, float h0, float h1, float bf) {
    TensorBundle u;
    EXPECT_TRUE(
        u.add(NamedTensor::from_values("d", DType::kFloat64, {2}, std::vector<double>{d0, d1}))
            .ok());
    EXPECT_TRUE(
        u.add(NamedTensor::from_values("h", DType::kFloat16, {2},
                                       std::vector<uint16_t>{float_to_half(h0), float_to_half(h1)}))
            .ok());
    EXPECT_TRUE(u.add(NamedTensor::from_values("bf", DType::kBFloat16, {1},
                                               std::vector<uint16_t>{float_to_bfloat16(bf)}))
                    .ok());
    return u;
  };
  auto avg = WeightedAverage::create(ref);
  ASSERT_TRUE(avg.ok());
  ASSERT_TRUE(avg->add(make(0.1, 1e300, 1.0f, -2.0f, 4.0f), 2).ok());
  ASSERT_TRUE(avg->add(make(0.4, 1e300, 3.0f, 2.0f, 8.0f), 6).ok());
  auto mean = avg->finish();
  ASSERT_TRUE(mean.ok());
  const auto d = values<double>(*mean, "d");
  EXPECT_DOUBLE_EQ(d[0], (2 * 0.1 + 6 * 0.4) / 8);
  EXPECT_DOUBLE_EQ(d[1], 1e300);  // no overflow in the double sum of large values
  const auto h = values<uint16_t>(*mean, "h");
  EXPECT_EQ(half_to_float(h[0]), 2.5f);                                  // (2 + 18) / 8
  EXPECT_EQ(half_to_float(h[1]), 1.0f);                                  // (-4 + 12) / 8
  EXPECT_EQ(bfloat16_to_float(values<uint16_t>(*mean, "bf")[0]), 7.0f);  // (8 + 48) / 8
}

// A random update shaped like `ref`.
TensorBundle random_like(const TensorBundle& ref, Rng& rng) {
  TensorBundle u;
  for (const NamedTensor& t : ref) {
    auto copy = NamedTensor::zeros(t.name(), t.dtype(), t.shape());
    EXPECT_TRUE(copy.ok());
    for (int64_t i = 0; i < t.numel(); ++i) {
      switch (t.dtype()) {
        case DType::kFloat32:
          copy->data<float>()[i] = static_cast<float>(rng.normal() * 3);
          break;
        case DType::kFloat64:
          copy->data<double>()[i] = rng.normal() * 1e-3;
          break;
        case DType::kInt64:
          copy->data<int64_t>()[i] = static_cast<int64_t>(rng.uniform_int(1000));
          break;
        default:
          ADD_FAILURE() << "unexpected dtype";
      }
    }
    EXPECT_TRUE(u.add(std::move(copy).value()).ok());
  }
  return u;
}

TEST(WeightedAverageTest, ResultIsBitIdenticalWhateverTheArrivalOrder) {
  auto ref = std::make_shared<TensorBundle>();
  ASSERT_TRUE(ref->add_zeros("conv.weight", DType::kFloat32, {16, 8, 3, 3}).ok());
  ASSERT_TRUE(ref->add_zeros("conv.bias", DType::kFloat32, {16}).ok());
  ASSERT_TRUE(ref->add_zeros("bn.running_var", DType::kFloat32, {257}).ok());
  ASSERT_TRUE(ref->add_zeros("bn.num_batches_tracked", DType::kInt64, {}).ok());
  ASSERT_TRUE(ref->add_zeros("proto", DType::kFloat64, {33}).ok());
  Rng rng(42);
  std::vector<TensorBundle> updates;
  std::vector<int64_t> weights;
  for (int k = 0; k < 7; ++k) {
    updates.push_back(random_like(*ref, rng));
    weights.push_back(1 + static_cast<int64_t>(rng.uniform_int(5000)));
  }
  auto average_in = [&](const std::vector<int>& order) {
    auto avg = WeightedAverage::create(ref);
    EXPECT_TRUE(avg.ok());
    for (int k : order) EXPECT_TRUE(avg->add(updates[k], weights[k]).ok());
    auto mean = avg->finish();
    EXPECT_TRUE(mean.ok());
    return std::move(mean).value();
  };
  std::vector<int> order = {0, 1, 2, 3, 4, 5, 6};
  const TensorBundle first = average_in(order);
  Rng shuffler(7);
  for (int trial = 0; trial < 12; ++trial) {
    shuffler.shuffle(order);
    const TensorBundle other = average_in(order);
    EXPECT_TRUE(other.bitwise_equal(first)) << "order differs at trial " << trial;
    for (size_t i = 0; i < first.size(); ++i) {
      if (!first.at(i).bitwise_equal(other.at(i))) ADD_FAILURE() << first.at(i).name();
    }
  }
  // And it is the weighted mean (to float rounding).
  double expected = 0, total = 0;
  for (int k = 0; k < 7; ++k) {
    expected += weights[k] * static_cast<double>(updates[k].find("conv.bias")->data<float>()[3]);
    total += weights[k];
  }
  EXPECT_FLOAT_EQ(first.find("conv.bias")->data<float>()[3], static_cast<float>(expected / total));
}

TEST(WeightedAverageTest, AddAllInGroupsEqualsAddingOneByOneBitForBit) {
  auto ref = std::make_shared<TensorBundle>();
  ASSERT_TRUE(ref->add_zeros("conv.weight", DType::kFloat32, {16, 8, 3, 3}).ok());
  ASSERT_TRUE(ref->add_zeros("bn.num_batches_tracked", DType::kInt64, {}).ok());
  ASSERT_TRUE(ref->add_zeros("proto", DType::kFloat64, {33}).ok());
  Rng rng(43);
  std::vector<TensorBundle> updates;
  std::vector<int64_t> weights;
  for (int k = 0; k < 9; ++k) {
    updates.push_back(random_like(*ref, rng));
    weights.push_back(1 + static_cast<int64_t>(rng.uniform_int(5000)));
  }
  auto one_by_one = WeightedAverage::create(ref);
  ASSERT_TRUE(one_by_one.ok());
  for (int k = 0; k < 9; ++k) ASSERT_TRUE(one_by_one->add(updates[k], weights[k]).ok());
  const TensorBundle expected = one_by_one->finish().value();
  // Groups of 9 (two passes of 4 and a single), 3+3+3, 2+7, 1+5+3.
  for (const std::vector<int>& sizes :
       std::vector<std::vector<int>>{{9}, {3, 3, 3}, {2, 7}, {1, 5, 3}}) {
    auto grouped = WeightedAverage::create(ref);
    ASSERT_TRUE(grouped.ok());
    int next = 0;
    for (int size : sizes) {
      std::vector<WeightedAverage::Weighted> group;
      for (int i = 0; i < size; ++i, ++next) group.push_back({&updates[next], weights[next]});
      ASSERT_TRUE(grouped->add_all(group).ok());
    }
    EXPECT_EQ(grouped->updates(), 9);
    EXPECT_EQ(grouped->total_examples(), one_by_one->total_examples());
    EXPECT_TRUE(grouped->finish().value().bitwise_equal(expected)) << sizes.size() << " groups";
  }
}

TEST(WeightedAverageTest, AddAllWithOneBadUpdateAddsNoneAndNamesIt) {
  auto ref = layer_reference();
  auto avg = WeightedAverage::create(ref);
  ASSERT_TRUE(avg.ok());
  ASSERT_TRUE(avg->add(layer({1, 2, 3, 4}, {0, 0}, 1), 1).ok());
  const TensorBundle before = avg->finish().value();
  TensorBundle good = layer({5, 6, 7, 8}, {1, 1}, 3);
  TensorBundle bad;
  ASSERT_TRUE(bad.add_zeros("fc.weight", DType::kFloat32, {3}).ok());
  const Status status = avg->add_all({{&good, 2}, {&bad, 2}});
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("update 2 of 2"), std::string::npos) << status.to_string();
  EXPECT_EQ(avg->updates(), 1);
  EXPECT_EQ(avg->total_examples(), 1);
  EXPECT_TRUE(avg->finish().value().bitwise_equal(before));
  EXPECT_EQ(avg->add_all({{&good, 0}}).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(avg->check(good, 2).ok());
  EXPECT_EQ(avg->check(bad, 2).code(), StatusCode::kInvalidArgument);
}

TEST(WeightedAverageTest, UpdatesWithTheTensorsInAnotherOrderAreAccepted) {
  auto avg = WeightedAverage::create(layer_reference());
  ASSERT_TRUE(avg.ok());
  TensorBundle reordered;
  ASSERT_TRUE(reordered
                  .add(NamedTensor::from_values("bn.num_batches_tracked", DType::kInt64, {},
                                                std::vector<int64_t>{4}))
                  .ok());
  ASSERT_TRUE(reordered
                  .add(NamedTensor::from_values("bn.running_mean", DType::kFloat32, {2},
                                                std::vector<float>{1, 2}))
                  .ok());
  ASSERT_TRUE(reordered
                  .add(NamedTensor::from_values("fc.weight", DType::kFloat32, {2, 2},
                                                std::vector<float>{1, 2, 3, 4}))
                  .ok());
  ASSERT_TRUE(avg->add(reordered, 2).ok());
  auto mean = avg->finish();
  ASSERT_TRUE(mean.ok());
  EXPECT_EQ(mean->names(), layer_reference()->names());
  EXPECT_EQ(values<float>(*mean, "fc.weight"), (std::vector<float>{1, 2, 3, 4}));
}

TEST(WeightedAverageTest, MismatchedUpdatesAreRefusedWithoutTouchingTheSum) {
  auto avg = WeightedAverage::create(layer_reference());
  ASSERT_TRUE(avg.ok());
  ASSERT_TRUE(avg->add(layer({1, 2, 3, 4}, {5, 6}, 7), 2).ok());

  // Wrong shape, named.
  TensorBundle wrong_shape = layer({9, 9, 9, 9}, {9, 9}, 9);
  TensorBundle shaped;
  ASSERT_TRUE(shaped
                  .add(NamedTensor::from_values("fc.weight", DType::kFloat32, {4},
                                                std::vector<float>{9, 9, 9, 9}))
                  .ok());
  ASSERT_TRUE(shaped.add(std::move(*wrong_shape.find("bn.running_mean"))).ok());
  ASSERT_TRUE(shaped.add(std::move(*wrong_shape.find("bn.num_batches_tracked"))).ok());
  Status s = avg->add(shaped, 100);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tensor \"fc.weight\": shape [4] != expected [2,2]"),
            std::string::npos)
      << s.message();

  // Wrong dtype.
  TensorBundle typed;
  ASSERT_TRUE(typed
                  .add(NamedTensor::from_values("fc.weight", DType::kFloat64, {2, 2},
                                                std::vector<double>{9, 9, 9, 9}))
                  .ok());
  ASSERT_TRUE(typed
                  .add(NamedTensor::from_values("bn.running_mean", DType::kFloat32, {2},
                                                std::vector<float>{9, 9}))
                  .ok());
  ASSERT_TRUE(typed
                  .add(NamedTensor::from_values("bn.num_batches_tracked", DType::kInt64, {},
                                                std::vector<int64_t>{9}))
                  .ok());
  s = avg->add(typed, 100);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("dtype float64 != expected float32"), std::string::npos)
      << s.message();

  // Missing tensor, and an extra one.
  TensorBundle missing;
  ASSERT_TRUE(missing
                  .add(NamedTensor::from_values("fc.weight", DType::kFloat32, {2, 2},
                                                std::vector<float>{9, 9, 9, 9}))
                  .ok());
  s = avg->add(missing, 100);
  EXPECT_NE(s.message().find("\"bn.running_mean\": missing"), std::string::npos) << s.message();
  TensorBundle extra = layer({9, 9, 9, 9}, {9, 9}, 9);
  ASSERT_TRUE(extra.add_zeros("extra", DType::kFloat32, {1}).ok());
  s = avg->add(extra, 100);
  EXPECT_NE(s.message().find("\"extra\": not in the reference"), std::string::npos) << s.message();

  EXPECT_EQ(avg->updates(), 1);
  EXPECT_EQ(avg->total_examples(), 2);
  auto mean = avg->finish();
  ASSERT_TRUE(mean.ok());
  EXPECT_EQ(values<float>(*mean, "fc.weight"), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(values<float>(*mean, "bn.running_mean"), (std::vector<float>{5, 6}));
  EXPECT_EQ(values<int64_t>(*mean, "bn.num_batches_tracked"), (std::vector<int64_t>{7}));
}

TEST(WeightedAverageTest, NonPositiveExampleCountsAreRefused) {
  auto avg = WeightedAverage::create(layer_reference());
  ASSERT_TRUE(avg.ok());
  for (int64_t n : {int64_t{0}, int64_t{-5}}) {
    Status s = avg->add(layer({1, 2, 3, 4}, {5, 6}, 7), n);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("num_examples: must be > 0"), std::string::npos) << s.message();
  }
  EXPECT_EQ(avg->updates(), 0);
  EXPECT_EQ(avg->finish().status().code(), StatusCode::kFailedPrecondition);
}

TEST(WeightedAverageTest, ExampleTotalOverflowIsRefusedAndExtremeIntegersStayExact) {
  auto ref = std::make_shared<TensorBundle>();
  ASSERT_TRUE(ref->add_zeros("w", DType::kFloat32, {1}).ok());
  ASSERT_TRUE(ref->add_zeros("big", DType::kInt64, {1}).ok());
  auto make = [](float w) {
    TensorBundle u;
    EXPECT_TRUE(
        u.add(NamedTensor::from_values("w", DType::kFloat32, {1}, std::vector<float>{w})).ok());
    EXPECT_TRUE(
        u.add(NamedTensor::from_values("big", DType::kInt64, {1}, std::vector<int64_t>{INT64_MAX}))
            .ok());
    return u;
  };
  auto avg = WeightedAverage::create(ref);
  ASSERT_TRUE(avg.ok());
  ASSERT_TRUE(avg->add(make(1), INT64_MAX / 2).ok());
  ASSERT_TRUE(avg->add(make(1), INT64_MAX / 2).ok());
  Status s = avg->add(make(100), 2);  // the example total would overflow int64
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(avg->updates(), 2);
  auto mean = avg->finish();
  ASSERT_TRUE(mean.ok());
  EXPECT_EQ(values<float>(*mean, "w")[0], 1.0f);
  EXPECT_EQ(values<int64_t>(*mean, "big")[0], INT64_MAX);
}

TEST(WeightedAverageTest, NullReferenceIsRefused) {
  EXPECT_EQ(WeightedAverage::create(nullptr).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtail::strategies

namespace fedtail::strategies {
namespace {

TEST(FoldGroupSizeTest, UpToFourUpdatesAndAtMost96MiBHeldTogether) {
  EXPECT_EQ(fold_group_size(0), 4u);
  EXPECT_EQ(fold_group_size(1'780'000), 4u);   // the small CNN
  EXPECT_EQ(fold_group_size(30'000'000), 3u);  // 90 MB in three
  EXPECT_EQ(fold_group_size(44'700'000), 2u);  // ResNet-18: pairs
  EXPECT_EQ(fold_group_size(60'000'000), 1u);
  EXPECT_EQ(fold_group_size(uint64_t{1} << 40), 1u);
}

}  // namespace
}  // namespace fedtail::strategies

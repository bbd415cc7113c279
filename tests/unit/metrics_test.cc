#include "common/learning/metrics.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace fedtail {
namespace {

const std::vector<int64_t> kFashionMnistLtIf100 = {6000, 3597, 2156, 1292, 774,
                                                   464,  278,  166,  100,  60};

TEST(MetricsTest, HandComputedAccuracies) {
  auto predictions = torch::tensor({0, 1, 1, 2, 2, 2}, torch::kInt64);
  auto labels = torch::tensor({0, 1, 2, 2, 2, 0}, torch::kInt64);
  ClassGroups groups;
  groups.many = {0, 1};
  groups.medium = {2};
  groups.few = {3};  // no test examples
  auto r = accuracy_report(predictions, labels, /*num_classes=*/4, groups);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->examples, 6);
  EXPECT_EQ(r->correct, 4);
  EXPECT_DOUBLE_EQ(r->overall, 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(r->per_class[0], 0.5);
  EXPECT_DOUBLE_EQ(r->per_class[1], 1.0);
  EXPECT_DOUBLE_EQ(r->per_class[2], 2.0 / 3.0);
  EXPECT_TRUE(std::isnan(r->per_class[3]));
  EXPECT_EQ(r->per_class_examples, (std::vector<int64_t>{2, 1, 3, 0}));
  EXPECT_DOUBLE_EQ(r->many, 0.75);
  EXPECT_DOUBLE_EQ(r->medium, 2.0 / 3.0);
  EXPECT_TRUE(std::isnan(r->few));

  nlohmann::json j = r->to_json();
  EXPECT_DOUBLE_EQ(j["overall"].get<double>(), 4.0 / 6.0);
  EXPECT_TRUE(j["few"].is_null());
  EXPECT_TRUE(j["per_class"][3].is_null());
  EXPECT_EQ(j["groups"]["many"], nlohmann::json({0, 1}));
  EXPECT_EQ(j["examples"], 6);
}

TEST(MetricsTest, RejectsLabelsOutsideTheClassRangeAndMismatchedShapes) {
  auto p = torch::tensor({0, 1}, torch::kInt64);
  EXPECT_EQ(accuracy_report(p, torch::tensor({0, 5}, torch::kInt64), 3, {}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(accuracy_report(p, torch::tensor({0}, torch::kInt64), 3, {}).status().code(),
            StatusCode::kInvalidArgument);
  ClassGroups bad;
  bad.few = {7};
  EXPECT_EQ(accuracy_report(p, p, 3, bad).status().code(), StatusCode::kInvalidArgument);
  auto empty =
      accuracy_report(torch::empty({0}, torch::kInt64), torch::empty({0}, torch::kInt64), 3, {});
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(std::isnan(empty->overall));
  EXPECT_TRUE(empty->to_json()["overall"].is_null());
}

TEST(MetricsTest, CumulativeShareGroupsOnFashionMnistLt) {
  // Totals 14887; class 2 starts at 9597/14887 = 64% (Many), class 3 at 79% (Medium), class 5 at
  // 93% (Medium), class 6 at 95.9% (Few).
  ClassGroups g = groups_by_cumulative_share(kFashionMnistLtIf100);
  EXPECT_EQ(g.many, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(g.medium, (std::vector<int>{3, 4, 5}));
  EXPECT_EQ(g.few, (std::vector<int>{6, 7, 8, 9}));
  EXPECT_EQ(g.rule, "cumulative_share(0.75, 0.95)");

  // Order of classes does not matter: the rule sorts by count.
  std::vector<int64_t> shuffled = {100, 6000, 60, 3597, 2156, 1292, 774, 464, 278, 166};
  ClassGroups s = groups_by_cumulative_share(shuffled);
  EXPECT_EQ(s.many, (std::vector<int>{1, 3, 4}));
  EXPECT_EQ(s.few, (std::vector<int>{0, 2, 8, 9}));
}

TEST(MetricsTest, CumulativeShareMatchesFedLoGeSplitOnCifar100) {
  // The FedLoGe notes: CIFAR-100 IF100 splits 30/31/39, IF50 34/34/32.
  for (auto [imbalance, many, medium, few] :
       {std::tuple<double, size_t, size_t, size_t>{100, 30, 31, 39}, {50, 34, 34, 32}}) {
    std::vector<int64_t> counts(100);
    for (int c = 0; c < 100; ++c) {
      counts[c] = static_cast<int64_t>(500 * std::pow(imbalance, -c / 99.0));
    }
    ClassGroups g = groups_by_cumulative_share(counts);
    EXPECT_EQ(g.many.size(), many) << imbalance;
    EXPECT_EQ(g.medium.size(), medium) << imbalance;
    EXPECT_EQ(g.few.size(), few) << imbalance;
  }
}

TEST(MetricsTest, ThresholdGroupsOnFashionMnistLt) {
  ClassGroups g = groups_by_threshold(kFashionMnistLtIf100);
  EXPECT_EQ(g.many, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(g.medium, (std::vector<int>{8, 9}));  // 100 and 60
  EXPECT_TRUE(g.few.empty());
  ClassGroups h = groups_by_threshold({101, 100, 20, 19, 0});
  EXPECT_EQ(h.many, (std::vector<int>{0}));
  EXPECT_EQ(h.medium, (std::vector<int>{1, 2}));
  EXPECT_EQ(h.few, (std::vector<int>{3, 4}));
}

TEST(MetricsTest, EmptyGroupIsNullInJson) {
  auto labels = torch::tensor({0, 1, 8, 9}, torch::kInt64);
  auto r = accuracy_report(labels, labels, 10, groups_by_threshold(kFashionMnistLtIf100));
  ASSERT_TRUE(r.ok());
  EXPECT_DOUBLE_EQ(r->many, 1.0);
  EXPECT_DOUBLE_EQ(r->medium, 1.0);
  EXPECT_TRUE(r->to_json()["few"].is_null());
}

TEST(MetricsTest, MaskAbsentClassesHidesThemFromArgmax) {
  auto logits = torch::tensor({{5.0f, 1.0f, 2.0f}, {0.0f, 3.0f, 9.0f}});
  auto masked = mask_absent_classes(logits, {0, 4, 1});
  EXPECT_TRUE(std::isinf(masked[0][0].item<float>()));
  EXPECT_TRUE(torch::equal(masked.argmax(1), torch::tensor({2, 2}, torch::kInt64)));
  EXPECT_EQ(logits[0][0].item<float>(), 5.0f);  // input untouched
  EXPECT_TRUE(torch::equal(mask_absent_classes(logits, {0, 0, 0}), logits));
}

TEST(MetricsTest, PersonalizedAccuracyMeanAndWeightedMean) {
  auto p = personalized_accuracy({{8, 10}, {1, 2}, {0, 0}});
  EXPECT_EQ(p.clients, 2);
  EXPECT_DOUBLE_EQ(p.mean, 0.65);
  EXPECT_DOUBLE_EQ(p.weighted, 0.75);
  EXPECT_DOUBLE_EQ(p.to_json()["weighted"].get<double>(), 0.75);
  auto none = personalized_accuracy({});
  EXPECT_TRUE(std::isnan(none.mean));
  EXPECT_TRUE(none.to_json()["mean"].is_null());
}

TEST(MetricsTest, PersonalizedAccuracySumsAreCheckedNotWrapped) {
  const int64_t huge = std::numeric_limits<int64_t>::max();
  // The second report would overflow both sums; an impossible one (correct > examples) and one
  // with negative counts are left out as well.
  auto p = personalized_accuracy({{5, 10}, {huge, huge}, {7, 3}, {-4, -2}, {1, 2}});
  EXPECT_EQ(p.clients, 2);
  EXPECT_EQ(p.examples, 12);
  EXPECT_DOUBLE_EQ(p.weighted, 0.5);
  EXPECT_DOUBLE_EQ(p.mean, 0.5);
}

}  // namespace
}  // namespace fedtail

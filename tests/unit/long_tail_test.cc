// Tests for the long-tail profile, the choice of kept examples and the Many/Medium/Few groups.
#include "common/data/long_tail.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

namespace fedtail {
namespace {

int64_t total(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

TEST(LongTailCounts, FashionMnistImbalance100) {
  const std::vector<int64_t> expected = {6000, 3597, 2156, 1292, 774, 464, 278, 166, 100, 60};
  const auto counts = long_tail_counts(6000, 100, 10);
  ASSERT_EQ(counts.size(), expected.size());
  for (size_t c = 0; c < counts.size(); ++c)
    EXPECT_NEAR(counts[c], expected[c], 1) << "class " << c;
  // floor(6000 · 100^(−1/9)) = floor(3596.905...): the FedLoGe profile gives 3596.
  EXPECT_EQ(counts[1], 3596);
}

TEST(LongTailCounts, MatchesFedLoGeTotals) {
  // Totals of FedLoGe's imbalance_cifar.py (the authors' code).
  EXPECT_EQ(total(long_tail_counts(5000, 100, 10)), 12406);
  EXPECT_EQ(total(long_tail_counts(5000, 50, 10)), 13996);
  EXPECT_EQ(total(long_tail_counts(500, 100, 100)), 10847);
  EXPECT_EQ(total(long_tail_counts(500, 50, 100)), 12608);
}

TEST(LongTailCounts, EdgesAreBalancedOrSingle) {
  EXPECT_EQ(long_tail_counts(123, 1, 7), std::vector<int64_t>(7, 123));
  EXPECT_EQ(long_tail_counts(50, 10, 1), std::vector<int64_t>{50});
  const auto c = long_tail_counts(1000, 10, 5);
  EXPECT_EQ(c.front(), 1000);
  EXPECT_EQ(c.back(), 100);
  EXPECT_TRUE(std::is_sorted(c.rbegin(), c.rend()));
}

std::vector<int64_t> balanced_labels(int classes, int per_class) {
  std::vector<int64_t> labels;
  for (int i = 0; i < per_class; ++i)
    for (int c = 0; c < classes; ++c) labels.push_back(c);
  return labels;
}

std::vector<int64_t> counts_of(const std::vector<int64_t>& labels, const std::vector<int64_t>& idx,
                               int classes) {
  std::vector<int64_t> counts(classes, 0);
  for (int64_t i : idx) ++counts[labels[i]];
  return counts;
}

TEST(LongTailIndices, KeepsTheProfileWithoutRepeats) {
  const auto labels = balanced_labels(10, 600);
  Rng rng(7);
  auto kept = long_tail_indices(labels, 10, 100, rng);
  ASSERT_TRUE(kept.ok()) << kept.status().to_string();
  EXPECT_EQ(counts_of(labels, *kept, 10), long_tail_counts(600, 100, 10));
  EXPECT_TRUE(std::is_sorted(kept->begin(), kept->end()));
  EXPECT_EQ(std::adjacent_find(kept->begin(), kept->end()), kept->end());
}

TEST(LongTailIndices, IsDeterministicPerRngAndRandomAcrossSeeds) {
  const auto labels = balanced_labels(5, 200);
  Rng a(1), b(1), c(2);
  auto ka = long_tail_indices(labels, 5, 20, a);
  auto kb = long_tail_indices(labels, 5, 20, b);
  auto kc = long_tail_indices(labels, 5, 20, c);
  ASSERT_TRUE(ka.ok() && kb.ok() && kc.ok());
  EXPECT_EQ(*ka, *kb);
  EXPECT_NE(*ka, *kc);
  EXPECT_EQ(counts_of(labels, *ka, 5), counts_of(labels, *kc, 5));
}

TEST(LongTailIndices, CapsAtTheAvailableCount) {
  // Class 0 has 100 (n_max), class 1 has 5 but the profile asks for floor(100 · 10^(−1/2)) = 31,
  // class 2 has 40 and the profile asks for 10.
  std::vector<int64_t> labels(100, 0);
  labels.insert(labels.end(), 5, 1);
  labels.insert(labels.end(), 40, 2);
  Rng rng(3);
  auto kept = long_tail_indices(labels, 3, 10, rng);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(counts_of(labels, *kept, 3), (std::vector<int64_t>{100, 5, 10}));
}

TEST(LongTailIndices, ImbalanceOneKeepsEverything) {
  const auto labels = balanced_labels(4, 10);
  Rng rng(1);
  auto kept = long_tail_indices(labels, 4, 1, rng);
  ASSERT_TRUE(kept.ok());
  std::vector<int64_t> all(labels.size());
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(*kept, all);
}

TEST(LongTailIndices, RejectsBadArguments) {
  Rng rng(1);
  auto r = long_tail_indices({0, 1}, 2, 0.5, rng);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "imbalance_factor: must be >= 1 (got 0.5)");
  r = long_tail_indices({0, 2}, 2, 10, rng);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("label 2 at index 1"), std::string::npos);
}

std::vector<int> group_sizes(const std::vector<ClassGroup>& groups) {
  std::vector<int> sizes(3, 0);
  for (auto g : groups) ++sizes[static_cast<int>(g)];
  return sizes;
}

TEST(ManyMediumFew, MatchesTheFedLoGeSplits) {
  // The FedLoGe authors' code: C10 IF100 3/3/4, C10 IF50 4/3/3.
  EXPECT_EQ(group_sizes(many_medium_few(long_tail_counts(5000, 100, 10))),
            (std::vector<int>{3, 3, 4}));
  EXPECT_EQ(group_sizes(many_medium_few(long_tail_counts(5000, 50, 10))),
            (std::vector<int>{4, 3, 3}));
  // C100 IF100: the head is the 30 classes with >= 129 images (the table's "≈" splits 30/31/39).
  const auto c100 = long_tail_counts(500, 100, 100);
  const auto groups = many_medium_few(c100);
  EXPECT_EQ(group_sizes(groups)[0], 30);
  for (int c = 0; c < 100; ++c) EXPECT_EQ(groups[c] == ClassGroup::kMany, c100[c] >= 129) << c;
}

TEST(ManyMediumFew, SortsByCountNotByIndex) {
  // 70 + 20 + 6 + 4: before class 2 (the 70) nothing, so Many; before the 20, 70% < 75%: Many;
  // before the 6, 90%: Medium; before the 4, 96%: Few.
  const auto groups = many_medium_few({6, 20, 70, 4});
  EXPECT_EQ(groups, (std::vector<ClassGroup>{ClassGroup::kMedium, ClassGroup::kMany,
                                             ClassGroup::kMany, ClassGroup::kFew}));
  EXPECT_STREQ(class_group_name(ClassGroup::kMedium), "medium");
  EXPECT_EQ(many_medium_few({0, 0}),
            (std::vector<ClassGroup>{ClassGroup::kMany, ClassGroup::kMany}));
}

}  // namespace
}  // namespace fedtail

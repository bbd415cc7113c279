// Tests for the Dirichlet, pathological and IID partitions and the personalised test sets.
#include "common/data/partition.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

namespace fedtail {
namespace {

// `per_class` examples of each class, interleaved (0, 1, ..., K−1, 0, 1, ...).
std::vector<int64_t> balanced_labels(int classes, int per_class) {
  std::vector<int64_t> labels;
  for (int i = 0; i < per_class; ++i)
    for (int c = 0; c < classes; ++c) labels.push_back(c);
  return labels;
}

// Every index of [0, n) appears in exactly one client, and each client's list is ascending.
void expect_exact_cover(const Partition& p, size_t n) {
  std::vector<int> seen(n, 0);
  for (const auto& client : p) {
    EXPECT_TRUE(std::is_sorted(client.begin(), client.end()));
    for (int64_t i : client) {
      ASSERT_GE(i, 0);
      ASSERT_LT(static_cast<size_t>(i), n);
      ++seen[i];
    }
  }
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(seen[i], 1) << "index " << i;
}

TEST(DirichletPartition, SameSeedSamePartitionOtherSeedOther) {
  const auto labels = balanced_labels(10, 100);
  Rng a = Rng::derive(1, "partition"), b = Rng::derive(1, "partition"),
      c = Rng::derive(2, "partition");
  auto pa = partition_dirichlet(labels, 10, 8, 0.5, 1, a);
  auto pb = partition_dirichlet(labels, 10, 8, 0.5, 1, b);
  auto pc = partition_dirichlet(labels, 10, 8, 0.5, 1, c);
  ASSERT_TRUE(pa.ok() && pb.ok() && pc.ok()) << pa.status().to_string();
  EXPECT_EQ(*pa, *pb);
  EXPECT_NE(*pa, *pc);
  expect_exact_cover(*pa, labels.size());
  expect_exact_cover(*pc, labels.size());
}

TEST(DirichletPartition, LargeAlphaIsNearlyBalanced) {
  const auto labels = balanced_labels(10, 1000);
  Rng rng(5);
  auto p = partition_dirichlet(labels, 10, 10, /*alpha=*/1000, 1, rng);
  ASSERT_TRUE(p.ok());
  const auto counts = partition_class_counts(*p, labels, 10);
  // Each client's share of each class is ≈ 1/10 (100 of 1000; binomial sd ≈ 9.5).
  for (const auto& row : counts)
    for (int64_t n : row) EXPECT_NEAR(n, 100, 45);
}

TEST(DirichletPartition, SmallAlphaIsSkewed) {
  const auto labels = balanced_labels(10, 1000);
  Rng rng(5);
  auto p = partition_dirichlet(labels, 10, 10, /*alpha=*/0.05, 1, rng);
  ASSERT_TRUE(p.ok());
  const auto counts = partition_class_counts(*p, labels, 10);
  // With α = 0.05 most of each class lands on one client.
  for (int c = 0; c < 10; ++c) {
    int64_t largest = 0;
    for (const auto& row : counts) largest = std::max(largest, row[c]);
    EXPECT_GT(largest, 500) << "class " << c;
  }
}

TEST(DirichletPartition, RedrawsUntilEveryClientHasMinClientSize) {
  const auto labels = balanced_labels(5, 40);  // 200 examples over 20 clients
  // A seed whose first draw leaves some client with fewer than 3 examples...
  uint64_t seed = 0;
  for (; seed < 100; ++seed) {
    Rng first(seed);
    auto p = partition_dirichlet(labels, 5, 20, 0.3, /*min_client_size=*/0, first);
    ASSERT_TRUE(p.ok());
    size_t smallest = labels.size();
    for (const auto& client : *p) smallest = std::min(smallest, client.size());
    if (smallest < 3) break;
  }
  ASSERT_LT(seed, 100u) << "no seed gave a short first draw";
  // ...is redrawn from the same stream until every client has 3.
  Rng rng(seed);
  auto p = partition_dirichlet(labels, 5, 20, 0.3, /*min_client_size=*/3, rng);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  expect_exact_cover(*p, labels.size());
  for (const auto& client : *p) EXPECT_GE(client.size(), 3u);
}

TEST(DirichletPartition, FailsClearlyWhenClientsCannotBeFilled) {
  const auto labels = balanced_labels(2, 10);  // 20 examples
  Rng rng(1);
  auto p = partition_dirichlet(labels, 2, 30, 0.5, 1, rng);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(p.status().message().find("30 clients"), std::string::npos) << p.status().message();
  // Feasible on paper, hopeless in practice: 100 draws, then a message that says so.
  const auto more = balanced_labels(2, 50);
  p = partition_dirichlet(more, 2, 50, 0.01, 2, rng);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(p.status().message().find("after 100 draws"), std::string::npos)
      << p.status().message();
  p = partition_dirichlet(more, 2, 5, -1, 1, rng);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
}

TEST(PathologicalPartition, EachClientGetsItsShardsClasses) {
  const auto labels = balanced_labels(10, 600);  // 6000 examples, 20 shards of 300
  Rng rng(3);
  auto p = partition_pathological(labels, 10, 10, /*shards_per_client=*/2, 1, rng);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  expect_exact_cover(*p, labels.size());
  const auto counts = partition_class_counts(*p, labels, 10);
  for (const auto& row : counts) {
    EXPECT_EQ(std::accumulate(row.begin(), row.end(), int64_t{0}), 600);
    int classes = 0;
    for (int64_t n : row) {
      if (n > 0) ++classes;
      EXPECT_TRUE(n == 0 || n == 300 || n == 600) << n;  // whole shards of one class
    }
    EXPECT_GE(classes, 1);
    EXPECT_LE(classes, 2);
  }
  Rng same(3);
  auto again = partition_pathological(labels, 10, 10, 2, 1, same);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*p, *again);
}

TEST(PathologicalPartition, RejectsImpossibleShardCounts) {
  const auto labels = balanced_labels(3, 2);  // 6 examples
  Rng rng(1);
  auto p = partition_pathological(labels, 3, 4, 2, 1, rng);  // 8 shards
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kFailedPrecondition);
  p = partition_pathological(labels, 3, 1, 4, 1, rng);  // 4 classes per client of 3
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
}

TEST(IidPartition, DealsEvenlyAndRandomly) {
  const auto labels = balanced_labels(4, 250);  // 1000 examples
  Rng rng(9);
  auto p = partition_iid(labels, 7, 1, rng);
  ASSERT_TRUE(p.ok());
  expect_exact_cover(*p, labels.size());
  for (const auto& client : *p) {
    EXPECT_TRUE(client.size() == 142 || client.size() == 143) << client.size();
  }
  // Shuffled, not dealt in order: client 0 is not simply the first 142 indices.
  std::vector<int64_t> first(142);
  std::iota(first.begin(), first.end(), 0);
  EXPECT_NE((*p)[0], first);
  auto tiny = partition_iid(balanced_labels(1, 3), 5, 1, rng);
  ASSERT_FALSE(tiny.ok());
  EXPECT_EQ(tiny.status().code(), StatusCode::kFailedPrecondition);
}

TEST(PartitionLabels, DispatchesOnTheOptions) {
  const auto labels = balanced_labels(4, 50);
  DataOptions o;
  o.clients = 4;
  o.partition = "iid";
  Rng a(1), b(1);
  auto via_options = partition_labels(labels, 4, o, a);
  auto direct = partition_iid(labels, 4, 1, b);
  ASSERT_TRUE(via_options.ok() && direct.ok());
  EXPECT_EQ(*via_options, *direct);
  o.partition = "pathological";
  o.classes_per_client = 9;
  auto bad = partition_labels(labels, 4, o, a);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().rfind("data.partition: classes_per_client", 0), 0u)
      << bad.status().message();
}

TEST(PersonalisedTest, MirrorsEachClientsTrainingProportions) {
  // 3 classes, a balanced test pool of 100 per class (300); total train 1000.
  const auto test_labels = balanced_labels(3, 100);
  const std::vector<std::vector<int64_t>> train_counts = {
      {500, 0, 10},   // wants 150 of class 0 (capped at the pool, 100), 0, 3
      {200, 150, 0},  // 60, 45, 0
      {0, 133, 7},    // 39 (133·300/1000 = 39.9), 2 (2.1)
  };
  Rng rng(4);
  auto p = personalised_test_indices(train_counts, 1000, test_labels, 3, rng);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  ASSERT_EQ(p->size(), 3u);
  const auto counts = partition_class_counts(*p, test_labels, 3);
  EXPECT_EQ(counts[0], (std::vector<int64_t>{100, 0, 3}));
  EXPECT_EQ(counts[1], (std::vector<int64_t>{60, 45, 0}));
  EXPECT_EQ(counts[2], (std::vector<int64_t>{0, 39, 2}));
  for (const auto& client : *p) {
    EXPECT_TRUE(std::is_sorted(client.begin(), client.end()));
    EXPECT_EQ(std::set<int64_t>(client.begin(), client.end()).size(), client.size());  // no repeats
  }
  Rng same(4), other(5);
  auto again = personalised_test_indices(train_counts, 1000, test_labels, 3, same);
  auto different = personalised_test_indices(train_counts, 1000, test_labels, 3, other);
  ASSERT_TRUE(again.ok() && different.ok());
  EXPECT_EQ(*p, *again);
  EXPECT_NE(*p, *different);
  EXPECT_EQ(partition_class_counts(*different, test_labels, 3), counts);  // same proportions

  auto bad = personalised_test_indices({{1, 2}}, 1000, test_labels, 3, rng);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtail

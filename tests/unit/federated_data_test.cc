// Tests for build_federated_data() on a small slice of Fashion-MNIST.
#include "common/data/federated_data.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <numeric>
#include <vector>

#include "common/data/long_tail.h"

namespace fedtail {
namespace {

bool have_fashion_mnist() {
  return std::filesystem::exists("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz");
}

DataOptions small_options() {
  DataOptions o;  // fashion-mnist at its default root
  o.max_examples_per_class = 300;
  o.imbalance_factor = 10;
  o.partition = "dirichlet";
  o.alpha = 0.5;
  o.clients = 6;
  return o;
}

TEST(FederatedData, BuildsTheLongTailPartitionAndPersonalTests) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  auto fd = build_federated_data(small_options(), /*seed=*/1);
  ASSERT_TRUE(fd.ok()) << fd.status().to_string();
  EXPECT_EQ(fd->num_classes(), 10);
  EXPECT_EQ(fd->train_class_counts, long_tail_counts(300, 10, 10));
  EXPECT_EQ(fd->train.class_counts(), fd->train_class_counts);
  EXPECT_EQ(fd->test.size(), 10000);  // the balanced test set is untouched
  ASSERT_EQ(fd->num_clients(), 6);
  ASSERT_EQ(fd->client_test.size(), 6u);

  // Every training example belongs to exactly one client.
  std::vector<int> seen(fd->train.size(), 0);
  for (const auto& client : fd->client_train)
    for (int64_t i : client) ++seen[i];
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), fd->train.size());

  // Client datasets are the indexed examples.
  for (int k = 0; k < fd->num_clients(); ++k) {
    Dataset local = fd->client_train_set(k);
    ASSERT_EQ(local.size(), static_cast<int64_t>(fd->client_train[k].size()));
    if (local.size() > 0) {
      const int64_t first = fd->client_train[k][0];
      EXPECT_TRUE(torch::equal(local.images[0], fd->train.images[first]));
    }
    // The personalised test set follows the client's training proportions.
    const auto train_counts = fd->client_train_class_counts()[k];
    const auto test_counts = fd->client_test_set(k).class_counts();
    for (int c = 0; c < 10; ++c) {
      EXPECT_EQ(test_counts[c], std::min<int64_t>(1000, train_counts[c] * 10000 / fd->train.size()))
          << "client " << k << " class " << c;
    }
  }
}

TEST(FederatedData, IsAFunctionOfOptionsAndSeed) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  auto a = build_federated_data(small_options(), 7);
  auto b = build_federated_data(small_options(), 7);
  auto c = build_federated_data(small_options(), 8);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->client_train, b->client_train);
  EXPECT_EQ(a->client_test, b->client_test);
  EXPECT_TRUE(torch::equal(a->train.images, b->train.images));
  EXPECT_NE(a->client_train, c->client_train);
  EXPECT_EQ(a->train_class_counts,
            c->train_class_counts);  // the profile does not depend on the seed
}

TEST(FederatedData, ReportsPartitionErrorsWithTheField) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  DataOptions o = small_options();
  o.partition = "iid";
  o.clients = 5000;  // more clients than the 915 long-tailed examples
  auto fd = build_federated_data(o, 1);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(fd.status().message().rfind("data.partition: ", 0), 0u) << fd.status().message();
}

TEST(FederatedData, ValidationReplacesTheTestSetWithHeldOutTrainingExamples) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  DataOptions o = small_options();
  o.validation_per_class = 50;
  auto fd = build_federated_data(o, 1);
  auto plain = build_federated_data(small_options(), 1);
  ASSERT_TRUE(fd.ok()) << fd.status().to_string();
  ASSERT_TRUE(plain.ok());
  // A balanced validation set of 50 per class in place of the 10,000 test images.
  EXPECT_EQ(fd->test.size(), 500);
  EXPECT_EQ(fd->test.class_counts(), std::vector<int64_t>(10, 50));
  // Held out before trimming: the training profile is the same as without validation.
  EXPECT_EQ(fd->train_class_counts, long_tail_counts(300, 10, 10));
  // No validation image is a training image (the first 300 of each class are kept, the last 50
  // held out, from 6000 per class): the first validation image of class 0 is not in train.
  for (int64_t i = 0; i < fd->train.size(); ++i) {
    ASSERT_FALSE(torch::equal(fd->train.images[i], fd->test.images[0])) << "train row " << i;
  }
  // Personalised test sets are drawn from the validation set.
  for (int k = 0; k < fd->num_clients(); ++k) {
    for (int64_t row : fd->client_test[k]) EXPECT_LT(row, 500);
  }
  o.validation_per_class = 6000;  // every class has exactly 6000
  auto too_many = build_federated_data(o, 1);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().message().rfind("data.validation_per_class: class 0 has 6000", 0), 0u)
      << too_many.status().message();
}

TEST(FederatedData, TheAuxiliarySetIsHeldOutForTheServerAlone) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  DataOptions o = small_options();
  o.validation_per_class = 50;
  o.auxiliary_per_class = 20;
  auto fd = build_federated_data(o, 1);
  auto plain = build_federated_data(small_options(), 1);
  ASSERT_TRUE(fd.ok()) << fd.status().to_string();
  ASSERT_TRUE(plain.ok());
  // Balanced, 20 per class, beside a validation set of 50 per class.
  EXPECT_EQ(fd->auxiliary.class_counts(), std::vector<int64_t>(10, 20));
  EXPECT_EQ(fd->test.class_counts(), std::vector<int64_t>(10, 50));
  // Held out before trimming and long-tailing: the clients' data has the same profile.
  EXPECT_EQ(fd->train_class_counts, plain->train_class_counts);
  // Neither a training image nor a validation image: the last 20 of each class before the 50.
  for (int64_t i = 0; i < fd->train.size(); ++i) {
    ASSERT_FALSE(torch::equal(fd->train.images[i], fd->auxiliary.images[0])) << "train row " << i;
  }
  for (int64_t i = 0; i < fd->test.size(); ++i) {
    ASSERT_FALSE(torch::equal(fd->test.images[i], fd->auxiliary.images[0])) << "test row " << i;
  }
  // Without the option there is none.
  EXPECT_EQ(plain->auxiliary.size(), 0);

  o.auxiliary_per_class = 5950;  // 6000 per class, 50 already held out for validation
  auto too_many = build_federated_data(o, 1);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().message().rfind("data.auxiliary_per_class: class 0 has 5950", 0), 0u)
      << too_many.status().message();
}

}  // namespace
}  // namespace fedtail

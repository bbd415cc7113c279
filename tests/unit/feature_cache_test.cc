// FeatureCache (common/learning/feature_cache.h): shared backbone features give the same
// predictions, bit for bit, as evaluating each client's test set on its own, and compute each row
// once per version.
#include "common/learning/feature_cache.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/train_loop.h"
#include "common/wire/bundle_codec.h"
#include "strategies/classifier_eval.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail {
namespace {

Dataset random_images(int64_t n, int channels, int size, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint8_t> pixels(static_cast<size_t>(n) * channels * size * size);
  for (auto& p : pixels) p = static_cast<uint8_t>(rng.uniform_int(256));
  std::vector<int64_t> labels(n);
  for (auto& l : labels) l = static_cast<int64_t>(rng.uniform_int(10));
  Dataset d;
  d.images = torch::tensor(pixels, torch::kUInt8).view({n, channels, size, size});
  d.labels = torch::tensor(labels, torch::kInt64);
  d.num_classes = 10;
  for (int c = 0; c < 10; ++c) d.class_names.push_back("c" + std::to_string(c));
  return d;
}

// Overlapping, ascending row sets, like personalised test sets drawn from one test set.
std::vector<std::vector<int64_t>> client_rows(int64_t n, int clients, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int64_t>> out(clients);
  for (auto& rows : out) {
    std::set<int64_t> chosen;
    const int64_t want = n / 3 + static_cast<int64_t>(rng.uniform_int(n / 3));
    while (static_cast<int64_t>(chosen.size()) < want) {
      chosen.insert(static_cast<int64_t>(rng.uniform_int(static_cast<uint64_t>(n))));
    }
    rows.assign(chosen.begin(), chosen.end());
  }
  return out;
}

Model model_of(const std::string& arch, int channels, int size) {
  ModelOptions o;
  o.arch = arch;
  o.in_channels = channels;
  o.image_size = size;
  o.num_classes = 10;
  Rng rng(11);
  auto m = make_model(o, rng);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return std::move(m).value();
}

PayloadDigest version_of(Model& model) {
  auto state = module_state(*model);
  EXPECT_TRUE(state.ok());
  return payload_digest(*state);
}

class FeatureCacheTest : public ::testing::TestWithParam<const char*> {};

TEST_P(FeatureCacheTest, SharedFeaturesGiveTheSameLogitsBitForBit) {
  const std::string arch = GetParam();
  const int channels = arch == std::string("cnn") ? 1 : 3;
  const int size = arch == std::string("cnn") ? 28 : 32;
  const Dataset source = random_images(300, channels, size, 5);
  Model model = model_of(arch, channels, size);
  const PayloadDigest version = version_of(model);
  AugmentOptions input;
  FeatureCache cache(&source);
  constexpr int kBatch = 64;

  int64_t rows_asked = 0;
  std::set<int64_t> distinct;
  for (const std::vector<int64_t>& rows : client_rows(source.size(), 4, 9)) {
    // Each client's own head, as FedLoGe's personalised heads differ per client.
    torch::nn::Linear head(model->feature_dim(), 10);
    std::vector<torch::Tensor> direct_logits;
    std::vector<torch::Tensor> cached_logits;
    auto recorder = [&head](std::vector<torch::Tensor>* out) {
      return [&head, out](const torch::Tensor& f) {
        torch::Tensor logits = head->forward(f);
        out->push_back(logits.clone());
        return logits;
      };
    };
    auto direct = predict_with(model, source.subset(rows), recorder(&direct_logits), input,
                               torch::kCPU, kBatch);
    auto cached = cache.predict_with(model, version, rows, recorder(&cached_logits), input,
                                     torch::kCPU, kBatch);
    ASSERT_TRUE(direct.ok()) << direct.status().to_string();
    ASSERT_TRUE(cached.ok()) << cached.status().to_string();
    EXPECT_TRUE(torch::equal(*direct, *cached));
    ASSERT_EQ(direct_logits.size(), cached_logits.size());  // the same batches
    for (size_t b = 0; b < direct_logits.size(); ++b) {
      EXPECT_TRUE(torch::equal(direct_logits[b], cached_logits[b]))
          << arch << " client " << rows_asked << " batch " << b << " max diff "
          << (direct_logits[b] - cached_logits[b]).abs().max().item<float>() << " sizes "
          << direct_logits[b].sizes() << " " << cached_logits[b].sizes();
    }
    rows_asked += static_cast<int64_t>(rows.size());
    distinct.insert(rows.begin(), rows.end());
  }
  // Each distinct row went through the backbone once.
  EXPECT_EQ(cache.computed_rows(), static_cast<int64_t>(distinct.size()));
  EXPECT_EQ(cache.reused_rows(), rows_asked - static_cast<int64_t>(distinct.size()));
  EXPECT_GT(cache.reused_rows(), 0);
}

INSTANTIATE_TEST_SUITE_P(Architectures, FeatureCacheTest, ::testing::Values("cnn", "resnet8"));

TEST(FeatureCacheVersionTest, ANewVersionRecomputesWithTheNewWeights) {
  const Dataset source = random_images(120, 1, 28, 6);
  Model model = model_of("cnn", 1, 28);
  FeatureCache cache(&source);
  torch::nn::Linear head(model->feature_dim(), 10);
  LogitsFn logits = [&head](const torch::Tensor& f) { return head->forward(f); };
  const std::vector<int64_t> rows = {0, 5, 7, 100};
  ASSERT_TRUE(cache.predict_with(model, version_of(model), rows, logits, {}, torch::kCPU, 16).ok());
  // Change the backbone: the old features must not be served for the new version.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.mul_(-0.5);
  }
  auto cached = cache.predict_with(model, version_of(model), rows, logits, {}, torch::kCPU, 16);
  auto direct = predict_with(model, source.subset(rows), logits, {}, torch::kCPU, 16);
  ASSERT_TRUE(cached.ok());
  ASSERT_TRUE(direct.ok());
  EXPECT_TRUE(torch::equal(*cached, *direct));
  EXPECT_EQ(cache.computed_rows(), 8);
  EXPECT_EQ(cache.reused_rows(), 0);
}

TEST(FeatureCacheVersionTest, RefusesRowsOutsideTheSourceAndBadBatchSizes) {
  const Dataset source = random_images(10, 1, 28, 7);
  Model model = model_of("cnn", 1, 28);
  FeatureCache cache(&source);
  LogitsFn identity = [](const torch::Tensor& f) { return f; };
  auto outside = cache.predict_with(model, {}, {3, 10}, identity, {}, torch::kCPU, 4);
  ASSERT_FALSE(outside.ok());
  EXPECT_EQ(outside.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(outside.status().message().find("row 10"), std::string::npos);
  auto batch = cache.predict_with(model, {}, {3}, identity, {}, torch::kCPU, 0);
  EXPECT_FALSE(batch.ok());
  auto none = cache.predict_with(model, {}, {}, identity, {}, torch::kCPU, 4);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->numel(), 0);
}

// FedAvg's client evaluation through a worker's shared cache reports exactly what it reports alone.
TEST(FeatureCacheStrategyTest, FedAvgClientEvaluationIsUnchanged) {
  using namespace strategies;
  using namespace strategies::testing;
  RunConfig config = tiny_config();
  const Dataset source = separable(90, 42, 0.6);
  std::vector<SimClient> clients = sim_clients(config, 3);
  const auto rows = client_rows(source.size(), 3, 13);
  for (size_t k = 0; k < clients.size(); ++k) clients[k].test = source.subset(rows[k]);
  Rng init(1);
  auto global_model = make_model(config.model, init);
  ASSERT_TRUE(global_model.ok());
  auto global = module_state(**global_model);
  ASSERT_TRUE(global.ok());

  FedAvgClient algorithm;
  FeatureCache cache(&source);
  for (size_t k = 0; k < clients.size(); ++k) {
    Rng rng(20 + k);
    ClientContext alone = client_context(config, clients[k], 1, &rng);
    auto expected = algorithm.evaluate(alone, *global);
    ClientContext shared = client_context(config, clients[k], 1, &rng);
    shared.test_rows = &rows[k];
    shared.test_features = &cache;
    auto got = algorithm.evaluate(shared, *global);
    ASSERT_TRUE(expected.ok()) << expected.status().to_string();
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    EXPECT_EQ(*got, *expected) << "client " << k;
  }
  EXPECT_GT(cache.reused_rows(), 0);  // the cache was used, not bypassed
}

}  // namespace
}  // namespace fedtail

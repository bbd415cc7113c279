// config.local.loss: parsing, each loss against its formula computed by hand, train_local with a
// chosen loss, and the strategies with their own loss refusing another.
#include "common/learning/classification_loss.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>

#include "common/learning/train_loop.h"
#include "strategies/fedloge/fedloge.h"
#include "strategies/fedprox/fedprox.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail {
namespace {

using json = nlohmann::json;
using Kind = LocalLossOptions::Kind;

std::string error_of(const json& loss) {
  auto parsed = parse_local_loss_options(loss, "config.local.loss");
  return parsed.ok() ? std::string("(ok)") : parsed.status().message();
}

TEST(LocalLossOptionsTest, ParsesANameOrAnObject) {
  EXPECT_EQ(parse_local_loss_options(json(), "p")->kind, Kind::kCrossEntropy);
  EXPECT_EQ(parse_local_loss_options(json("focal"), "p")->kind, Kind::kFocal);
  EXPECT_EQ(parse_local_loss_options(json("focal"), "p")->gamma, 2.0);
  auto bsm = parse_local_loss_options(
      json::parse(R"({"name": "balanced_softmax", "tau": 0.5, "counts": "global"})"), "p");
  ASSERT_TRUE(bsm.ok()) << bsm.status().to_string();
  EXPECT_EQ(bsm->kind, Kind::kBalancedSoftmax);
  EXPECT_EQ(bsm->tau, 0.5);
  EXPECT_TRUE(bsm->global_counts);
  auto weighted = parse_local_loss_options(json::parse(R"({"name": "class_weighted"})"), "p");
  ASSERT_TRUE(weighted.ok());
  EXPECT_EQ(weighted->kind, Kind::kClassWeighted);
  EXPECT_FALSE(weighted->global_counts);

  auto local = parse_local_train_options(json::parse(R"({"loss": {"name": "focal", "gamma": 1}})"),
                                         "config.local");
  ASSERT_TRUE(local.ok()) << local.status().to_string();
  EXPECT_EQ(local->loss.kind, Kind::kFocal);
  EXPECT_EQ(local->loss.gamma, 1.0);
  EXPECT_EQ(parse_local_train_options(json::object(), "config.local")->loss.kind,
            Kind::kCrossEntropy);
}

TEST(LocalLossOptionsTest, ErrorsNameTheField) {
  EXPECT_EQ(error_of(json("softmax")).rfind("config.local.loss: unknown loss \"softmax\"", 0), 0u);
  EXPECT_EQ(error_of(json::parse(R"({"tau": 1})")),
            "config.local.loss.name: missing required field");
  EXPECT_EQ(error_of(json::parse(R"({"name": "balanced_softmax", "gamma": 2})"))
                .rfind("config.local.loss.gamma: applies only to focal", 0),
            0u);
  EXPECT_EQ(error_of(json::parse(R"({"name": "focal", "counts": "global"})"))
                .rfind("config.local.loss.counts: applies only to", 0),
            0u);
  EXPECT_EQ(error_of(json::parse(R"({"name": "balanced_softmax", "tau": -1})"))
                .rfind("config.local.loss.tau: must be >= 0", 0),
            0u);
  EXPECT_EQ(error_of(json::parse(R"({"name": "focal", "gamma": -0.5})"))
                .rfind("config.local.loss.gamma: must be >= 0", 0),
            0u);
  EXPECT_EQ(error_of(json::parse(R"({"name": "class_weighted", "counts": "mine"})"))
                .rfind("config.local.loss.counts:", 0),
            0u);
  EXPECT_EQ(error_of(json::parse(R"({"name": "ce", "extra": 1})")).rfind("config.local.loss.", 0),
            0u);
}

ClassificationLoss make(const LocalLossOptions& options, std::vector<int64_t> client,
                        std::vector<int64_t> global = {}) {
  auto loss = ClassificationLoss::create(options, static_cast<int64_t>(client.size()), client,
                                         global, torch::kCPU);
  EXPECT_TRUE(loss.ok()) << loss.status().to_string();
  return std::move(loss).value();
}

// -log softmax(z)[y], by hand.
double nll(const std::vector<double>& z, int y) {
  double sum = 0;
  for (double v : z) sum += std::exp(v);
  return -(z[y] - std::log(sum));
}

TEST(ClassificationLossTest, EachKindMatchesItsFormula) {
  const torch::Tensor logits = torch::tensor({{1.0f, 2.0f, 0.5f}, {0.3f, -1.0f, 2.0f}});
  const torch::Tensor labels = torch::tensor({0, 2}, torch::kInt64);
  const std::vector<double> z0 = {1.0, 2.0, 0.5}, z1 = {0.3, -1.0, 2.0};
  const std::vector<int64_t> counts = {30, 10, 5};

  LocalLossOptions o;
  EXPECT_NEAR(make(o, counts)(logits, labels).item<double>(), (nll(z0, 0) + nll(z1, 2)) / 2, 1e-6);

  o.kind = Kind::kBalancedSoftmax;
  o.tau = 0.5;
  auto adjusted = [&](std::vector<double> z) {
    for (size_t c = 0; c < z.size(); ++c) z[c] += 0.5 * std::log(static_cast<double>(counts[c]));
    return z;
  };
  EXPECT_NEAR(make(o, counts)(logits, labels).item<double>(),
              (nll(adjusted(z0), 0) + nll(adjusted(z1), 2)) / 2, 1e-6);

  o.kind = Kind::kFocal;
  o.gamma = 2;
  auto focal = [](const std::vector<double>& z, int y) {
    const double log_p = -nll(z, y);
    return -std::pow(1 - std::exp(log_p), 2.0) * log_p;
  };
  EXPECT_NEAR(make(o, counts)(logits, labels).item<double>(), (focal(z0, 0) + focal(z1, 2)) / 2,
              1e-6);
  o.gamma = 0;  // plain CE
  EXPECT_NEAR(make(o, counts)(logits, labels).item<double>(), (nll(z0, 0) + nll(z1, 2)) / 2, 1e-6);

  o.kind = Kind::kClassWeighted;
  // w_c = n / (3 · n_c): 45/90, 45/30, 45/15.
  const double w0 = 45.0 / 90, w2 = 45.0 / 15;
  EXPECT_NEAR(make(o, counts)(logits, labels).item<double>(),
              (w0 * nll(z0, 0) + w2 * nll(z1, 2)) / (w0 + w2), 1e-6);
}

TEST(ClassificationLossTest, AbsentClassesGetNoProbabilityAndNoGradientAndNoNaN) {
  LocalLossOptions o;
  o.kind = Kind::kBalancedSoftmax;
  ClassificationLoss loss = make(o, {20, 0, 4});
  torch::Tensor logits = torch::tensor({{0.2f, 5.0f, -0.1f}, {1.0f, 3.0f, 0.0f}}).requires_grad_();
  torch::Tensor value = loss(logits, torch::tensor({0, 2}, torch::kInt64));
  value.backward();
  EXPECT_TRUE(std::isfinite(value.item<double>()));
  EXPECT_TRUE(torch::isfinite(logits.grad()).all().item<bool>());
  EXPECT_EQ(logits.grad().select(1, 1).abs().sum().item<float>(), 0.0f);
  // The loss ignores class 1's logit altogether.
  const std::vector<double> z0 = {0.2 + std::log(20.0), -0.1 + std::log(4.0)};
  const std::vector<double> z1 = {1.0 + std::log(20.0), 0.0 + std::log(4.0)};
  EXPECT_NEAR(value.item<double>(), (nll(z0, 0) + nll(z1, 1)) / 2, 1e-5);

  o.kind = Kind::kClassWeighted;  // weight 0 for the absent class
  ClassificationLoss weighted = make(o, {20, 0, 4});
  EXPECT_TRUE(std::isfinite(
      weighted(logits.detach(), torch::tensor({0, 2}, torch::kInt64)).item<double>()));
}

TEST(ClassificationLossTest, CountsAreCheckedAndGlobalCountsUsedWhenAsked) {
  LocalLossOptions o;
  o.kind = Kind::kBalancedSoftmax;
  o.global_counts = true;
  auto missing = ClassificationLoss::create(o, 3, {1, 2, 3}, {}, torch::kCPU);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(
      missing.status().message().rfind("config.local.loss: the global class counts have 0", 0), 0u);
  auto zeros = ClassificationLoss::create(o, 2, {1, 2}, {0, 0}, torch::kCPU);
  ASSERT_FALSE(zeros.ok());
  EXPECT_NE(zeros.status().message().find("all 0"), std::string::npos);
  // Global counts {1, 100}: the adjustment is log 1 = 0 and log 100, whatever the client holds.
  auto global = ClassificationLoss::create(o, 2, {50, 50}, {1, 100}, torch::kCPU);
  ASSERT_TRUE(global.ok());
  const torch::Tensor logits = torch::tensor({{0.0f, 0.0f}});
  EXPECT_NEAR((*global)(logits, torch::tensor({0}, torch::kInt64)).item<double>(),
              nll({0.0, std::log(100.0)}, 0), 1e-6);
  // Cross-entropy needs no counts at all.
  EXPECT_TRUE(ClassificationLoss::create(LocalLossOptions(), 2, {}, {}, torch::kCPU).ok());
}

TEST(ClassificationLossTest, TrainLocalUsesTheConfiguredLoss) {
  using strategies::testing::separable;
  using strategies::testing::tiny_config;
  RunConfig config = tiny_config();
  const Dataset data = separable(64, 5, /*class0_share=*/0.75);
  auto train_with = [&](const LocalLossOptions& loss, const std::vector<int64_t>& global) {
    LocalTrainOptions options = config.local;
    options.loss = loss;
    options.max_steps = 1;
    Rng model_rng(3);
    Model model = make_model(config.model, model_rng).value();
    Rng rng(9);
    return train_local(model, data, options, torch::kCPU, rng, global);
  };
  // The loss of the one step (first batch, same draws) differs by kind: the option is used.
  auto ce = train_with(LocalLossOptions(), {});
  ASSERT_TRUE(ce.ok()) << ce.status().to_string();
  LocalLossOptions focal;
  focal.kind = Kind::kFocal;
  auto fo = train_with(focal, {});
  ASSERT_TRUE(fo.ok()) << fo.status().to_string();
  EXPECT_LT(fo->mean_loss, ce->mean_loss);  // (1 - p)^2 < 1 scales every term down
  focal.gamma = 0;
  EXPECT_NEAR(train_with(focal, {})->mean_loss, ce->mean_loss, 1e-6);
  LocalLossOptions bsm;
  bsm.kind = Kind::kBalancedSoftmax;
  bsm.global_counts = true;
  auto no_global = train_with(bsm, {});
  ASSERT_FALSE(no_global.ok());
  EXPECT_NE(no_global.status().message().find("config.local.loss"), std::string::npos);
  EXPECT_TRUE(train_with(bsm, {100, 10}).ok());
}

TEST(ClassificationLossTest, ProximalLossWithMuZeroIsTheBaseLoss) {
  using strategies::testing::tiny_config;
  RunConfig config = tiny_config();
  Rng rng(3);
  Model model = make_model(config.model, rng).value();
  LocalLossOptions o;
  o.kind = Kind::kFocal;
  ClassificationLoss focal = make(o, {5, 5});
  std::vector<torch::Tensor> params, anchors;
  for (const auto& p : model->parameters()) {
    params.push_back(p);
    anchors.push_back(p.detach().clone() + 1);  // a distance, multiplied by mu = 0
  }
  LossFn loss = strategies::proximal_loss(model, focal, params, anchors, /*mu=*/0);
  const torch::Tensor x = torch::rand({4, 1, 8, 8});
  const torch::Tensor y = torch::tensor({0, 1, 1, 0}, torch::kInt64);
  EXPECT_NEAR(loss(x, y).item<double>(), focal(model->forward(x), y).item<double>(), 1e-6);
  LossFn proximal = strategies::proximal_loss(model, focal, params, anchors, /*mu=*/2);
  // (2/2) · Σ ‖1‖² = the number of parameters.
  EXPECT_NEAR(proximal(x, y).item<double>() - loss(x, y).item<double>(),
              static_cast<double>(count_parameters(*model)), 1e-2);
}

TEST(ClassificationLossTest, StrategiesWithTheirOwnLossRefuseAnother) {
  strategies::register_builtin_strategies();
  RunConfig config = strategies::testing::tiny_config();
  config.local.loss.kind = Kind::kFocal;
  strategies::RunContext run = strategies::testing::run_context(config);
  for (const char* name : {"fedloge", "fedrod", "fedproto", "fedsa"}) {
    auto server = strategies::make_server_strategy(name, json::object());
    ASSERT_TRUE(server.ok()) << name << ": " << server.status().to_string();
    Rng rng(1);
    Status status = (*server)->initialize(run, rng);
    ASSERT_FALSE(status.ok()) << name;
    EXPECT_EQ(status.message().rfind(std::string("config.local.loss: ") + name, 0), 0u)
        << status.message();
  }
  for (const char* name : {"fedavg", "fedprox", "fedbn", "fedper", "fedrep", "fedbabu", "ditto"}) {
    auto server = strategies::make_server_strategy(name, json::object());
    ASSERT_TRUE(server.ok()) << name;
    Rng rng(1);
    EXPECT_TRUE((*server)->initialize(run, rng).ok()) << name;
  }
}

}  // namespace
}  // namespace fedtail

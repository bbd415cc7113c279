// Ratio Loss: the loss against a hand computation (and against PyTorch's weighted mean), the
// class weights of a hand-made K = 3 example (mask, ratios, the 0-denominator rule, the cap), one
// client step by hand, the weights a round sends (round 1: 1; later: what the auxiliary probe
// gives, recomputed here from its documented recipe), refused runs, bundles and states, options,
// and resume bit for bit.
#include "strategies/ratioloss/ratioloss.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "common/learning/train_loop.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::contains;
using testing::edited_bundle;
using testing::expect_factories_refuse;
using testing::expect_near;
using testing::expect_registry_entry;
using testing::infos;
using testing::inputs;
using testing::one_step_config;
using testing::run_context;
using testing::run_round;
using testing::separable;
using testing::sim_clients;
using testing::SimClient;
using testing::stepped;
using testing::tiny_config;

const char kWeight[] = "heads.classifier.weight";

std::vector<double> values(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// A K×d float64 tensor from rows.
torch::Tensor rows(const std::vector<std::vector<double>>& r) {
  std::vector<double> flat;
  for (const auto& row : r) flat.insert(flat.end(), row.begin(), row.end());
  return torch::tensor(flat, torch::kFloat64)
      .view({static_cast<int64_t>(r.size()), static_cast<int64_t>(r[0].size())});
}

// A copy of `global` with `alpha` added as the task's class weights.
TensorBundle with_alpha(const TensorBundle& global, NamedTensor alpha) {
  TensorBundle b = global.clone();
  EXPECT_TRUE(b.add(std::move(alpha)).ok());
  return b;
}

NamedTensor alpha_tensor(const std::vector<float>& a,
                         const std::string& name = kRatioLossAlphaTensor) {
  return NamedTensor::from_values<float>(name, DType::kFloat32, {static_cast<int64_t>(a.size())},
                                         a);
}

// ---------------------------------------------------------------------------------------------
// Options

TEST(RatioLossOptionsTest, DefaultsAreTheAuthorsValues) {
  auto o = parse_ratioloss_options(nullptr);
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->alpha, 1.0);
  EXPECT_EQ(o->beta, 0.1);
  EXPECT_EQ(o->dominance, 0.8);
  EXPECT_EQ(o->max_ratio, 5000.0);
  EXPECT_EQ(o->round.min_fit_clients, 1);

  auto set = parse_ratioloss_options(
      {{"alpha", 2}, {"beta", 0}, {"dominance", 1}, {"max_ratio", 50}, {"fraction_fit", 0.5}});
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->alpha, 2.0);
  EXPECT_EQ(set->beta, 0.0);
  EXPECT_EQ(set->dominance, 1.0);
  EXPECT_EQ(set->max_ratio, 50.0);
  EXPECT_EQ(set->round.fraction_fit, 0.5);
}

TEST(RatioLossOptionsTest, BadValuesAndUnknownKeysAreRefusedNamingTheField) {
  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {{{"alpha", 0}}, "config.strategy.alpha: must be > 0"},
      {{{"alpha", -1}}, "config.strategy.alpha: must be > 0"},
      {{{"beta", -0.1}}, "config.strategy.beta: must be >= 0"},
      {{{"dominance", 0}}, "config.strategy.dominance: must be in (0, 1]"},
      {{{"dominance", 1.5}}, "config.strategy.dominance: must be in (0, 1]"},
      {{{"max_ratio", 0}}, "config.strategy.max_ratio: must be > 0"},
      {{{"beta", "0.1"}}, "config.strategy.beta"},
      {{{"fraction_fit", 0}}, "config.strategy.fraction_fit"},
      {{{"gamma", 2}}, "config.strategy.gamma: unknown key"}};
  expect_factories_refuse(bad, make_ratioloss_server, make_ratioloss_client);
}

TEST(RatioLossOptionsTest, RegistryEntryIsNamedRatioloss) {
  expect_registry_entry(ratioloss_strategy_entry(), "ratioloss");
}

// ---------------------------------------------------------------------------------------------
// The loss

TEST(RatioCrossEntropyTest, IsTheMeanOfAlphaTimesCrossEntropyNotPyTorchsWeightedMean) {
  // Example 0: logits (0, 0), label 0: CE = ln 2. Example 1: logits (0, ln 3), label 1:
  // p = 3/4, CE = ln(4/3). α = (2, 0.5).
  const torch::Tensor logits =
      torch::tensor({0.0, 0.0, 0.0, std::log(3.0)}, torch::kFloat64).view({2, 2});
  const torch::Tensor labels = torch::tensor({0, 1}, torch::kInt64);
  const torch::Tensor alpha = torch::tensor({2.0, 0.5}, torch::kFloat64);
  const double by_hand = (2 * std::log(2.0) + 0.5 * std::log(4.0 / 3.0)) / 2;
  const double loss = ratio_cross_entropy(logits, labels, alpha).item<double>();
  EXPECT_NEAR(loss, by_hand, 1e-12);
  // PyTorch's CrossEntropyLoss(weight=α) divides by Σ α_{y_i} = 2.5 instead of N = 2.
  namespace F = torch::nn::functional;
  const double weighted_mean =
      F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().weight(alpha)).item<double>();
  EXPECT_NEAR(weighted_mean, by_hand * 2 / 2.5, 1e-12);
  EXPECT_GT(std::abs(loss - weighted_mean), 0.1);
  // α = 1 is the plain cross-entropy.
  EXPECT_NEAR(ratio_cross_entropy(logits, labels, torch::ones({2}, torch::kFloat64)).item<double>(),
              (std::log(2.0) + std::log(4.0 / 3.0)) / 2, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// The weights

// D_p = after[p] − before for K = 3 classes and 6 elements (i, j), as (D_0, D_1, D_2):
//   (0,0): ( 1.0,  0.5, -0.2)  owner 0; |0.5|/1, |-0.2|/1 <= 0.8: assigned to 0; mean others 0.15
//   (0,1): ( 2.0, -1.6,  0.0)  owner 0; |-1.6|/2 = 0.8 exactly, not > 0.8: assigned; others -0.8
//   (1,0): ( 0.5,  1.0,  0.9)  owner 1; 0.9/1 > 0.8: not assigned
//   (1,1): ( 0.0, -0.3, -0.1)  owner 0 with a max of 0 and no other 0: assigned; others -0.2
//   (2,0): ( 0.0,  0.0, -1.0)  max 0 twice (owner 0, class 1 also 0): not assigned
//   (2,1): (-0.5,  3.0,  0.3)  owner 1; 0.5/3, 0.3/3 <= 0.8: assigned to 1; others -0.1
// Class 0: pos = {(0,0), (0,1), (1,1)}: Ra = |1 + 2 + 0| / |0.15 − 0.8 − 0.2| = 3 / 0.85.
// Class 1: pos = {(2,1)}: Ra = 3 / 0.1 = 30. Class 2: pos empty, denominator 0: Ra = 10.
// float64, so that 1.6 / 2.0 is exactly 0.8.
std::vector<torch::Tensor> hand_deltas() {
  return {rows({{1.0, 2.0}, {0.5, 0.0}, {0.0, -0.5}}), rows({{0.5, -1.6}, {1.0, -0.3}, {0.0, 3.0}}),
          rows({{-0.2, 0.0}, {0.9, -0.1}, {-1.0, 0.3}})};
}

TEST(RatioWeightsTest, HandExampleGivesTheMaskRatiosAndWeightsOfTheCode) {
  const torch::Tensor before = torch::zeros({3, 2}, torch::kFloat64);
  const std::vector<torch::Tensor> after = hand_deltas();
  const RatioLossOptions options;
  auto w = ratio_weights(before, after, options);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_EQ(values(w->assigned), std::vector<double>({3, 1, 0}));
  const std::vector<double> ratio = values(w->ratio);
  ASSERT_EQ(ratio.size(), 3u);
  EXPECT_NEAR(ratio[0], 3 / 0.85, 1e-12);
  EXPECT_NEAR(ratio[1], 30.0, 1e-12);
  EXPECT_EQ(ratio[2], kRatioLossUndefinedRatio);
  EXPECT_EQ(w->alpha.scalar_type(), torch::kFloat32);
  const std::vector<double> alpha = values(w->alpha);
  EXPECT_NEAR(alpha[0], 1 + 0.1 * 3 / 0.85, 1e-6);
  EXPECT_NEAR(alpha[1], 4.0, 1e-6);
  EXPECT_NEAR(alpha[2], 2.0, 1e-6);

  // A lower threshold disqualifies (0,1) (0.8 > 0.75) and keeps (0,0) (0.5 <= 0.75): class 0 has
  // (0,0) and (1,1): Ra = 1 / |0.15 − 0.2|.
  RatioLossOptions strict;
  strict.dominance = 0.75;
  auto s = ratio_weights(before, after, strict);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(values(s->assigned), std::vector<double>({2, 1, 0}));
  EXPECT_NEAR(values(s->ratio)[0], 1 / 0.05, 1e-9);

  // The code multiplies the differences by 100; the ratios do not change (to rounding).
  std::vector<torch::Tensor> scaled;
  for (const torch::Tensor& a : after) scaled.push_back(a * 100);
  auto x100 = ratio_weights(before, scaled, options);
  ASSERT_TRUE(x100.ok());
  EXPECT_EQ(values(x100->assigned), values(w->assigned));
  for (size_t p = 0; p < 3; ++p) EXPECT_NEAR(values(x100->ratio)[p], ratio[p], 1e-9);
}

TEST(RatioWeightsTest, ChangesAreMeasuredFromBefore) {
  // The same changes from another classifier weight, in float32 as a model holds it. (Only the
  // elements away from the 0.8 boundary are checked: float32 rounding may move (0,1) across it.)
  const torch::Tensor before = rows({{0.5, -0.25}, {1.0, 2.0}, {-3.0, 0.125}}).to(torch::kFloat32);
  std::vector<torch::Tensor> after;
  for (const torch::Tensor& d : hand_deltas()) after.push_back(before + d.to(torch::kFloat32));
  auto w = ratio_weights(before, after, RatioLossOptions());
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_EQ(values(w->assigned)[1], 1);
  EXPECT_EQ(values(w->assigned)[2], 0);
  EXPECT_NEAR(values(w->ratio)[1], 30.0, 1e-4);
  EXPECT_EQ(values(w->ratio)[2], kRatioLossUndefinedRatio);
}

TEST(RatioWeightsTest, CapAppliesToRatiosAndToTheUndefinedRatio) {
  RatioLossOptions options;
  options.max_ratio = 5;
  options.alpha = 2;
  options.beta = 0.5;
  auto w = ratio_weights(torch::zeros({3, 2}, torch::kFloat64), hand_deltas(), options);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  const std::vector<double> ratio = values(w->ratio);
  EXPECT_NEAR(ratio[0], 3 / 0.85, 1e-12);  // 3.53: under the cap
  EXPECT_EQ(ratio[1], 5.0);                // 30, capped
  EXPECT_EQ(ratio[2], 5.0);                // 10, capped
  const std::vector<double> alpha = values(w->alpha);
  EXPECT_NEAR(alpha[0], 2 + 0.5 * 3 / 0.85, 1e-6);
  EXPECT_EQ(alpha[1], 4.5);
  EXPECT_EQ(alpha[2], 4.5);
}

TEST(RatioWeightsTest, AssignedElementsWithAZeroDenominatorGiveTen) {
  // K = 2, d = 1. Element (0,0): (1, 0): class 0's, the other class moved 0. Element (1,0):
  // (0, 2): class 1's, the other class moved 0. Both classes have an element and a denominator 0.
  const torch::Tensor before = torch::zeros({2, 1}, torch::kFloat32);
  const std::vector<torch::Tensor> after = {
      torch::tensor({1.0f, 0.0f}, torch::kFloat32).view({2, 1}),
      torch::tensor({0.0f, 2.0f}, torch::kFloat32).view({2, 1})};
  auto w = ratio_weights(before, after, RatioLossOptions());
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_EQ(values(w->assigned), std::vector<double>({1, 1}));
  EXPECT_EQ(values(w->ratio), std::vector<double>({10, 10}));
  EXPECT_EQ(values(w->alpha), std::vector<double>({2, 2}));
}

TEST(RatioWeightsTest, RefusesMismatchedOrNonFiniteInputs) {
  const torch::Tensor before = torch::zeros({2, 3}, torch::kFloat32);
  const torch::Tensor good = torch::ones({2, 3}, torch::kFloat32);
  const torch::Tensor nan = torch::full({2, 3}, std::numeric_limits<float>::quiet_NaN());
  struct Case {
    std::string what;
    torch::Tensor before;
    std::vector<torch::Tensor> after;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"one class", torch::zeros({1, 3}), {torch::ones({1, 3})}, "at least 2 classes"},
      {"one after for two classes", before, {good}, "1 trained weights for 2 classes"},
      {"misshapen after", before, {good, torch::ones({3, 2})}, "class 1"},
      {"nan after", before, {good, nan}, "class 1 is not finite"},
      {"nan before", nan, {good, good}, "the classifier weight is not finite"},
      {"1-D before", torch::zeros({2}), {torch::ones({2}), torch::ones({2})}, "2-D"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto w = ratio_weights(c.before, c.after, RatioLossOptions());
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(w.status(), c.message)) << w.status().message();
  }
}

// ---------------------------------------------------------------------------------------------
// Server and client

class RatioLossTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    clients_ = sim_clients(config_, 3);
    // The balanced auxiliary set: 10 examples of each class, classes interleaved so that "the
    // examples of class p in auxiliary-set order" is not a prefix.
    Dataset a = separable(20, /*seed=*/900, /*class0_share=*/0.5);
    std::vector<int64_t> order;
    for (int64_t i = 0; i < 10; ++i) {
      order.push_back(i);
      order.push_back(10 + i);
    }
    aux_ = a.subset(order);
    run_ = run_context(config_);
    run_.auxiliary = &aux_;
  }

  std::unique_ptr<RatioLossServer> server(
      const nlohmann::json& options = nlohmann::json::object()) {
    auto parsed = parse_ratioloss_options(options);
    EXPECT_TRUE(parsed.ok()) << parsed.status().to_string();
    auto s = std::make_unique<RatioLossServer>(parsed.value());
    run_.strategy_config = options;
    Rng rng(11);
    Status status = s->initialize(run_, rng);
    EXPECT_TRUE(status.ok()) << status.to_string();
    return s;
  }

  Status initialize_status(const RunConfig& config, const Dataset* aux) {
    RunContext run = run_context(config);
    run.auxiliary = aux;
    RatioLossServer s{RatioLossOptions()};
    Rng rng(11);
    return s.initialize(run, rng);
  }

  // The task bundle every client gets in `round`.
  std::shared_ptr<const TensorBundle> task_bundle(ServerStrategy& s, int round) {
    Rng rng = Rng::derive(config_.seed, "sample", {static_cast<uint64_t>(round)});
    auto tasks = s.configure_fit(round, infos(clients_), rng);
    EXPECT_TRUE(tasks.ok()) << tasks.status().to_string();
    if (!tasks.ok() || tasks->empty()) return nullptr;
    for (const TaskSpec& t : *tasks) EXPECT_EQ(t.bundle, tasks->front().bundle);
    return tasks->front().bundle;
  }

  // What the probe of `round` must give for the global model `global`, by its documented recipe:
  // for each class p, `global` trained on the auxiliary examples of class p (in auxiliary-set
  // order) by train_local with config.local and Rng::derive(seed, "ratioloss-aux", {round, p}).
  RatioWeights expected_weights(const TensorBundle& global, int round,
                                const RatioLossOptions& options) {
    Rng init(3);
    Model m = make_model(config_.model, init).value();
    std::vector<torch::Tensor> after;
    for (int64_t p = 0; p < 2; ++p) {
      std::vector<int64_t> idx;
      const std::vector<int64_t> labels = aux_.label_vector();
      for (size_t i = 0; i < labels.size(); ++i) {
        if (labels[i] == p) idx.push_back(static_cast<int64_t>(i));
      }
      EXPECT_TRUE(load_module_state(*m, global, /*strict=*/true).ok());
      Rng rng = Rng::derive(config_.seed, "ratioloss-aux",
                            {static_cast<uint64_t>(round), static_cast<uint64_t>(p)});
      auto stats = train_local(m, aux_.subset(idx), config_.local, torch::kCPU, rng);
      EXPECT_TRUE(stats.ok()) << stats.status().to_string();
      after.push_back(m->head(kClassifierHead)->weight.detach().clone());
    }
    auto w = ratio_weights(to_torch(*global.find(kWeight)), after, options);
    EXPECT_TRUE(w.ok()) << w.status().to_string();
    return std::move(w).value();
  }

  Result<FitOutput> fit(const TensorBundle& bundle, int k, int round = 1) {
    RatioLossClient algorithm;
    Rng rng =
        Rng::derive(config_.seed, "fit", {static_cast<uint64_t>(round), static_cast<uint64_t>(k)});
    ClientContext ctx = client_context(config_, clients_[k], round, &rng);
    return algorithm.fit(ctx, bundle);
  }

  RunConfig config_;
  RunContext run_;
  Dataset aux_;
  std::vector<SimClient> clients_;
};

TEST_F(RatioLossTest, InitializeRefusesARunWithoutAuxiliaryData) {
  Dataset empty = aux_.subset({});
  for (const Dataset* aux : std::vector<const Dataset*>{nullptr, &empty}) {
    const Status s = initialize_status(config_, aux);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(s, "config.data.auxiliary_per_class")) << s.message();
    EXPECT_TRUE(contains(s, "63")) << s.message();
  }
  // One class missing from the auxiliary set.
  Dataset only_class_0 = separable(10, /*seed=*/901, /*class0_share=*/1.0);
  const Status missing = initialize_status(config_, &only_class_0);
  EXPECT_EQ(missing.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(missing, "no example of class 1")) << missing.message();
}

TEST_F(RatioLossTest, InitializeRefusesALocalLossOtherThanCrossEntropy) {
  RunConfig focal = config_;
  focal.local.loss.kind = LocalLossOptions::Kind::kFocal;
  const Status s = initialize_status(focal, &aux_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(s, "config.local.loss")) << s.message();
  EXPECT_TRUE(contains(s, "ratioloss")) << s.message();
  EXPECT_TRUE(initialize_status(config_, &aux_).ok());
}

TEST_F(RatioLossTest, RoundOneSendsOnesAndTheNextRoundTheProbesWeights) {
  auto s = server();
  const std::shared_ptr<const TensorBundle> g1 = s->global_bundle();

  // Round 1: the global model plus α = 1.
  auto b1 = task_bundle(*s, 1);
  ASSERT_NE(b1, nullptr);
  auto a1 = task_alpha(*b1, 2);
  ASSERT_TRUE(a1.ok()) << a1.status().to_string();
  EXPECT_EQ(values(*a1), std::vector<double>({1, 1}));
  EXPECT_EQ(b1->size(), g1->size() + 1);
  for (const NamedTensor& t : *g1) EXPECT_TRUE(t.bitwise_equal(*b1->find(t.name()))) << t.name();

  const nlohmann::json m1 = run_round(*s, *make_ratioloss_client({}).value(), config_, clients_, 1);
  ASSERT_TRUE(m1.contains("ratioloss")) << m1.dump();
  EXPECT_EQ(m1["updated"], true);
  EXPECT_EQ(m1["ratioloss"]["alpha"], nlohmann::json({1.0, 1.0}));

  // Round 2: α from round 1's probe of g1, by the documented recipe, bit for bit.
  auto b2 = task_bundle(*s, 2);
  ASSERT_NE(b2, nullptr);
  auto a2 = task_alpha(*b2, 2);
  ASSERT_TRUE(a2.ok()) << a2.status().to_string();
  ASSERT_EQ(a2->dim(), 1);
  ASSERT_EQ(a2->size(0), 2);
  const std::vector<double> alpha = values(*a2);
  for (double a : alpha) {
    EXPECT_TRUE(std::isfinite(a));
    EXPECT_GE(a, 1.0);
  }
  EXPECT_NE(alpha, std::vector<double>({1, 1}));
  const RatioWeights want = expected_weights(*g1, 1, s->options());
  EXPECT_TRUE(torch::equal(*a2, want.alpha)) << *a2 << want.alpha;
  EXPECT_EQ(m1["ratioloss"]["next_alpha"], nlohmann::json(alpha));
  EXPECT_EQ(m1["ratioloss"]["ratio"], nlohmann::json(values(want.ratio)));
  EXPECT_EQ(m1["ratioloss"]["assigned"].size(), 2u);
  EXPECT_TRUE(m1["ratioloss"]["probe_seconds"].is_number());
  // The model part is the new global model.
  for (const NamedTensor& t : *s->global_bundle()) {
    EXPECT_TRUE(t.bitwise_equal(*b2->find(t.name()))) << t.name();
  }

  // Evaluation tasks carry the plain global model; so does global_bundle().
  Rng rng(5);
  auto eval = s->configure_evaluate(2, infos(clients_), rng);
  ASSERT_TRUE(eval.ok());
  ASSERT_FALSE(eval->empty());
  EXPECT_FALSE(eval->front().bundle->contains(kRatioLossAlphaTensor));
  EXPECT_FALSE(s->global_bundle()->contains(kRatioLossAlphaTensor));
}

TEST_F(RatioLossTest, ClientWithUnitWeightsTrainsExactlyAsFedAvg) {
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  auto ours = fit(with_alpha(global, alpha_tensor({1, 1})), 0);
  ASSERT_TRUE(ours.ok()) << ours.status().to_string();
  EXPECT_FALSE(ours->update.contains(kRatioLossAlphaTensor));

  FedAvgClient fedavg;
  Rng rng = Rng::derive(config_.seed, "fit", {1, 0});
  ClientContext ctx = client_context(config_, clients_[0], 1, &rng);
  auto theirs = fedavg.fit(ctx, global);
  ASSERT_TRUE(theirs.ok()) << theirs.status().to_string();
  EXPECT_TRUE(ours->update.bitwise_equal(theirs->update));
  EXPECT_EQ(ours->num_examples, theirs->num_examples);
}

TEST_F(RatioLossTest, ClientStepIsOneSgdStepOnTheRatioLoss) {
  config_ = one_step_config();
  clients_ = sim_clients(config_, 1);
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  const std::vector<float> a = {2.0f, 0.5f};

  Rng init(999);
  Model ref = make_model(config_.model, init).value();
  ASSERT_TRUE(load_module_state(*ref, global, /*strict=*/true).ok());
  ref->train();
  const Dataset& train = clients_[0].train;
  torch::Tensor loss = ratio_cross_entropy(ref->forward(inputs(train)), train.labels,
                                           torch::tensor(a, torch::kFloat32));
  loss.backward();
  const std::map<std::string, torch::Tensor> want = stepped(ref, config_.local.lr);

  auto out = fit(with_alpha(global, alpha_tensor(a)), 0);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_NEAR(out->metrics["loss"].get<double>(), loss.item<double>(), 1e-5);
  EXPECT_EQ(out->metrics["steps"], 1);
  expect_near(out->update, want);

  // Not FedAvg's step: the weights matter.
  auto plain = fit(with_alpha(global, alpha_tensor({1, 1})), 0);
  ASSERT_TRUE(plain.ok());
  EXPECT_GT((to_torch(*out->update.find(kWeight)) - to_torch(*plain->update.find(kWeight)))
                .abs()
                .max()
                .item<double>(),
            1e-4);
}

TEST_F(RatioLossTest, ClientRefusesABadAlphaOrAForeignTensor) {
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    std::string what;
    TensorBundle bundle;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({"missing", global.clone(), "missing"});
  cases.push_back({"three classes", with_alpha(global, alpha_tensor({1, 1, 1})), "float32 [2]"});
  cases.push_back({"2-D",
                   with_alpha(global, NamedTensor::from_values<float>(
                                          kRatioLossAlphaTensor, DType::kFloat32, {2, 1}, {1, 1})),
                   "float32 [2]"});
  cases.push_back({"float64",
                   with_alpha(global, NamedTensor::from_values<double>(
                                          kRatioLossAlphaTensor, DType::kFloat64, {2}, {1, 1})),
                   "float32 [2]"});
  cases.push_back({"nan", with_alpha(global, alpha_tensor({1, nan})), "class 1"});
  cases.push_back({"inf", with_alpha(global, alpha_tensor({inf, 1})), "class 0"});
  cases.push_back({"zero", with_alpha(global, alpha_tensor({0, 1})), "finite and > 0"});
  cases.push_back({"negative", with_alpha(global, alpha_tensor({1, -2})), "finite and > 0"});
  {
    TensorBundle foreign = with_alpha(global, alpha_tensor({1, 1}));
    ASSERT_TRUE(foreign.add(alpha_tensor({1, 1}, "velocity.x")).ok());
    cases.push_back({"foreign tensor", std::move(foreign), "\"velocity.x\": not a tensor"});
  }
  for (Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto out = fit(c.bundle, 0);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(out.status(), c.message)) << out.status().message();
    if (c.what != "foreign tensor") {
      EXPECT_TRUE(contains(out.status(), kRatioLossAlphaTensor)) << out.status().message();
    }
  }
}

TEST_F(RatioLossTest, ResumeFromASavedStateIsBitExact) {
  auto a = server();
  auto client = make_ratioloss_client({}).value();
  for (int round = 1; round <= 2; ++round) run_round(*a, *client, config_, clients_, round);
  auto state = a->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();
  const NamedTensor* saved_alpha = state->find("ratioloss/alpha");
  ASSERT_NE(saved_alpha, nullptr);
  EXPECT_TRUE(torch::equal(to_torch(*saved_alpha), a->alpha()));

  RatioLossServer b{RatioLossOptions()};
  ASSERT_TRUE(b.load_state(state->clone()).ok());
  // Without resume there is no auxiliary set to probe with.
  auto early = b.begin_aggregation(3);
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(b.resume(run_).ok());

  auto ta = task_bundle(*a, 3);
  auto tb = task_bundle(b, 3);
  ASSERT_TRUE(ta != nullptr && tb != nullptr);
  EXPECT_TRUE(ta->bitwise_equal(*tb));

  // The next round's probe recomputes the same weights.
  nlohmann::json ma = run_round(*a, *client, config_, clients_, 3);
  nlohmann::json mb = run_round(b, *client, config_, clients_, 3);
  ma["ratioloss"].erase("probe_seconds");
  mb["ratioloss"].erase("probe_seconds");
  EXPECT_EQ(ma, mb);
  auto next_a = task_bundle(*a, 4);
  auto next_b = task_bundle(b, 4);
  ASSERT_TRUE(next_a != nullptr && next_b != nullptr);
  EXPECT_TRUE(next_a->bitwise_equal(*next_b));
  EXPECT_TRUE(a->save_state()->bitwise_equal(*b.save_state()));
}

TEST_F(RatioLossTest, ResumeAndLoadStateRefuseWhatTheyCannotUse) {
  auto s = server();
  RunContext no_aux = run_;
  no_aux.auxiliary = nullptr;
  RatioLossServer fresh{RatioLossOptions()};
  EXPECT_EQ(fresh.resume(run_).code(), StatusCode::kFailedPrecondition);  // before load_state

  auto state = s->save_state();
  ASSERT_TRUE(state.ok());
  RatioLossServer loaded{RatioLossOptions()};
  ASSERT_TRUE(loaded.load_state(state->clone()).ok());
  const Status refused = loaded.resume(no_aux);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(refused, "config.data.auxiliary_per_class")) << refused.message();

  // A state whose α is missing, misshapen or not positive.
  auto edited = [&](const std::string& drop, std::optional<NamedTensor> add) {
    return edited_bundle(*state, drop, std::move(add));
  };
  const std::vector<std::pair<TensorBundle, std::string>> bad = [&] {
    std::vector<std::pair<TensorBundle, std::string>> v;
    v.emplace_back(edited("ratioloss/alpha", std::nullopt), "missing");
    v.emplace_back(edited("ratioloss/alpha", alpha_tensor({1, 1, 1}, "ratioloss/alpha")),
                   "float32 [2]");
    v.emplace_back(edited("ratioloss/alpha", alpha_tensor({1, 0}, "ratioloss/alpha")),
                   "finite and > 0");
    v.emplace_back(edited("", alpha_tensor({1, 1}, "ratioloss/other")), "unexpected tensor");
    return v;
  }();
  for (const auto& [bundle, message] : bad) {
    SCOPED_TRACE(message);
    RatioLossServer t{RatioLossOptions()};
    const Status st = t.load_state(bundle.clone());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(st, message)) << st.message();
    EXPECT_TRUE(t.global_bundle() == nullptr);  // unchanged
  }
}

}  // namespace
}  // namespace fedtail::strategies

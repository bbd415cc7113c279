#include "strategies/fedavg/fedavg.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "strategies/classifier_eval.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::infos;
using testing::run_round;
using testing::separable;
using testing::sim_clients;
using testing::SimClient;

class FedAvgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    register_builtin_strategies();
    config_ = testing::tiny_config();
    run_ = testing::run_context(config_);
    clients_ = sim_clients(config_, 3);
    test_set_ = separable(64, /*seed=*/999);
  }

  std::unique_ptr<ServerStrategy> server(const nlohmann::json& strategy_config) {
    auto s = make_server_strategy("fedavg", strategy_config);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    return s.ok() ? std::move(s).value() : nullptr;
  }

  std::unique_ptr<ServerStrategy> initialized_server(const nlohmann::json& strategy_config) {
    auto s = server(strategy_config);
    Rng init = Rng::derive(config_.seed, "init");
    Status st = s->initialize(run_, init);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return s;
  }

  std::unique_ptr<ClientAlgorithm> client() {
    auto c = make_client_algorithm("fedavg", nlohmann::json::object());
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return std::move(c).value();
  }

  ServerEvalContext eval_context() {
    ServerEvalContext ctx;
    ctx.test = &test_set_;
    ctx.train_class_counts = {100, 100};
    ctx.batch_size = 32;
    return ctx;
  }

  // Trains client k on the current global model and returns its update.
  ClientUpdate fit(ServerStrategy& s, ClientAlgorithm& algorithm, int k, int round = 1) {
    Rng rng =
        Rng::derive(config_.seed, "fit", {static_cast<uint64_t>(round), static_cast<uint64_t>(k)});
    ClientContext ctx = client_context(config_, clients_[k], round, &rng);
    auto out = algorithm.fit(ctx, *s.global_bundle());
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    ClientUpdate u;
    u.client_id = clients_[k].id;
    u.num_examples = out->num_examples;
    u.bundle = std::move(out->update);
    u.metrics = out->metrics;
    return u;
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
  Dataset test_set_;
};

TEST_F(FedAvgTest, InitializeBuildsTheWholeModelStateIncludingBatchNormBuffers) {
  auto s = initialized_server({});
  auto global = s->global_bundle();
  ASSERT_NE(global, nullptr);
  EXPECT_NE(global->find("backbone.bn1.running_mean"), nullptr);
  EXPECT_NE(global->find("backbone.bn1.num_batches_tracked"), nullptr);
  EXPECT_NE(global->find("heads.classifier.weight"), nullptr);
  EXPECT_EQ(global->metadata()["strategy"], "fedavg");
  EXPECT_EQ(global->metadata()["round"], 0);

  // Same Rng, same model.
  auto again = initialized_server({});
  EXPECT_TRUE(again->global_bundle()->bitwise_equal(*global));

  // Sizes that are still unknown are reported.
  RunConfig unfilled = config_;
  unfilled.model.in_channels = 0;
  RunContext run = testing::run_context(unfilled);
  Rng rng(1);
  Status st = server({})->initialize(run, rng);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("in_channels"), std::string::npos) << st.message();
}

TEST_F(FedAvgTest, ATinyFederationLearnsWithoutNetwork) {
  config_.local.epochs = 3;
  auto s = initialized_server({{"min_fit_clients", 2}});
  auto algorithm = client();
  auto before = s->evaluate(0, eval_context());
  ASSERT_TRUE(before.ok()) << before.status().to_string();
  ASSERT_TRUE((*before)["generic"]["overall"].is_number());
  ASSERT_TRUE((*before)["generic_by_count_rule"]["overall"].is_number());
  EXPECT_EQ((*before)["generic"]["examples"], 64);

  std::vector<double> losses;
  for (int round = 1; round <= 3; ++round) {
    nlohmann::json m = run_round(*s, *algorithm, config_, clients_, round);
    ASSERT_EQ(m["updated"], true) << m.dump();
    EXPECT_EQ(m["updates"], 3);
    EXPECT_EQ(m["failures"], 0);
    EXPECT_EQ(m["examples"], 32 + 40 + 48);
    ASSERT_TRUE(m["loss"].is_number()) << m.dump();
    losses.push_back(m["loss"].get<double>());
    EXPECT_EQ(s->global_bundle()->metadata()["round"], round);
  }
  EXPECT_LT(losses.back(), losses.front());
  auto after = s->evaluate(3, eval_context());
  ASSERT_TRUE(after.ok()) << after.status().to_string();
  const double accuracy = (*after)["generic"]["overall"].get<double>();
  EXPECT_GT(accuracy, 0.85) << after->dump();
  EXPECT_GE(accuracy, (*before)["generic"]["overall"].get<double>());
  EXPECT_EQ((*after)["generic"]["groups"]["rule"].get<std::string>().find("cumulative"), 0u);
}

TEST_F(FedAvgTest, TheNewGlobalModelIsTheExampleWeightedMeanOfTheUpdates) {
  auto s = initialized_server({});
  auto algorithm = client();
  std::vector<ClientUpdate> updates;
  for (int k = 0; k < 3; ++k) updates.push_back(fit(*s, *algorithm, k));
  auto agg = s->begin_aggregation(1);
  ASSERT_TRUE(agg.ok());
  std::vector<TensorBundle> copies;
  std::vector<int64_t> weights;
  for (ClientUpdate& u : updates) {
    copies.push_back(u.bundle.clone());
    weights.push_back(u.num_examples);
    ASSERT_TRUE((*agg)->add(std::move(u)).ok());
  }
  auto m = (*agg)->finish({});
  ASSERT_TRUE(m.ok());
  const TensorBundle& global = *s->global_bundle();
  const double total = weights[0] + weights[1] + weights[2];
  for (const char* name : {"heads.classifier.weight", "backbone.bn2.running_var"}) {
    const NamedTensor* g = global.find(name);
    ASSERT_NE(g, nullptr) << name;
    for (int64_t i = 0; i < g->numel(); i += 7) {
      double expected = 0;
      for (int k = 0; k < 3; ++k) expected += weights[k] * copies[k].find(name)->data<float>()[i];
      EXPECT_FLOAT_EQ(g->data<float>()[i], static_cast<float>(expected / total)) << name << i;
    }
  }
  // The BatchNorm step counters are averaged too (and rounded).
  double counters = 0;
  for (int k = 0; k < 3; ++k) {
    counters += weights[k] * copies[k].find("backbone.bn1.num_batches_tracked")->data<int64_t>()[0];
  }
  EXPECT_EQ(global.find("backbone.bn1.num_batches_tracked")->data<int64_t>()[0],
            static_cast<int64_t>(std::llround(counters / total)));
  EXPECT_GT(global.find("backbone.bn1.num_batches_tracked")->data<int64_t>()[0], 0);
}

TEST_F(FedAvgTest, SaveAndLoadStateRoundTripBitExactly) {
  auto a = initialized_server({{"min_fit_clients", 2}});
  auto algorithm = client();
  run_round(*a, *algorithm, config_, clients_, 1);
  auto state = a->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();

  // A fresh server from the factory, never initialised: load_state alone restores it.
  auto b = server({{"min_fit_clients", 2}});
  Status loaded = b->load_state(state->clone());
  ASSERT_TRUE(loaded.ok()) << loaded.to_string();
  EXPECT_TRUE(b->global_bundle()->bitwise_equal(*a->global_bundle()));
  auto state_b = b->save_state();
  ASSERT_TRUE(state_b.ok());
  EXPECT_TRUE(state_b->bitwise_equal(*state));

  auto eval_a = a->evaluate(1, eval_context());
  auto eval_b = b->evaluate(1, eval_context());
  ASSERT_TRUE(eval_a.ok() && eval_b.ok()) << eval_b.status().to_string();
  EXPECT_EQ(*eval_a, *eval_b);

  // The next round is identical on both.
  nlohmann::json ma = run_round(*a, *algorithm, config_, clients_, 2);
  nlohmann::json mb = run_round(*b, *algorithm, config_, clients_, 2);
  EXPECT_EQ(ma, mb);
  EXPECT_TRUE(b->global_bundle()->bitwise_equal(*a->global_bundle()));
}

TEST_F(FedAvgTest, LoadStateRefusesForeignStatesAndStaysUnchanged) {
  auto a = initialized_server({});
  auto state = a->save_state();
  ASSERT_TRUE(state.ok());

  auto prox = make_server_strategy("fedprox", {});
  ASSERT_TRUE(prox.ok());
  Status st = (*prox)->load_state(state->clone());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("saved by strategy \"fedavg\""), std::string::npos) << st.message();
  EXPECT_EQ((*prox)->global_bundle(), nullptr);

  auto b = initialized_server({});
  const auto before = b->global_bundle();
  TensorBundle extra = state->clone();
  ASSERT_TRUE(extra.add_zeros("velocity/x", DType::kFloat32, {1}).ok());
  st = b->load_state(std::move(extra));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("unexpected tensor \"velocity/x\""), std::string::npos)
      << st.message();
  EXPECT_EQ(b->global_bundle(), before);
}

TEST_F(FedAvgTest, FewerThanMinFitClientsKeepsTheOldModel) {
  auto s = initialized_server({{"min_fit_clients", 2}});
  auto algorithm = client();
  const auto old_global = s->global_bundle();
  auto agg = s->begin_aggregation(1);
  ASSERT_TRUE(agg.ok());
  ASSERT_TRUE((*agg)->add(fit(*s, *algorithm, 0)).ok());
  auto m = (*agg)->finish({{"client-1", "deadline exceeded"}});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)["updated"], false);
  EXPECT_EQ((*m)["updates"], 1);
  EXPECT_EQ((*m)["failures"], 1);
  EXPECT_NE((*m)["reason"].get<std::string>().find("min_fit_clients = 2"), std::string::npos);
  EXPECT_EQ(s->global_bundle(), old_global);

  // Too few available clients to start a round at all.
  Rng rng(1);
  auto tasks = s->configure_fit(1, {{"client-0", 10, "cnn"}}, rng);
  EXPECT_EQ(tasks.status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(FedAvgTest, FailuresKeepTheOldModelWhenNotAccepted) {
  auto s = initialized_server({{"accept_failures", false}});
  auto algorithm = client();
  const auto old_global = s->global_bundle();
  auto agg = s->begin_aggregation(1);
  ASSERT_TRUE(agg.ok());
  ASSERT_TRUE((*agg)->add(fit(*s, *algorithm, 0)).ok());
  ASSERT_TRUE((*agg)->add(fit(*s, *algorithm, 1)).ok());
  auto m = (*agg)->finish({{"client-2", "crashed"}});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)["updated"], false);
  EXPECT_NE((*m)["reason"].get<std::string>().find("accept_failures"), std::string::npos);
  EXPECT_EQ(s->global_bundle(), old_global);
}

TEST_F(FedAvgTest, BadAndDuplicateUpdatesAreRefused) {
  auto s = initialized_server({});
  auto algorithm = client();
  auto agg = s->begin_aggregation(1);
  ASSERT_TRUE(agg.ok());
  ClientUpdate good = fit(*s, *algorithm, 0);
  ClientUpdate again;
  again.client_id = good.client_id;
  again.num_examples = good.num_examples;
  again.bundle = good.bundle.clone();
  ASSERT_TRUE((*agg)->add(std::move(good)).ok());
  Status dup = (*agg)->add(std::move(again));
  EXPECT_EQ(dup.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dup.message().find("second update"), std::string::npos);

  ClientUpdate bad;
  bad.client_id = "client-1";
  bad.num_examples = 5;
  ASSERT_TRUE(bad.bundle.add_zeros("heads.classifier.weight", DType::kFloat32, {3, 16}).ok());
  Status refused = (*agg)->add(std::move(bad));
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("tensor \"backbone.conv1.weight\": missing"), std::string::npos)
      << refused.message();

  ClientUpdate empty_client = fit(*s, *algorithm, 2);
  empty_client.num_examples = 0;
  EXPECT_EQ((*agg)->add(std::move(empty_client)).code(), StatusCode::kInvalidArgument);
  auto m = (*agg)->finish({});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)["updates"], 1);
  EXPECT_EQ((*m)["updated"], true);
}

TEST_F(FedAvgTest, ClientEvaluationAndPersonalizedAccuracy) {
  auto s = initialized_server({{"fraction_evaluate", 1.0}});
  auto algorithm = client();
  for (int round = 1; round <= 2; ++round) run_round(*s, *algorithm, config_, clients_, round);
  Rng rng(3);
  auto tasks = s->configure_evaluate(2, infos(clients_), rng);
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 3u);

  std::vector<EvalReport> reports;
  for (size_t k = 0; k < clients_.size(); ++k) {
    Rng crng(10 + k);
    ClientContext ctx = client_context(config_, clients_[k], 2, &crng);
    auto metrics = algorithm->evaluate(ctx, *(*tasks)[k].bundle);
    ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
    EXPECT_EQ((*metrics)["examples"], 24);
    EXPECT_EQ((*metrics)["masked"], false);
    const auto per_class = (*metrics)["per_class_examples"].get<std::vector<int64_t>>();
    EXPECT_EQ(per_class[0] + per_class[1], 24);
    const auto per_correct = (*metrics)["per_class_correct"].get<std::vector<int64_t>>();
    EXPECT_EQ(per_correct[0] + per_correct[1], (*metrics)["correct"].get<int64_t>());
    reports.push_back({clients_[k].id, 24, *metrics});
  }
  reports.push_back({"client-bogus", 3, {{"correct", 5}, {"examples", 3}}});
  auto agg = s->aggregate_evaluate(2, reports, {{"client-9", "left"}});
  ASSERT_TRUE(agg.ok());
  EXPECT_EQ((*agg)["personalized"]["clients"], 3);
  EXPECT_EQ((*agg)["personalized"]["examples"], 72);  // the bogus report is left out
  int64_t correct = 0;
  for (size_t k = 0; k < 3; ++k) correct += reports[k].metrics["correct"].get<int64_t>();
  EXPECT_DOUBLE_EQ((*agg)["personalized"]["weighted"].get<double>(), correct / 72.0);
  EXPECT_EQ((*agg)["invalid_reports"], nlohmann::json::array({"client-bogus"}));
  EXPECT_EQ((*agg)["failures"], 1);
  EXPECT_EQ((*agg)["masked"], false);

  // With masking, a client that trained on class 0 only never predicts class 1.
  RunConfig masked_config = config_;
  masked_config.eval.mask_absent_classes = true;
  SimClient only_zero = std::move(clients_[0]);
  only_zero.train = separable(16, /*seed=*/1, /*class0_share=*/1.0);
  Rng crng(4);
  ClientContext ctx = client_context(masked_config, only_zero, 2, &crng);
  auto masked = algorithm->evaluate(ctx, *s->global_bundle());
  ASSERT_TRUE(masked.ok()) << masked.status().to_string();
  EXPECT_EQ((*masked)["masked"], true);
  EXPECT_EQ((*masked)["per_class_correct"][1], 0);
  EXPECT_EQ((*masked)["per_class_correct"][0], (*masked)["per_class_examples"][0]);

  // No federated evaluation when fraction_evaluate is 0.
  auto quiet = initialized_server({{"fraction_evaluate", 0.0}});
  auto none = quiet->configure_evaluate(1, infos(clients_), rng);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(FedAvgTest, ClientRefusesAnIncompleteContext) {
  auto s = initialized_server({});
  auto algorithm = client();
  Rng rng(1);
  ClientContext ctx = client_context(config_, clients_[0], 1, &rng);
  ctx.train = nullptr;
  EXPECT_EQ(algorithm->fit(ctx, *s->global_bundle()).status().code(), StatusCode::kInvalidArgument);
  ctx = client_context(config_, clients_[0], 1, &rng);
  TensorBundle wrong;
  ASSERT_TRUE(wrong.add_zeros("nothing", DType::kFloat32, {1}).ok());
  auto out = algorithm->fit(ctx, wrong);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("global model"), std::string::npos);
}

// `global` with `shift` added to every float32 element.
ClientUpdate shifted(const TensorBundle& global, const std::string& id, float shift,
                     int64_t examples = 10) {
  ClientUpdate u;
  u.client_id = id;
  u.num_examples = examples;
  for (const NamedTensor& t : global) {
    NamedTensor copy = t.clone();
    if (copy.dtype() == DType::kFloat32) {
      float* v = copy.data<float>();
      for (int64_t i = 0; i < copy.numel(); ++i) v[i] += shift;
    }
    EXPECT_TRUE(u.bundle.add(std::move(copy)).ok());
  }
  return u;
}

// The first float32 element of `bundle` minus that of `global`.
float first_step(const TensorBundle& bundle, const TensorBundle& global) {
  for (size_t i = 0; i < global.size(); ++i) {
    if (global.at(i).dtype() == DType::kFloat32) {
      return bundle.find(global.at(i).name())->data<float>()[0] - global.at(i).data<float>()[0];
    }
  }
  return NAN;
}

TEST_F(FedAvgTest, RobustMedianIgnoresAScaledAttackerThatFedAvgFollows) {
  for (const char* method : {"none", "median", "trimmed_mean", "krum", "multi_krum", "bulyan"}) {
    SCOPED_TRACE(method);
    auto s = initialized_server(
        {{"robust", {{"method", method}, {"byzantine", 1}, {"trim_fraction", 0.2}}}});
    const TensorBundle global = s->global_bundle()->clone();
    auto aggregation = s->begin_aggregation(1);
    ASSERT_TRUE(aggregation.ok()) << aggregation.status().to_string();
    // Six honest steps of 0.01..0.06 and one attacker's step of 100 (Bulyan needs n >= 4f + 3).
    for (int k = 0; k < 6; ++k) {
      ASSERT_TRUE((*aggregation)
                      ->add(shifted(global, "honest-" + std::to_string(k), 0.01f * (k + 1)))
                      .ok());
    }
    ASSERT_TRUE((*aggregation)->add(shifted(global, "mallory", 100.0f)).ok());
    auto metrics = (*aggregation)->finish({});
    ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
    EXPECT_TRUE((*metrics)["updated"].get<bool>());
    const float step = first_step(*s->global_bundle(), global);
    if (std::string(method) == "none") {
      EXPECT_GT(step, 14.0f);  // (0.21 + 100) / 7: the attacker moves the model
      EXPECT_FALSE(metrics->contains("robust"));
    } else {
      EXPECT_GT(step, 0.0095f) << metrics->dump();
      EXPECT_LT(step, 0.0605f) << metrics->dump();
      EXPECT_EQ((*metrics)["robust"]["method"], method);
      EXPECT_GT((*metrics)["robust"]["buffered_bytes"].get<uint64_t>(), 0u);
    }
    if (std::string(method) == "median") {
      EXPECT_NEAR(step, 0.04f, 1e-5);
    }
    if (std::string(method) == "krum") {
      EXPECT_EQ((*metrics)["robust"]["selected"].size(), 1u);
      EXPECT_NE((*metrics)["robust"]["selected"][0], 6);  // never mallory
    }
  }
}

TEST_F(FedAvgTest, RobustClippingBoundsEveryStepAndCountsTheClipped) {
  auto s = initialized_server({{"robust", {{"clip_norm", 1.0}}}});
  const TensorBundle global = s->global_bundle()->clone();
  int64_t floats = 0;
  for (const NamedTensor& t : global) {
    if (t.dtype() == DType::kFloat32) floats += t.numel();
  }
  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());
  ASSERT_TRUE((*aggregation)->add(shifted(global, "honest", 1e-6f)).ok());
  ASSERT_TRUE((*aggregation)->add(shifted(global, "mallory", 100.0f)).ok());
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  const nlohmann::json& robust = (*metrics)["robust"];
  EXPECT_EQ(robust["method"], "none");
  EXPECT_EQ(robust["clipped"], 1);
  EXPECT_NEAR(robust["max_update_norm"].get<double>(), 100.0 * std::sqrt(floats), 1e-3 * floats);
  // Mallory's step was cut to norm 1: each element 1/sqrt(floats); the mean halves it.
  EXPECT_NEAR(first_step(*s->global_bundle(), global), 0.5 / std::sqrt(floats) + 0.5e-6, 1e-6);
}

TEST_F(FedAvgTest, RobustOptionsAreCheckedAndABufferedRoundOverItsMemoryCapIsRefused) {
  auto bad = make_server_strategy("fedavg", {{"robust", {{"method", "mean"}}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("config.strategy.robust.method"), std::string::npos)
      << bad.status().message();
  auto proto = make_server_strategy("fedproto", {{"robust", {{"method", "median"}}}});
  ASSERT_FALSE(proto.ok());
  EXPECT_NE(proto.status().message().find("not supported"), std::string::npos);

  auto s = initialized_server({{"robust", {{"method", "krum"}, {"max_buffered_bytes", 1000}}}});
  Rng rng = Rng::derive(1, "select");
  auto tasks = s->configure_fit(1, infos(clients_), rng);
  ASSERT_FALSE(tasks.ok());
  EXPECT_EQ(tasks.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(tasks.status().message().find("max_buffered_bytes"), std::string::npos)
      << tasks.status().message();
}

TEST(AggregatePersonalizedAccuracy, AReportClaimingMoreThanAnyClientHoldsIsLeftOut) {
  auto report = [](const std::string& id, int64_t correct, int64_t examples) {
    EvalReport r;
    r.client_id = id;
    r.num_examples = examples;
    r.metrics = {{"correct", correct}, {"examples", examples}};
    return r;
  };
  // Mallory claims 2^62 perfect answers: counted, she would be the personalised accuracy.
  const int64_t huge = int64_t{1} << 62;
  const nlohmann::json out = aggregate_personalized_accuracy(
      {report("alice", 3, 10), report("bob", 7, 10), report("mallory", huge, huge)}, {});
  EXPECT_DOUBLE_EQ(out["personalized"]["weighted"].get<double>(), 0.5);
  EXPECT_EQ(out["personalized"]["clients"], 2);
  EXPECT_EQ(out["invalid_reports"], nlohmann::json::array({"mallory"}));
}

}  // namespace
}  // namespace fedtail::strategies

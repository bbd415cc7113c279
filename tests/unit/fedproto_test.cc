#include "strategies/fedproto/fedproto.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "common/learning/train_loop.h"
#include "common/wire/bundle_codec.h"
#include "strategies/prototypes/prototype_average.h"
#include "strategies/registry.h"
#include "tests/unit/prototype_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::hetero_clients;
using testing::hetero_config;
using testing::hetero_infos;
using testing::make_set;
using testing::matrix;
using testing::prototype_update;
using testing::run_context;
using testing::SimClient;

// ---------------------------------------------------------------------------------------------
// The loss term

TEST(FedProtoLossTest, RegularizationIsTheMseToThePresentGlobalPrototype) {
  torch::Tensor z = matrix({{1, 2}, {3, 4}, {5, 6}}).set_requires_grad(true);
  const torch::Tensor prototypes = matrix({{0, 0}, {1, 1}});
  const torch::Tensor present = torch::tensor({true, false});
  const torch::Tensor y = torch::tensor({0, 1, 0}, torch::kInt64);
  // Rows 0 and 2 against P̄_0: 1 + 4 and 25 + 36; row 1's class is absent: 0. Mean over 3·2.
  torch::Tensor loss = prototype_regularization(z, prototypes, present, y);
  EXPECT_NEAR(loss.item<double>(), 66.0 / 6.0, 1e-5);
  loss.backward();
  // d/dz = 2(z − P̄)/6 for present rows, 0 for the absent one.
  EXPECT_NEAR(z.grad()[0][1].item<double>(), 2.0 * 2 / 6, 1e-6);
  EXPECT_EQ(z.grad()[1].abs().sum().item<double>(), 0.0);
  EXPECT_NEAR(z.grad()[2][0].item<double>(), 2.0 * 5 / 6, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Aggregation

TEST(PrototypeAverageTest, UnweightedIsTheMeanOverTheClientsHoldingEachClass) {
  PrototypeAverage average(2, 2, /*weighted=*/false);
  ASSERT_TRUE(average.add(make_set({{1, 2}, {9, 9}}, {4, 0})).ok());  // class 1 absent
  ASSERT_TRUE(average.add(make_set({{3, 4}, {5, 6}}, {1, 1})).ok());
  PrototypeSet mean = average.finish();
  EXPECT_EQ(mean.rows, (std::vector<float>{2, 3, 5, 6}));
  EXPECT_EQ(mean.counts, (std::vector<int64_t>{2, 1}));  // clients behind each row
  EXPECT_EQ(average.updates(), 2);
}

TEST(PrototypeAverageTest, WeightedUsesTheClientsCounts) {
  PrototypeAverage average(2, 2, /*weighted=*/true);
  ASSERT_TRUE(average.add(make_set({{1, 2}, {0, 0}}, {1, 0})).ok());
  ASSERT_TRUE(average.add(make_set({{3, 4}, {5, 6}}, {3, 7})).ok());
  PrototypeSet mean = average.finish();
  // (1·(1, 2) + 3·(3, 4)) / 4 = (2.5, 3.5).
  EXPECT_EQ(mean.rows, (std::vector<float>{2.5f, 3.5f, 5, 6}));
  EXPECT_EQ(mean.counts, (std::vector<int64_t>{4, 7}));
  EXPECT_EQ(average.add(make_set({{1, 2, 3}, {1, 2, 3}}, {1, 1})).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(average.updates(), 2);
}

TEST(PrototypeEvaluationTest, CombinesBothRulesOverClients) {
  auto report = [](const std::string& id, int correct, int examples, int head_correct) {
    return EvalReport{id,
                      examples,
                      {{"correct", correct},
                       {"examples", examples},
                       {"global_prototypes", 2},
                       {"head", {{"correct", head_correct}, {"examples", examples}}}}};
  };
  nlohmann::json out = aggregate_prototype_evaluation(
      {report("client-0", 3, 4, 1), report("client-1", 1, 2, 0)}, {{"client-2", "left"}});
  EXPECT_DOUBLE_EQ(out["personalized"]["mean"].get<double>(), (0.75 + 0.5) / 2);
  EXPECT_DOUBLE_EQ(out["personalized"]["weighted"].get<double>(), 4.0 / 6);
  EXPECT_DOUBLE_EQ(out["personalized_head"]["mean"].get<double>(), (0.25 + 0.0) / 2);
  EXPECT_DOUBLE_EQ(out["personalized_head"]["weighted"].get<double>(), 1.0 / 6);
  EXPECT_EQ(out["rule"], "nearest_global_prototype");
  EXPECT_EQ(out["failures"], 1);
  EXPECT_EQ(out["reports_without_prototypes"], 0);
}

// ---------------------------------------------------------------------------------------------
// Server and clients

class FedProtoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    register_builtin_strategies();
    config_ = hetero_config();
    run_ = run_context(config_);
    clients_ = hetero_clients(config_, 3);
  }

  std::unique_ptr<FedProtoServer> make_server(const nlohmann::json& options = {}) {
    auto o = parse_fedproto_options(options);
    EXPECT_TRUE(o.ok()) << o.status().to_string();
    auto server = std::make_unique<FedProtoServer>(*o);
    Rng rng(5);
    Status s = server->initialize(run_, rng);
    EXPECT_TRUE(s.ok()) << s.to_string();
    return server;
  }

  FitOutput fit(ClientAlgorithm& algorithm, int k, int round, const TensorBundle& bundle) {
    Rng rng =
        Rng::derive(config_.seed, "fit", {static_cast<uint64_t>(round), static_cast<uint64_t>(k)});
    ClientContext ctx = client_context(config_, clients_[static_cast<size_t>(k)], round, &rng);
    auto out = algorithm.fit(ctx, bundle);
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    return out.ok() ? std::move(out).value() : FitOutput();
  }

  // One round over `who` (client indices); returns finish()'s metrics.
  nlohmann::json round(FedProtoServer& server, ClientAlgorithm& algorithm, int r,
                       const std::vector<int>& who) {
    std::shared_ptr<const TensorBundle> bundle = server.global_bundle();
    auto aggregation = server.begin_aggregation(r);
    EXPECT_TRUE(aggregation.ok());
    for (int k : who) {
      FitOutput out = fit(algorithm, k, r, *bundle);
      ClientUpdate update;
      update.client_id = clients_[static_cast<size_t>(k)].id;
      update.num_examples = out.num_examples;
      update.bundle = std::move(out.update);
      update.metrics = out.metrics;
      Status added = (*aggregation)->add(std::move(update));
      EXPECT_TRUE(added.ok()) << added.to_string();
    }
    auto metrics = (*aggregation)->finish({});
    EXPECT_TRUE(metrics.ok());
    return metrics.ok() ? *metrics : nlohmann::json();
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
};

TEST_F(FedProtoTest, TheFirstRoundIsPlainCrossEntropyAndOnlyPrototypesTravel) {
  auto server = make_server();
  auto bundle = server->global_bundle();
  EXPECT_EQ(bundle->names(), (std::vector<std::string>{"prototypes", "counts"}));
  EXPECT_EQ(server->global_prototypes().num_present(), 0);
  FedProtoClient client(*parse_fedproto_options(nullptr));
  FitOutput out = fit(client, 0, 1, *bundle);
  EXPECT_EQ(out.metrics["global_prototypes"], 0);
  EXPECT_EQ(out.metrics["loss_mse"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(out.metrics["loss"].get<double>(), out.metrics["loss_ce"].get<double>());
  EXPECT_EQ(out.update.names(), (std::vector<std::string>{"prototypes", "counts"}));
  EXPECT_EQ(out.update.payload_bytes(), 2u * 16 * 4 + 2 * 8);
  auto model_state = module_state(*clients_[0].model);
  ASSERT_TRUE(model_state.ok());
  for (const NamedTensor& t : out.update) EXPECT_FALSE(model_state->contains(t.name()));
}

TEST_F(FedProtoTest, TheMseTermAppearsOnceThereAreGlobalPrototypes) {
  auto server = make_server();
  FedProtoClient client(*parse_fedproto_options(nullptr));
  nlohmann::json first = round(*server, client, 1, {0, 1, 2});
  EXPECT_TRUE(first["updated"].get<bool>());
  EXPECT_EQ(first["classes"], 2);
  FitOutput out = fit(client, 1, 2, *server->global_bundle());
  EXPECT_EQ(out.metrics["global_prototypes"], 2);
  EXPECT_GT(out.metrics["loss_mse"].get<double>(), 0.0);
  EXPECT_NEAR(out.metrics["loss"].get<double>(),
              out.metrics["loss_ce"].get<double>() + 10 * out.metrics["loss_mse"].get<double>(),
              1e-4 * out.metrics["loss"].get<double>());
}

TEST_F(FedProtoTest, EachRoundReplacesTheGlobalPrototypes) {
  auto server = make_server();
  auto aggregation = server->begin_aggregation(1);
  std::vector<float> a(16, 1.0f), b(16, 2.0f);
  ASSERT_TRUE((*aggregation)->add(prototype_update("client-0", make_set({a, b}, {1, 1}))).ok());
  ASSERT_TRUE((*aggregation)->finish({}).ok());
  EXPECT_EQ(server->global_prototypes().num_present(), 2);
  // Round 2: only class 0 is held; as in the authors' code, P̄ then lacks class 1.
  aggregation = server->begin_aggregation(2);
  ASSERT_TRUE((*aggregation)->add(prototype_update("client-1", make_set({b, a}, {1, 0}))).ok());
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ((*metrics)["classes"], 1);
  EXPECT_EQ(server->global_prototypes().counts, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(server->global_prototypes().row(0)[0], 2.0f);
  EXPECT_TRUE((*metrics)["prototype_distances"]["mean"].is_null());  // one class: no gap
}

TEST_F(FedProtoTest, UpdatesThatAreNotPrototypesAreRefusedNamingTheTensor) {
  auto server = make_server();
  auto aggregation = server->begin_aggregation(1);
  ClientUpdate narrow = prototype_update("client-0", PrototypeSet::empty(2, 8));
  Status s = (*aggregation)->add(std::move(narrow));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("update of client-0: tensor \"prototypes\": float32 [2,8] != "
                             "expected float32 [2,16]"),
            std::string::npos)
      << s.message();
  ClientUpdate negative = prototype_update(
      "client-1", make_set({std::vector<float>(16, 0.0f), std::vector<float>(16, 0.0f)}, {-1, 1}));
  s = (*aggregation)->add(std::move(negative));
  EXPECT_NE(s.message().find("negative count"), std::string::npos) << s.message();
  ClientUpdate missing;
  missing.client_id = "client-2";
  missing.num_examples = 3;
  ASSERT_TRUE(missing.bundle
                  .add(NamedTensor::from_values("prototypes", DType::kFloat32, {2, 16},
                                                std::vector<float>(32, 0.0f)))
                  .ok());
  s = (*aggregation)->add(std::move(missing));
  EXPECT_NE(s.message().find("tensor \"counts\": missing"), std::string::npos) << s.message();
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok());
  EXPECT_FALSE((*metrics)["updated"].get<bool>());  // no valid update: P̄ kept
}

TEST_F(FedProtoTest, ClientsOfOneArchitectureStartFromIdenticalWeights) {
  // hetero_clients: clients 0 and 2 are cnn, client 1 is resnet8; none has trained yet.
  auto first_weights = [&](int k) {
    Rng rng(1);
    ClientContext ctx = client_context(config_, clients_[static_cast<size_t>(k)], 1, &rng);
    EXPECT_TRUE(load_client_model(ctx, "fedproto").ok());
    auto weights = module_state(*clients_[static_cast<size_t>(k)].model);
    EXPECT_TRUE(weights.ok());
    return weights.ok() ? std::move(weights).value() : TensorBundle();
  };
  const TensorBundle a = first_weights(0);
  const TensorBundle b = first_weights(2);
  ASSERT_EQ(clients_[0].model->options().arch, clients_[2].model->options().arch);
  ASSERT_GT(a.size(), 0u);
  EXPECT_EQ(payload_digest(a),
            payload_digest(b));  // same architecture: the same draw from the run seed

  // A different seed draws different weights.
  RunConfig other = config_;
  other.seed = config_.seed + 1;
  Rng rng(1);
  ClientContext ctx = client_context(other, clients_[2], 1, &rng);
  ASSERT_TRUE(load_client_model(ctx, "fedproto").ok());
  auto reseeded = module_state(*clients_[2].model);
  ASSERT_TRUE(reseeded.ok());
  EXPECT_NE(payload_digest(*reseeded), payload_digest(a));
}

TEST_F(FedProtoTest, EvaluationScoresTheNearestPresentPrototypeAndTheHead) {
  FedProtoClient client(*parse_fedproto_options(nullptr));
  SimClient& c = clients_[1];
  Rng rng(1);
  ClientContext ctx = client_context(config_, c, 1, &rng);
  ASSERT_TRUE(load_client_model(ctx, "fedproto").ok());
  Model model = c.model;
  // P̄ = the class means of the client's own test features, shifted so the rule is not trivial.
  auto features = extract_features(model, c.test, config_.local.augment, torch::kCPU, 64);
  ASSERT_TRUE(features.ok());
  const torch::Tensor f = features->to(torch::kFloat64);
  const torch::Tensor labels = c.test.labels;
  PrototypeSet global = PrototypeSet::empty(2, 16);
  for (int64_t k = 0; k < 2; ++k) {
    const torch::Tensor mean = f.index({labels == k}).mean(0) + 0.05 * (k + 1);
    for (int64_t i = 0; i < 16; ++i)
      global.rows[static_cast<size_t>(k * 16 + i)] = mean[i].item<float>();
    global.counts[static_cast<size_t>(k)] = 1;
  }
  auto scored = evaluate_prototype_client(ctx, model, global);
  ASSERT_TRUE(scored.ok()) << scored.status().to_string();

  // The rules, example by example.
  auto head_predictions = predict(model, c.test, config_.local.augment, torch::kCPU, 64);
  ASSERT_TRUE(head_predictions.ok());
  int64_t proto_correct = 0, head_correct = 0;
  for (int64_t n = 0; n < c.test.size(); ++n) {
    double best = std::numeric_limits<double>::infinity();
    int64_t best_class = -1;
    for (int64_t k = 0; k < 2; ++k) {
      double d = 0;
      for (int64_t i = 0; i < 16; ++i) {
        const double diff = f[n][i].item<double>() - global.rows[static_cast<size_t>(k * 16 + i)];
        d += diff * diff;
      }
      if (d < best) {
        best = d;
        best_class = k;
      }
    }
    proto_correct += best_class == labels[n].item<int64_t>() ? 1 : 0;
    head_correct += (*head_predictions)[n].item<int64_t>() == labels[n].item<int64_t>() ? 1 : 0;
  }
  EXPECT_EQ((*scored)["correct"], proto_correct);
  EXPECT_EQ((*scored)["head"]["correct"], head_correct);
  EXPECT_EQ((*scored)["examples"], c.test.size());
  EXPECT_EQ((*scored)["global_prototypes"], 2);

  // An absent class is never predicted: everything goes to class 0.
  global.counts[1] = 0;
  auto one = evaluate_prototype_client(ctx, model, global);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ((*one)["correct"], (labels == 0).sum().item<int64_t>());
  EXPECT_EQ((*one)["per_class_correct"][1], 0);
  // No prototype at all: nothing is correct (the authors' round 0), the head still scores.
  global.counts[0] = 0;
  auto none = evaluate_prototype_client(ctx, model, global);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ((*none)["correct"], 0);
  EXPECT_EQ((*none)["head"]["correct"], head_correct);
}

TEST_F(FedProtoTest, AHeterogeneousFederationTrainsWithPartialParticipation) {
  auto server = make_server({{"fraction_fit", 0.67}, {"weighted", true}});
  FedProtoClient client(*parse_fedproto_options({{"weighted", true}}));
  for (int r = 1; r <= 3; ++r) {
    Rng rng(r);
    auto tasks = server->configure_fit(r, hetero_infos(clients_), rng);
    ASSERT_TRUE(tasks.ok());
    ASSERT_EQ(tasks->size(), 2u);  // ⌊0.67 · 3⌋
    std::vector<int> who;
    for (const TaskSpec& t : *tasks) who.push_back(t.client_id.back() - '0');
    nlohmann::json metrics = round(*server, client, r, who);
    EXPECT_TRUE(metrics["updated"].get<bool>());
    EXPECT_EQ(metrics["updates"], 2);
  }
  // Weighted: the global counts are the summed per-class features of the last round's clients.
  int64_t total = 0;
  for (int64_t n : server->global_prototypes().counts) total += n;
  EXPECT_GT(total, 2);
  std::vector<EvalReport> reports;
  for (int k = 0; k < 3; ++k) {
    ClientContext ctx = client_context(config_, clients_[static_cast<size_t>(k)], 3, nullptr);
    auto m = client.evaluate(ctx, *server->global_bundle());
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    reports.push_back({clients_[static_cast<size_t>(k)].id, 24, *m});
  }
  auto combined = server->aggregate_evaluate(3, reports, {});
  ASSERT_TRUE(combined.ok());
  EXPECT_EQ((*combined)["personalized"]["clients"], 3);
  // Above chance (2 classes) after 3 rounds: the nearest-global-prototype rule across two
  // architectures is the weaker one here; each client's own head is well above it.
  EXPECT_GT((*combined)["personalized"]["weighted"].get<double>(), 0.5) << combined->dump();
  EXPECT_GT((*combined)["personalized_head"]["weighted"].get<double>(), 0.7) << combined->dump();
}

TEST_F(FedProtoTest, SaveAndLoadStateRoundTripBitExactly) {
  auto server = make_server();
  FedProtoClient client(*parse_fedproto_options(nullptr));
  round(*server, client, 1, {0, 2});
  auto state = server->save_state();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->metadata()["strategy"], "fedproto");
  FedProtoServer restored(*parse_fedproto_options(nullptr));
  EXPECT_FALSE(restored.global_bundle());
  Rng rng(1);
  EXPECT_EQ(restored.configure_fit(1, hetero_infos(clients_), rng).status().code(),
            StatusCode::kFailedPrecondition);
  ASSERT_TRUE(restored.load_state(state->clone()).ok());
  EXPECT_TRUE(restored.global_bundle()->bitwise_equal(*server->global_bundle()));
  EXPECT_TRUE(restored.save_state()->bitwise_equal(*state));
  EXPECT_EQ(restored.feature_dim(), 16);
  // A FedSA state (with anchors) is refused.
  TensorBundle other = state->clone();
  ASSERT_TRUE(other
                  .add(NamedTensor::from_values("anchors", DType::kFloat32, {2, 16},
                                                std::vector<float>(32, 0.0f)))
                  .ok());
  Status refused = restored.load_state(std::move(other));
  EXPECT_NE(refused.message().find("unexpected tensor \"anchors\""), std::string::npos)
      << refused.message();
}

TEST(FedProtoOptionsTest, DefaultsAreThePublishedValues) {
  auto o = parse_fedproto_options(nullptr);
  ASSERT_TRUE(o.ok());
  EXPECT_DOUBLE_EQ(o->lambda, 10.0);
  EXPECT_FALSE(o->server.weighted);
  EXPECT_TRUE(o->drop_last);
  EXPECT_NE(
      parse_fedproto_options({{"lambda", -1}}).status().message().find("config.strategy.lambda"),
      std::string::npos);
  register_builtin_strategies();
  EXPECT_TRUE(make_server_strategy("fedproto", {{"fraction_fit", 0.5}}).ok());
  EXPECT_TRUE(make_client_algorithm("fedproto", {}).ok());
}

}  // namespace
}  // namespace fedtail::strategies

#include "strategies/fedsa/fedsa.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "strategies/registry.h"
#include "tests/unit/prototype_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::float_values;
using testing::hetero_clients;
using testing::hetero_config;
using testing::hetero_infos;
using testing::make_set;
using testing::matrix;
using testing::prototype_update;
using testing::run_context;
using testing::SimClient;

constexpr double kInf = std::numeric_limits<double>::infinity();

double scalar(const torch::Tensor& t) { return t.item<double>(); }

// ---------------------------------------------------------------------------------------------
// The four loss terms, on tiny tensors, against values computed by hand.

TEST(FedSaLossTest, CalibrationIsTheCrossEntropyOfTheAnchorsThroughTheHead) {
  // h(A) = [[2, 0], [0, 1]], labels 0, 1: row 0 log(1 + e^-2), row 1 log(1 + e^-1).
  const double expected = (std::log(1 + std::exp(-2.0)) + std::log(1 + std::exp(-1.0))) / 2;
  EXPECT_NEAR(scalar(calibration_loss(matrix({{2, 0}, {0, 1}}))), expected, 1e-6);
  EXPECT_NEAR(expected, 0.2200953, 1e-6);
}

TEST(FedSaLossTest, AnchorRegularizationIsTheMeanSquaredErrorToTheLabelsAnchor) {
  // z0 − A1 = (0, 1), z1 − A0 = (3, 4): (0 + 1 + 9 + 16) / (2·2) = 6.5.
  const torch::Tensor z = matrix({{1, 2}, {3, 4}});
  const torch::Tensor anchors = matrix({{0, 0}, {1, 1}});
  const torch::Tensor y = torch::tensor({1, 0}, torch::kInt64);
  EXPECT_NEAR(scalar(anchor_regularization(z, anchors, y)), 6.5, 1e-6);
}

TEST(FedSaLossTest, DistancesArePlainEuclideanFlooredAtZero) {
  const torch::Tensor z = matrix({{0, 0}, {3, 4}});
  const torch::Tensor anchors = matrix({{0, 0}, {3, 0}});
  const torch::Tensor d = anchor_distances(z, anchors);
  ASSERT_EQ(d.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_NEAR(d[0][0].item<double>(), std::sqrt(kMinSquaredDistance), 1e-9);
  EXPECT_NEAR(d[0][1].item<double>(), 3, 1e-5);
  EXPECT_NEAR(d[1][0].item<double>(), 5, 1e-5);
  EXPECT_NEAR(d[1][1].item<double>(), 4, 1e-5);
}

TEST(FedSaLossTest, MarginContrastiveAddsTheMarginToTheTrueClassDistance) {
  // z = (3, 4), anchors (0, 0) and (3, 0): distances 5 and 4; label 1.
  const torch::Tensor z = matrix({{3, 4}});
  const torch::Tensor anchors = matrix({{0, 0}, {3, 0}});
  const torch::Tensor y = torch::tensor({1}, torch::kInt64);
  // δ = 0: logits (−5, −4): log(1 + e^-1).
  EXPECT_NEAR(scalar(margin_contrastive_loss(z, anchors, y, 0)), std::log(1 + std::exp(-1.0)),
              1e-5);
  // δ = 2: logits (−5, −6): log(1 + e^1).
  EXPECT_NEAR(scalar(margin_contrastive_loss(z, anchors, y, 2)), std::log(1 + std::exp(1.0)), 1e-5);
}

TEST(FedSaLossTest, TheTotalWeighsTheTermsAndHasFiniteGradientsOnAnAnchor) {
  torch::Tensor z = matrix({{0, 0}, {3, 4}}).set_requires_grad(true);  // z0 sits on anchor 0
  const torch::Tensor anchors = matrix({{0, 0}, {3, 0}});
  const torch::Tensor y = torch::tensor({0, 1}, torch::kInt64);
  torch::Tensor w = matrix({{1, 0}, {0, 1}}).set_requires_grad(true);  // head h(v) = v·wᵀ
  const torch::Tensor logits = z.matmul(w.t());
  const torch::Tensor anchor_logits = anchors.matmul(w.t());
  FedSaWeights weights;
  weights.gamma = 2;
  weights.lambda = 3;
  weights.mu = 0.5;
  std::vector<torch::Tensor> terms = fedsa_loss(z, logits, anchor_logits, anchors, y, 1.5, weights);
  ASSERT_EQ(terms.size(), 5u);
  // Each term by hand. CE of logits (0, 0) label 0 and (3, 4) label 1.
  const double ce = (std::log(2.0) + std::log(1 + std::exp(-1.0))) / 2;
  // CC: h(A) = [[0, 0], [3, 0]], labels 0, 1: log 2 and log(1 + e^3).
  const double cc = (std::log(2.0) + std::log(1 + std::exp(3.0))) / 2;
  // MSE: z0 − A0 = 0, z1 − A1 = (0, 4): 16 / 4.
  const double mse = 4;
  // MCL, δ = 1.5: row 0 distances (1e-6, 3) → logits (−1.5, −3); row 1 (5, 4) → (−5, −5.5).
  const double mcl = (std::log(1 + std::exp(-1.5)) + std::log(1 + std::exp(0.5))) / 2;
  EXPECT_NEAR(scalar(terms[1]), ce, 1e-5);
  EXPECT_NEAR(scalar(terms[2]), cc, 1e-5);
  EXPECT_NEAR(scalar(terms[3]), mse, 1e-5);
  EXPECT_NEAR(scalar(terms[4]), mcl, 1e-5);
  EXPECT_NEAR(scalar(terms[0]), ce + 2 * cc + 3 * mse + 0.5 * mcl, 1e-4);
  terms[0].backward();
  EXPECT_TRUE(torch::isfinite(z.grad()).all().item<bool>()) << z.grad();
  EXPECT_TRUE(torch::isfinite(w.grad()).all().item<bool>()) << w.grad();
}

TEST(FedSaLossTest, CalibrationTrainsOnlyTheHead) {
  torch::Tensor anchors = matrix({{1, 0}, {0, 1}});
  torch::Tensor w = matrix({{1, 2}, {3, 4}}).set_requires_grad(true);
  calibration_loss(anchors.matmul(w.t())).backward();
  EXPECT_FALSE(anchors.requires_grad());
  EXPECT_GT(w.grad().abs().sum().item<double>(), 0);
}

// ---------------------------------------------------------------------------------------------
// The margin δ

TEST(FedSaDeltaTest, GapsAreMeanNearestDistancesOverPresentClasses) {
  // Rows (0, 0), (3, 0), (0, 8) present, (100, 100) absent: nearest 3, 3, 8 → mean 14/3.
  PrototypeSet set = make_set({{0, 0}, {3, 0}, {0, 8}, {100, 100}}, {5, 1, 2, 0});
  EXPECT_NEAR(local_gap(set), 14.0 / 3.0, 1e-9);
  NearestDistances d = nearest_distances(set);
  EXPECT_EQ(d.classes, 3);
  EXPECT_NEAR(d.min, 3, 1e-9);
  EXPECT_NEAR(d.max, 8, 1e-9);
  // One class held: −inf (the authors' rule); none: −inf as well.
  EXPECT_EQ(local_gap(make_set({{0, 0}, {3, 0}}, {4, 0})), -kInf);
  EXPECT_EQ(local_gap(make_set({{0, 0}, {3, 0}}, {0, 0})), -kInf);
}

TEST(FedSaDeltaTest, DeltaIsTheLargerOfTheLocalAndGlobalGaps) {
  EXPECT_EQ(margin_delta(4.5, 2.0), 4.5);
  EXPECT_EQ(margin_delta(1.0, 2.0), 2.0);
  EXPECT_EQ(margin_delta(0.0, 2.0), 2.0);    // before the first participation
  EXPECT_EQ(margin_delta(-kInf, 2.0), 2.0);  // a client that held one class
}

// ---------------------------------------------------------------------------------------------
// Anchors and their EMA

// The recipe again, with LibTorch's own Linear arithmetic and batch_norm, from the same draws.
torch::Tensor reference_anchors(int64_t c, int64_t d, uint64_t seed) {
  Rng rng(seed);
  auto draw = [&](int64_t n, bool normal, double bound) {
    std::vector<double> v(static_cast<size_t>(n));
    for (double& x : v) x = normal ? rng.normal() : (2 * rng.uniform() - 1) * bound;
    return torch::tensor(v, torch::kFloat64);
  };
  const double bound = 1.0 / std::sqrt(static_cast<double>(d));
  torch::Tensor r = draw(c * d, true, 0).view({c, d});
  torch::Tensor w1 = draw(d * d, false, bound).view({d, d});
  torch::Tensor b1 = draw(d, false, bound);
  torch::Tensor w2 = draw(d * d, false, bound).view({d, d});
  torch::Tensor b2 = draw(d, false, bound);
  namespace F = torch::nn::functional;
  auto bn = [](const torch::Tensor& x) {
    return F::batch_norm(x, torch::Tensor(), torch::Tensor(),
                         F::BatchNormFuncOptions().training(true).eps(1e-5));
  };
  torch::Tensor h = torch::relu(bn(torch::addmm(b1, r, w1.t())));
  return torch::relu(bn(torch::addmm(b2, h, w2.t())));
}

TEST(FedSaAnchorsTest, FollowTheRecipeFromTheRng) {
  Rng rng(11);
  auto anchors = build_semantic_anchors(4, 6, rng);
  ASSERT_TRUE(anchors.ok()) << anchors.status().to_string();
  const torch::Tensor expected = reference_anchors(4, 6, 11);
  ASSERT_EQ(anchors->size(), 24u);
  for (int64_t i = 0; i < 24; ++i) {
    EXPECT_NEAR((*anchors)[static_cast<size_t>(i)], expected.view({-1})[i].item<double>(), 1e-6)
        << i;
  }
  for (float a : *anchors) EXPECT_GE(a, 0.0f);
  Rng again(11), other(12);
  EXPECT_EQ(*build_semantic_anchors(4, 6, again), *anchors);
  EXPECT_NE(*build_semantic_anchors(4, 6, other), *anchors);
  Rng one(1);
  EXPECT_EQ(build_semantic_anchors(1, 6, one).status().code(), StatusCode::kInvalidArgument);
}

TEST(FedSaAnchorsTest, PublishedSizeHasThePublishedGeometry) {
  // As in the FedSA authors' code (C = 10, D = 512): ~50% exact zeros, norm ≈ 16, mean
  // nearest-anchor distance ≈ 18.3 (the global gap).
  Rng rng(3);
  auto anchors = build_semantic_anchors(10, 512, rng);
  ASSERT_TRUE(anchors.ok());
  PrototypeSet set = anchor_set(*anchors, 10, 512);
  int64_t zeros = 0;
  double norm = 0;
  for (int64_t c = 0; c < 10; ++c) {
    double squared = 0;
    for (int64_t k = 0; k < 512; ++k) {
      const double v = set.row(c)[k];
      zeros += v == 0 ? 1 : 0;
      squared += v * v;
    }
    norm += std::sqrt(squared) / 10;
  }
  EXPECT_NEAR(static_cast<double>(zeros) / 5120, 0.5, 0.05);
  EXPECT_NEAR(norm, 16.0, 1.0);
  EXPECT_NEAR(nearest_distances(set).mean, 18.3, 1.5);
}

TEST(FedSaAnchorsTest, EmaMovesOnlyThePresentClasses) {
  std::vector<float> anchors = {1, 1, 2, 2, 3, 3};
  PrototypeSet global = make_set({{11, 1}, {50, 50}, {-7, 3}}, {2, 0, 1});
  // a0 = 0.9·(1, 1) + 0.1·(11, 1) = (2, 1); a1 unchanged; a2 = 0.9·(3, 3) + 0.1·(−7, 3) = (2, 3).
  const double shift = update_anchors(&anchors, global, 0.9);
  const std::vector<float> expected = {2, 1, 2, 2, 2, 3};
  for (size_t i = 0; i < anchors.size(); ++i) EXPECT_NEAR(anchors[i], expected[i], 1e-6) << i;
  EXPECT_NEAR(shift, 1.0, 1e-6);
  // β = 1: nothing moves.
  EXPECT_EQ(update_anchors(&anchors, global, 1.0), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Options

TEST(FedSaOptionsTest, DefaultsAreThePublishedValuesAndErrorsNameTheField) {
  auto o = parse_fedsa_options(nullptr);
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_DOUBLE_EQ(o->weights.gamma, 1.0);
  EXPECT_DOUBLE_EQ(o->weights.lambda, 10.0);
  EXPECT_DOUBLE_EQ(o->weights.mu, 1.0);
  EXPECT_DOUBLE_EQ(o->beta, 0.9999);
  EXPECT_FALSE(o->server.weighted);
  EXPECT_TRUE(o->drop_last);
  auto set = parse_fedsa_options({{"name", "fedsa"}, {"lambda", 1}, {"weighted", true}});
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(set->weights.lambda, 1);
  EXPECT_TRUE(set->server.weighted);
  EXPECT_NE(parse_fedsa_options({{"beta", 2}}).status().message().find("config.strategy.beta"),
            std::string::npos);
  EXPECT_NE(parse_fedsa_options({{"mu", -1}}).status().message().find("config.strategy.mu"),
            std::string::npos);
  EXPECT_NE(parse_fedsa_options({{"tau", 1}}).status().message().find("unknown key"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Server and clients

class FedSaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    register_builtin_strategies();
    config_ = hetero_config();
    run_ = run_context(config_);
    clients_ = hetero_clients(config_, 3);
  }

  std::unique_ptr<FedSaServer> make_server(const nlohmann::json& options = {}) {
    auto o = parse_fedsa_options(options);
    EXPECT_TRUE(o.ok()) << o.status().to_string();
    auto server = std::make_unique<FedSaServer>(*o);
    Rng rng(5);
    Status s = server->initialize(run_, rng);
    EXPECT_TRUE(s.ok()) << s.to_string();
    return server;
  }

  // Fits client k on `bundle`; the Rng depends on (round, k) only.
  FitOutput fit(ClientAlgorithm& algorithm, int k, int round, const TensorBundle& bundle) {
    Rng rng =
        Rng::derive(config_.seed, "fit", {static_cast<uint64_t>(round), static_cast<uint64_t>(k)});
    ClientContext ctx = client_context(config_, clients_[static_cast<size_t>(k)], round, &rng);
    auto out = algorithm.fit(ctx, bundle);
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    return out.ok() ? std::move(out).value() : FitOutput();
  }

  // One round over every client: returns finish()'s metrics.
  nlohmann::json round(ServerStrategy& server, ClientAlgorithm& algorithm, int r) {
    Rng rng(r);
    auto tasks = server.configure_fit(r, hetero_infos(clients_), rng);
    EXPECT_TRUE(tasks.ok()) << tasks.status().to_string();
    auto aggregation = server.begin_aggregation(r);
    EXPECT_TRUE(aggregation.ok());
    for (const TaskSpec& task : *tasks) {
      const int k = task.client_id.back() - '0';
      FitOutput out = fit(algorithm, k, r, *task.bundle);
      ClientUpdate update;
      update.client_id = task.client_id;
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

TEST_F(FedSaTest, TheGlobalBundleHoldsAnchorsAndPrototypesOnly) {
  auto server = make_server();
  EXPECT_EQ(server->num_classes(), 2);
  EXPECT_EQ(server->feature_dim(), 16);  // config.model.feature_dim, common to cnn and resnet8
  auto bundle = server->global_bundle();
  ASSERT_TRUE(bundle);
  EXPECT_EQ(bundle->names(), (std::vector<std::string>{"prototypes", "counts", "anchors"}));
  EXPECT_EQ(bundle->find("anchors")->shape(), (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(float_values(*bundle->find("anchors")), server->anchors());
  EXPECT_EQ(bundle->metadata()["strategy"], "fedsa");
  // No generic model: server-side evaluation is empty.
  Dataset test = testing::separable(8, 1);
  ServerEvalContext ctx;
  ctx.test = &test;
  auto evaluated = server->evaluate(1, ctx);
  ASSERT_TRUE(evaluated.ok());
  EXPECT_TRUE(evaluated->empty());
}

TEST_F(FedSaTest, OnlyPrototypesTravel) {
  auto server = make_server();
  FedSaClient client(*parse_fedsa_options(nullptr));
  FitOutput out = fit(client, 1, 1, *server->global_bundle());
  // The update: C×D float32 prototypes and C counts, nothing else.
  EXPECT_EQ(out.update.names(), (std::vector<std::string>{"prototypes", "counts"}));
  EXPECT_EQ(out.update.payload_bytes(), 2u * 16 * 4 + 2 * 8);
  auto model_state = module_state(*clients_[1].model);
  ASSERT_TRUE(model_state.ok());
  for (const NamedTensor& t : out.update) EXPECT_FALSE(model_state->contains(t.name())) << t.name();
  EXPECT_LT(out.update.payload_bytes(), model_state->payload_bytes() / 100);
  // Unweighted: counts say only which classes the client holds.
  const NamedTensor* counts = out.update.find("counts");
  for (int64_t c = 0; c < 2; ++c) EXPECT_EQ(counts->data<int64_t>()[c], 1);
  EXPECT_EQ(out.num_examples, clients_[1].train.size());
  for (const char* key : {"loss", "loss_ce", "loss_cc", "loss_mse", "loss_mcl", "delta"}) {
    EXPECT_TRUE(out.metrics[key].is_number()) << key << " " << out.metrics.dump();
  }

  // The server refuses anything that is not exactly prototypes + counts.
  auto aggregation = server->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());
  ClientUpdate with_weights = prototype_update("client-0", make_set({{0, 1}, {1, 0}}, {1, 1}));
  with_weights.bundle = out.update.clone();
  ASSERT_TRUE(with_weights.bundle.add(model_state->at(0).clone()).ok());
  Status refused = (*aggregation)->add(std::move(with_weights));
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("unexpected tensor \"" + model_state->at(0).name() + "\""),
            std::string::npos)
      << refused.message();
}

TEST_F(FedSaTest, WeightedClientsUploadTheirCounts) {
  auto server = make_server({{"weighted", true}});
  FedSaClient client(*parse_fedsa_options({{"weighted", true}}));
  FitOutput out = fit(client, 0, 1, *server->global_bundle());
  const NamedTensor* counts = out.update.find("counts");
  // drop_last with batch 10: ⌊32 / 10⌋·10 features, split by class as the batches fell.
  EXPECT_EQ(counts->data<int64_t>()[0] + counts->data<int64_t>()[1], 30);
  EXPECT_GT(counts->data<int64_t>()[0], counts->data<int64_t>()[1]);  // client 0 is 80% class 0
}

TEST_F(FedSaTest, DeltaUsesTheGlobalGapFirstThenThePreviousPrototypes) {
  auto server = make_server();
  FedSaClient client(*parse_fedsa_options(nullptr));
  const double global_gap = nearest_distances(anchor_set(server->anchors(), 2, 16)).mean;
  FitOutput first = fit(client, 0, 1, *server->global_bundle());
  EXPECT_NEAR(first.metrics["global_gap"].get<double>(), global_gap, 1e-9);
  EXPECT_EQ(first.metrics["local_gap"].get<double>(), 0.0);  // never participated
  EXPECT_NEAR(first.metrics["delta"].get<double>(), global_gap, 1e-9);

  // The local gap of the uploaded prototypes is kept for the next participation.
  auto uploaded = read_prototype_tensors(first.update, 2, 16, "update");
  ASSERT_TRUE(uploaded.ok());
  const double gap = local_gap(*uploaded);
  EXPECT_NEAR(clients_[0].state.values["local_gap"].get<double>(), gap, 1e-6);
  FitOutput second = fit(client, 0, 2, *server->global_bundle());
  EXPECT_NEAR(second.metrics["local_gap"].get<double>(), gap, 1e-6);
  EXPECT_NEAR(second.metrics["delta"].get<double>(), std::max(gap, global_gap), 1e-6);

  // A client that held a single class has a local gap of −inf (stored as null): δ = global gap.
  clients_[0].state.values["local_gap"] = nullptr;
  FitOutput third = fit(client, 0, 3, *server->global_bundle());
  EXPECT_TRUE(third.metrics["local_gap"].is_null());
  EXPECT_NEAR(third.metrics["delta"].get<double>(), global_gap, 1e-9);
}

TEST_F(FedSaTest, TheServerAveragesPrototypesAndMovesTheAnchorsByTheEma) {
  auto server = make_server({{"beta", 0.9}});
  const std::vector<float> before = server->anchors();
  auto aggregation = server->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());
  std::vector<float> a(16, 0.0f), b(16, 0.0f), c(16, 0.0f);
  a[0] = 1;
  b[0] = 3;
  c[1] = 8;
  // Client 0 holds class 0 only; client 1 both classes.
  ASSERT_TRUE((*aggregation)->add(prototype_update("client-0", make_set({a, c}, {1, 0}))).ok());
  ASSERT_TRUE((*aggregation)->add(prototype_update("client-1", make_set({b, c}, {1, 1}))).ok());
  EXPECT_EQ((*aggregation)->add(prototype_update("client-1", make_set({b, c}, {1, 1}))).code(),
            StatusCode::kInvalidArgument);  // a second update from the same client
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok());
  EXPECT_TRUE((*metrics)["updated"].get<bool>());
  EXPECT_EQ((*metrics)["classes"], 2);
  // P̄_0 = ((1, 0, …) + (3, 0, …)) / 2 = (2, 0, …); P̄_1 = (0, 8, …), from client 1 alone.
  const PrototypeSet& global = server->global_prototypes();
  EXPECT_FLOAT_EQ(global.row(0)[0], 2.0f);
  EXPECT_FLOAT_EQ(global.row(1)[1], 8.0f);
  EXPECT_EQ(global.counts, (std::vector<int64_t>{2, 1}));
  // a ← 0.9·a + 0.1·P̄ for both classes.
  for (int64_t i = 0; i < 32; ++i) {
    const float p = global.rows[static_cast<size_t>(i)];
    EXPECT_NEAR(server->anchors()[static_cast<size_t>(i)],
                0.9 * before[static_cast<size_t>(i)] + 0.1 * p, 1e-6)
        << i;
  }
  auto bundle = server->global_bundle();
  EXPECT_EQ(float_values(*bundle->find("anchors")), server->anchors());
  EXPECT_EQ(bundle->metadata()["round"], 1);
}

TEST_F(FedSaTest, TooFewUpdatesKeepTheState) {
  auto server = make_server({{"min_fit_clients", 2}});
  const std::vector<float> before = server->anchors();
  auto aggregation = server->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());
  std::vector<float> a(16, 1.0f);
  ASSERT_TRUE((*aggregation)->add(prototype_update("client-0", make_set({a, a}, {1, 1}))).ok());
  auto metrics = (*aggregation)->finish({{"client-1", "deadline exceeded"}});
  ASSERT_TRUE(metrics.ok());
  EXPECT_FALSE((*metrics)["updated"].get<bool>());
  EXPECT_NE((*metrics)["reason"].get<std::string>().find("min_fit_clients"), std::string::npos);
  EXPECT_EQ(server->anchors(), before);
  EXPECT_EQ(server->global_prototypes().num_present(), 0);
}

TEST_F(FedSaTest, ClientsKeepTheirOwnModelsAcrossRounds) {
  auto server = make_server();
  FedSaClient client(*parse_fedsa_options(nullptr));
  TensorBundle bundle = server->global_bundle()->clone();
  fit(client, 1, 1, bundle);
  // The state holds the whole model of the client's own architecture (resnet8 for client 1).
  auto trained = module_state(*clients_[1].model);
  ASSERT_TRUE(trained.ok());
  EXPECT_TRUE(clients_[1].state.tensors.bitwise_equal(*trained));
  EXPECT_EQ(clients_[1].state.values["arch"], "resnet8");

  // The shared model's weights are unspecified on entry: scribbling on them changes nothing.
  std::vector<SimClient> twin = hetero_clients(config_, 3);
  twin[1].state.tensors = clients_[1].state.tensors.clone();
  twin[1].state.values = clients_[1].state.values;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : twin[1].model->parameters()) p.fill_(0.25);
  }
  FitOutput a = fit(client, 1, 2, bundle);
  std::swap(clients_, twin);
  FitOutput b = fit(client, 1, 2, bundle);
  std::swap(clients_, twin);
  EXPECT_TRUE(a.update.bitwise_equal(b.update));
  EXPECT_TRUE(clients_[1].state.tensors.bitwise_equal(twin[1].state.tensors));

  // A model of another architecture in the state is refused.
  clients_[0].state.tensors = clients_[1].state.tensors.clone();
  clients_[0].state.values["arch"] = "resnet8";
  Rng rng(1);
  ClientContext ctx = client_context(config_, clients_[0], 3, &rng);
  auto refused = client.fit(ctx, bundle);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("resnet8"), std::string::npos);
}

TEST_F(FedSaTest, AHeterogeneousFederationTrainsAndReportsBothRules) {
  auto server = make_server();
  FedSaClient client(*parse_fedsa_options(nullptr));
  nlohmann::json last;
  for (int r = 1; r <= 3; ++r) last = round(*server, client, r);
  EXPECT_TRUE(last["updated"].get<bool>()) << last.dump();
  EXPECT_EQ(last["updates"], 3);
  EXPECT_TRUE(last["anchor_distances"]["mean"].is_number());
  EXPECT_TRUE(last["client_metrics"]["loss_mcl"].is_number()) << last.dump();
  EXPECT_EQ(server->global_prototypes().num_present(), 2);

  Rng rng(9);
  auto tasks = server->configure_evaluate(3, hetero_infos(clients_), rng);
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 3u);
  std::vector<EvalReport> reports;
  for (const TaskSpec& task : *tasks) {
    const int k = task.client_id.back() - '0';
    ClientContext ctx = client_context(config_, clients_[static_cast<size_t>(k)], 3, nullptr);
    auto metrics = client.evaluate(ctx, *task.bundle);
    ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
    EXPECT_EQ((*metrics)["examples"], clients_[static_cast<size_t>(k)].test.size());
    EXPECT_EQ((*metrics)["global_prototypes"], 2);
    EXPECT_TRUE((*metrics)["head"]["correct"].is_number_integer());
    reports.push_back({task.client_id, clients_[static_cast<size_t>(k)].test.size(), *metrics});
  }
  auto combined = server->aggregate_evaluate(3, reports, {});
  ASSERT_TRUE(combined.ok());
  EXPECT_EQ((*combined)["rule"], "nearest_global_prototype");
  for (const char* key : {"personalized", "personalized_head"}) {
    ASSERT_TRUE((*combined)[key]["mean"].is_number()) << combined->dump();
    EXPECT_GE((*combined)[key]["mean"].get<double>(), 0.0);
    EXPECT_LE((*combined)[key]["mean"].get<double>(), 1.0);
    EXPECT_EQ((*combined)[key]["clients"], 3);
  }
  // The separable task is learnt by three rounds of the published objective.
  EXPECT_GT((*combined)["personalized"]["weighted"].get<double>(), 0.6) << combined->dump();
}

TEST_F(FedSaTest, SaveAndLoadStateRoundTripBitExactly) {
  auto server = make_server({{"beta", 0.5}});
  FedSaClient client(*parse_fedsa_options(nullptr));
  round(*server, client, 1);
  auto state = server->save_state();
  ASSERT_TRUE(state.ok());
  FedSaServer restored(*parse_fedsa_options({{"beta", 0.5}}));
  ASSERT_TRUE(restored.load_state(state->clone()).ok());
  EXPECT_TRUE(restored.global_bundle()->bitwise_equal(*server->global_bundle()));
  EXPECT_EQ(restored.anchors(), server->anchors());

  // The same next round on both gives the same state.
  auto step = [](FedSaServer& s) {
    auto aggregation = s.begin_aggregation(2);
    std::vector<float> a(16, 0.5f), b(16, 2.0f);
    EXPECT_TRUE((*aggregation)->add(prototype_update("client-0", make_set({a, b}, {1, 1}))).ok());
    EXPECT_TRUE((*aggregation)->finish({}).ok());
  };
  step(*server);
  step(restored);
  EXPECT_TRUE(restored.save_state()->bitwise_equal(*server->save_state()));

  // Refusals leave the server unchanged.
  TensorBundle no_anchors;
  for (const NamedTensor& t : *state) {
    if (t.name() != "anchors") {
      ASSERT_TRUE(no_anchors.add(t.clone()).ok());
    }
  }
  ASSERT_TRUE(no_anchors.set_metadata(state->metadata()).ok());
  Status refused = restored.load_state(std::move(no_anchors));
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("anchors"), std::string::npos) << refused.message();
  TensorBundle other = state->clone();
  other.mutable_metadata()["strategy"] = "fedproto";
  EXPECT_EQ(restored.load_state(std::move(other)).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(restored.save_state()->bitwise_equal(*server->save_state()));
}

TEST_F(FedSaTest, MixedNativeWidthsNeedAFeatureDim) {
  RunConfig config = config_;
  config.model.feature_dim = 0;  // cnn 128, resnet8 64
  RunContext run = run_context(config);
  FedSaServer server(*parse_fedsa_options(nullptr));
  Rng rng(1);
  Status s = server.initialize(run, rng);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("config.model.feature_dim"), std::string::npos) << s.message();
  // One native width (resnet18 and resnet34: 512) is fine.
  config.model.groups = {"resnet18", "resnet34"};
  EXPECT_TRUE(server.initialize(run, rng).ok());
  EXPECT_EQ(server.feature_dim(), 512);
}

TEST_F(FedSaTest, ClientRefusesBundlesThatDoNotFit) {
  auto server = make_server();
  FedSaClient client(*parse_fedsa_options(nullptr));
  Rng rng(1);
  ClientContext ctx = client_context(config_, clients_[0], 1, &rng);
  // A FedProto bundle lacks the anchors.
  TensorBundle no_anchors;
  ASSERT_TRUE(add_prototype_tensors(PrototypeSet::empty(2, 16), &no_anchors).ok());
  auto missing = client.fit(ctx, no_anchors);
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("\"anchors\": missing"), std::string::npos)
      << missing.status().message();
  // Prototypes of another width.
  TensorBundle narrow;
  ASSERT_TRUE(add_prototype_tensors(PrototypeSet::empty(2, 8), &narrow).ok());
  ASSERT_TRUE(narrow.add(server->global_bundle()->find("anchors")->clone()).ok());
  auto wrong = client.fit(ctx, narrow);
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("[2,8] != expected float32 [2,16]"), std::string::npos)
      << wrong.status().message();
}

TEST(FedSaRegistryTest, IsRegisteredWithItsOptions) {
  register_builtin_strategies();
  auto server = make_server_strategy("fedsa", {{"lambda", 5}});
  ASSERT_TRUE(server.ok()) << server.status().to_string();
  auto client = make_client_algorithm("fedsa", {});
  ASSERT_TRUE(client.ok());
  auto bad = make_server_strategy("fedsa", {{"gamma", -1}});
  EXPECT_NE(bad.status().message().find("config.strategy.gamma"), std::string::npos);
}

}  // namespace
}  // namespace fedtail::strategies

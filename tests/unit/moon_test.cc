// MOON: options, the contrastive loss against its formula on hand-made representations, one
// client step against an autograd step on CE + μ·ℓ_con computed here independently, the client's
// first round (FedAvg's update bit for bit), the previous model stored and used in the next round,
// refused contexts and states, a few rounds, and resume bit for bit.
#include "strategies/moon/moon.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
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
using testing::expect_near;
using testing::expect_parse_refuses;
using testing::fit_client;
using testing::inputs;
using testing::one_step_config;
using testing::run_context;
using testing::run_round;
using testing::sim_clients;
using testing::SimClient;
using testing::stepped;
using testing::tiny_config;

// The largest absolute difference between same-named float32 tensors of `a` and `b`.
double max_difference(const TensorBundle& a, const TensorBundle& b) {
  double worst = 0;
  for (const NamedTensor& t : a) {
    const NamedTensor* u = b.find(t.name());
    EXPECT_NE(u, nullptr) << t.name();
    if (u == nullptr || t.dtype() != DType::kFloat32) continue;
    worst = std::max(worst, (to_torch(t).to(torch::kFloat64) - to_torch(*u).to(torch::kFloat64))
                                .abs()
                                .max()
                                .item<double>());
  }
  return worst;
}

// ---------------------------------------------------------------------------------------------
// Options

TEST(MoonOptionsTest, DefaultsAreTheAuthorsValues) {
  auto defaults = parse_moon_options(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok()) << defaults.status().to_string();
  EXPECT_EQ(defaults->mu, 1.0);
  EXPECT_EQ(defaults->temperature, 0.5);
  EXPECT_EQ(defaults->round.min_fit_clients, 1);
  EXPECT_TRUE(parse_moon_options(nlohmann::json()).ok());  // null counts as {}

  auto set = parse_moon_options({{"mu", 5.0}, {"temperature", 0.1}, {"min_fit_clients", 2}});
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->mu, 5.0);
  EXPECT_EQ(set->temperature, 0.1);
  EXPECT_EQ(set->round.min_fit_clients, 2);
  EXPECT_TRUE(parse_moon_options({{"mu", 0.0}}).ok());
}

TEST(MoonOptionsTest, BadValuesAndUnknownKeysAreRefusedNamingTheField) {
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"mu", -0.5}}, "config.strategy.mu: must be >= 0"},
      {{{"temperature", 0.0}}, "config.strategy.temperature: must be > 0"},
      {{{"temperature", -1.0}}, "config.strategy.temperature: must be > 0"},
      {{{"mu", "5"}}, "config.strategy.mu"},
      {{{"tau", 0.5}}, "config.strategy.tau: unknown key"},
  };
  expect_parse_refuses(cases, parse_moon_options, make_moon_server, make_moon_client);
}

TEST(MoonOptionsTest, RegistryEntryIsNamedMoonAndItsServerIsFedAvgs) {
  const StrategyEntry entry = moon_strategy_entry();
  EXPECT_EQ(entry.name, "moon");
  auto server = entry.server(nlohmann::json::object());
  ASSERT_TRUE(server.ok()) << server.status().to_string();
  EXPECT_NE(dynamic_cast<FedAvgServer*>(server->get()), nullptr);
  EXPECT_EQ(dynamic_cast<FedAvgServer*>(server->get())->name(), "moon");
  auto client = entry.client({{"mu", 5.0}});
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  auto* moon = dynamic_cast<MoonClient*>(client->get());
  ASSERT_NE(moon, nullptr);
  EXPECT_EQ(moon->options().mu, 5.0);
}

// ---------------------------------------------------------------------------------------------
// The contrastive loss

// cos(a, b) of two rows, by hand.
double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (std::sqrt(na) * std::sqrt(nb));
}

torch::Tensor matrix(const std::vector<std::vector<double>>& rows) {
  std::vector<double> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return torch::tensor(flat, torch::kFloat64)
      .view({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())})
      .clone();  // a leaf of its own, not a view
}

TEST(MoonContrastiveLossTest, IsTheMeanOfMinusLogTheSoftmaxOfThePositivePair) {
  const std::vector<std::vector<double>> z = {{1, 0, 0}, {1, 1, 0}, {0, 2, 1}, {3, 1, 2}};
  const std::vector<std::vector<double>> g = {{1, 1, 0}, {0, 1, 0}, {0, 1, 0}, {1, 1, 1}};
  const std::vector<std::vector<double>> p = {{0, 1, 0}, {1, 0, 0}, {0, 2, 1}, {0, 0, 1}};
  for (double tau : {0.5, 1.0, 0.1}) {
    SCOPED_TRACE(tau);
    double want = 0;
    for (size_t i = 0; i < z.size(); ++i) {
      const double pos = std::exp(cosine(z[i], g[i]) / tau);
      const double neg = std::exp(cosine(z[i], p[i]) / tau);
      want += -std::log(pos / (pos + neg));
    }
    want /= static_cast<double>(z.size());
    const double got = moon_contrastive_loss(matrix(z), matrix(g), matrix(p), tau).item<double>();
    EXPECT_NEAR(got, want, 1e-12);
  }
  // Row 2 of z is row 2 of z_prev: the negative pair is perfectly similar. Row 1 has equal
  // similarities (1/√2 each): its term is log 2, whatever τ.
  const double row1 =
      moon_contrastive_loss(matrix({z[1]}), matrix({g[1]}), matrix({p[1]}), 0.5).item<double>();
  EXPECT_NEAR(row1, std::log(2.0), 1e-12);
}

TEST(MoonContrastiveLossTest, EqualGlobalAndPreviousGiveLogTwoAndNoGradient) {
  // Flower's first round (the global model as the previous one): a constant, so no gradient.
  torch::Tensor z = matrix({{1, 2, 0}, {0.5, 0, 3}}).requires_grad_(true);
  const torch::Tensor g = matrix({{2, 1, 1}, {1, 1, 0}});
  torch::Tensor loss = moon_contrastive_loss(z, g, g.clone(), 0.5);
  EXPECT_NEAR(loss.item<double>(), std::log(2.0), 1e-12);
  loss.backward();
  EXPECT_LE(z.grad().abs().max().item<double>(), 1e-15);
}

TEST(MoonContrastiveLossTest, PullsZTowardsTheGlobalRepresentation) {
  // The gradient step on ℓ_con raises sim(z, z_glob) and lowers sim(z, z_prev).
  torch::Tensor z = matrix({{1, 1, 0}}).requires_grad_(true);
  const torch::Tensor g = matrix({{1, 0, 0}});
  const torch::Tensor p = matrix({{0, 1, 0}});
  moon_contrastive_loss(z, g, p, 0.5).backward();
  const torch::Tensor moved = (z - 0.1 * z.grad()).detach();
  namespace F = torch::nn::functional;
  EXPECT_GT(F::cosine_similarity(moved, g).item<double>(),
            F::cosine_similarity(z.detach(), g).item<double>());
  EXPECT_LT(F::cosine_similarity(moved, p).item<double>(),
            F::cosine_similarity(z.detach(), p).item<double>());
}

// ---------------------------------------------------------------------------------------------
// Client and rounds

class MoonTest : public ::testing::Test {
 protected:
  void SetUp() override { use(tiny_config(), 3); }

  void use(const RunConfig& config, int clients) {
    config_ = config;
    run_ = run_context(config_);
    clients_ = sim_clients(config_, clients);
  }

  std::unique_ptr<ServerStrategy> server(const nlohmann::json& options = nlohmann::json::object()) {
    auto s = make_moon_server(options);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    run_.strategy_config = options;
    Rng rng(11);
    Status status = (*s)->initialize(run_, rng);
    EXPECT_TRUE(status.ok()) << status.to_string();
    return std::move(s).value();
  }

  // Client k's fit of `global` in round `round` with `algorithm`, with the Rng run_round uses.
  Result<FitOutput> fit(ClientAlgorithm& algorithm, const TensorBundle& global, int k,
                        int round = 1) {
    return fit_client(algorithm, config_, clients_, k, global, round);
  }

  // The module state of a model drawn from `seed`: a "previous local model" for the tests.
  TensorBundle other_model(uint64_t seed) {
    Rng rng(seed);
    Model m = make_model(config_.model, rng).value();
    return module_state(*m).value();
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
};

TEST_F(MoonTest, FirstRoundTrainsExactlyAsFedAvgAndStoresTheModel) {
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  MoonClient moon(parse_moon_options({{"mu", 5.0}}).value());
  ASSERT_TRUE(clients_[0].state.tensors.empty());
  auto ours = fit(moon, global, 0);
  ASSERT_TRUE(ours.ok()) << ours.status().to_string();
  EXPECT_EQ(ours->metrics["contrastive"], false);
  EXPECT_TRUE(ours->metrics["loss_contrastive"].is_null());
  EXPECT_EQ(ours->num_examples, clients_[0].train.size());
  // The previous model of the next round: the uploaded one.
  EXPECT_TRUE(clients_[0].state.tensors.bitwise_equal(ours->update));

  FedAvgClient fedavg;
  auto theirs = fit(fedavg, global, 0);
  ASSERT_TRUE(theirs.ok()) << theirs.status().to_string();
  EXPECT_TRUE(ours->update.bitwise_equal(theirs->update));
  EXPECT_EQ(ours->metrics["loss"], theirs->metrics["loss"]);
}

TEST_F(MoonTest, MuZeroTrainsExactlyAsFedAvgEvenWithAPreviousModel) {
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  clients_[0].state.tensors = other_model(4242);
  MoonClient moon(parse_moon_options({{"mu", 0.0}}).value());
  auto ours = fit(moon, global, 0);
  ASSERT_TRUE(ours.ok()) << ours.status().to_string();
  EXPECT_EQ(ours->metrics["contrastive"], false);
  FedAvgClient fedavg;
  auto theirs = fit(fedavg, global, 0);
  ASSERT_TRUE(theirs.ok());
  EXPECT_TRUE(ours->update.bitwise_equal(theirs->update));
}

TEST_F(MoonTest, ClientStepIsOneSgdStepOnCrossEntropyPlusMuTimesTheContrastiveLoss) {
  use(one_step_config(), 1);
  const double mu = 5.0, tau = 0.5;
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  const TensorBundle previous = other_model(4242);
  clients_[0].state.tensors = previous.clone();

  // By hand: the model being trained (training mode), the frozen global and previous models
  // (eval mode), the whole training set as one batch.
  Rng init(999);
  Model ref = make_model(config_.model, init).value();
  Model glob = make_model(config_.model, init).value();
  Model prev = make_model(config_.model, init).value();
  ASSERT_TRUE(load_module_state(*ref, global, /*strict=*/true).ok());
  ASSERT_TRUE(load_module_state(*glob, global, /*strict=*/true).ok());
  ASSERT_TRUE(load_module_state(*prev, previous, /*strict=*/true).ok());
  ref->train();
  glob->eval();
  prev->eval();
  const Dataset& train = clients_[0].train;
  const torch::Tensor x = inputs(train);
  const torch::Tensor z = ref->features(x);  // one pass: BatchNorm statistics move once
  const torch::Tensor ce =
      torch::nn::functional::cross_entropy(ref->head(kClassifierHead)->forward(z), train.labels);
  torch::Tensor zg, zp;
  {
    torch::NoGradGuard no_grad;
    zg = glob->features(x);
    zp = prev->features(x);
  }
  auto cos = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a * b).sum(1) / ((a * a).sum(1).sqrt() * (b * b).sum(1).sqrt()).clamp_min(1e-8);
  };
  const torch::Tensor pos = cos(z, zg) / tau;
  const torch::Tensor neg = cos(z, zp) / tau;
  const torch::Tensor con = (torch::log(torch::exp(pos) + torch::exp(neg)) - pos).mean();
  torch::Tensor loss = ce + mu * con;
  loss.backward();
  const std::map<std::string, torch::Tensor> want = stepped(ref, config_.local.lr);

  MoonClient moon(parse_moon_options({{"mu", mu}, {"temperature", tau}}).value());
  auto out = fit(moon, global, 0);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->metrics["steps"], 1);
  EXPECT_EQ(out->metrics["contrastive"], true);
  EXPECT_NEAR(out->metrics["loss"].get<double>(), loss.item<double>(), 1e-5);
  EXPECT_NEAR(out->metrics["loss_contrastive"].get<double>(), con.item<double>(), 1e-5);
  expect_near(out->update, want, 2e-5);
  // The state now holds the new local model.
  EXPECT_TRUE(clients_[0].state.tensors.bitwise_equal(out->update));

  // Not FedAvg's step: the term matters.
  clients_[0].state.tensors.clear();
  FedAvgClient fedavg;
  auto plain = fit(fedavg, global, 0);
  ASSERT_TRUE(plain.ok());
  EXPECT_GT(max_difference(out->update, plain->update), 1e-5);
}

TEST_F(MoonTest, TheStoredPreviousModelIsUsedInTheNextRoundAndThenReplaced) {
  auto s = server();
  auto client = make_moon_client({{"mu", 5.0}}).value();
  // Round 1: no previous model; the trained model is stored.
  nlohmann::json m1 = run_round(*s, *client, config_, clients_, 1);
  ASSERT_EQ(m1["updated"], true) << m1.dump();
  TensorBundle stored = clients_[0].state.tensors.clone();
  ASSERT_FALSE(stored.empty());
  const TensorBundle& global = *s->global_bundle();

  // Round 2 with the stored model, and with another one in its place: different updates.
  auto with_stored = fit(*client, global, 0, 2);
  ASSERT_TRUE(with_stored.ok()) << with_stored.status().to_string();
  EXPECT_EQ(with_stored->metrics["contrastive"], true);
  EXPECT_TRUE(clients_[0].state.tensors.bitwise_equal(with_stored->update));  // replaced

  clients_[0].state.tensors = other_model(4242);
  auto with_other = fit(*client, global, 0, 2);
  ASSERT_TRUE(with_other.ok());
  EXPECT_GT(max_difference(with_stored->update, with_other->update), 1e-6);

  clients_[0].state.tensors = std::move(stored);
  auto again = fit(*client, global, 0, 2);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->update.bitwise_equal(with_stored->update));
}

TEST_F(MoonTest, TheGlobalModelAsPreviousGivesFedAvgsStepAndLossPlusMuLogTwo) {
  // Flower's first-round choice has ℓ_con = log 2 and no gradient: the same step as skipping it.
  use(one_step_config(), 1);
  const double mu = 5.0;
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  clients_[0].state.tensors = global.clone();
  MoonClient moon(parse_moon_options({{"mu", mu}}).value());
  auto ours = fit(moon, global, 0);
  ASSERT_TRUE(ours.ok()) << ours.status().to_string();
  EXPECT_NEAR(ours->metrics["loss_contrastive"].get<double>(), std::log(2.0), 1e-6);
  clients_[0].state.tensors.clear();
  auto skipped = fit(moon, global, 0);
  ASSERT_TRUE(skipped.ok());
  EXPECT_LE(max_difference(ours->update, skipped->update), 1e-6);
  EXPECT_NEAR(ours->metrics["loss"].get<double>(),
              skipped->metrics["loss"].get<double>() + mu * std::log(2.0), 1e-5);
}

TEST_F(MoonTest, RefusesAContextWithoutStateAndAPreviousModelThatDoesNotFit) {
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  MoonClient moon(MoonOptions{});
  Rng rng(1);
  ClientContext ctx = client_context(config_, clients_[0], 1, &rng);
  ctx.state = nullptr;
  auto no_state = moon.fit(ctx, global);
  ASSERT_FALSE(no_state.ok());
  EXPECT_EQ(no_state.status().code(), StatusCode::kInvalidArgument);

  // A stored model lacking a tensor: refused, naming the client state, which stays as it was.
  TensorBundle partial;
  for (const NamedTensor& t : other_model(4242)) {
    if (t.name() != "heads.classifier.bias") {
      ASSERT_TRUE(partial.add(t.clone()).ok());
    }
  }
  clients_[0].state.tensors = partial.clone();
  auto refused = fit(moon, global, 0);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(contains(refused.status(), "client state of client-0")) << refused.status().message();
  EXPECT_TRUE(clients_[0].state.tensors.bitwise_equal(partial));
}

TEST_F(MoonTest, RoundsRunAndChangeTheModel) {
  auto s = server();
  auto client = make_moon_client({}).value();
  std::shared_ptr<const TensorBundle> before = s->global_bundle();
  for (int round = 1; round <= 3; ++round) {
    SCOPED_TRACE(round);
    nlohmann::json m = run_round(*s, *client, config_, clients_, round);
    ASSERT_EQ(m["updated"], true) << m.dump();
    ASSERT_TRUE(m["loss"].is_number()) << m.dump();
    EXPECT_TRUE(std::isfinite(m["loss"].get<double>()));
    EXPECT_EQ(s->global_bundle()->metadata()["round"], round);
    EXPECT_FALSE(s->global_bundle()
                     ->find("heads.classifier.weight")
                     ->bitwise_equal(*before->find("heads.classifier.weight")));
    before = s->global_bundle();
    for (const SimClient& c : clients_) EXPECT_FALSE(c.state.tensors.empty());
  }
  EXPECT_EQ(s->global_bundle()->metadata()["strategy"], "moon");
}

TEST_F(MoonTest, ResumeFromASavedStateWithTheClientStatesIsBitExact) {
  auto a = server();
  auto client = make_moon_client({{"mu", 5.0}}).value();
  for (int round = 1; round <= 2; ++round) run_round(*a, *client, config_, clients_, round);
  auto state = a->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();

  // A fresh server from the saved state, and fresh clients (fresh models) given the saved
  // client states.
  auto b = make_moon_server(nlohmann::json::object()).value();
  ASSERT_TRUE(b->load_state(state->clone()).ok());
  std::vector<SimClient> resumed = sim_clients(config_, static_cast<int>(clients_.size()));
  for (size_t k = 0; k < clients_.size(); ++k) {
    resumed[k].state.tensors = clients_[k].state.tensors.clone();
    resumed[k].state.values = clients_[k].state.values;
  }

  nlohmann::json ma = run_round(*a, *client, config_, clients_, 3);
  auto other_client = make_moon_client({{"mu", 5.0}}).value();
  nlohmann::json mb = run_round(*b, *other_client, config_, resumed, 3);
  EXPECT_EQ(ma, mb);
  EXPECT_TRUE(a->global_bundle()->bitwise_equal(*b->global_bundle()));
  for (size_t k = 0; k < clients_.size(); ++k) {
    EXPECT_TRUE(clients_[k].state.tensors.bitwise_equal(resumed[k].state.tensors)) << k;
  }
  EXPECT_TRUE(a->save_state()->bitwise_equal(*b->save_state()));
}

}  // namespace
}  // namespace fedtail::strategies

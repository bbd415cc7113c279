// FedNova: options, a_i against the closed form, the client's normalised upload against FedAvg's
// trained model, the server's update on hand-made bundles of two clients with different τ (with
// and without server momentum), refused updates and states, rounds with different local step
// counts (and capped ones), and resume bit for bit.
#include "strategies/fednova/fednova.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::contains;
using testing::counter;
using testing::expect_factories_refuse;
using testing::expect_registry_entry;
using testing::expect_values_near;
using testing::f32;
using testing::f64;
using testing::fit_client;
using testing::infos;
using testing::one_step_config;
using testing::run_context;
using testing::run_round;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;
using testing::values;

// The paper's closed form of a_i, computed independently of the code under test.
double closed_form_a(int64_t tau, double rho) {
  if (rho == 0) return static_cast<double>(tau);
  const double t = static_cast<double>(tau);
  return (t - rho * (1 - std::pow(rho, t)) / (1 - rho)) / (1 - rho);
}

// ---------------------------------------------------------------------------------------------
// Options and the normaliser

TEST(FedNovaOptionsTest, DefaultsValuesAndRefusals) {
  auto o = parse_fednova_options(nullptr);
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->gmf, 0.0);
  EXPECT_EQ(o->round.min_fit_clients, 1);
  auto set = parse_fednova_options({{"gmf", 0.9}, {"min_fit_clients", 2}});
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->gmf, 0.9);
  EXPECT_EQ(set->round.min_fit_clients, 2);

  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {{{"gmf", 1}}, "config.strategy.gmf: must be in [0, 1)"},
      {{{"gmf", -0.1}}, "config.strategy.gmf: must be in [0, 1)"},
      {{{"gmf", "0.5"}}, "config.strategy.gmf"},
      {{{"mu", 0.1}}, "config.strategy.mu: unknown key"}};
  expect_factories_refuse(bad, make_fednova_server, make_fednova_client);
  expect_registry_entry(fednova_strategy_entry(), "fednova");
}

TEST(FedNovaNormalizerTest, MatchesTheClosedForm) {
  for (int64_t tau : {1, 2, 3, 7, 50}) EXPECT_EQ(fednova_normalizer(tau, 0), tau);
  EXPECT_EQ(fednova_normalizer(1, 0.9), 1.0);
  EXPECT_NEAR(fednova_normalizer(2, 0.9), 2.9, 1e-15);             // 1 + (1 + ρ)
  EXPECT_NEAR(fednova_normalizer(3, 0.9), 1 + 1.9 + 2.71, 1e-14);  // + (1 + ρ + ρ²)
  for (double rho : {0.5, 0.9, 0.99}) {
    for (int64_t tau : {1, 2, 3, 10, 100, 1000}) {
      SCOPED_TRACE(std::to_string(rho) + " " + std::to_string(tau));
      const double want = closed_form_a(tau, rho);
      EXPECT_NEAR(fednova_normalizer(tau, rho), want, 1e-11 * want);
      EXPECT_LT(fednova_normalizer(tau, rho), tau / (1 - rho));  // a_i < τ_i / (1 − ρ)
    }
  }
  EXPECT_EQ(fednova_normalizer(0, 0.9), 0);

  LocalTrainOptions local;
  local.epochs = 2;
  local.batch_size = 16;
  EXPECT_EQ(fednova_max_steps(32, local), 4);
  EXPECT_EQ(fednova_max_steps(33, local), 6);
  EXPECT_EQ(fednova_max_steps(0, local), 0);
  local.max_steps = 5;
  EXPECT_EQ(fednova_max_steps(33, local), 5);
  EXPECT_EQ(fednova_max_steps(32, local), 4);
  local.max_steps = 0;
  local.batch_size = 1;
  local.epochs = 1000;
  EXPECT_EQ(fednova_max_steps(std::numeric_limits<int64_t>::max(), local),
            std::numeric_limits<int64_t>::max());
}

// ---------------------------------------------------------------------------------------------
// Client

TEST(FedNovaClientTest, UploadsTheNormalisedModelAndA) {
  // Three full-batch steps of SGD with momentum 0.9: a = 1 + 1.9 + 2.71.
  RunConfig config = one_step_config();
  config.local.epochs = 3;
  config.local.max_steps = 3;
  config.local.momentum = 0.9;
  config.local.weight_decay = 5e-4;
  RunContext run = run_context(config);
  FedNovaServer server{FedNovaOptions()};
  Rng init(11);
  ASSERT_TRUE(server.initialize(run, init).ok());
  const TensorBundle& x = *server.global_bundle();
  std::vector<SimClient> clients = sim_clients(config, 1);

  // y: FedAvg's client trained on the same task with the same Rng.
  FedAvgClient fedavg;
  auto y = fit_client(fedavg, config, clients, 0, x);
  ASSERT_TRUE(y.ok()) << y.status().to_string();

  FedNovaClient client;
  auto out = fit_client(client, config, clients, 0, x);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  const double a = 1 + 1.9 + 2.71;
  EXPECT_EQ(out->metrics["steps"], 3);
  EXPECT_NEAR(out->metrics["a"].get<double>(), a, 1e-14);
  EXPECT_EQ(out->metrics["loss"], y->metrics["loss"]);
  EXPECT_EQ(out->num_examples, clients[0].train.size());
  const NamedTensor* at = out->update.find(kFedNovaATensor);
  ASSERT_NE(at, nullptr);
  EXPECT_EQ(at->dtype(), DType::kFloat64);
  EXPECT_EQ(at->shape(), std::vector<int64_t>{1});
  EXPECT_NEAR(at->data<double>()[0], a, 1e-14);

  int normalised = 0;
  for (const NamedTensor& yt : y->update) {
    SCOPED_TRACE(yt.name());
    const NamedTensor* z = out->update.find(yt.name());
    ASSERT_NE(z, nullptr);
    const bool buffer = yt.name().find("running_") != std::string::npos ||
                        yt.name().find("num_batches_tracked") != std::string::npos;
    if (buffer) {  // the trained values, as FedAvg's
      EXPECT_TRUE(z->bitwise_equal(yt));
      continue;
    }
    ++normalised;
    // z = x − (x − y)/a, by hand in float64.
    const std::vector<double> xv = values(*x.find(yt.name()));
    const std::vector<double> yv = values(yt);
    std::vector<double> want(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) want[i] = xv[i] - (xv[i] - yv[i]) / a;
    const std::vector<double> got = values(*z);
    double worst = 0;
    for (size_t i = 0; i < xv.size(); ++i) {
      worst = std::max(worst, std::abs(got[i] - want[i]) / std::max(1.0, std::abs(want[i])));
    }
    EXPECT_LE(worst, 1e-7);
  }
  EXPECT_GT(normalised, 0);
  EXPECT_EQ(out->update.size(), y->update.size() + 1);

  // What the server's tasks expect.
  Rng sample(1);
  auto tasks = server.configure_fit(1, infos(clients), sample);
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 1u);
  ASSERT_NE(tasks->front().expected_update, nullptr);
  EXPECT_TRUE(check_compatible(out->update, *tasks->front().expected_update).ok());
  EXPECT_EQ(tasks->front().bundle, server.global_bundle());
}

// ---------------------------------------------------------------------------------------------
// Server on hand-made bundles

class FedNovaServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    // Bound on a_i: 1 epoch of batch 1 without momentum, a_i <= n_i.
    config_.local.batch_size = 1;
    config_.local.epochs = 1;
    config_.local.momentum = 0;
    run_ = run_context(config_);
  }

  // A saved state whose global model is x: w = (1, 2, −1), a BatchNorm running mean (0, 1) and a
  // counter 4, plus `extra`. The model metadata is a real server's.
  TensorBundle hand_state(std::vector<NamedTensor> extra = {}) {
    FedNovaServer real{FedNovaOptions()};
    Rng rng(1);
    EXPECT_TRUE(real.initialize(run_, rng).ok());
    auto saved = real.save_state();
    EXPECT_TRUE(saved.ok());
    TensorBundle state;
    EXPECT_TRUE(state.add(f32("w", {1.0f, 2.0f, -1.0f})).ok());
    EXPECT_TRUE(state.add(f32("bn.running_mean", {0.0f, 1.0f})).ok());
    EXPECT_TRUE(state.add(counter(4)).ok());
    for (NamedTensor& t : extra) EXPECT_TRUE(state.add(std::move(t)).ok());
    nlohmann::json meta = saved->metadata();
    meta["global_metadata"] = {{"strategy", "fednova"}, {"round", 3}};
    EXPECT_TRUE(state.set_metadata(meta).ok());
    return state;
  }

  std::unique_ptr<FedNovaServer> loaded(const FedNovaOptions& options,
                                        std::vector<NamedTensor> extra = {}) {
    auto s = std::make_unique<FedNovaServer>(options);
    Status st = s->load_state(hand_state(std::move(extra)));
    EXPECT_TRUE(st.ok()) << st.to_string();
    st = s->resume(run_);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return s;
  }

  static TensorBundle upload(std::vector<float> z, std::vector<float> running_mean, int64_t batches,
                             NamedTensor a) {
    TensorBundle b;
    EXPECT_TRUE(b.add(f32("w", z)).ok());
    EXPECT_TRUE(b.add(f32("bn.running_mean", running_mean)).ok());
    EXPECT_TRUE(b.add(counter(batches)).ok());
    EXPECT_TRUE(b.add(std::move(a)).ok());
    return b;
  }

  static NamedTensor a_tensor(double a) { return f64(kFedNovaATensor, {a}); }

  // Client 1: n = 10, τ = 2 (SGD: a = 2), y₁ = x − (0.2, 0.4, −0.2): d₁ = (0.1, 0.2, −0.1).
  // Client 2: n = 30, τ = 6 (a = 6), y₂ = x − (0.6, −0.6, 1.2): d₂ = (0.1, −0.1, 0.2).
  // Uploads z_i = x − d_i.
  static ClientUpdate client1() {
    ClientUpdate u;
    u.client_id = "a";
    u.num_examples = 10;
    u.bundle = upload({0.9f, 1.8f, -0.9f}, {1, 1}, 6, a_tensor(2));
    u.metrics = {{"loss", 1.0}};
    return u;
  }
  static ClientUpdate client2() {
    ClientUpdate u;
    u.client_id = "b";
    u.num_examples = 30;
    u.bundle = upload({0.9f, 2.1f, -1.2f}, {3, 2}, 8, a_tensor(6));
    u.metrics = {{"loss", 2.0}};
    return u;
  }

  // Runs round 4 with both clients' updates; returns finish()'s metrics.
  nlohmann::json round(FedNovaServer& s) {
    const std::vector<ClientInfo> available = {{"a", 10, "cnn"}, {"b", 30, "cnn"}};
    Rng rng(2);
    auto tasks = s.configure_fit(4, available, rng);
    EXPECT_TRUE(tasks.ok()) << tasks.status().to_string();
    auto aggregation = s.begin_aggregation(4);
    EXPECT_TRUE(aggregation.ok()) << aggregation.status().to_string();
    if (!aggregation.ok()) return {};
    // Arrival order b, a: τ_eff does not depend on it.
    Status st = (*aggregation)->add(client2());
    EXPECT_TRUE(st.ok()) << st.to_string();
    st = (*aggregation)->add(client1());
    EXPECT_TRUE(st.ok()) << st.to_string();
    auto metrics = (*aggregation)->finish({});
    EXPECT_TRUE(metrics.ok()) << metrics.status().to_string();
    return metrics.ok() ? *metrics : nlohmann::json();
  }

  RunConfig config_;
  RunContext run_;
};

TEST_F(FedNovaServerTest, TakesTauEffNormalisedStepsWithDifferentLocalSteps) {
  auto s = loaded(FedNovaOptions());
  const nlohmann::json m = round(*s);
  // p = (0.25, 0.75); τ_eff = 0.25·2 + 0.75·6 = 5; Σ p_i d_i = (0.1, −0.025, 0.125);
  // x ← x − 5·(0.1, −0.025, 0.125) = (0.5, 2.125, −1.625). (FedAvg of the y_i would give
  // x − (0.5, −0.35, 0.85) = (0.5, 2.35, −1.85).)
  const double p1 = 0.25, p2 = 0.75;
  const double tau_eff = p1 * 2 + p2 * 6;
  const std::vector<double> x = {1, 2, -1};
  const std::vector<double> d1 = {0.1, 0.2, -0.1}, d2 = {0.1, -0.1, 0.2};
  std::vector<double> want(3);
  for (size_t i = 0; i < 3; ++i) want[i] = x[i] - tau_eff * (p1 * d1[i] + p2 * d2[i]);
  EXPECT_NEAR(want[1], 2.125, 1e-12);
  const TensorBundle& g = *s->global_bundle();
  expect_values_near(g.find("w"), want, 2e-6);
  // BatchNorm statistics and counters: FedAvg's weighted mean; 7.5 rounds to 8.
  expect_values_near(g.find("bn.running_mean"), {2.5, 1.75}, 1e-7);
  expect_values_near(g.find("bn.num_batches_tracked"), {8}, 0);
  EXPECT_FALSE(g.contains(kFedNovaATensor));
  EXPECT_EQ(g.metadata()["round"], 4);
  EXPECT_TRUE(s->velocity().empty());  // gmf 0 keeps no momentum

  EXPECT_EQ(m["updated"], true);
  EXPECT_EQ(m["examples"], 40);
  EXPECT_NEAR(m["loss"].get<double>(), 1.75, 1e-12);
  EXPECT_NEAR(m["fednova"]["tau_eff"].get<double>(), 5.0, 1e-12);
  EXPECT_EQ(m["fednova"]["a_min"], 2.0);
  EXPECT_EQ(m["fednova"]["a_max"], 6.0);
  EXPECT_EQ(m["fednova"]["gmf"], 0.0);
}

TEST_F(FedNovaServerTest, ServerMomentumAccumulatesTheNormalisedStep) {
  FedNovaOptions o;
  o.gmf = 0.5;
  std::vector<NamedTensor> v;
  v.push_back(f64(std::string(kFedNovaVelocityPrefix) + "w", {0.2, 0.0, -0.4}));
  auto s = loaded(o, std::move(v));
  round(*s);
  // step = 5·(0.1, −0.025, 0.125) = (0.5, −0.125, 0.625); v ← 0.5·v + step = (0.6, −0.125, 0.425);
  // x ← x − v = (0.4, 2.125, −1.425).
  const std::vector<double> x = {1, 2, -1}, v0 = {0.2, 0.0, -0.4};
  const std::vector<double> step = {5 * 0.1, 5 * -0.025, 5 * 0.125};
  std::vector<double> v1(3), want(3);
  for (size_t i = 0; i < 3; ++i) {
    v1[i] = 0.5 * v0[i] + step[i];
    want[i] = x[i] - v1[i];
  }
  EXPECT_NEAR(want[0], 0.4, 1e-12);
  expect_values_near(s->global_bundle()->find("w"), want, 2e-6);
  expect_values_near(s->velocity().find(std::string(kFedNovaVelocityPrefix) + "w"), v1, 2e-6);
  ASSERT_EQ(s->velocity().size(), 1u);  // BatchNorm statistics and counters carry none
  auto state = s->save_state();
  ASSERT_TRUE(state.ok());
  expect_values_near(state->find(std::string(kFedNovaVelocityPrefix) + "w"), v1, 2e-6);
}

TEST_F(FedNovaServerTest, RefusesABadNormalizerThenAcceptsTheUpdateOnce) {
  auto s = loaded(FedNovaOptions());
  Rng rng(2);
  ASSERT_TRUE(s->configure_fit(4, {{"client-x", 10, "cnn"}}, rng).ok());
  auto aggregation = s->begin_aggregation(4);
  ASSERT_TRUE(aggregation.ok());
  const std::vector<float> z = {0.9f, 1.8f, -0.9f};
  const std::vector<float> rm = {1, 1};
  std::vector<testing::RefusedUpdate> cases;
  {
    TensorBundle b;
    EXPECT_TRUE(b.add(f32("w", z)).ok());
    EXPECT_TRUE(b.add(f32("bn.running_mean", rm)).ok());
    EXPECT_TRUE(b.add(counter(6)).ok());
    cases.push_back({"missing", std::move(b), StatusCode::kInvalidArgument, {"missing"}});
  }
  cases.push_back({"float32",
                   upload(z, rm, 6, f32(kFedNovaATensor, {2})),
                   StatusCode::kInvalidArgument,
                   {"expected float64 [1]"}});
  cases.push_back({"two values",
                   upload(z, rm, 6, f64(kFedNovaATensor, {2, 2})),
                   StatusCode::kInvalidArgument,
                   {"expected float64 [1]"}});
  for (double bad : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
    cases.push_back({"a = " + std::to_string(bad),
                     upload(z, rm, 6, a_tensor(bad)),
                     StatusCode::kInvalidArgument,
                     {"finite and > 0"}});
  }
  // 10 examples, batch 1, 1 epoch, no momentum: at most 10 steps, a_i <= 10.
  cases.push_back({"too many steps",
                   upload(z, rm, 6, a_tensor(10.5)),
                   StatusCode::kInvalidArgument,
                   {"exceeds", "10 SGD steps"}});
  cases.push_back({"misshapen model",
                   upload({0.9f, 1.8f}, rm, 6, a_tensor(2)),
                   StatusCode::kInvalidArgument,
                   {"\"w\""}});
  for (auto& c : cases) {
    if (c.what != "misshapen model") c.message.push_back(kFedNovaATensor);
  }
  testing::expect_refused_then_accepted_once(**aggregation, cases, upload(z, rm, 6, a_tensor(10)),
                                             10);
  auto m = (*aggregation)->finish({});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)["fednova"]["tau_eff"], 10.0);
}

TEST_F(FedNovaServerTest, LoadStateRefusesABadVelocityAndAggregationNeedsResume) {
  std::vector<std::pair<std::vector<NamedTensor>, std::string>> bad;
  {
    std::vector<NamedTensor> v;
    v.push_back(f32(std::string(kFedNovaVelocityPrefix) + "w", {0, 0, 0}));
    bad.emplace_back(std::move(v), "expected float64 [3]");
  }
  {
    std::vector<NamedTensor> v;
    v.push_back(f64(std::string(kFedNovaVelocityPrefix) + "bn.running_mean", {0, 0}));
    bad.emplace_back(std::move(v), "unexpected tensor");
  }
  {
    std::vector<NamedTensor> v;
    v.push_back(f64("other/w", {0, 0, 0}));
    bad.emplace_back(std::move(v), "unexpected tensor");
  }
  for (auto& [extra, message] : bad) {
    SCOPED_TRACE(message);
    FedNovaServer s{FedNovaOptions()};
    const Status st = s.load_state(hand_state(std::move(extra)));
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(st, message)) << st.message();
    EXPECT_TRUE(s.global_bundle() == nullptr);
  }

  FedNovaServer fresh{FedNovaOptions()};
  EXPECT_EQ(fresh.resume(run_).code(), StatusCode::kFailedPrecondition);  // before load_state
  ASSERT_TRUE(fresh.load_state(hand_state()).ok());
  auto early = fresh.begin_aggregation(4);
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(fresh.resume(run_).ok());
  EXPECT_TRUE(fresh.begin_aggregation(4).ok());
}

// ---------------------------------------------------------------------------------------------
// Rounds

class FedNovaRoundsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    config_.local.epochs = 2;  // batch 16: 32, 40, 48 examples take 4, 6, 6 steps
    run_ = run_context(config_);
    clients_ = sim_clients(config_, 3);
  }

  std::unique_ptr<FedNovaServer> server(const nlohmann::json& options = nlohmann::json::object()) {
    auto parsed = parse_fednova_options(options);
    EXPECT_TRUE(parsed.ok()) << parsed.status().to_string();
    auto s = std::make_unique<FedNovaServer>(*parsed);
    Rng rng(11);
    const Status st = s->initialize(run_, rng);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return s;
  }

  // τ_eff of one round of the three clients taking `steps` steps each, by the closed form.
  double tau_eff(const std::vector<int64_t>& steps) const {
    double num = 0, den = 0;
    for (size_t k = 0; k < clients_.size(); ++k) {
      const double n = static_cast<double>(clients_[k].train.size());
      num += n * closed_form_a(steps[k], config_.local.momentum);
      den += n;
    }
    return num / den;
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
};

TEST_F(FedNovaRoundsTest, ClientsWithDifferentStepCountsRunRounds) {
  auto s = server();
  FedNovaClient client;
  const TensorBundle g0 = s->global_bundle()->clone();
  for (int round = 1; round <= 2; ++round) {
    const nlohmann::json m = run_round(*s, client, config_, clients_, round);
    EXPECT_EQ(m["updated"], true) << m.dump();
    EXPECT_TRUE(std::isfinite(m["loss"].get<double>())) << m.dump();
    EXPECT_NEAR(m["fednova"]["tau_eff"].get<double>(), tau_eff({4, 6, 6}), 1e-9);
    EXPECT_NEAR(m["fednova"]["a_min"].get<double>(), closed_form_a(4, 0.9), 1e-9);
    EXPECT_NEAR(m["fednova"]["a_max"].get<double>(), closed_form_a(6, 0.9), 1e-9);
  }
  EXPECT_GT(testing::squared_distance(*s->global_bundle(), g0, {"heads.classifier.weight"}), 0);
  for (const NamedTensor& t : *s->global_bundle()) {
    EXPECT_TRUE(check_finite(t).ok()) << t.name();
  }
}

TEST_F(FedNovaRoundsTest, CappedStepsReportTheStepsTaken) {
  config_.local.max_steps = 5;  // caps the 6-step clients, not the 4-step one
  auto s = server();
  FedNovaClient client;
  const nlohmann::json m = run_round(*s, client, config_, clients_, 1);
  EXPECT_EQ(m["updated"], true) << m.dump();
  EXPECT_NEAR(m["fednova"]["tau_eff"].get<double>(), tau_eff({4, 5, 5}), 1e-9);
  EXPECT_NEAR(m["fednova"]["a_max"].get<double>(), closed_form_a(5, 0.9), 1e-9);
}

TEST_F(FedNovaRoundsTest, ResumeFromASavedStateIsBitExact) {
  auto a = server({{"gmf", 0.5}});
  FedNovaClient client;
  for (int round = 1; round <= 2; ++round) run_round(*a, client, config_, clients_, round);
  EXPECT_FALSE(a->velocity().empty());
  auto state = a->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();

  FedNovaServer b(a->options());
  ASSERT_TRUE(b.load_state(state->clone()).ok());
  ASSERT_TRUE(b.resume(run_).ok());
  EXPECT_TRUE(b.velocity().bitwise_equal(a->velocity()));

  const nlohmann::json ma = run_round(*a, client, config_, clients_, 3);
  const nlohmann::json mb = run_round(b, client, config_, clients_, 3);
  EXPECT_EQ(ma, mb);
  EXPECT_TRUE(a->global_bundle()->bitwise_equal(*b.global_bundle()));
  EXPECT_TRUE(a->velocity().bitwise_equal(b.velocity()));
  EXPECT_TRUE(a->save_state()->bitwise_equal(*b.save_state()));
}

}  // namespace
}  // namespace fedtail::strategies

// FedDyn: options, α_k per client, two client SGD steps on the dynamic regulariser against plain
// autograd, the g_k update, the server's h and θ^t on hand-made bundles (uniform mean, BatchNorm
// statistics without h), refused states, a smoke run and resume bit for bit.
#include "strategies/feddyn/feddyn.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::contains;
using testing::copy_state;
using testing::counter;
using testing::edited_bundle;
using testing::expect_factories_refuse;
using testing::expect_registry_entry;
using testing::expect_values_near;
using testing::f32;
using testing::f64;
using testing::fit_client;
using testing::infos;
using testing::inputs;
using testing::one_step_config;
using testing::run_context;
using testing::run_round;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;

// ---------------------------------------------------------------------------------------------
// Options

TEST(FedDynOptionsTest, DefaultsAndValues) {
  auto o = parse_feddyn_options(nullptr);
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->alpha, 0.01);
  EXPECT_EQ(o->alpha_scaling, FedDynAlphaScaling::kExamples);
  EXPECT_EQ(o->round.min_fit_clients, 1);

  auto set =
      parse_feddyn_options({{"alpha", 0.1}, {"alpha_scaling", "uniform"}, {"fraction_fit", 0.5}});
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->alpha, 0.1);
  EXPECT_EQ(set->alpha_scaling, FedDynAlphaScaling::kUniform);
  EXPECT_EQ(set->round.fraction_fit, 0.5);
}

TEST(FedDynOptionsTest, BadValuesAndUnknownKeysAreRefusedNamingTheField) {
  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {{{"alpha", 0}}, "config.strategy.alpha: must be > 0"},
      {{{"alpha", -0.5}}, "config.strategy.alpha: must be > 0"},
      {{{"alpha", "0.1"}}, "config.strategy.alpha"},
      {{{"alpha_scaling", "clients"}}, "config.strategy.alpha_scaling: must be one of"},
      {{{"fraction_fit", 0}}, "config.strategy.fraction_fit"},
      {{{"mu", 0.1}}, "config.strategy.mu: unknown key"}};
  expect_factories_refuse(bad, make_feddyn_server, make_feddyn_client);
}

TEST(FedDynOptionsTest, RegistryEntryIsNamedFeddyn) {
  expect_registry_entry(feddyn_strategy_entry(), "feddyn");
}

TEST(FedDynOptionsTest, ClientAlphaIsScaledByTheMeanExampleCount) {
  FedDynOptions o;
  o.alpha = 0.1;
  // n̄ over the clients that declared examples: (10 + 30) / 2 = 20.
  const std::vector<ClientInfo> available = {{"a", 10, "cnn"}, {"b", 30, "cnn"}, {"z", 0, "cnn"}};
  EXPECT_DOUBLE_EQ(feddyn_client_alpha(o, 10, available), 0.1 * 20 / 10);
  EXPECT_DOUBLE_EQ(feddyn_client_alpha(o, 30, available), 0.1 * 20 / 30);
  EXPECT_EQ(feddyn_client_alpha(o, 0, available), 0.1);  // declared none: α
  EXPECT_EQ(feddyn_client_alpha(o, 10, {{"z", 0, "cnn"}}), 0.1);
  o.alpha_scaling = FedDynAlphaScaling::kUniform;
  EXPECT_EQ(feddyn_client_alpha(o, 10, available), 0.1);
  EXPECT_EQ(feddyn_client_alpha(o, 30, available), 0.1);
}

// ---------------------------------------------------------------------------------------------
// Server on hand-made bundles

class FedDynServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    run_ = run_context(config_);
  }

  // A saved state whose global model is w = (1, −2, 0.5), a BatchNorm running mean (0, 1) and a
  // counter 4, with h(w) = `h`, at round 3. The model metadata is a real server's.
  TensorBundle hand_state(const std::vector<double>& h) {
    FedDynServer real{FedDynOptions()};
    Rng rng(1);
    EXPECT_TRUE(real.initialize(run_, rng).ok());
    auto saved = real.save_state();
    EXPECT_TRUE(saved.ok());
    TensorBundle state;
    EXPECT_TRUE(state.add(f32("w", {1.0f, -2.0f, 0.5f})).ok());
    EXPECT_TRUE(state.add(f32("bn.running_mean", {0.0f, 1.0f})).ok());
    EXPECT_TRUE(state.add(counter(4)).ok());
    EXPECT_TRUE(state.add(f64(std::string(kFedDynStatePrefix) + "w", h)).ok());
    nlohmann::json meta = saved->metadata();
    meta["global_metadata"] = {{"strategy", "feddyn"}, {"round", 3}};
    EXPECT_TRUE(state.set_metadata(meta).ok());
    return state;
  }

  static ClientUpdate update(const std::string& id, int64_t n, std::vector<float> w,
                             std::vector<float> running_mean, int64_t batches, double loss) {
    ClientUpdate u;
    u.client_id = id;
    u.num_examples = n;
    EXPECT_TRUE(u.bundle.add(f32("w", w)).ok());
    EXPECT_TRUE(u.bundle.add(f32("bn.running_mean", running_mean)).ok());
    EXPECT_TRUE(u.bundle.add(counter(batches)).ok());
    u.metrics = {{"loss", loss}};
    return u;
  }

  RunConfig config_;
  RunContext run_;
};

TEST_F(FedDynServerTest, UpdatesHAndTheModelAsThePaperWithTheUniformMean) {
  FedDynOptions o;
  o.alpha = 0.1;
  o.alpha_scaling = FedDynAlphaScaling::kUniform;
  FedDynServer s(o);
  const std::vector<double> h0 = {0.01, -0.02, 0.0};
  ASSERT_TRUE(s.load_state(hand_state(h0)).ok());

  // m = 4 available clients, all selected; two answer.
  const std::vector<ClientInfo> available = {
      {"a", 10, "cnn"}, {"b", 30, "cnn"}, {"c", 20, "cnn"}, {"d", 40, "cnn"}};
  Rng rng(2);
  auto tasks = s.configure_fit(4, available, rng);
  ASSERT_TRUE(tasks.ok()) << tasks.status().to_string();
  ASSERT_EQ(tasks->size(), 4u);
  for (const TaskSpec& t : *tasks) {
    EXPECT_EQ(t.config, nlohmann::json({{"alpha", 0.1}}));
    EXPECT_EQ(t.expected_update, s.global_bundle());  // FedAvg's: the upload is the model
  }
  auto aggregation = s.begin_aggregation(4);
  ASSERT_TRUE(aggregation.ok()) << aggregation.status().to_string();
  ASSERT_TRUE((*aggregation)->add(update("a", 10, {1.5f, -2.0f, 0.25f}, {1, 1}, 6, 1.0)).ok());
  ASSERT_TRUE((*aggregation)->add(update("b", 30, {0.5f, -1.0f, 0.75f}, {3, 2}, 8, 2.0)).ok());
  auto metrics = (*aggregation)->finish({{"c", "deadline exceeded"}, {"d", "crashed"}});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();

  // By hand: uniform mean w̄ = (1, −1.5, 0.5) (the example-weighted one would be
  // (0.75, −1.25, 0.625)); h' = h − α·|P|/m·(w̄ − w) = h − 0.05·(0, 0.5, 0) = (0.01, −0.045, 0);
  // θ = w̄ − h'/α = (0.9, −1.05, 0.5).
  const std::vector<double> w = {1, -2, 0.5};
  const std::vector<double> mean = {(1.5 + 0.5) / 2, (-2.0 - 1.0) / 2, (0.25 + 0.75) / 2};
  std::vector<double> h1(3), theta(3);
  for (size_t i = 0; i < 3; ++i) {
    h1[i] = h0[i] - 0.1 * (2.0 / 4.0) * (mean[i] - w[i]);
    theta[i] = mean[i] - h1[i] / 0.1;
  }
  EXPECT_NEAR(h1[1], -0.045, 1e-15);
  EXPECT_NEAR(theta[0], 0.9, 1e-15);
  EXPECT_NEAR(theta[1], -1.05, 1e-15);
  const TensorBundle& g = *s.global_bundle();
  expect_values_near(g.find("w"), theta, 1e-6);
  expect_values_near(s.h().find(std::string(kFedDynStatePrefix) + "w"), h1, 1e-12);
  // BatchNorm statistics and counters: the plain uniform mean, no h.
  expect_values_near(g.find("bn.running_mean"), {2.0, 1.5}, 0);
  expect_values_near(g.find("bn.num_batches_tracked"), {7}, 0);
  EXPECT_EQ(s.h().size(), 1u);
  EXPECT_EQ(g.metadata()["round"], 4);

  EXPECT_EQ((*metrics)["updated"], true);
  EXPECT_EQ((*metrics)["updates"], 2);
  EXPECT_EQ((*metrics)["failures"], 2);
  EXPECT_EQ((*metrics)["examples"], 40);
  EXPECT_NEAR((*metrics)["loss"].get<double>(), (10 * 1.0 + 30 * 2.0) / 40, 1e-12);
  EXPECT_EQ((*metrics)["feddyn"]["clients"], 4);
  EXPECT_EQ((*metrics)["feddyn"]["participants"], 2);
  EXPECT_NEAR((*metrics)["feddyn"]["h_norm"].get<double>(), std::hypot(0.01, 0.045), 1e-12);

  // The saved state carries h'.
  auto state = s.save_state();
  ASSERT_TRUE(state.ok());
  expect_values_near(state->find(std::string(kFedDynStatePrefix) + "w"), h1, 0);
}

TEST_F(FedDynServerTest, TasksCarryTheScaledAlphaAndAggregationNeedsConfigureFit) {
  FedDynOptions o;
  o.alpha = 0.1;
  FedDynServer s(o);
  ASSERT_TRUE(s.load_state(hand_state({0, 0, 0})).ok());
  auto early = s.begin_aggregation(4);
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition);

  const std::vector<ClientInfo> available = {{"a", 10, "cnn"}, {"b", 30, "cnn"}};
  Rng rng(2);
  auto tasks = s.configure_fit(4, available, rng);
  ASSERT_TRUE(tasks.ok()) << tasks.status().to_string();
  ASSERT_EQ(tasks->size(), 2u);
  EXPECT_DOUBLE_EQ((*tasks)[0].config["alpha"].get<double>(), 0.1 * 20 / 10);
  EXPECT_DOUBLE_EQ((*tasks)[1].config["alpha"].get<double>(), 0.1 * 20 / 30);
  EXPECT_TRUE(s.begin_aggregation(4).ok());
  EXPECT_FALSE(s.begin_aggregation(5).ok());  // configured for round 4 only
}

TEST_F(FedDynServerTest, LoadStateRefusesAMissingOrMisshapenH) {
  auto edited = [&](const std::string& drop, std::optional<NamedTensor> add) {
    return edited_bundle(hand_state({0, 0, 0}), drop, std::move(add));
  };
  const std::string h = std::string(kFedDynStatePrefix) + "w";
  std::vector<std::pair<TensorBundle, std::string>> bad;
  bad.emplace_back(edited(h, std::nullopt), "missing");
  bad.emplace_back(edited(h, f32(h, {0, 0, 0})), "expected float64 [3]");
  bad.emplace_back(edited(h, f64(h, {0, 0})), "expected float64 [3]");
  bad.emplace_back(edited("", f64(std::string(kFedDynStatePrefix) + "bn.running_mean", {0, 0})),
                   "unexpected tensor");
  for (auto& [state, message] : bad) {
    SCOPED_TRACE(message);
    FedDynServer s{FedDynOptions()};
    const Status st = s.load_state(std::move(state));
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(st, message)) << st.message();
    EXPECT_TRUE(s.global_bundle() == nullptr);
  }
}

// ---------------------------------------------------------------------------------------------
// Client

class FedDynClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    run_ = run_context(config_);
  }

  void init_server(const nlohmann::json& options = nlohmann::json::object()) {
    auto parsed = parse_feddyn_options(options);
    ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
    server_ = std::make_unique<FedDynServer>(*parsed);
    Rng rng(11);
    ASSERT_TRUE(server_->initialize(run_, rng).ok());
  }

  RunConfig config_;
  RunContext run_;
  std::unique_ptr<FedDynServer> server_;
};

TEST_F(FedDynClientTest, TwoStepsAreSgdOnTheDynamicRegulariserAndGIsUpdated) {
  // Two full-batch steps of plain SGD: the quadratic term is 0 at the first step (θ = θ^{t−1}) and
  // acts at the second.
  config_ = one_step_config();
  config_.local.epochs = 2;
  config_.local.max_steps = 2;
  run_ = run_context(config_);
  init_server();
  std::vector<SimClient> clients = sim_clients(config_, 1);
  SimClient& client = clients[0];
  const TensorBundle& global = *server_->global_bundle();
  const double alpha = 0.5;
  const double lr = config_.local.lr;

  // g_k^{t−1}: fixed non-zero values in the client's state (and a foreign tensor, kept).
  Rng init(999);
  Model ref = make_model(config_.model, init).value();
  ASSERT_TRUE(load_module_state(*ref, global, /*strict=*/true).ok());
  std::map<std::string, torch::Tensor> g0, anchor;
  int k = 0;
  for (const auto& p : ref->named_parameters()) {
    const torch::Tensor g =
        (0.05 * torch::sin(torch::arange(p.value().numel(), torch::kFloat64) + k++))
            .to(torch::kFloat32)
            .view(p.value().sizes());
    g0[p.key()] = g;
    anchor[p.key()] = p.value().detach().clone();
    ASSERT_TRUE(
        client.state.tensors.add(from_torch(kFedDynClientPrefix + p.key(), g).value()).ok());
  }
  ASSERT_TRUE(client.state.tensors.add(f32("other/x", {3.0f})).ok());

  // The same two steps with plain autograd: loss = CE − Σ<g, θ> + α/2 Σ‖θ − θ^{t−1}‖².
  ref->train();
  const torch::Tensor x = inputs(client.train);
  std::vector<double> base_losses, objectives;
  for (int step = 0; step < 2; ++step) {
    ref->zero_grad();
    const torch::Tensor ce =
        torch::nn::functional::cross_entropy(ref->forward(x), client.train.labels);
    torch::Tensor reg = torch::zeros({});
    for (const auto& p : ref->named_parameters()) {
      reg = reg - (p.value() * g0[p.key()]).sum() +
            alpha / 2 * (p.value() - anchor[p.key()]).pow(2).sum();
    }
    const torch::Tensor total = ce + reg;
    total.backward();
    base_losses.push_back(ce.item<double>());
    objectives.push_back(total.item<double>());
    torch::NoGradGuard no_grad;
    for (auto& p : ref->parameters()) p.sub_(lr * p.grad());
  }
  std::map<std::string, torch::Tensor> want;
  std::map<std::string, torch::Tensor> want_g;
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : ref->named_parameters()) {
      want[p.key()] = p.value().clone();
      want_g[p.key()] =
          g0[p.key()].to(torch::kFloat64) -
          alpha * (p.value().to(torch::kFloat64) - anchor[p.key()].to(torch::kFloat64));
    }
    for (const auto& b : ref->named_buffers()) want[b.key()] = b.value().clone();
  }

  FedDynClient algorithm(/*alpha=*/0.01);  // the task's α wins
  Rng rng = Rng::derive(config_.seed, "fit", {1, 0});
  ClientContext ctx = client_context(config_, client, 1, &rng);
  ctx.task_config = {{"alpha", alpha}};
  auto out = algorithm.fit(ctx, global);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->metrics["steps"], 2);
  EXPECT_EQ(out->metrics["alpha"], alpha);
  EXPECT_NEAR(out->metrics["loss"].get<double>(), (base_losses[0] + base_losses[1]) / 2, 1e-5);
  EXPECT_NEAR(out->metrics["objective"].get<double>(), (objectives[0] + objectives[1]) / 2, 1e-5);
  EXPECT_EQ(out->num_examples, client.train.size());
  ASSERT_TRUE(check_compatible(out->update, global).ok());
  for (const auto& [name, t] : want) {
    const double diff =
        (to_torch(*out->update.find(name)).to(torch::kFloat64) - t.to(torch::kFloat64))
            .abs()
            .max()
            .item<double>();
    EXPECT_LE(diff, 2e-5) << name;
  }
  // g_k ← g_k − α (θ_k − θ^{t−1}), per parameter; the foreign tensor is kept.
  for (const auto& [name, g] : want_g) {
    const NamedTensor* got = client.state.tensors.find(kFedDynClientPrefix + name);
    ASSERT_NE(got, nullptr) << name;
    EXPECT_EQ(got->dtype(), DType::kFloat32);
    const double diff = (to_torch(*got).to(torch::kFloat64) - g).abs().max().item<double>();
    EXPECT_LE(diff, 2e-5) << name;
  }
  ASSERT_NE(client.state.tensors.find("other/x"), nullptr);
  EXPECT_EQ(client.state.tensors.size(), g0.size() + 1);

  // Not FedAvg's update: g moves the first step already.
  FedAvgClient fedavg;
  auto plain = fit_client(fedavg, config_, clients, 0, global);
  ASSERT_TRUE(plain.ok());
  const std::string w = "heads.classifier.weight";
  EXPECT_GT((to_torch(*out->update.find(w)) - to_torch(*plain->update.find(w)))
                .abs()
                .max()
                .item<double>(),
            1e-4);
}

TEST_F(FedDynClientTest, RefusesABadAlphaOrStateAndLeavesTheStateUnchanged) {
  init_server();
  std::vector<SimClient> clients = sim_clients(config_, 1);
  SimClient& client = clients[0];
  const TensorBundle& global = *server_->global_bundle();
  FedDynClient algorithm(0.01);
  auto fit = [&](const nlohmann::json& task_config) {
    Rng rng(5);
    ClientContext ctx = client_context(config_, client, 1, &rng);
    ctx.task_config = task_config;
    return algorithm.fit(ctx, global);
  };
  for (const nlohmann::json& a : {nlohmann::json(0), nlohmann::json(-1), nlohmann::json("0.1")}) {
    SCOPED_TRACE(a.dump());
    auto out = fit({{"alpha", a}});
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(out.status(), "\"alpha\"")) << out.status().message();
    EXPECT_TRUE(client.state.tensors.empty());
  }

  // A first fit fills the state with one g per parameter.
  ASSERT_TRUE(fit({}).ok());
  const size_t params = client.model->named_parameters().size();
  ASSERT_EQ(client.state.tensors.size(), params);
  const std::string w = std::string(kFedDynClientPrefix) + "heads.classifier.weight";
  ASSERT_NE(client.state.tensors.find(w), nullptr);

  struct Case {
    std::string what;
    std::function<void(TensorBundle*)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"misshapen",
       [&](TensorBundle* b) {
         TensorBundle out;
         for (const NamedTensor& t : *b) {
           EXPECT_TRUE((t.name() == w ? out.add(f32(w, {1, 2})) : out.add(t.clone())).ok());
         }
         *b = std::move(out);
       },
       "!= the parameter's"},
      {"partial",
       [&](TensorBundle* b) {
         TensorBundle out;
         for (const NamedTensor& t : *b) {
           if (t.name() != w) {
             EXPECT_TRUE(out.add(t.clone()).ok());
           }
         }
         *b = std::move(out);
       },
       "missing"},
      {"foreign",
       [&](TensorBundle* b) {
         EXPECT_TRUE(b->add(f32(std::string(kFedDynClientPrefix) + "nope", {1})).ok());
       },
       "not a trainable parameter"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ClientState saved = copy_state(client.state);
    c.edit(&client.state.tensors);
    const TensorBundle before = client.state.tensors.clone();
    auto out = fit({});
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(out.status(), "client state")) << out.status().message();
    EXPECT_TRUE(contains(out.status(), c.message)) << out.status().message();
    EXPECT_TRUE(client.state.tensors.bitwise_equal(before));
    client.state = std::move(saved);
  }
}

// ---------------------------------------------------------------------------------------------
// Rounds

TEST_F(FedDynClientTest, RoundsRunAndMoveTheModelHAndTheClientsG) {
  init_server();
  std::vector<SimClient> clients = sim_clients(config_, 3);
  auto client = make_feddyn_client({}).value();
  const TensorBundle g0 = server_->global_bundle()->clone();
  for (int round = 1; round <= 2; ++round) {
    const nlohmann::json m = run_round(*server_, *client, config_, clients, round);
    EXPECT_EQ(m["updated"], true) << m.dump();
    EXPECT_TRUE(std::isfinite(m["loss"].get<double>())) << m.dump();
    EXPECT_EQ(m["examples"], 32 + 40 + 48);
    EXPECT_EQ(m["feddyn"]["clients"], 3);
    EXPECT_EQ(m["feddyn"]["participants"], 3);
    EXPECT_GT(m["feddyn"]["h_norm"].get<double>(), 0);
  }
  EXPECT_GT(testing::squared_distance(*server_->global_bundle(), g0, {"heads.classifier.weight"}),
            0);
  for (const SimClient& c : clients) {
    const NamedTensor* g =
        c.state.tensors.find(std::string(kFedDynClientPrefix) + "heads.classifier.weight");
    ASSERT_NE(g, nullptr) << c.id;
    EXPECT_GT(to_torch(*g).abs().max().item<double>(), 0) << c.id;
  }
}

TEST_F(FedDynClientTest, ResumeFromASavedStateIsBitExact) {
  init_server({{"alpha", 0.05}});
  std::vector<SimClient> clients = sim_clients(config_, 3);
  auto client = make_feddyn_client({{"alpha", 0.05}}).value();
  for (int round = 1; round <= 2; ++round) run_round(*server_, *client, config_, clients, round);
  auto state = server_->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();
  std::vector<ClientState> saved;
  for (const SimClient& c : clients) saved.push_back(copy_state(c.state));

  const nlohmann::json ma = run_round(*server_, *client, config_, clients, 3);
  std::vector<ClientState> after_a;
  for (const SimClient& c : clients) after_a.push_back(copy_state(c.state));

  FedDynServer b(server_->options());
  ASSERT_TRUE(b.load_state(state->clone()).ok());
  ASSERT_TRUE(b.resume(run_).ok());
  ASSERT_FALSE(b.h().empty());
  for (const NamedTensor& t : b.h()) {
    const NamedTensor* saved_h = state->find(t.name());
    ASSERT_NE(saved_h, nullptr) << t.name();
    EXPECT_TRUE(t.bitwise_equal(*saved_h)) << t.name();
  }
  for (size_t k = 0; k < clients.size(); ++k) clients[k].state = copy_state(saved[k]);
  const nlohmann::json mb = run_round(b, *client, config_, clients, 3);

  EXPECT_EQ(ma, mb);
  EXPECT_TRUE(server_->global_bundle()->bitwise_equal(*b.global_bundle()));
  EXPECT_TRUE(server_->h().bitwise_equal(b.h()));
  EXPECT_TRUE(server_->save_state()->bitwise_equal(*b.save_state()));
  for (size_t k = 0; k < clients.size(); ++k) {
    EXPECT_TRUE(clients[k].state.tensors.bitwise_equal(after_a[k].tensors)) << clients[k].id;
  }
}

}  // namespace
}  // namespace fedtail::strategies

#include "strategies/fedloge/fedloge.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <iostream>

#include "common/learning/torch_bundle.h"
#include "strategies/fedloge/sse_c.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::fit_client;
using testing::infos;
using testing::run_round;
using testing::separable;
using testing::sim_clients;
using testing::SimClient;

constexpr double kPi = 3.14159265358979323846;

double etf_angle(int64_t k) { return std::acos(-1.0 / static_cast<double>(k - 1)) * 180.0 / kPi; }

// Every pairwise angle of a K×d weight, in degrees.
std::vector<double> pairwise_angles(const std::vector<float>& w, int64_t k, int64_t d) {
  std::vector<double> out;
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t j = c + 1; j < k; ++j) {
      double dot = 0, nc = 0, nj = 0;
      for (int64_t i = 0; i < d; ++i) {
        dot += double(w[c * d + i]) * w[j * d + i];
        nc += double(w[c * d + i]) * w[c * d + i];
        nj += double(w[j * d + i]) * w[j * d + i];
      }
      out.push_back(std::acos(dot / std::sqrt(nc * nj)) * 180.0 / kPi);
    }
  }
  return out;
}

int64_t count_zeros(const std::vector<float>& w) {
  int64_t n = 0;
  for (float v : w) n += v == 0 ? 1 : 0;
  return n;
}

SseC build(int64_t d, int64_t k, const SseCOptions& options, uint64_t seed = 42) {
  Rng rng(seed);
  auto r = build_sse_c(d, k, options, rng);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? std::move(r).value() : SseC();
}

// Checks the SSE-C properties of the issue at (d, K) with the published options.
void expect_published_geometry(int64_t d, int64_t k, const SseCOptions& options) {
  SseC sse = build(d, k, options);
  ASSERT_EQ(sse.weight.size(), static_cast<size_t>(k * d));
  ASSERT_EQ(sse.bias.size(), static_cast<size_t>(k));
  const int64_t expected_zeros = static_cast<int64_t>(0.6 * d * k);  // ⌊0.6·d·K⌋
  EXPECT_EQ(sse.stats.pruned, expected_zeros);

  // The same Rng without re-optimisation prunes the same entries (the draws come first) and has
  // exactly ⌊0.6·d·K⌋ zeros; re-optimisation keeps every one of them at 0.
  SseCOptions plain = options;
  plain.steps = 0;
  SseC pruned = build(d, k, plain);
  EXPECT_EQ(count_zeros(pruned.weight), expected_zeros);
  int64_t kept_zero = 0;
  for (size_t e = 0; e < pruned.weight.size(); ++e) {
    if (pruned.weight[e] == 0) kept_zero += sse.weight[e] == 0 ? 1 : 0;
  }
  EXPECT_EQ(kept_zero, expected_zeros);
  // A few survivors may be driven below float32's range (the objective sparsifies further).
  EXPECT_GE(sse.stats.zeros, expected_zeros);
  EXPECT_LE(sse.stats.zeros - expected_zeros, d * k / 50) << sse.stats.to_json().dump();

  for (int64_t c = 0; c < k; ++c) {
    double norm = 0;
    for (int64_t i = 0; i < d; ++i) norm += double(sse.weight[c * d + i]) * sse.weight[c * d + i];
    EXPECT_NEAR(std::sqrt(norm), 0.1, 0.001) << "class " << c;  // within 1% of the target
  }
  const std::vector<double> angles = pairwise_angles(sse.weight, k, d);
  double mean = 0;
  for (double a : angles) mean += a / static_cast<double>(angles.size());
  EXPECT_NEAR(mean, etf_angle(k), 0.5);
  EXPECT_NEAR(sse.stats.mean_angle, mean, 1e-9);
  EXPECT_DOUBLE_EQ(sse.stats.target_angle, etf_angle(k));
  const double bound = 1.0 / std::sqrt(static_cast<double>(d));
  for (float b : sse.bias) EXPECT_LE(std::fabs(b), bound);
}

TEST(SseCTest, PublishedDefaultsAtD64K10) {
  const auto start = std::chrono::steady_clock::now();
  SseCOptions defaults;
  ASSERT_EQ(defaults.steps, 10000);
  ASSERT_DOUBLE_EQ(defaults.sparsity, 0.6);
  ASSERT_DOUBLE_EQ(defaults.column_norm, 0.1);
  ASSERT_DOUBLE_EQ(defaults.lr, 1e-4);
  expect_published_geometry(64, 10, defaults);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "SSE-C d=64 K=10, 10000 Adam steps (built twice + once unoptimised): " << seconds
            << " s\n";
}

// With few classes (K < ~8) the angle term outweighs the norm term and the norms settle a few
// percent above the target (as in the reference): the checks use K >= 8.
TEST(SseCTest, OtherShapesHaveTheSameGeometry) {
  expect_published_geometry(96, 12, SseCOptions());
  expect_published_geometry(64, 16, SseCOptions());
}

TEST(SseCTest, IsAFunctionOfTheRngState) {
  SseCOptions o;
  o.steps = 500;
  SseC a = build(20, 5, o, 7);
  SseC b = build(20, 5, o, 7);
  SseC c = build(20, 5, o, 8);
  EXPECT_EQ(a.weight, b.weight);
  EXPECT_EQ(a.bias, b.bias);
  EXPECT_NE(a.weight, c.weight);
}

TEST(SseCTest, SparsityZeroIsADenseEtf) {
  // No re-optimisation: the exact simplex ETF, scaled to the column norm.
  SseCOptions exact;
  exact.sparsity = 0;
  exact.steps = 0;
  SseC etf = build(12, 5, exact);
  EXPECT_EQ(etf.stats.pruned, 0);
  EXPECT_EQ(count_zeros(etf.weight), 0);
  for (double a : pairwise_angles(etf.weight, 5, 12)) EXPECT_NEAR(a, etf_angle(5), 1e-4);
  EXPECT_NEAR(etf.stats.min_norm, 0.1, 1e-6);
  EXPECT_NEAR(etf.stats.max_norm, 0.1, 1e-6);

  // The published pipeline with sparsity 0: dense, mean angle exact, single angles close.
  SseCOptions dense;
  dense.sparsity = 0;
  SseC d = build(64, 10, dense);
  EXPECT_EQ(count_zeros(d.weight), 0);
  EXPECT_NEAR(d.stats.mean_angle, etf_angle(10), 0.01);
  for (double a : pairwise_angles(d.weight, 10, 64)) EXPECT_NEAR(a, etf_angle(10), 0.5);
  EXPECT_NEAR(d.stats.min_norm, 0.1, 0.001);
  EXPECT_NEAR(d.stats.max_norm, 0.1, 0.001);
}

TEST(SseCTest, RefusesImpossibleShapesAndOptions) {
  Rng rng(1);
  EXPECT_EQ(build_sse_c(8, 1, SseCOptions(), rng).status().code(), StatusCode::kInvalidArgument);
  auto narrow = build_sse_c(4, 10, SseCOptions(), rng);
  EXPECT_EQ(narrow.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(narrow.status().message().find("feature dimension"), std::string::npos);
  SseCOptions bad;
  bad.sparsity = 1;
  EXPECT_EQ(build_sse_c(8, 2, bad, rng).status().code(), StatusCode::kInvalidArgument);
  bad.sparsity = 0.99;  // leaves some class without an entry
  EXPECT_EQ(build_sse_c(4, 4, bad, rng).status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Options and GLA-FR

TEST(FedLoGeOptionsTest, DefaultsAreThePublishedValuesAndErrorsNameTheField) {
  auto o = parse_fedloge_options(nullptr);
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_DOUBLE_EQ(o->sse_c.sparsity, 0.6);
  EXPECT_DOUBLE_EQ(o->sse_c.column_norm, 0.1);
  EXPECT_EQ(o->sse_c.steps, 10000);
  EXPECT_DOUBLE_EQ(o->sse_c.lr, 1e-4);
  EXPECT_TRUE(o->global_realignment);
  EXPECT_DOUBLE_EQ(o->realign_norm, 1.7);
  EXPECT_TRUE(o->local_realignment);

  auto set = parse_fedloge_options({{"name", "fedloge"},
                                    {"sparsity", 0},
                                    {"sse_c_steps", 5},
                                    {"global_realignment", false},
                                    {"fraction_fit", 0.5}});
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->sse_c.sparsity, 0);
  EXPECT_EQ(set->sse_c.steps, 5);
  EXPECT_FALSE(set->global_realignment);
  EXPECT_EQ(set->round.fraction_fit, 0.5);

  auto bad = parse_fedloge_options({{"sparsity", 1.0}});
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("config.strategy.sparsity"), std::string::npos)
      << bad.status().message();
  EXPECT_NE(parse_fedloge_options({{"realign_norm", 0}})
                .status()
                .message()
                .find("config.strategy.realign_norm"),
            std::string::npos);
  EXPECT_NE(parse_fedloge_options({{"realign", true}}).status().message().find("unknown key"),
            std::string::npos);
  EXPECT_NE(parse_fedloge_options({{"sse_c_lr", "fast"}})
                .status()
                .message()
                .find("config.strategy.sse_c_lr"),
            std::string::npos);
}

TEST(GlaFrTest, GlobalRealignmentScalesEveryRowToTheNorm) {
  torch::Tensor w = torch::tensor({3.0f, 4.0f, 0.0f, 0.0f, -2.0f, 0.0f}).view({3, 2});
  torch::Tensor r = realign_rows(w, 1.7);
  // Rows: (3,4)/5·1.7, zero row kept, (−2,0)/2·1.7.
  torch::Tensor expected = torch::tensor({1.02f, 1.36f, 0.0f, 0.0f, -1.7f, 0.0f}).view({3, 2});
  EXPECT_TRUE(torch::allclose(r, expected, 1e-6, 1e-6)) << r;
}

TEST(GlaFrTest, PersonalizedHeadFoldsThePhiNormsIntoPsi) {
  torch::Tensor phi_w = torch::tensor({1.0f, 0.0f, 0.0f, 2.0f}).view({2, 2});  // row norms 1, 2
  torch::Tensor phi_b = torch::tensor({0.5f, -0.5f});
  torch::Tensor psi_w = torch::tensor({1.0f, 1.0f, 2.0f, 0.0f}).view({2, 2});
  torch::Tensor psi_b = torch::tensor({0.1f, 0.2f});
  auto [w, b] = personalized_head(phi_w, phi_b, psi_w, psi_b, /*local_realignment=*/true);
  // W_φ + diag(1, 2)·W_ψ = [[1+1, 0+1], [0+4, 2+0]]; b_φ + b_ψ.
  EXPECT_TRUE(torch::allclose(w, torch::tensor({2.0f, 1.0f, 4.0f, 2.0f}).view({2, 2}))) << w;
  EXPECT_TRUE(torch::allclose(b, torch::tensor({0.6f, -0.3f}))) << b;

  auto [w0, b0] = personalized_head(phi_w, phi_b, psi_w, psi_b, /*local_realignment=*/false);
  EXPECT_TRUE(torch::allclose(w0, torch::tensor({2.0f, 1.0f, 2.0f, 2.0f}).view({2, 2}))) << w0;
  EXPECT_TRUE(torch::allclose(b0, b));

  // The folded map computes z(x) = φ(f) + diag(‖φ_c‖)·W_ψ f + b_ψ on arbitrary features.
  torch::Tensor f = torch::tensor({0.3f, 2.0f, 1.5f, 0.0f, 0.7f, 0.9f}).view({3, 2});
  torch::Tensor direct = torch::addmm(phi_b, f, phi_w.t()) +
                         torch::matmul(f, psi_w.t()) * torch::tensor({1.0f, 2.0f}) + psi_b;
  EXPECT_TRUE(torch::allclose(torch::addmm(b, f, w.t()), direct, 1e-6, 1e-6));
}

// ---------------------------------------------------------------------------------------------
// The strategy

class FedLoGeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    register_builtin_strategies();
    config_ = testing::tiny_config();
    run_ = testing::run_context(config_);
    clients_ = sim_clients(config_, 3);
    test_set_ = separable(64, /*seed=*/999);
  }

  std::unique_ptr<ServerStrategy> server(const nlohmann::json& strategy_config = {}) {
    auto s = make_server_strategy("fedloge", strategy_config);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    return s.ok() ? std::move(s).value() : nullptr;
  }

  std::unique_ptr<ServerStrategy> initialized_server(const nlohmann::json& strategy_config = {}) {
    auto s = server(strategy_config);
    Rng init = Rng::derive(config_.seed, "init");
    Status st = s->initialize(run_, init);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return s;
  }

  std::unique_ptr<ClientAlgorithm> client(const nlohmann::json& strategy_config = {}) {
    auto c = make_client_algorithm("fedloge", strategy_config);
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

  Result<FitOutput> fit(ClientAlgorithm& algorithm, const TensorBundle& global, int k,
                        int round = 1) {
    return fit_client(algorithm, config_, clients_, k, global, round);
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
  Dataset test_set_;
};

std::vector<std::string> with_prefix(const TensorBundle& b, const std::string& prefix) {
  std::vector<std::string> out;
  for (const std::string& n : b.names()) {
    if (n.compare(0, prefix.size(), prefix) == 0) out.push_back(n);
  }
  return out;
}

TEST_F(FedLoGeTest, TheGlobalBundleHoldsBackbonePsiAndTheSseC) {
  auto s = initialized_server();
  auto global = s->global_bundle();
  ASSERT_NE(global, nullptr);
  EXPECT_NE(global->find("backbone.bn1.running_mean"), nullptr);
  EXPECT_NE(global->find("backbone.bn1.num_batches_tracked"), nullptr);
  ASSERT_NE(global->find("heads.global.weight"), nullptr);
  EXPECT_EQ(global->find("heads.global.weight")->shape(), (std::vector<int64_t>{2, 16}));
  ASSERT_NE(global->find("heads.sse_c.weight"), nullptr);
  EXPECT_EQ(global->find("heads.sse_c.weight")->shape(), (std::vector<int64_t>{2, 16}));
  EXPECT_NE(global->find("heads.sse_c.bias"), nullptr);
  EXPECT_TRUE(with_prefix(*global, "heads.local").empty());
  EXPECT_TRUE(with_prefix(*global, "heads.classifier").empty());
  EXPECT_EQ(global->metadata()["strategy"], "fedloge");
  EXPECT_EQ(global->metadata()["round"], 0);

  // The SSE-C of K=2 classes in d=16: 60% pruned, two opposite vectors of norm 0.1.
  const NamedTensor* sse = global->find("heads.sse_c.weight");
  std::vector<float> w(sse->data<float>(), sse->data<float>() + sse->numel());
  EXPECT_GE(count_zeros(w), 19);  // ⌊0.6·32⌋
  const auto* stats = dynamic_cast<FedLoGeServer*>(s.get());
  ASSERT_NE(stats, nullptr);
  EXPECT_EQ(stats->sse_c_stats()["pruned"], 19);
  EXPECT_NEAR(stats->sse_c_stats()["mean_angle"].get<double>(), 180.0, 0.5);

  // Same Rng, same everything.
  EXPECT_TRUE(initialized_server()->global_bundle()->bitwise_equal(*global));

  // A feature dimension below the class count cannot hold a simplex ETF.
  RunConfig narrow = config_;
  narrow.model.feature_dim = 1;
  RunContext run = testing::run_context(narrow);
  Rng rng(1);
  Status st = server()->initialize(run, rng);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("feature dimension"), std::string::npos) << st.message();
}

TEST_F(FedLoGeTest, TheUpdateHoldsBackboneAndPsiButNeverPhi) {
  auto s = initialized_server();
  auto algorithm = client();
  auto out = fit(*algorithm, *s->global_bundle(), 0);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_TRUE(with_prefix(out->update, "heads.local").empty());
  EXPECT_TRUE(with_prefix(out->update, "heads.sse_c").empty());
  EXPECT_TRUE(with_prefix(out->update, "heads.classifier").empty());
  EXPECT_FALSE(with_prefix(out->update, "heads.global").empty());
  EXPECT_NE(out->update.find("backbone.bn1.running_var"), nullptr);
  EXPECT_EQ(out->num_examples, clients_[0].train.size());
  for (const char* key : {"loss", "loss_global", "loss_local", "steps"}) {
    EXPECT_TRUE(out->metrics.contains(key)) << key;
  }
  // The update is exactly what the server aggregates.
  auto agg = s->begin_aggregation(1);
  ASSERT_TRUE(agg.ok());
  ClientUpdate u;
  u.client_id = clients_[0].id;
  u.num_examples = out->num_examples;
  u.bundle = out->update.clone();
  EXPECT_TRUE((*agg)->add(std::move(u)).ok());

  // φ_k went to the client's persistent state instead.
  const TensorBundle& state = clients_[0].state.tensors;
  ASSERT_NE(state.find("heads.local.weight"), nullptr);
  EXPECT_EQ(state.find("heads.local.weight")->shape(), (std::vector<int64_t>{2, 16}));
  ASSERT_NE(state.find("heads.local.bias"), nullptr);
}

TEST_F(FedLoGeTest, TheSseCIsIdenticalOnEveryClientAndNeverTrained) {
  auto s = initialized_server();
  auto algorithm = client();
  const NamedTensor* sent = s->global_bundle()->find("heads.sse_c.weight");
  const NamedTensor* sent_bias = s->global_bundle()->find("heads.sse_c.bias");
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(fit(*algorithm, *s->global_bundle(), k).ok());
    auto on_client = module_state(*clients_[k].model, {"heads.sse_c."});
    ASSERT_TRUE(on_client.ok());
    EXPECT_TRUE(on_client->find("heads.sse_c.weight")->bitwise_equal(*sent)) << k;
    EXPECT_TRUE(on_client->find("heads.sse_c.bias")->bitwise_equal(*sent_bias)) << k;
  }
}

TEST_F(FedLoGeTest, PhiSurvivesRoundsAndAClientRestart) {
  auto s = initialized_server();
  auto first = client();
  ASSERT_TRUE(fit(*first, *s->global_bundle(), 0, 1).ok());
  TensorBundle after_round1 = clients_[0].state.tensors.clone();

  // The first φ_k is a function of the run seed and the client id only.
  ClientState fresh;
  SimClient twin;
  twin.id = clients_[0].id;
  twin.train = clients_[0].train;
  twin.test = clients_[0].test;
  Rng model_rng(1);
  twin.model = make_model(config_.model, model_rng).value();
  Rng eval_rng(3);
  ClientContext twin_ctx = client_context(config_, twin, 1, &eval_rng);
  ASSERT_TRUE(first->evaluate(twin_ctx, *s->global_bundle()).ok());
  TensorBundle initial = twin.state.tensors.clone();
  ASSERT_NE(initial.find("heads.local.weight"), nullptr);
  SimClient other = std::move(twin);
  other.id = "client-other";
  other.state = ClientState();
  ClientContext other_ctx = client_context(config_, other, 1, &eval_rng);
  ASSERT_TRUE(first->evaluate(other_ctx, *s->global_bundle()).ok());
  EXPECT_FALSE(other.state.tensors.find("heads.local.weight")
                   ->bitwise_equal(*initial.find("heads.local.weight")));
  // Training moved φ_k away from its initial value.
  EXPECT_FALSE(
      after_round1.find("heads.local.weight")->bitwise_equal(*initial.find("heads.local.weight")));

  // A restart: a new client algorithm instance with the stored state (as the client runtime
  // reloads it). It evaluates with the stored φ_k, exactly as the old instance would.
  auto restarted = client();
  clients_[0].state.tensors = after_round1.clone();
  Rng r1(9), r2(9);
  ClientContext c1 = client_context(config_, clients_[0], 1, &r1);
  auto before = first->evaluate(c1, *s->global_bundle());
  ClientContext c2 = client_context(config_, clients_[0], 1, &r2);
  auto after = restarted->evaluate(c2, *s->global_bundle());
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_EQ(*before, *after);
  EXPECT_TRUE(clients_[0].state.tensors.bitwise_equal(after_round1));  // evaluate keeps φ_k

  // Round 2 starts from the stored φ_k: the same update as without the restart.
  SimClient& c = clients_[0];
  const TensorBundle saved = c.state.tensors.clone();
  auto a = fit(*first, *s->global_bundle(), 0, 2);
  TensorBundle phi_a = c.state.tensors.clone();
  c.state.tensors = saved.clone();
  auto b = fit(*restarted, *s->global_bundle(), 0, 2);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(a->update.bitwise_equal(b->update));
  EXPECT_TRUE(c.state.tensors.bitwise_equal(phi_a));
  EXPECT_FALSE(c.state.tensors.bitwise_equal(saved));

  // A stored φ_k of the wrong shape is refused.
  c.state.tensors = TensorBundle();
  ASSERT_TRUE(c.state.tensors.add_zeros("heads.local.weight", DType::kFloat32, {3, 16}).ok());
  ASSERT_TRUE(c.state.tensors.add_zeros("heads.local.bias", DType::kFloat32, {3}).ok());
  auto refused = fit(*restarted, *s->global_bundle(), 0, 3);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("heads.local.weight"), std::string::npos)
      << refused.status().message();
}

TEST_F(FedLoGeTest, ATinyFederationLearnsAndReportsTheThreeModels) {
  config_.local.epochs = 3;
  constexpr int kRounds = 5;  // the local heads need a few rounds on these tiny clients
  auto s = initialized_server({{"min_fit_clients", 2}});
  auto algorithm = client();
  auto before = s->evaluate(0, eval_context());
  ASSERT_TRUE(before.ok()) << before.status().to_string();
  for (const char* key :
       {"generic", "generic_by_count_rule", "universal", "universal_by_count_rule",
        "generic_unrealigned", "generic_unrealigned_by_count_rule"}) {
    ASSERT_TRUE((*before)[key]["overall"].is_number()) << key;
    EXPECT_EQ((*before)[key]["examples"], 64) << key;
  }
  EXPECT_EQ((*before)["psi_row_norms"].size(), 2u);
  EXPECT_EQ((*before)["realignment"]["norm"], 1.7);
  EXPECT_EQ((*before)["sse_c"]["pruned"], 19);

  std::vector<double> losses;
  for (int round = 1; round <= kRounds; ++round) {
    nlohmann::json m = run_round(*s, *algorithm, config_, clients_, round);
    ASSERT_EQ(m["updated"], true) << m.dump();
    EXPECT_EQ(m["examples"], 32 + 40 + 48);
    losses.push_back(m["loss"].get<double>());
  }
  EXPECT_LT(losses.back(), losses.front());
  auto after = s->evaluate(kRounds, eval_context());
  ASSERT_TRUE(after.ok()) << after.status().to_string();
  std::cout << "tiny federation, after " << kRounds << " rounds: universal "
            << (*after)["universal"]["overall"] << ", generic " << (*after)["generic"]["overall"]
            << ", raw psi " << (*after)["generic_unrealigned"]["overall"] << "\n";
  EXPECT_GT((*after)["universal"]["overall"].get<double>(), 0.85) << after->dump();
  EXPECT_GT((*after)["generic"]["overall"].get<double>(), 0.85) << after->dump();
  EXPECT_GE((*after)["generic"]["overall"].get<double>(),
            (*before)["generic"]["overall"].get<double>());
  // Realigned rows have norm 1.7; the raw ψ rows are reported.
  for (const auto& n : (*after)["psi_row_norms"]) EXPECT_GT(n.get<double>(), 0);

  // Personalised evaluation on every client.
  Rng rng(3);
  auto tasks = s->configure_evaluate(kRounds, infos(clients_), rng);
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 3u);
  std::vector<EvalReport> reports;
  for (size_t k = 0; k < clients_.size(); ++k) {
    EXPECT_NE((*tasks)[k].bundle->find("heads.sse_c.weight"), nullptr);
    Rng crng(10 + k);
    ClientContext ctx = client_context(config_, clients_[k], kRounds, &crng);
    auto metrics = algorithm->evaluate(ctx, *(*tasks)[k].bundle);
    ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
    EXPECT_EQ((*metrics)["examples"], 24);
    EXPECT_EQ((*metrics)["masked"], false);
    reports.push_back({clients_[k].id, 24, *metrics});
  }
  auto personal = s->aggregate_evaluate(kRounds, reports, {});
  ASSERT_TRUE(personal.ok());
  EXPECT_EQ((*personal)["personalized"]["clients"], 3);
  EXPECT_GT((*personal)["personalized"]["mean"].get<double>(), 0.85) << personal->dump();
}

TEST_F(FedLoGeTest, PersonalizedEvaluationIsTheFormulaAndMasksOnlyWhenAsked) {
  auto s = initialized_server();
  auto algorithm = client();
  ASSERT_TRUE(fit(*algorithm, *s->global_bundle(), 0).ok());
  SimClient& c = clients_[0];
  Rng rng(1);
  ClientContext ctx = client_context(config_, c, 1, &rng);
  auto metrics = algorithm->evaluate(ctx, *s->global_bundle());
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();

  // Recompute z_k(x) = φ(f) + diag(‖φ_c‖)·W_ψ f + b_ψ by hand from the model's pieces.
  Model& model = c.model;
  auto features = extract_features(model, c.test, config_.local.augment, torch::kCPU, 64);
  ASSERT_TRUE(features.ok());
  torch::NoGradGuard no_grad;
  const torch::Tensor f = *features;
  auto phi = model->head("local");
  auto psi = model->head("global");
  const torch::Tensor z =
      phi->forward(f) + torch::matmul(f, psi->weight.t()) * phi->weight.norm(2, {1}) + psi->bias;
  const int64_t correct = z.argmax(1).eq(c.test.labels).sum().item<int64_t>();
  EXPECT_EQ((*metrics)["correct"].get<int64_t>(), correct);

  // Masking: a client that trained on class 0 only never predicts class 1.
  RunConfig masked = config_;
  masked.eval.mask_absent_classes = true;
  c.train = separable(16, /*seed=*/1, /*class0_share=*/1.0);
  ClientContext mctx = client_context(masked, c, 1, &rng);
  auto m = algorithm->evaluate(mctx, *s->global_bundle());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)["masked"], true);
  EXPECT_EQ((*m)["per_class_correct"][1], 0);
  EXPECT_EQ((*m)["per_class_correct"][0], (*m)["per_class_examples"][0]);
}

TEST_F(FedLoGeTest, RealignmentOffMakesTheGenericModelTheRawPsi) {
  config_.local.epochs = 2;
  auto on = initialized_server();
  auto off = initialized_server({{"global_realignment", false}});
  auto algorithm = client();
  run_round(*on, *algorithm, config_, clients_, 1);
  clients_ = sim_clients(config_, 3);
  run_round(*off, *algorithm, config_, clients_, 1);
  auto m_off = off->evaluate(1, eval_context());
  ASSERT_TRUE(m_off.ok());
  EXPECT_EQ((*m_off)["generic"], (*m_off)["generic_unrealigned"]);
  EXPECT_EQ((*m_off)["generic_by_count_rule"], (*m_off)["generic_unrealigned_by_count_rule"]);
  EXPECT_EQ((*m_off)["realignment"]["global"], false);
  // Same seed, same training: only the generic head differs between the two.
  auto m_on = on->evaluate(1, eval_context());
  ASSERT_TRUE(m_on.ok());
  EXPECT_EQ((*m_on)["generic_unrealigned"], (*m_off)["generic_unrealigned"]);
  EXPECT_EQ((*m_on)["universal"], (*m_off)["universal"]);
}

TEST_F(FedLoGeTest, SaveAndLoadStateRoundTripBitExactly) {
  auto a = initialized_server({{"min_fit_clients", 2}});
  auto algorithm = client();
  run_round(*a, *algorithm, config_, clients_, 1);
  auto state = a->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();
  EXPECT_NE(state->find("sse_c/weight"), nullptr);
  EXPECT_NE(state->find("sse_c/bias"), nullptr);

  // A fresh server from the factory, never initialised (and configured differently for the SSE-C:
  // the saved one wins), restored by load_state alone.
  auto b = server({{"min_fit_clients", 2}, {"sparsity", 0.1}, {"sse_c_steps", 3}});
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

  // The next round is identical on both (the clients' φ_k restored in between).
  std::vector<ClientState> states;
  for (const auto& c : clients_) states.push_back({c.state.tensors.clone(), c.state.values});
  nlohmann::json ma = run_round(*a, *algorithm, config_, clients_, 2);
  for (size_t k = 0; k < clients_.size(); ++k) {
    clients_[k].state = {states[k].tensors.clone(), states[k].values};
  }
  nlohmann::json mb = run_round(*b, *algorithm, config_, clients_, 2);
  EXPECT_EQ(ma, mb);
  EXPECT_TRUE(b->global_bundle()->bitwise_equal(*a->global_bundle()));
}

TEST_F(FedLoGeTest, LoadStateRefusesStatesWithoutAnSseCAndStaysUnchanged) {
  auto fedavg = make_server_strategy("fedavg", {});
  ASSERT_TRUE(fedavg.ok());
  Rng init = Rng::derive(config_.seed, "init");
  ASSERT_TRUE((*fedavg)->initialize(run_, init).ok());
  auto foreign = (*fedavg)->save_state();
  ASSERT_TRUE(foreign.ok());
  auto b = server();
  Status st = b->load_state(foreign->clone());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(b->global_bundle(), nullptr);

  auto a = initialized_server();
  const auto before = a->global_bundle();
  auto state = a->save_state();
  ASSERT_TRUE(state.ok());
  TensorBundle stripped;
  for (const NamedTensor& t : *state) {
    if (t.name() != "sse_c/bias") {
      ASSERT_TRUE(stripped.add(t.clone()).ok());
    }
  }
  ASSERT_TRUE(stripped.set_metadata(state->metadata()).ok());
  st = a->load_state(std::move(stripped));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("SSE-C"), std::string::npos) << st.message();
  EXPECT_EQ(a->global_bundle(), before);
}

TEST_F(FedLoGeTest, ClientRefusesBundlesThatDoNotFit) {
  auto s = initialized_server();
  auto algorithm = client();
  // A FedAvg bundle: no ψ, no SSE-C, an extra classifier.
  auto fedavg = make_server_strategy("fedavg", {});
  ASSERT_TRUE(fedavg.ok());
  Rng init(1);
  ASSERT_TRUE((*fedavg)->initialize(run_, init).ok());
  auto out = fit(*algorithm, *(*fedavg)->global_bundle(), 0);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("global model"), std::string::npos)
      << out.status().message();

  Rng rng(1);
  ClientContext ctx = client_context(config_, clients_[0], 1, &rng);
  ctx.state = nullptr;
  EXPECT_EQ(algorithm->fit(ctx, *s->global_bundle()).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtail::strategies

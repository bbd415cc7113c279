// FedETF: the simplex ETF, one local step against values computed here by hand (plain tensor
// arithmetic and autograd on a reference copy of the model), the server's fixed ETF and averaged
// temperature, save/load, the options, the local adaptation and when it runs, and a tiny
// federation.
#include "strategies/fedetf/fedetf.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
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

// A fresh model holding the model tensors of `bundle` (M and β are not the model's: ignored).
Model reference_model(const RunConfig& config, const TensorBundle& bundle) {
  Rng rng(999);
  Model m = make_model(config.model, rng).value();
  EXPECT_TRUE(load_module_state(*m, bundle, /*strict=*/false).ok());
  m->train();
  return m;
}

TensorBundle state_of(const Model& m) { return module_state(*m).value(); }

torch::Tensor matrix_of(const TensorBundle& b) { return to_torch(*b.find(kEtfMatrixName)); }
double temperature_of(const TensorBundle& b) {
  return b.find(kEtfTemperatureName)->data<float>()[0];
}

// h = z / max(‖z‖, 1e-12), by hand.
torch::Tensor normalized(const torch::Tensor& z) {
  return z / z.pow(2).sum(1, /*keepdim=*/true).sqrt().clamp_min(1e-12);
}

// Mean over the rows of -log softmax(logits)_y = logsumexp(logits) - logits_y.
torch::Tensor hand_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels) {
  return (logits.logsumexp(1) - logits.gather(1, labels.unsqueeze(1)).squeeze(1)).mean();
}

// log n_c with a count of 0 taken as 1, as a 1×K row.
torch::Tensor hand_log_counts(const std::vector<int64_t>& counts) {
  std::vector<double> logs;
  for (int64_t n : counts) logs.push_back(std::log(static_cast<double>(n > 0 ? n : 1)));
  return torch::tensor(logs).to(torch::kFloat32).unsqueeze(0);
}

// Each tensor of `expected` is in `actual` and within `tol` of it.
void expect_near(const TensorBundle& actual, const std::map<std::string, torch::Tensor>& expected,
                 double tol = 2e-5) {
  for (const auto& [name, want] : expected) {
    const NamedTensor* got = actual.find(name);
    ASSERT_NE(got, nullptr) << name;
    const double diff =
        (to_torch(*got).to(torch::kFloat64) - want.to(torch::kFloat64)).abs().max().item<double>();
    EXPECT_LE(diff, tol) << name;
  }
}

bool same(const TensorBundle& a, const TensorBundle& b, const std::string& name) {
  return a.find(name) != nullptr && b.find(name) != nullptr &&
         a.find(name)->bitwise_equal(*b.find(name));
}

// A copy of `b` whose float32 tensor `name` has every element set to `value` (increased by it
// when `add`).
TensorBundle edited(const TensorBundle& b, const std::string& name, float value, bool add) {
  TensorBundle out = b.clone();
  NamedTensor* t = out.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return out;
  for (int64_t i = 0; i < t->numel(); ++i) {
    t->data<float>()[i] = add ? t->data<float>()[i] + value : value;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The ETF, the options

TEST(SimplexEtfTest, HasUnitColumnsWithPairwiseCosineMinusOneOverKMinusOne) {
  for (int64_t k : {2, 10}) {
    SCOPED_TRACE(k);
    Rng rng(5);
    auto m = make_simplex_etf(k, rng);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    EXPECT_EQ(m->name(), kEtfMatrixName);
    EXPECT_EQ(m->dtype(), DType::kFloat32);
    EXPECT_EQ(m->shape(), (std::vector<int64_t>{k, k}));
    // Column c is class c's vector: the Gram matrix of the columns is I·K/(K−1) − 11ᵀ/(K−1).
    const torch::Tensor t = to_torch(*m).to(torch::kFloat64);
    const torch::Tensor gram = t.t().matmul(t);
    const double off = -1.0 / static_cast<double>(k - 1);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        EXPECT_NEAR(gram[i][j].item<double>(), i == j ? 1.0 : off, 1e-5) << i << "," << j;
      }
    }
    // The columns sum to 0 (M·1 = 0: the centred frame).
    EXPECT_LE(t.sum(1).abs().max().item<double>(), 1e-5);

    Rng same_seed(5);
    Rng other_seed(6);
    auto again = make_simplex_etf(k, same_seed);
    auto other = make_simplex_etf(k, other_seed);
    ASSERT_TRUE(again.ok() && other.ok());
    EXPECT_TRUE(again->bitwise_equal(*m));
    EXPECT_FALSE(other->bitwise_equal(*m));
  }
  Rng rng(1);
  EXPECT_EQ(make_simplex_etf(1, rng).status().code(), StatusCode::kInvalidArgument);
}

TEST(SimplexEtfTest, TheFoldedHeadHasTheArgmaxOfTheNormalisedScaledLogits) {
  Rng rng(3);
  const torch::Tensor m = to_torch(make_simplex_etf(4, rng).value());
  // Arbitrary features and projection of both signs, without touching LibTorch's generator.
  const torch::Tensor f = torch::sin(torch::arange(300).to(torch::kFloat32)).reshape({50, 6});
  const torch::Tensor w = torch::cos(torch::arange(24).to(torch::kFloat32) * 1.7).reshape({4, 6});
  const torch::Tensor b = torch::sin(torch::arange(4).to(torch::kFloat32) * 2.3);
  const torch::Tensor z = f.matmul(w.t()) + b;
  for (double beta : {2.5, -0.5}) {
    SCOPED_TRACE(beta);
    auto [fw, fb] = fold_etf_head(w, b, m, beta);
    EXPECT_EQ(fw.sizes(), w.sizes());
    EXPECT_EQ(fb.sizes(), b.sizes());
    const torch::Tensor etf = beta * normalized(z).matmul(m);
    const torch::Tensor folded = f.matmul(fw.t()) + fb;
    EXPECT_TRUE(etf.argmax(1).equal(folded.argmax(1)));
    // Up to the per-row positive scale 1/‖z‖, the logits are equal.
    const torch::Tensor scale = 1 / z.pow(2).sum(1, /*keepdim=*/true).sqrt();
    EXPECT_LE((etf - folded * scale).abs().max().item<double>(), 1e-4);
  }
}

TEST(FedEtfOptionsTest, DefaultsAreTheAuthorsAndErrorsNameTheField) {
  FedEtfOptions o = parse_fedetf_options(nullptr).value();
  EXPECT_FALSE(o.finetune_every);
  EXPECT_EQ(o.finetune_cycles, 20);
  EXPECT_EQ(o.finetune_epochs, 3);
  EXPECT_EQ(o.etf_lr, 0.1);
  EXPECT_EQ(o.projection_lr, 0.05);
  EXPECT_TRUE(parse_fedetf_options({{"finetune_at", "every"}})->finetune_every);
  EXPECT_EQ(parse_fedetf_options({{"finetune_cycles", 0}})->finetune_cycles, 0);
  EXPECT_EQ(parse_fedetf_options({{"fraction_fit", 0.5}})->round.fraction_fit, 0.5);

  const std::vector<std::pair<std::string, nlohmann::json>> bad = {
      {"finetune_at", "sometimes"}, {"finetune_cycles", -1},
      {"finetune_epochs", 0},       {"etf_lr", -1.0},
      {"projection_lr", 0.0},       {"temperature", 2.0},
      {"fraction_fit", 2.0}};
  for (const auto& [key, value] : bad) {
    nlohmann::json options = nlohmann::json::object();
    options[key] = value;
    for (bool server_side : {true, false}) {
      Status s =
          server_side ? make_fedetf_server(options).status() : make_fedetf_client(options).status();
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << options.dump();
      EXPECT_NE(s.message().find("config.strategy." + key), std::string::npos) << s.message();
    }
  }
  EXPECT_NE(parse_fedetf_options({{"etf_lr", -1}})
                .status()
                .message()
                .find("config.strategy.etf_lr: must be > 0 (got -1)"),
            std::string::npos);
  EXPECT_EQ(fedetf_strategy_entry().name, "fedetf");
}

// ---------------------------------------------------------------------------------------------
// Server and client

class FedEtfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = one_step_config();
    clients_ = sim_clients(config_, 2);
    run_ = run_context(config_);  // total_rounds 3
  }

  // An initialised server (run_'s rounds).
  std::unique_ptr<ServerStrategy> server(const nlohmann::json& options = nlohmann::json::object(),
                                         uint64_t seed = 11) {
    auto s = make_fedetf_server(options);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    run_.strategy_config = options;
    Rng rng(seed);
    Status st = (*s)->initialize(run_, rng);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return std::move(s).value();
  }

  std::unique_ptr<ClientAlgorithm> client(
      const nlohmann::json& options = nlohmann::json::object()) {
    auto c = make_fedetf_client(options);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return std::move(c).value();
  }

  Result<FitOutput> fit(ClientAlgorithm& algorithm, const TensorBundle& global, int k, int round,
                        SimClient* who = nullptr) {
    SimClient& c = who != nullptr ? *who : clients_[k];
    Rng rng =
        Rng::derive(config_.seed, "fit", {static_cast<uint64_t>(round), static_cast<uint64_t>(k)});
    ClientContext ctx = client_context(config_, c, round, &rng);
    return algorithm.fit(ctx, global);
  }

  Result<nlohmann::json> evaluate(ClientAlgorithm& algorithm, const TensorBundle& global, int k) {
    Rng rng(77);
    ClientContext ctx = client_context(config_, clients_[k], 1, &rng);
    return algorithm.evaluate(ctx, global);
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
};

TEST_F(FedEtfTest, TheGlobalBundleIsTheModelTheTemperatureAndTheSeedsEtf) {
  auto s = server();
  const TensorBundle& g = *s->global_bundle();
  const std::vector<std::string> model_names = state_of(clients_[0].model).names();
  std::vector<std::string> want = model_names;
  want.push_back(kEtfTemperatureName);
  want.push_back(kEtfMatrixName);
  EXPECT_EQ(g.names(), want);
  EXPECT_EQ(g.find(kEtfTemperatureName)->shape(), std::vector<int64_t>{});
  EXPECT_EQ(temperature_of(g), 1.0);
  EXPECT_EQ(g.find(kEtfMatrixName)->shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(g.metadata()["round"], 0);
  // The ETF is a function of the server's Rng.
  EXPECT_TRUE(same(*server({}, 11)->global_bundle(), g, kEtfMatrixName));
  EXPECT_FALSE(same(*server({}, 12)->global_bundle(), g, kEtfMatrixName));
}

TEST_F(FedEtfTest, OneLocalStepIsTheBalancedFeatureLossByHand) {
  auto s = server();
  auto c = client();
  const TensorBundle& global = *s->global_bundle();
  const Dataset& data = clients_[0].train;
  const std::vector<int64_t> counts = data.class_counts();
  ASSERT_GT(counts[0], 0);
  ASSERT_GT(counts[1], 0);

  // loss = CE(β·hᵀM + log n_c, y) on the reference model's own features, then one SGD step of
  // every model parameter and of β.
  Model ref = reference_model(config_, global);
  torch::Tensor beta = torch::tensor(temperature_of(global), torch::kFloat32);
  beta.set_requires_grad(true);
  const torch::Tensor m = matrix_of(global);
  const torch::Tensor z = ref->head(kClassifierHead)->forward(ref->features(inputs(data)));
  const torch::Tensor logits = beta * normalized(z).matmul(m) + hand_log_counts(counts);
  const torch::Tensor loss = hand_cross_entropy(logits, data.labels);
  loss.backward();
  const auto want = stepped(ref, config_.local.lr);
  const double beta_want = 1.0 - config_.local.lr * beta.grad().item<double>();

  auto r = fit(*c, global, 0, 1);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_NEAR(r->metrics["loss"].get<double>(), loss.item<double>(), 1e-5);
  EXPECT_EQ(r->metrics["steps"], 1);
  EXPECT_EQ(r->num_examples, data.size());
  EXPECT_EQ(r->update.names(), global.names());
  expect_near(r->update, want);
  // Moved: backbone, projection, β. Not moved: M.
  EXPECT_FALSE(same(r->update, global, "backbone.conv1.weight"));
  EXPECT_FALSE(same(r->update, global, "heads.classifier.weight"));
  EXPECT_FALSE(same(r->update, global, "heads.classifier.bias"));
  EXPECT_NE(temperature_of(r->update), temperature_of(global));
  EXPECT_NEAR(temperature_of(r->update), beta_want, 1e-6);
  EXPECT_TRUE(same(r->update, global, kEtfMatrixName));
  EXPECT_TRUE(clients_[0].state.tensors.empty());  // FedETF keeps nothing on the client
  for (const auto& p : clients_[0].model->parameters()) EXPECT_TRUE(p.requires_grad());

  // A client without class 1: its count counts as 1, log 1 = 0, and the loss is the same formula.
  SimClient one_class = std::move(clients_[1]);
  one_class.train = separable(40, 5, /*class0_share=*/1.0);
  ASSERT_EQ(one_class.train.class_counts(), (std::vector<int64_t>{40, 0}));
  double loss1 = 0;
  {
    Model ref1 = reference_model(config_, global);
    torch::NoGradGuard no_grad;
    const torch::Tensor z1 =
        ref1->head(kClassifierHead)->forward(ref1->features(inputs(one_class.train)));
    const torch::Tensor logits1 = temperature_of(global) * normalized(z1).matmul(m) +
                                  torch::tensor({std::log(40.0), 0.0}).to(torch::kFloat32);
    loss1 = hand_cross_entropy(logits1, one_class.train.labels).item<double>();
  }
  auto r1 = fit(*c, global, 1, 1, &one_class);
  ASSERT_TRUE(r1.ok()) << r1.status().to_string();
  EXPECT_NEAR(r1->metrics["loss"].get<double>(), loss1, 1e-5);
}

TEST_F(FedEtfTest, BundlesWithoutTheEtfOrWithExtraTensorsAndOtherLossesAreRefused) {
  auto s = server();
  auto c = client();
  const TensorBundle& global = *s->global_bundle();
  TensorBundle without;
  for (const NamedTensor& t : global) {
    if (t.name() != kEtfMatrixName) {
      ASSERT_TRUE(without.add(t.clone()).ok());
    }
  }
  auto r = fit(*c, without, 0, 1);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(kEtfMatrixName), std::string::npos) << r.status().message();

  TensorBundle extra = global.clone();
  ASSERT_TRUE(extra.add_zeros("heads.personal.bias", DType::kFloat32, {2}).ok());
  auto e = evaluate(*c, extra, 0);
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("heads.personal.bias"), std::string::npos);

  // A config.local.loss other than FedETF's own is refused by the server, naming the field.
  config_.local.loss.kind = LocalLossOptions::Kind::kFocal;
  auto focal = make_fedetf_server({}).value();
  Rng init(1);
  Status refused = focal->initialize(run_, init);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("config.local.loss"), std::string::npos) << refused.message();
}

TEST_F(FedEtfTest, TheServerKeepsItsEtfExactAndAveragesTheTemperature) {
  auto s = server();
  const TensorBundle initial = s->global_bundle()->clone();
  // Client a: a perturbed M, β = 2, bias 1 (1 example); client b: M = 0, β = 4, bias 3 (3).
  TensorBundle a = edited(initial, kEtfMatrixName, 0.5f, /*add=*/true);
  a = edited(a, kEtfTemperatureName, 2.0f, /*add=*/false);
  a = edited(a, "heads.classifier.bias", 1.0f, /*add=*/false);
  TensorBundle b = edited(initial, kEtfMatrixName, 0.0f, /*add=*/false);
  b = edited(b, kEtfTemperatureName, 4.0f, /*add=*/false);
  b = edited(b, "heads.classifier.bias", 3.0f, /*add=*/false);

  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());
  ClientUpdate ua;
  ua.client_id = clients_[0].id;
  ua.num_examples = 1;
  ua.bundle = std::move(a);
  ClientUpdate ub;
  ub.client_id = clients_[1].id;
  ub.num_examples = 3;
  ub.bundle = std::move(b);
  ASSERT_TRUE((*aggregation)->add(std::move(ua)).ok());
  ASSERT_TRUE((*aggregation)->add(std::move(ub)).ok());
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  EXPECT_EQ((*metrics)["updated"], true);

  const TensorBundle& g = *s->global_bundle();
  EXPECT_EQ(g.metadata()["round"], 1);
  EXPECT_TRUE(same(g, initial, kEtfMatrixName));          // the server's own M, bit for bit
  EXPECT_EQ(temperature_of(g), (2.0 * 1 + 4.0 * 3) / 4);  // 3.5: example-weighted
  const NamedTensor* bias = g.find("heads.classifier.bias");
  for (int64_t i = 0; i < bias->numel(); ++i) {
    EXPECT_EQ(bias->data<float>()[i], (1.0f * 1 + 3.0f * 3) / 4);  // 2.5
  }
}

TEST_F(FedEtfTest, GenericAccuracyIsTheArgmaxOfTheNormalisedProjectionOnTheEtf) {
  config_ = tiny_config();
  auto s = server();
  auto c = client();
  ASSERT_EQ(run_round(*s, *c, config_, clients_, 1)["updated"], true);
  Dataset test = separable(64, 31);
  ServerEvalContext eval;
  eval.test = &test;
  eval.train_class_counts = {100, 100};
  auto r = s->evaluate(1, eval);
  ASSERT_TRUE(r.ok()) << r.status().to_string();

  const TensorBundle& g = *s->global_bundle();
  Model ref = reference_model(config_, g);
  ref->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor z = ref->head(kClassifierHead)->forward(ref->features(inputs(test)));
  const torch::Tensor logits = temperature_of(g) * normalized(z).matmul(matrix_of(g));
  const int64_t correct = logits.argmax(1).eq(test.labels).sum().item<int64_t>();
  EXPECT_EQ((*r)["generic"]["correct"].get<int64_t>(), correct);
  EXPECT_EQ((*r)["generic"]["examples"], 64);
  EXPECT_TRUE((*r)["generic_by_count_rule"]["overall"].is_number());
  EXPECT_EQ((*r)["temperature"].get<double>(), temperature_of(g));
}

TEST_F(FedEtfTest, SavedStateRestoresAServerThatBehavesBitIdentically) {
  auto a = server({{"fraction_fit", 0.5}});
  auto c = client();
  run_round(*a, *c, config_, clients_, 1);
  auto state = a->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();
  EXPECT_EQ(state->metadata()["total_rounds"], 3);

  // A server from the factory, never initialised, restored by load_state alone.
  auto made = make_fedetf_server({{"fraction_fit", 0.5}});
  ASSERT_TRUE(made.ok());
  std::unique_ptr<ServerStrategy> b = std::move(made).value();
  Status loaded = b->load_state(state->clone());
  ASSERT_TRUE(loaded.ok()) << loaded.to_string();
  EXPECT_TRUE(b->global_bundle()->bitwise_equal(*a->global_bundle()));
  auto state_b = b->save_state();
  ASSERT_TRUE(state_b.ok());
  EXPECT_TRUE(state_b->bitwise_equal(*state));

  // Round 2: the same clients, the same bundles, the same update: the same global model.
  Rng ra(3);
  Rng rb(3);
  auto tasks_a = a->configure_fit(2, infos(clients_), ra);
  auto tasks_b = b->configure_fit(2, infos(clients_), rb);
  ASSERT_TRUE(tasks_a.ok() && tasks_b.ok());
  ASSERT_EQ(tasks_a->size(), 1u);
  ASSERT_EQ(tasks_b->size(), 1u);
  EXPECT_EQ((*tasks_a)[0].client_id, (*tasks_b)[0].client_id);
  EXPECT_TRUE((*tasks_a)[0].bundle->bitwise_equal(*(*tasks_b)[0].bundle));
  const int chosen = (*tasks_a)[0].client_id == clients_[0].id ? 0 : 1;
  auto update = fit(*c, *(*tasks_a)[0].bundle, chosen, 2);
  ASSERT_TRUE(update.ok()) << update.status().to_string();
  for (ServerStrategy* s : {a.get(), b.get()}) {
    auto aggregation = s->begin_aggregation(2);
    ASSERT_TRUE(aggregation.ok());
    ClientUpdate u;
    u.client_id = (*tasks_a)[0].client_id;
    u.num_examples = update->num_examples;
    u.bundle = update->update.clone();
    u.metrics = update->metrics;
    ASSERT_TRUE((*aggregation)->add(std::move(u)).ok());
    ASSERT_TRUE((*aggregation)->finish({}).ok());
  }
  EXPECT_TRUE(b->global_bundle()->bitwise_equal(*a->global_bundle()));

  // The saved last round too: no adaptation at round 2, every client at round 3, on both.
  for (ServerStrategy* s : {a.get(), b.get()}) {
    Rng rng(4);
    EXPECT_TRUE(s->configure_evaluate(2, infos(clients_), rng)->empty());
    EXPECT_EQ(s->configure_evaluate(3, infos(clients_), rng)->size(), clients_.size());
  }

  // A state whose ETF does not fit the model is refused, naming it; the server is unchanged.
  TensorBundle bad;
  for (const NamedTensor& t : *state) {
    if (t.name() == kEtfMatrixName) {
      ASSERT_TRUE(bad.add_zeros(kEtfMatrixName, DType::kFloat32, {3, 3}).ok());
    } else {
      ASSERT_TRUE(bad.add(t.clone()).ok());
    }
  }
  ASSERT_TRUE(bad.set_metadata(state->metadata()).ok());
  const auto before = b->global_bundle();
  Status refused = b->load_state(std::move(bad));
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find(kEtfMatrixName), std::string::npos) << refused.message();
  EXPECT_EQ(b->global_bundle(), before);
}

TEST_F(FedEtfTest, FinalAdaptsEveryClientAfterTheLastRoundOnly) {
  auto s = server({{"fraction_evaluate", 0.5}});  // 3 rounds
  Rng rng(1);
  for (int round = 1; round <= 2; ++round) {
    auto none = s->configure_evaluate(round, infos(clients_), rng);
    ASSERT_TRUE(none.ok()) << none.status().to_string();
    EXPECT_TRUE(none->empty()) << round;
  }
  auto last = s->configure_evaluate(3, infos(clients_), rng);
  ASSERT_TRUE(last.ok());
  ASSERT_EQ(last->size(), clients_.size());  // every client, whatever fraction_evaluate
  for (size_t k = 0; k < clients_.size(); ++k) {
    EXPECT_EQ((*last)[k].client_id, clients_[k].id);
    EXPECT_EQ((*last)[k].bundle, s->global_bundle());
  }

  // "every" samples as FedAvg does, at any round.
  auto every = server({{"finetune_at", "every"}, {"fraction_evaluate", 0.5}});
  auto sampled = every->configure_evaluate(1, infos(clients_), rng);
  ASSERT_TRUE(sampled.ok());
  EXPECT_EQ(sampled->size(), 1u);
  // Federated evaluation switched off: nothing, even at the last round.
  auto off = server({{"fraction_evaluate", 0.0}});
  EXPECT_TRUE(off->configure_evaluate(3, infos(clients_), rng)->empty());

  // "final" needs the number of rounds; model groups are refused as by every global-model strategy.
  RunContext no_rounds = run_;
  no_rounds.total_rounds = 0;
  auto unplanned = make_fedetf_server({}).value();
  Rng init(1);
  EXPECT_EQ(unplanned->initialize(no_rounds, init).code(), StatusCode::kInvalidArgument);
  RunConfig groups = config_;
  groups.model.groups = {"cnn", "resnet8"};
  RunContext grouped = run_context(groups);
  auto heterogeneous = make_fedetf_server({}).value();
  Status refused = heterogeneous->initialize(grouped, init);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("config.model.groups"), std::string::npos) << refused.message();
}

TEST_F(FedEtfTest, AdaptationTunesTheProjectionAndItsOwnEtfAndLeavesTheGlobalModel) {
  const nlohmann::json every = {
      {"finetune_at", "every"}, {"finetune_cycles", 1}, {"finetune_epochs", 1}};
  auto s = server(every);
  auto c = client(every);
  const TensorBundle before = s->global_bundle()->clone();
  Rng rng(2);
  auto tasks = s->configure_evaluate(1, infos(clients_), rng);
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 2u);

  auto report = evaluate(*c, *(*tasks)[0].bundle, 0);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ((*report)["examples"], clients_[0].test.size());
  EXPECT_EQ((*report)["masked"], false);
  EXPECT_EQ((*report)["adapt_steps"], 1);     // step (1): max_steps 1
  EXPECT_EQ((*report)["finetune_steps"], 2);  // one ETF step, one projection step
  EXPECT_TRUE((*report)["finetune_loss_etf"].is_number());
  EXPECT_TRUE((*report)["finetune_loss_projection"].is_number());
  EXPECT_GT((*report)["etf_shift"].get<double>(), 0);  // the client's M moved
  EXPECT_TRUE(s->global_bundle()->bitwise_equal(before));
  EXPECT_TRUE((*tasks)[0].bundle->bitwise_equal(before));
  EXPECT_TRUE(clients_[0].state.tensors.empty());
  const TensorBundle adapted = state_of(clients_[0].model);
  EXPECT_FALSE(same(adapted, before, "heads.classifier.weight"));

  // Without cycles, step (1) alone: the same backbone (frozen in step (2)), another projection.
  auto c0 = client({{"finetune_at", "every"}, {"finetune_cycles", 0}});
  auto r0 = evaluate(*c0, before, 0);
  ASSERT_TRUE(r0.ok()) << r0.status().to_string();
  EXPECT_EQ((*r0)["etf_shift"], 0.0);
  EXPECT_EQ((*r0)["finetune_steps"], 0);
  EXPECT_TRUE((*r0)["finetune_loss_etf"].is_null());
  const TensorBundle after_step1 = state_of(clients_[0].model);
  EXPECT_FALSE(same(after_step1, before, "backbone.conv1.weight"));  // step (1) trains it
  EXPECT_TRUE(same(after_step1, adapted, "backbone.conv1.weight"));
  EXPECT_TRUE(same(after_step1, adapted, "backbone.bn1.weight"));
  EXPECT_FALSE(same(after_step1, adapted, "heads.classifier.weight"));

  // The score is the argmax of hᵀM of the model left on the client (M unchanged without cycles).
  Model& m = clients_[0].model;
  m->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor z = m->head(kClassifierHead)->forward(m->features(inputs(clients_[0].test)));
  const int64_t correct = normalized(z)
                              .matmul(matrix_of(before))
                              .argmax(1)
                              .eq(clients_[0].test.labels)
                              .sum()
                              .item<int64_t>();
  EXPECT_EQ((*r0)["correct"].get<int64_t>(), correct);
}

TEST_F(FedEtfTest, ATinyFederationLearnsAndAdaptsAfterTheLastRound) {
  config_ = tiny_config();
  config_.local.epochs = 3;
  clients_ = sim_clients(config_, 3);
  constexpr int kRounds = 5;
  run_.total_rounds = kRounds;
  const nlohmann::json options = {{"finetune_cycles", 2}};
  auto s = server(options);
  auto c = client(options);
  for (int round = 1; round <= kRounds; ++round) {
    nlohmann::json m = run_round(*s, *c, config_, clients_, round);
    ASSERT_EQ(m["updated"], true) << m.dump();
  }
  Dataset test = separable(200, 31);
  ServerEvalContext eval;
  eval.test = &test;
  eval.train_class_counts = {100, 100};
  auto generic = s->evaluate(kRounds, eval);
  ASSERT_TRUE(generic.ok()) << generic.status().to_string();
  std::cout << "fedetf: generic " << (*generic)["generic"]["overall"] << ", temperature "
            << (*generic)["temperature"];
  EXPECT_GT((*generic)["generic"]["overall"].get<double>(), 0.8) << generic->dump();

  Rng rng(3);
  auto tasks = s->configure_evaluate(kRounds, infos(clients_), rng);
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 3u);
  std::vector<EvalReport> reports;
  for (size_t k = 0; k < clients_.size(); ++k) {
    Rng crng(10 + k);
    ClientContext ctx = client_context(config_, clients_[k], kRounds, &crng);
    auto r = c->evaluate(ctx, *(*tasks)[k].bundle);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    reports.push_back({clients_[k].id, clients_[k].test.size(), *r});
  }
  auto personal = s->aggregate_evaluate(kRounds, reports, {});
  ASSERT_TRUE(personal.ok());
  std::cout << ", personalised " << (*personal)["personalized"]["mean"] << "\n";
  EXPECT_EQ((*personal)["personalized"]["clients"], 3);
  EXPECT_GT((*personal)["personalized"]["mean"].get<double>(), 0.8) << personal->dump();
}

}  // namespace
}  // namespace fedtail::strategies

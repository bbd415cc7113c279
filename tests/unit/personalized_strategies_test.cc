// The personalised and decoupled baselines (FedBN, FedPer, FedRep, FedBABU, FedRoD, Ditto): their
// options, one local step against values computed here by hand (plain tensor arithmetic and
// autograd on a reference copy of the model: which parameters moved, which did not, the loss), the
// client state that must survive rounds and a restart bit for bit, and a tiny federation of each.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "client/state_store.h"
#include "common/learning/torch_bundle.h"
#include "strategies/ditto/ditto.h"
#include "strategies/fedbabu/fedbabu.h"
#include "strategies/fedbn/fedbn.h"
#include "strategies/fedper/fedper.h"
#include "strategies/fedrep/fedrep.h"
#include "strategies/fedrod/fedrod.h"
#include "strategies/local_layers.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::inputs;
using testing::one_step_config;
using testing::run_context;
using testing::run_round;
using testing::separable;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;

// A fresh model holding `bundle` (heads `extra_heads` added first, filled from the bundle when it
// has them).
Model reference_model(const RunConfig& config, const TensorBundle& bundle,
                      const std::vector<std::string>& extra_heads = {}) {
  Rng rng(999);
  Model m = make_model(config.model, rng).value();
  for (const std::string& h : extra_heads) EXPECT_TRUE(m->add_head(h, 2).ok());
  EXPECT_TRUE(load_module_state(*m, bundle, /*strict=*/false).ok());
  m->train();
  return m;
}

// Every state tensor of `m` as a bundle.
TensorBundle state_of(const Model& m) { return module_state(*m).value(); }

// The model's tensors after one SGD step of rate `lr` on the gradients now in `m`, for the
// parameters in `trainable`; others (and buffers) as they are.
std::map<std::string, torch::Tensor> stepped(const Model& m, double lr,
                                             const std::set<std::string>& trainable) {
  std::map<std::string, torch::Tensor> out;
  torch::NoGradGuard no_grad;
  for (const auto& p : m->named_parameters()) {
    const bool moves = trainable.count(p.key()) != 0;
    out[p.key()] = moves ? (p.value() - lr * p.value().grad()).clone() : p.value().clone();
  }
  for (const auto& b : m->named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

std::set<std::string> all_parameters(const Model& m) {
  std::set<std::string> s;
  for (const auto& p : m->named_parameters()) s.insert(p.key());
  return s;
}

std::set<std::string> parameters_except(const Model& m, const std::vector<std::string>& names) {
  std::set<std::string> s = all_parameters(m);
  for (const std::string& n : names) s.erase(n);
  return s;
}

// Each tensor of `expected` whose name `actual` holds is within `tol` of it.
void expect_near(const TensorBundle& actual, const std::map<std::string, torch::Tensor>& expected,
                 double tol = 2e-5) {
  int compared = 0;
  for (const auto& [name, want] : expected) {
    const NamedTensor* got = actual.find(name);
    if (got == nullptr) continue;
    ++compared;
    torch::Tensor g = to_torch(*got).to(torch::kFloat64);
    torch::Tensor w = want.to(torch::kFloat64);
    const double diff = (g - w).abs().max().item<double>();
    EXPECT_LE(diff, tol) << name;
  }
  EXPECT_GT(compared, 0);
}

bool same(const TensorBundle& a, const TensorBundle& b, const std::string& name) {
  return a.find(name) != nullptr && b.find(name) != nullptr &&
         a.find(name)->bitwise_equal(*b.find(name));
}

class PersonalizedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    register_builtin_strategies();
    config_ = one_step_config();
    clients_ = sim_clients(config_, 2);
    run_ = run_context(config_);
  }

  // The server of `name` (FedAvgServer), initialised: its global bundle is the initial model.
  std::unique_ptr<ServerStrategy> server(const std::string& name,
                                         const nlohmann::json& options = nlohmann::json::object()) {
    auto entry = find_strategy(name);
    EXPECT_TRUE(entry.ok()) << name;
    auto s = entry->server(options);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    run_.strategy_config = options;
    Rng rng(11);
    EXPECT_TRUE((*s)->initialize(run_, rng).ok());
    return std::move(s).value();
  }

  std::unique_ptr<ClientAlgorithm> client(
      const std::string& name, const nlohmann::json& options = nlohmann::json::object()) {
    auto entry = find_strategy(name);
    EXPECT_TRUE(entry.ok()) << name;
    auto c = entry->client(options);
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

  Result<nlohmann::json> evaluate(ClientAlgorithm& algorithm, const TensorBundle& global, int k,
                                  SimClient* who = nullptr) {
    SimClient& c = who != nullptr ? *who : clients_[k];
    Rng rng(77);
    ClientContext ctx = client_context(config_, c, 1, &rng);
    return algorithm.evaluate(ctx, global);
  }

  // The cross-entropy of `m` on client k's whole training set, with gradients.
  torch::Tensor ce_loss(Model& m, int k) {
    return torch::nn::functional::cross_entropy(m->forward(inputs(clients_[k].train)),
                                                clients_[k].train.labels);
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
};

// ---------------------------------------------------------------------------------------------
// Options

TEST_F(PersonalizedTest, OptionsHaveThePapersDefaultsAndErrorsNameTheField) {
  FedRepOptions rep = parse_fedrep_options(nullptr).value();
  EXPECT_EQ(rep.head_epochs, 10);
  EXPECT_EQ(rep.body_epochs, 1);
  FedBabuOptions babu = parse_fedbabu_options(nlohmann::json::object()).value();
  EXPECT_TRUE(babu.finetune_whole);
  EXPECT_EQ(babu.finetune_epochs, 5);
  DittoOptions ditto = parse_ditto_options(nullptr).value();
  EXPECT_EQ(ditto.lambda, 1.0);
  EXPECT_EQ(ditto.personal_epochs, 0);
  EXPECT_EQ(parse_ditto_options({{"personal_epochs", 3}})->personal_epochs, 3);
  EXPECT_FALSE(parse_fedbabu_options({{"finetune", "head"}})->finetune_whole);

  const std::vector<std::pair<std::string, nlohmann::json>> bad = {
      {"fedrep", {{"head_epochs", 0}}},     {"fedrep", {{"body_epochs", -1}}},
      {"fedbabu", {{"finetune", "body"}}},  {"fedbabu", {{"finetune_epochs", -2}}},
      {"ditto", {{"lambda", -1.0}}},        {"ditto", {{"personal_epochs", 0}}},
      {"fedbn", {{"momentum", 0.9}}},       {"fedper", {{"head_epochs", 1}}},
      {"fedrod", {{"hypernetwork", true}}}, {"fedbn", {{"fraction_fit", 2.0}}}};
  for (const auto& [name, options] : bad) {
    const std::string key = options.begin().key();
    auto entry = find_strategy(name);
    ASSERT_TRUE(entry.ok()) << name;
    for (bool server_side : {true, false}) {
      Status s = server_side ? entry->server(options).status() : entry->client(options).status();
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << name << " " << options.dump();
      EXPECT_NE(s.message().find("config.strategy." + key), std::string::npos) << s.message();
    }
  }
}

TEST_F(PersonalizedTest, LocalPartsAreTheBatchNormLayersAndTheHeads) {
  const Model& m = clients_[0].model;
  const std::vector<std::string> bn = batchnorm_tensor_names(m);
  ASSERT_EQ(bn.size(), 15u);  // 3 layers × weight, bias, running_mean, running_var, count
  for (const std::string& n : bn) {
    EXPECT_EQ(n.rfind("backbone.bn", 0), 0u) << n;
  }
  EXPECT_NE(std::find(bn.begin(), bn.end(), "backbone.bn2.num_batches_tracked"), bn.end());
  EXPECT_EQ(head_tensor_names(m, kClassifierHead),
            std::vector<std::string>({"heads.classifier.weight", "heads.classifier.bias"}));
}

// ---------------------------------------------------------------------------------------------
// One local step, by hand

TEST_F(PersonalizedTest, FedBnTrainsWithItsOwnBatchNormAndKeepsIt) {
  auto s = server("fedbn");
  auto c = client("fedbn");
  const TensorBundle& global = *s->global_bundle();
  const std::vector<std::string> bn = batchnorm_tensor_names(clients_[0].model);

  // Round 1, no state yet: one step of the global model, every parameter trained.
  Model ref = reference_model(config_, global);
  torch::Tensor loss = ce_loss(ref, 0);
  loss.backward();
  auto r1 = fit(*c, global, 0, 1);
  ASSERT_TRUE(r1.ok()) << r1.status().to_string();
  EXPECT_NEAR(r1->metrics["loss"].get<double>(), loss.item<double>(), 1e-5);
  expect_near(r1->update, stepped(ref, config_.local.lr, all_parameters(ref)));
  ASSERT_EQ(clients_[0].state.tensors.size(), bn.size());
  for (const std::string& n : bn) EXPECT_TRUE(same(clients_[0].state.tensors, r1->update, n)) << n;

  // Round 2 from a global model whose BN layers differ: the client's own BN layers are used.
  TensorBundle global2 = global.clone();
  for (NamedTensor& t : global2) {
    if (t.name() == "backbone.bn1.weight") {
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 3.0f;
    }
  }
  const TensorBundle own = clients_[0].state.tensors.clone();
  Model ref2 = reference_model(config_, global2);
  ASSERT_TRUE(load_module_state(*ref2, own, /*strict=*/false).ok());
  torch::Tensor loss2 = ce_loss(ref2, 0);
  loss2.backward();
  auto r2 = fit(*c, global2, 0, 2);
  ASSERT_TRUE(r2.ok()) << r2.status().to_string();
  EXPECT_NEAR(r2->metrics["loss"].get<double>(), loss2.item<double>(), 1e-5);
  expect_near(r2->update, stepped(ref2, config_.local.lr, all_parameters(ref2)));
  EXPECT_LT(to_torch(*r2->update.find("backbone.bn1.weight")).max().item<float>(), 2.0f);
  // The non-BN layers came from the global model: the conv weights are global2's, stepped.
  EXPECT_FALSE(same(r2->update, global2, "backbone.conv1.weight"));
}

TEST_F(PersonalizedTest, FedPerTrainsItsOwnHeadWithTheGlobalBody) {
  auto s = server("fedper");
  auto c = client("fedper");
  const TensorBundle& global = *s->global_bundle();
  ASSERT_TRUE(fit(*c, global, 0, 1).ok());
  const TensorBundle own = clients_[0].state.tensors.clone();
  ASSERT_EQ(own.names(),
            std::vector<std::string>({"heads.classifier.weight", "heads.classifier.bias"}));
  EXPECT_FALSE(same(own, global, "heads.classifier.weight"));

  // Round 2: the global body with the client's own head, all trained one step.
  Model ref = reference_model(config_, global);
  ASSERT_TRUE(load_module_state(*ref, own, /*strict=*/false).ok());
  torch::Tensor loss = ce_loss(ref, 0);
  loss.backward();
  auto r2 = fit(*c, global, 0, 2);
  ASSERT_TRUE(r2.ok()) << r2.status().to_string();
  EXPECT_NEAR(r2->metrics["loss"].get<double>(), loss.item<double>(), 1e-5);
  const auto want = stepped(ref, config_.local.lr, all_parameters(ref));
  expect_near(r2->update, want);
  expect_near(clients_[0].state.tensors, want);
  EXPECT_TRUE(same(clients_[0].state.tensors, r2->update, "heads.classifier.weight"));

  // The server's head is the example-weighted mean of the heads that trained.
  auto s2 = server("fedper");
  auto metrics = run_round(*s2, *c, config_, clients_, 1);
  EXPECT_EQ(metrics["updates"], 2);
  const double n0 = clients_[0].train.size(), n1 = clients_[1].train.size();
  torch::Tensor h0 = to_torch(*clients_[0].state.tensors.find("heads.classifier.weight"));
  torch::Tensor h1 = to_torch(*clients_[1].state.tensors.find("heads.classifier.weight"));
  torch::Tensor mean = (h0.to(torch::kFloat64) * n0 + h1.to(torch::kFloat64) * n1) / (n0 + n1);
  torch::Tensor got = to_torch(*s2->global_bundle()->find("heads.classifier.weight"));
  EXPECT_LE((got.to(torch::kFloat64) - mean).abs().max().item<double>(), 1e-6);
}

TEST_F(PersonalizedTest, FedRepTrainsTheHeadWithTheBodyFrozenThenTheBodyWithTheHeadFrozen) {
  auto s = server("fedrep", {{"head_epochs", 1}, {"body_epochs", 1}});
  auto c = client("fedrep", {{"head_epochs", 1}, {"body_epochs", 1}});
  const TensorBundle& global = *s->global_bundle();
  const std::vector<std::string> head = head_tensor_names(clients_[0].model, kClassifierHead);

  Model ref = reference_model(config_, global);
  torch::Tensor loss_head = ce_loss(ref, 0);  // phase 1: the head's step
  loss_head.backward();
  auto after_head = stepped(ref, config_.local.lr, {head.begin(), head.end()});
  {
    torch::NoGradGuard no_grad;
    for (auto& p : ref->named_parameters()) {
      p.value().copy_(after_head[p.key()]);
      p.value().mutable_grad() = torch::Tensor();
    }
  }
  torch::Tensor loss_body = ce_loss(ref, 0);  // phase 2: the body's step, on the new head
  loss_body.backward();
  const auto want = stepped(ref, config_.local.lr, parameters_except(ref, head));

  auto r = fit(*c, global, 0, 1);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_NEAR(r->metrics["loss_head"].get<double>(), loss_head.item<double>(), 1e-5);
  EXPECT_NEAR(r->metrics["loss"].get<double>(), loss_body.item<double>(), 1e-5);
  EXPECT_EQ(r->metrics["steps"], 2);
  expect_near(r->update, want);
  EXPECT_FALSE(same(r->update, global, "heads.classifier.weight"));  // the head moved (phase 1)
  EXPECT_FALSE(same(r->update, global, "backbone.conv1.weight"));    // the body too (phase 2)
  EXPECT_TRUE(same(clients_[0].state.tensors, r->update, "heads.classifier.bias"));
  for (const auto& p : clients_[0].model->parameters()) EXPECT_TRUE(p.requires_grad());
}

TEST_F(PersonalizedTest, FedBabuNeverTrainsTheHeadAndFineTunesToPersonalise) {
  auto s = server("fedbabu");
  auto c = client("fedbabu", {{"finetune", "head"}, {"finetune_epochs", 1}});
  const TensorBundle& global = *s->global_bundle();
  const std::vector<std::string> head = head_tensor_names(clients_[0].model, kClassifierHead);

  Model ref = reference_model(config_, global);
  torch::Tensor loss = ce_loss(ref, 0);
  loss.backward();
  auto r = fit(*c, global, 0, 1);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_NEAR(r->metrics["loss"].get<double>(), loss.item<double>(), 1e-5);
  expect_near(r->update, stepped(ref, config_.local.lr, parameters_except(ref, head)));
  for (const std::string& n : head) EXPECT_TRUE(same(r->update, global, n)) << n;
  EXPECT_FALSE(same(r->update, global, "backbone.conv2.weight"));
  EXPECT_TRUE(clients_[0].state.tensors.empty());

  // The averaged head is the initial head, bit for bit.
  auto metrics = run_round(*s, *c, config_, clients_, 1);
  EXPECT_EQ(metrics["updated"], true);
  auto s0 = server("fedbabu");
  for (const std::string& n : head) EXPECT_TRUE(same(*s->global_bundle(), *s0->global_bundle(), n));

  // Personalisation: one fine-tuning step of the head (the body only sees BN statistics move).
  const TensorBundle& g = *s->global_bundle();
  Model ref2 = reference_model(config_, g);
  torch::Tensor tune = ce_loss(ref2, 1);
  tune.backward();
  auto report = evaluate(*c, g, 1);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ((*report)["finetune_steps"], 1);
  EXPECT_NEAR((*report)["finetune_loss"].get<double>(), tune.item<double>(), 1e-5);
  EXPECT_EQ((*report)["examples"], clients_[1].test.size());
  expect_near(state_of(clients_[1].model),
              stepped(ref2, config_.local.lr, {head.begin(), head.end()}));
  EXPECT_TRUE(clients_[1].state.tensors.empty());  // nothing kept

  // Whole-model fine-tuning moves the body too; 0 epochs scores the global model as FedAvg does.
  auto whole = client("fedbabu", {{"finetune_epochs", 1}});
  ASSERT_TRUE(evaluate(*whole, g, 1).ok());
  EXPECT_FALSE(same(state_of(clients_[1].model), g, "backbone.conv1.weight"));
  auto none = client("fedbabu", {{"finetune_epochs", 0}});
  auto fedavg = client("fedavg");
  auto a = evaluate(*none, g, 1);
  auto b = evaluate(*fedavg, g, 1);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)["correct"], (*b)["correct"]);
  EXPECT_EQ((*a)["finetune_steps"], 0);
}

TEST_F(PersonalizedTest, FedRodStepsBodyAndGenericHeadOnBalancedSoftmaxAndThePersonalHeadAlone) {
  auto s = server("fedrod");
  auto c = client("fedrod");
  const TensorBundle& global = *s->global_bundle();
  const Dataset& data = clients_[0].train;
  const std::vector<int64_t> counts = data.class_counts();

  Model ref = reference_model(config_, global, {kPersonalHead});
  {
    torch::NoGradGuard no_grad;  // the personal head starts as a copy of the generic head
    ref->head(kPersonalHead)->weight.copy_(ref->head(kClassifierHead)->weight);
    ref->head(kPersonalHead)->bias.copy_(ref->head(kClassifierHead)->bias);
  }
  const torch::Tensor x = inputs(data);
  const torch::Tensor f = ref->features(x);
  const torch::Tensor g = ref->head(kClassifierHead)->forward(f);
  // Balanced softmax by hand: -log(n_y e^{g_y} / Σ_c n_c e^{g_c}).
  const torch::Tensor n = torch::tensor(counts, torch::kFloat32).unsqueeze(0);
  const torch::Tensor weighted = n * g.exp();
  const torch::Tensor picked = weighted.gather(1, data.labels.unsqueeze(1)).squeeze(1);
  const torch::Tensor loss_g = -(picked / weighted.sum(1)).log().mean();
  loss_g.backward();
  auto want = stepped(ref, config_.local.lr,
                      parameters_except(ref, {"heads.personal.weight", "heads.personal.bias"}));
  // The personal head: CE(g.detach() + personal(f.detach())).
  const torch::Tensor loss_p = torch::nn::functional::cross_entropy(
      g.detach() + ref->head(kPersonalHead)->forward(f.detach()), data.labels);
  loss_p.backward();
  const auto personal =
      stepped(ref, config_.local.lr, {"heads.personal.weight", "heads.personal.bias"});
  want["heads.personal.weight"] = personal.at("heads.personal.weight");
  want["heads.personal.bias"] = personal.at("heads.personal.bias");

  auto r = fit(*c, global, 0, 1);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_NEAR(r->metrics["loss"].get<double>(), loss_g.item<double>(), 1e-5);
  EXPECT_NEAR(r->metrics["loss_personal"].get<double>(), loss_p.item<double>(), 1e-5);
  EXPECT_EQ(r->update.find("heads.personal.weight"), nullptr);  // never uploaded
  EXPECT_EQ(r->update.size(), global.size());
  expect_near(r->update, want);
  expect_near(clients_[0].state.tensors, want);
  EXPECT_EQ(clients_[0].state.tensors.names(),
            std::vector<std::string>({"heads.personal.weight", "heads.personal.bias"}));

  // A client without one of the classes: log 0 = -inf in the adjustment, and nothing goes NaN.
  SimClient one_class = std::move(clients_[1]);
  one_class.train = separable(40, 5, /*class0_share=*/1.0);
  auto r2 = fit(*c, global, 1, 1, &one_class);
  ASSERT_TRUE(r2.ok()) << r2.status().to_string();
  for (const NamedTensor& t : r2->update) {
    if (t.dtype() == DType::kFloat32) {
      EXPECT_TRUE(torch::isfinite(to_torch(t)).all().item<bool>()) << t.name();
    }
  }

  // Personalised evaluation scores generic + personal logits.
  auto report = evaluate(*c, global, 0);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  Model eval_ref = reference_model(config_, global, {kPersonalHead});
  ASSERT_TRUE(load_module_state(*eval_ref, clients_[0].state.tensors, false).ok());
  eval_ref->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor xt = inputs(clients_[0].test);
  const torch::Tensor logits =
      eval_ref->logits(xt, kClassifierHead) + eval_ref->logits(xt, kPersonalHead);
  const int64_t correct = logits.argmax(1).eq(clients_[0].test.labels).sum().item<int64_t>();
  EXPECT_EQ((*report)["correct"], correct);
}

TEST_F(PersonalizedTest, DittoTrainsAPersonalModelProximalToTheGlobalOneAndFedAvgsTheGlobal) {
  const double lambda = 0.5;
  auto s = server("ditto", {{"lambda", lambda}});
  auto c = client("ditto", {{"lambda", lambda}});
  const TensorBundle& global = *s->global_bundle();

  // Round 1: the personal model starts at the global one (no proximal pull yet).
  auto r1 = fit(*c, global, 0, 1);
  ASSERT_TRUE(r1.ok()) << r1.status().to_string();
  const TensorBundle personal1 = clients_[0].state.tensors.clone();
  EXPECT_EQ(personal1.size(), global.size());  // the whole model, buffers included

  // Round 2 from the same global: v = personal1, one step of CE + λ/2 ||v - w||², then the global
  // model's own step of CE.
  Model v = reference_model(config_, personal1);
  Model w = reference_model(config_, global);
  torch::Tensor ce = ce_loss(v, 0);
  torch::Tensor proximal = torch::zeros({});
  for (const auto& p : v->named_parameters()) {
    proximal = proximal + (p.value() - to_torch(*global.find(p.key()))).pow(2).sum();
  }
  torch::Tensor loss_v = ce + lambda / 2 * proximal;
  EXPECT_GT(proximal.item<double>(), 0);
  loss_v.backward();
  const auto want_v = stepped(v, config_.local.lr, all_parameters(v));
  torch::Tensor loss_w = ce_loss(w, 0);
  loss_w.backward();
  const auto want_w = stepped(w, config_.local.lr, all_parameters(w));

  auto r2 = fit(*c, global, 0, 2);
  ASSERT_TRUE(r2.ok()) << r2.status().to_string();
  EXPECT_NEAR(r2->metrics["loss_personal"].get<double>(), loss_v.item<double>(), 1e-5);
  EXPECT_NEAR(r2->metrics["loss"].get<double>(), loss_w.item<double>(), 1e-5);
  expect_near(clients_[0].state.tensors, want_v);
  expect_near(r2->update, want_w);

  // Personalised evaluation uses the personal model.
  auto report = evaluate(*c, global, 0);
  ASSERT_TRUE(report.ok());
  Model pv = reference_model(config_, clients_[0].state.tensors);
  pv->eval();
  torch::NoGradGuard no_grad;
  const int64_t correct = pv->forward(inputs(clients_[0].test))
                              .argmax(1)
                              .eq(clients_[0].test.labels)
                              .sum()
                              .item<int64_t>();
  EXPECT_EQ((*report)["correct"], correct);
}

// ---------------------------------------------------------------------------------------------
// Client state: rounds and restarts

// Every strategy's client state goes through the client's state file between rounds; the next
// round is bit-identical to one without the round trip, on a freshly built model and a new
// algorithm instance (a restarted client).
TEST_F(PersonalizedTest, ClientStateSurvivesAStateFileAndARestartBitExactly) {
  config_ = tiny_config();  // real local training: several steps, augmentation, momentum
  config_.local.epochs = 2;
  const std::string dir = ::testing::TempDir() + "/personalized_state";
  std::filesystem::create_directories(dir);
  for (const std::string name : {"fedbn", "fedper", "fedrep", "fedbabu", "fedrod", "ditto"}) {
    SCOPED_TRACE(name);
    clients_ = sim_clients(config_, 1);
    const nlohmann::json options =
        name == "fedrep" ? nlohmann::json{{"head_epochs", 2}} : nlohmann::json::object();
    auto s = server(name, options);
    auto c = client(name, options);
    const TensorBundle& global = *s->global_bundle();
    ASSERT_TRUE(fit(*c, global, 0, 1).ok());

    client::StateRecord record;
    record.run_id = "run";
    record.client_id = clients_[0].id;
    record.round = 1;
    record.kind = 2;
    record.current.tensors = clients_[0].state.tensors.clone();
    record.current.values = clients_[0].state.values;
    ASSERT_TRUE(client::write_state_file(dir + "/" + name + ".state", record).ok());
    auto loaded = client::read_state_file(dir + "/" + name + ".state");
    ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();

    SimClient restarted;
    restarted.id = clients_[0].id;
    restarted.train = clients_[0].train;
    restarted.test = clients_[0].test;
    restarted.state = std::move(loaded->current);
    Rng junk(4242);
    restarted.model = make_model(config_.model, junk).value();
    auto c2 = client(name, options);

    auto a = fit(*c, global, 0, 2);
    auto b = fit(*c2, global, 0, 2, &restarted);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(a->update.bitwise_equal(b->update));
    EXPECT_TRUE(clients_[0].state.tensors.bitwise_equal(restarted.state.tensors));
    EXPECT_EQ(a->metrics, b->metrics);
    auto ea = evaluate(*c, global, 0);
    auto eb = evaluate(*c2, global, 0, &restarted);
    ASSERT_TRUE(ea.ok() && eb.ok());
    EXPECT_EQ(*ea, *eb);
  }
}

TEST_F(PersonalizedTest, StoredPartsThatDoNotFitAreRefusedNamingTheTensor) {
  auto s = server("fedper");
  auto c = client("fedper");
  ASSERT_TRUE(clients_[0]
                  .state.tensors.add_zeros("heads.classifier.weight", DType::kFloat32, {3, 16})
                  .ok());
  ASSERT_TRUE(
      clients_[0].state.tensors.add_zeros("heads.classifier.bias", DType::kFloat32, {3}).ok());
  auto r = fit(*c, *s->global_bundle(), 0, 1);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("heads.classifier.weight"), std::string::npos)
      << r.status().message();

  // Half a part is refused too.
  clients_[1].state.tensors = TensorBundle();
  ASSERT_TRUE(
      clients_[1].state.tensors.add_zeros("heads.classifier.bias", DType::kFloat32, {2}).ok());
  auto half = fit(*c, *s->global_bundle(), 1, 1);
  EXPECT_EQ(half.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(half.status().message().find("heads.classifier.weight\": missing"), std::string::npos)
      << half.status().message();

  // A FedRoD bundle with a personal head in it is refused: that head never travels.
  auto rod_server = server("fedrod");
  auto rod = client("fedrod");
  TensorBundle bad = rod_server->global_bundle()->clone();
  ASSERT_TRUE(bad.add_zeros("heads.personal.bias", DType::kFloat32, {2}).ok());
  auto refused = fit(*rod, bad, 0, 1);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("heads.personal.bias"), std::string::npos);
}

// A few rounds of each over three skewed clients: every strategy learns the separable task, its
// generic model on a balanced test set and its personalised models on the clients' skewed ones.
TEST_F(PersonalizedTest, ATinyFederationOfEachLearns) {
  config_ = tiny_config();
  config_.local.epochs = 3;
  for (const std::string name : {"fedbn", "fedper", "fedrep", "fedbabu", "fedrod", "ditto"}) {
    SCOPED_TRACE(name);
    clients_ = sim_clients(config_, 3);
    // FedRep trains the body body_epochs (1 by default) a round: give it as many as the others.
    const nlohmann::json options = name == "fedrep"
                                       ? nlohmann::json{{"head_epochs", 2}, {"body_epochs", 3}}
                                       : nlohmann::json::object();
    auto s = server(name, options);
    auto c = client(name, options);
    for (int round = 1; round <= 5; ++round) {
      auto m = run_round(*s, *c, config_, clients_, round);
      EXPECT_EQ(m["updated"], true);
    }
    ServerEvalContext eval;
    Dataset test = separable(200, 31);
    eval.test = &test;
    eval.train_class_counts = {100, 100};
    auto generic = s->evaluate(5, eval);
    ASSERT_TRUE(generic.ok()) << generic.status().to_string();
    std::cout << name << ": generic " << (*generic)["generic"]["overall"];
    EXPECT_GT((*generic)["generic"]["overall"].get<double>(), 0.8) << generic->dump();
    std::vector<EvalReport> reports;
    for (int k = 0; k < 3; ++k) {
      auto r = evaluate(*c, *s->global_bundle(), k);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      reports.push_back({clients_[k].id, clients_[k].test.size(), *r});
    }
    auto personal = s->aggregate_evaluate(5, reports, {});
    ASSERT_TRUE(personal.ok());
    std::cout << ", personalised " << (*personal)["personalized"]["mean"] << "\n";
    EXPECT_GT((*personal)["personalized"]["mean"].get<double>(), 0.8) << personal->dump();
  }
}

}  // namespace
}  // namespace fedtail::strategies

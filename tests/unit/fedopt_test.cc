// FedAdam, FedYogi, FedAdagrad and FedAvgM (strategies/fedopt/): options, two rounds of each rule
// on a tiny bundle against the formulas computed here (BatchNorm statistics and counters taking
// the mean), FedAvgM with momentum 0 and server_lr 1 equal to FedAvg bit for bit, the saved moments
// and refused states, a step that would leave the model non-finite, resume bit for bit, and rounds
// of a real model.
#include "strategies/fedopt/fedopt.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/wire/bundle_checks.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::contains;
using testing::edited_bundle;
using testing::run_context;
using testing::run_round;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;

FedOptOptions parsed(ServerOptimizer rule, const nlohmann::json& config) {
  auto o = parse_fedopt_options(rule, config);
  EXPECT_TRUE(o.ok()) << o.status().to_string();
  return o.ok() ? *o : fedopt_default_options(rule);
}

// ---------------------------------------------------------------------------------------------
// Options

TEST(FedOptOptionsTest, EachRuleHasItsDefaults) {
  const FedOptOptions adam = parsed(ServerOptimizer::kAdam, nullptr);
  EXPECT_EQ(adam.optimizer, ServerOptimizer::kAdam);
  EXPECT_EQ(adam.server_lr, 0.1);
  EXPECT_EQ(adam.beta1, 0.9);
  EXPECT_EQ(adam.beta2, 0.99);
  EXPECT_EQ(adam.tau, 1e-3);
  EXPECT_FALSE(adam.bias_correction);
  EXPECT_EQ(adam.round.min_fit_clients, 1);
  EXPECT_EQ(adam.round.fraction_fit, 1.0);

  const FedOptOptions yogi = parsed(ServerOptimizer::kYogi, nlohmann::json::object());
  EXPECT_EQ(yogi.server_lr, 0.01);
  EXPECT_EQ(yogi.beta1, 0.9);
  EXPECT_EQ(yogi.beta2, 0.99);
  EXPECT_EQ(yogi.tau, 1e-3);

  const FedOptOptions adagrad = parsed(ServerOptimizer::kAdagrad, {});
  EXPECT_EQ(adagrad.server_lr, 0.1);
  EXPECT_EQ(adagrad.beta1, 0.0);
  EXPECT_EQ(adagrad.tau, 1e-3);

  const FedOptOptions avgm = parsed(ServerOptimizer::kMomentum, {});
  EXPECT_EQ(avgm.server_lr, 1.0);
  EXPECT_EQ(avgm.momentum, 0.9);

  const FedOptOptions set = parsed(ServerOptimizer::kAdam, {{"server_lr", 1},
                                                            {"beta1", 0},
                                                            {"beta2", 0.5},
                                                            {"tau", 1e-2},
                                                            {"bias_correction", true},
                                                            {"fraction_fit", 0.5},
                                                            {"name", "fedadam"}});
  EXPECT_EQ(set.server_lr, 1.0);
  EXPECT_EQ(set.beta1, 0.0);
  EXPECT_EQ(set.beta2, 0.5);
  EXPECT_EQ(set.tau, 1e-2);
  EXPECT_TRUE(set.bias_correction);
  EXPECT_EQ(set.round.fraction_fit, 0.5);
  EXPECT_EQ(parsed(ServerOptimizer::kAdagrad, {{"beta1", 0.5}}).beta1, 0.5);
  EXPECT_EQ(parsed(ServerOptimizer::kMomentum, {{"momentum", 0}}).momentum, 0.0);
}

TEST(FedOptOptionsTest, BadValuesAndOtherRulesKeysAreRefusedNamingTheField) {
  struct Case {
    ServerOptimizer rule;
    nlohmann::json options;
    std::string message;
  };
  const std::vector<Case> cases = {
      {ServerOptimizer::kAdam, {{"server_lr", 0}}, "config.strategy.server_lr: must be > 0"},
      {ServerOptimizer::kYogi, {{"server_lr", -1}}, "config.strategy.server_lr: must be > 0"},
      {ServerOptimizer::kMomentum, {{"server_lr", 0}}, "config.strategy.server_lr: must be > 0"},
      {ServerOptimizer::kAdam, {{"beta1", 1}}, "config.strategy.beta1: must be in [0, 1)"},
      {ServerOptimizer::kAdagrad, {{"beta1", -0.1}}, "config.strategy.beta1: must be in [0, 1)"},
      {ServerOptimizer::kYogi, {{"beta2", 1.5}}, "config.strategy.beta2: must be in [0, 1)"},
      {ServerOptimizer::kAdam, {{"tau", 0}}, "config.strategy.tau: must be > 0"},
      {ServerOptimizer::kAdagrad, {{"tau", -1e-3}}, "config.strategy.tau: must be > 0"},
      {ServerOptimizer::kMomentum,
       {{"momentum", 1}},
       "config.strategy.momentum: must be in [0, 1)"},
      {ServerOptimizer::kAdagrad, {{"beta2", 0.99}}, "config.strategy.beta2: unknown key"},
      {ServerOptimizer::kAdam, {{"momentum", 0.9}}, "config.strategy.momentum: unknown key"},
      {ServerOptimizer::kMomentum, {{"tau", 1e-3}}, "config.strategy.tau: unknown key"},
      {ServerOptimizer::kMomentum, {{"beta1", 0.9}}, "config.strategy.beta1: unknown key"},
      {ServerOptimizer::kYogi,
       {{"bias_correction", true}},
       "config.strategy.bias_correction: unknown key"},
      {ServerOptimizer::kAdam, {{"bias_correction", 1}}, "config.strategy.bias_correction"},
      {ServerOptimizer::kAdam, {{"server_lr", "0.1"}}, "config.strategy.server_lr"},
      {ServerOptimizer::kYogi, {{"fraction_fit", 0}}, "config.strategy.fraction_fit"},
      {ServerOptimizer::kAdam, nlohmann::json::array(), "config.strategy"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(server_optimizer_strategy_name(c.rule)) + " " + c.options.dump());
    const Status parse = parse_fedopt_options(c.rule, c.options).status();
    const Status server = make_fedopt_server(c.rule, c.options).status();
    const Status client = make_fedopt_client(c.rule, c.options).status();
    for (const Status& s : {parse, server, client}) {
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
      EXPECT_TRUE(contains(s, c.message)) << s.message();
    }
  }
}

TEST(FedOptOptionsTest, RegistryEntriesNameTheRuleAndUseFedAvgsClient) {
  const std::vector<std::pair<StrategyEntry, ServerOptimizer>> entries = {
      {fedadam_strategy_entry(), ServerOptimizer::kAdam},
      {fedyogi_strategy_entry(), ServerOptimizer::kYogi},
      {fedadagrad_strategy_entry(), ServerOptimizer::kAdagrad},
      {fedavgm_strategy_entry(), ServerOptimizer::kMomentum}};
  const std::vector<std::string> names = {"fedadam", "fedyogi", "fedadagrad", "fedavgm"};
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& [entry, rule] = entries[i];
    SCOPED_TRACE(names[i]);
    EXPECT_EQ(entry.name, names[i]);
    EXPECT_EQ(server_optimizer_strategy_name(rule), names[i]);
    EXPECT_FALSE(entry.description.empty());
    auto server = entry.server(nlohmann::json::object());
    ASSERT_TRUE(server.ok()) << server.status().to_string();
    auto* fedopt = dynamic_cast<FedOptServer*>(server->get());
    ASSERT_NE(fedopt, nullptr);
    EXPECT_EQ(fedopt->options().optimizer, rule);
    EXPECT_EQ(fedopt->name(), names[i]);
    EXPECT_EQ(fedopt->steps(), 0);
    auto client = entry.client(nlohmann::json::object());
    ASSERT_TRUE(client.ok()) << client.status().to_string();
    EXPECT_NE(dynamic_cast<FedAvgClient*>(client->get()), nullptr);
    EXPECT_FALSE(entry.server({{"unknown_option", 1}}).ok());
    EXPECT_FALSE(entry.client({{"unknown_option", 1}}).ok());
  }
}

// ---------------------------------------------------------------------------------------------
// The rules by hand on a tiny bundle

const char kWeight[] = "layer.weight";           // float32 [2,2]: stepped
const char kBias[] = "layer.bias";               // float32 [2]: stepped
const char kRunMean[] = "bn.running_mean";       // float32 [2]: the mean
const char kRunVar[] = "bn.running_var";         // float32 [2]: the mean
const char kCount[] = "bn.num_batches_tracked";  // int64 scalar: the mean

struct Values {
  std::vector<float> weight, bias, run_mean, run_var;
  int64_t count = 0;
};

TensorBundle bundle_of(const Values& v) {
  TensorBundle b;
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<float>(kWeight, DType::kFloat32, {2, 2}, v.weight)).ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values<float>(kBias, DType::kFloat32, {2}, v.bias)).ok());
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<float>(kRunMean, DType::kFloat32, {2}, v.run_mean)).ok());
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<float>(kRunVar, DType::kFloat32, {2}, v.run_var)).ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values<int64_t>(kCount, DType::kInt64, {}, {v.count})).ok());
  return b;
}

std::vector<float> floats(const TensorBundle& b, const std::string& name) {
  const NamedTensor* t = b.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  return std::vector<float>(t->data<float>(), t->data<float>() + t->numel());
}

// The global model of the hand examples, and the two clients' round-1 models (1 and 3 examples).
// Dyadic values: the example-weighted means are exact. Δ = mean − global per element:
//   weight: (0.625, 0.0625, 1.0, -0.5) − (0.5, -0.25, 1.0, 0.0) = (0.125, 0.3125, 0, -0.5)
//   bias:   (0.1875, -2.5) − (0.125, -2.0) = (0.0625, -0.5)
const Values kGlobal = {
    {0.5f, -0.25f, 1.0f, 0.0f}, {0.125f, -2.0f}, {0.0f, 0.5f}, {1.0f, 0.25f}, 4};
const Values kClientA = {
    {1.0f, -0.5f, 1.0f, 0.25f}, {0.0f, -1.0f}, {0.5f, 0.5f}, {0.5f, 0.75f}, 10};
const Values kClientB = {
    {0.5f, 0.25f, 1.0f, -0.75f}, {0.25f, -3.0f}, {0.25f, 1.0f}, {1.5f, 0.25f}, 6};
// Round 2: both clients send global + these changes (so the mean is exactly that model); small
// changes next to round 1's large ones take Yogi's v down, large ones up.
const std::vector<float> kRound2WeightStep = {0.01f, -0.5f, 0.25f, 0.0f};
const std::vector<float> kRound2BiasStep = {-0.001f, 0.75f};
const Values kRound2Buffers = {{}, {}, {0.75f, -0.25f}, {2.0f, 0.5f}, 9};

// The rule for one element, from the formulas, in double; `m` and `v` as the server keeps them
// (float32 between rounds, zero before the first step); `step` counts from 1. Counts Yogi's
// decreasing steps (v > Δ²) in *yogi_down.
float by_hand(const FedOptOptions& o, int step, float global, float mean, float* m, float* v,
              int* yogi_down) {
  const double g = global, a = mean;
  const double d = a - g;
  double mm = *m, vv = *v, x = 0;
  if (o.optimizer == ServerOptimizer::kMomentum) {
    mm = o.momentum * mm + d;  // velocity
    x = (o.momentum == 0 && o.server_lr == 1) ? a : g + o.server_lr * mm;
  } else {
    mm = o.beta1 * mm + (1 - o.beta1) * d;
    const double d2 = d * d;
    switch (o.optimizer) {
      case ServerOptimizer::kAdam:
        vv = o.beta2 * vv + (1 - o.beta2) * d2;
        break;
      case ServerOptimizer::kYogi: {
        const double sign = vv > d2 ? 1.0 : (vv < d2 ? -1.0 : 0.0);
        if (sign > 0) ++*yogi_down;
        vv = vv - (1 - o.beta2) * d2 * sign;
        break;
      }
      default:  // Adagrad
        vv = vv + d2;
        break;
    }
    double lr = o.server_lr;
    if (o.optimizer == ServerOptimizer::kAdam && o.bias_correction) {
      lr = o.server_lr * std::sqrt(1 - std::pow(o.beta2, step)) / (1 - std::pow(o.beta1, step));
    }
    x = g + lr * mm / (std::sqrt(vv) + o.tau);
  }
  *m = static_cast<float>(mm);
  *v = static_cast<float>(vv);
  return static_cast<float>(x);
}

// The expected global model and moments of the hand examples, step by step.
struct HandRun {
  explicit HandRun(FedOptOptions o) : options(std::move(o)) {
    global[kWeight] = kGlobal.weight;
    global[kBias] = kGlobal.bias;
    for (const char* name : {kWeight, kBias}) {
      m[name].assign(global[name].size(), 0.0f);
      v[name].assign(global[name].size(), 0.0f);
    }
  }
  // One step to the model whose stepped tensors are `means`.
  void step(const std::map<std::string, std::vector<float>>& means) {
    ++steps;
    for (auto& [name, x] : global) {
      for (size_t i = 0; i < x.size(); ++i) {
        x[i] =
            by_hand(options, steps, x[i], means.at(name)[i], &m[name][i], &v[name][i], &yogi_down);
      }
    }
  }
  FedOptOptions options;
  std::map<std::string, std::vector<float>> global, m, v;
  int steps = 0;
  int yogi_down = 0;
};

class FedOptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    run_ = run_context(config_);
  }

  // A server of `options` whose global model is `global` (loaded as a state: the state of a
  // server of the rule initialised with the tiny CNN, its tensors replaced by `global`'s).
  std::unique_ptr<FedOptServer> server_on(const FedOptOptions& options,
                                          const TensorBundle& global) {
    FedOptServer donor(options);
    Rng rng(1);
    EXPECT_TRUE(donor.initialize(run_, rng).ok());
    auto state = donor.save_state();
    EXPECT_TRUE(state.ok()) << state.status().to_string();
    TensorBundle tiny = global.clone();
    EXPECT_TRUE(tiny.set_metadata(state->metadata()).ok());
    auto server = std::make_unique<FedOptServer>(options);
    const Status loaded = server->load_state(std::move(tiny));
    EXPECT_TRUE(loaded.ok()) << loaded.to_string();
    return server;
  }

  // One round on `server`: client "a" sends `a` (1 example), "b" sends `b` (3 examples).
  // finish()'s result.
  static Result<nlohmann::json> round_of(ServerStrategy& server, int round, const TensorBundle& a,
                                         const TensorBundle& b) {
    FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Aggregation> agg, server.begin_aggregation(round));
    int64_t examples = 1;
    for (const TensorBundle* bundle : {&a, &b}) {
      ClientUpdate u;
      u.client_id = examples == 1 ? "a" : "b";
      u.num_examples = examples;
      u.bundle = bundle->clone();
      FEDTAIL_RETURN_IF_ERROR(agg->add(std::move(u)));
      examples = 3;
    }
    return agg->finish({});
  }

  // Round 2's update (both clients): the server's global plus the round-2 changes and buffers.
  static TensorBundle round2_update(const TensorBundle& global) {
    Values u = kRound2Buffers;
    const std::vector<float> w = floats(global, kWeight), b = floats(global, kBias);
    for (size_t i = 0; i < w.size(); ++i) u.weight.push_back(w[i] + kRound2WeightStep[i]);
    for (size_t i = 0; i < b.size(); ++i) u.bias.push_back(b[i] + kRound2BiasStep[i]);
    return bundle_of(u);
  }

  RunConfig config_;
  RunContext run_;
};

// The cases of the hand and resume tests: each rule's defaults and a set of other values.
std::vector<nlohmann::json> hand_cases(ServerOptimizer rule) {
  switch (rule) {
    case ServerOptimizer::kAdam:
      return {nlohmann::json::object(),
              {{"server_lr", 0.5},
               {"beta1", 0.5},
               {"beta2", 0.9},
               {"tau", 0.01},
               {"bias_correction", true}},
              {{"bias_correction", true}}};
    case ServerOptimizer::kYogi:
      return {nlohmann::json::object(),
              {{"server_lr", 0.25}, {"beta1", 0.0}, {"beta2", 0.5}, {"tau", 1e-4}}};
    case ServerOptimizer::kAdagrad:
      return {nlohmann::json::object(), {{"server_lr", 0.5}, {"beta1", 0.5}, {"tau", 0.01}}};
    case ServerOptimizer::kMomentum:
      return {nlohmann::json::object(), {{"server_lr", 0.5}, {"momentum", 0.75}}};
  }
  return {};
}

const std::vector<ServerOptimizer> kRules = {ServerOptimizer::kAdam, ServerOptimizer::kYogi,
                                             ServerOptimizer::kAdagrad, ServerOptimizer::kMomentum};

TEST_F(FedOptTest, TwoRoundsOfEachRuleFollowTheFormulas) {
  for (ServerOptimizer rule : kRules) {
    for (const nlohmann::json& config : hand_cases(rule)) {
      SCOPED_TRACE(std::string(server_optimizer_strategy_name(rule)) + " " + config.dump());
      const FedOptOptions options = parsed(rule, config);
      auto server = server_on(options, bundle_of(kGlobal));
      HandRun hand(options);

      // Round 1: the means (1·A + 3·B) / 4.
      auto m1 = round_of(*server, 1, bundle_of(kClientA), bundle_of(kClientB));
      ASSERT_TRUE(m1.ok()) << m1.status().to_string();
      EXPECT_EQ((*m1)["updated"], true) << m1->dump();
      EXPECT_EQ((*m1)["examples"], 4);
      hand.step({{kWeight, {0.625f, 0.0625f, 1.0f, -0.5f}}, {kBias, {0.1875f, -2.5f}}});
      const TensorBundle& g1 = *server->global_bundle();
      EXPECT_EQ(server->steps(), 1);
      EXPECT_EQ(g1.metadata()["round"], 1);
      for (const char* name : {kWeight, kBias}) {
        const std::vector<float> got = floats(g1, name);
        for (size_t i = 0; i < got.size(); ++i) {
          EXPECT_FLOAT_EQ(got[i], hand.global[name][i]) << name << "[" << i << "]";
        }
      }
      // BatchNorm statistics and the counter: the mean itself, (1·A + 3·B) / 4.
      EXPECT_EQ(floats(g1, kRunMean), std::vector<float>({0.3125f, 0.875f}));
      EXPECT_EQ(floats(g1, kRunVar), std::vector<float>({1.25f, 0.375f}));
      EXPECT_EQ(g1.find(kCount)->data<int64_t>()[0], 7);

      // A few elements of round 1 with the defaults, simplified by hand (Δ = 0.125 for
      // weight[0], 0 for weight[2]; moments from zero).
      if (config.empty()) {
        const float w0 = floats(g1, kWeight)[0];
        switch (rule) {
          case ServerOptimizer::kAdam:  // m = 0.1Δ, v = 0.01Δ²: x + 0.1·0.1Δ/(0.1|Δ| + τ)
            EXPECT_NEAR(w0, 0.5 + 0.01 * 0.125 / (0.1 * 0.125 + 1e-3), 1e-6);
            break;
          case ServerOptimizer::kYogi:  // v = 0 + 0.01Δ² (sign −1), η = 0.01
            EXPECT_NEAR(w0, 0.5 + 0.001 * 0.125 / (0.1 * 0.125 + 1e-3), 1e-6);
            break;
          case ServerOptimizer::kAdagrad:  // β1 = 0: m = Δ, v = Δ²
            EXPECT_NEAR(w0, 0.5 + 0.1 * 0.125 / (0.125 + 1e-3), 1e-6);
            break;
          case ServerOptimizer::kMomentum:  // velocity = Δ, η = 1: the mean
            EXPECT_EQ(w0, 0.625f);
            break;
        }
        EXPECT_EQ(floats(g1, kWeight)[2], 1.0f);  // Δ = 0: no move
      }

      // Round 2 from the server's model; the moments of round 1 carry over.
      const TensorBundle u2 = round2_update(g1);
      std::map<std::string, std::vector<float>> means2 = {{kWeight, floats(u2, kWeight)},
                                                          {kBias, floats(u2, kBias)}};
      auto m2 = round_of(*server, 2, u2, u2);
      ASSERT_TRUE(m2.ok()) << m2.status().to_string();
      EXPECT_EQ((*m2)["updated"], true) << m2->dump();
      hand.step(means2);
      const TensorBundle& g2 = *server->global_bundle();
      EXPECT_EQ(server->steps(), 2);
      for (const char* name : {kWeight, kBias}) {
        const std::vector<float> got = floats(g2, name);
        for (size_t i = 0; i < got.size(); ++i) {
          EXPECT_FLOAT_EQ(got[i], hand.global[name][i]) << name << "[" << i << "]";
        }
      }
      EXPECT_EQ(floats(g2, kRunMean), kRound2Buffers.run_mean);
      EXPECT_EQ(floats(g2, kRunVar), kRound2Buffers.run_var);
      EXPECT_EQ(g2.find(kCount)->data<int64_t>()[0], 9);
      if (rule == ServerOptimizer::kYogi) {
        EXPECT_GT(hand.yogi_down, 0);  // both branches of the sign ran
      }

      // The saved moments are the hand's.
      auto state = server->save_state();
      ASSERT_TRUE(state.ok()) << state.status().to_string();
      EXPECT_EQ(state->metadata()["server_steps"], 2);
      const bool momentum = rule == ServerOptimizer::kMomentum;
      for (const char* name : {kWeight, kBias}) {
        const std::string first = std::string(momentum ? "velocity/" : "m/") + name;
        const std::vector<float> m = floats(*state, first);
        for (size_t i = 0; i < m.size(); ++i) {
          EXPECT_FLOAT_EQ(m[i], hand.m[name][i]) << first << "[" << i << "]";
        }
        if (!momentum) {
          const std::vector<float> v = floats(*state, std::string("v/") + name);
          for (size_t i = 0; i < v.size(); ++i) {
            EXPECT_FLOAT_EQ(v[i], hand.v[name][i]) << "v/" << name << "[" << i << "]";
          }
        }
      }
    }
  }
}

TEST_F(FedOptTest, StateHoldsTheMomentsOfTheSteppedTensorsOnly) {
  for (ServerOptimizer rule : kRules) {
    SCOPED_TRACE(server_optimizer_strategy_name(rule));
    auto server = server_on(parsed(rule, {}), bundle_of(kGlobal));
    auto before = server->save_state();
    ASSERT_TRUE(before.ok());
    EXPECT_EQ(before->size(), 5u);  // the global tensors: no moment before the first step
    EXPECT_EQ(before->metadata()["server_steps"], 0);
    EXPECT_EQ(before->metadata()["strategy"], server_optimizer_strategy_name(rule));

    ASSERT_TRUE(round_of(*server, 1, bundle_of(kClientA), bundle_of(kClientB)).ok());
    auto after = server->save_state();
    ASSERT_TRUE(after.ok());
    const bool momentum = rule == ServerOptimizer::kMomentum;
    std::vector<std::string> expected = {kWeight, kBias, kRunMean, kRunVar, kCount};
    for (const std::string& prefix :
         momentum ? std::vector<std::string>{"velocity/"} : std::vector<std::string>{"m/", "v/"}) {
      expected.push_back(prefix + kWeight);
      expected.push_back(prefix + kBias);
    }
    EXPECT_EQ(after->names(), expected);
    EXPECT_EQ(after->metadata()["server_steps"], 1);
    EXPECT_EQ(after->find(std::string(momentum ? "velocity/" : "m/") + kWeight)->dtype(),
              DType::kFloat32);
  }
}

TEST_F(FedOptTest, FedAvgMWithoutMomentumAndUnitRateIsFedAvgBitForBit) {
  // The tiny CNN's whole state (BatchNorm buffers and counters included) and random updates whose
  // element 1 of most tensors is ~1e-12 in round 1, where the global value is ~0.1: there
  // g + (a − g) computed in double need not round back to a.
  FedAvgServer fedavg("fedavg", RoundOptions());
  auto avgm = make_fedopt_server(ServerOptimizer::kMomentum, {{"momentum", 0.0}, {"server_lr", 1}});
  ASSERT_TRUE(avgm.ok()) << avgm.status().to_string();
  Rng init_a(5), init_b(5);
  ASSERT_TRUE(fedavg.initialize(run_, init_a).ok());
  ASSERT_TRUE((*avgm)->initialize(run_, init_b).ok());
  Rng rng(9);
  for (int round = 1; round <= 3; ++round) {
    std::vector<std::pair<int64_t, TensorBundle>> updates;
    for (int k = 0; k < 3; ++k) {
      TensorBundle u = fedavg.global_bundle()->clone();
      u.mutable_metadata() = nlohmann::json::object();
      for (NamedTensor& t : u) {
        if (t.dtype() == DType::kFloat32) {
          float* x = t.data<float>();
          for (int64_t i = 0; i < t.numel(); ++i) x[i] += static_cast<float>(0.05 * rng.normal());
          if (t.name().find("running_var") == std::string::npos) {
            x[0] = 0.3f + static_cast<float>(k);
            if (t.numel() > 1) x[1] = static_cast<float>(1e-12 * (k + 1));
          }
        } else if (t.dtype() == DType::kInt64) {
          t.data<int64_t>()[0] += 2 + k;
        }
      }
      updates.emplace_back(10 + 7 * k, std::move(u));
    }
    for (ServerStrategy* s : {static_cast<ServerStrategy*>(&fedavg), avgm->get()}) {
      auto agg = s->begin_aggregation(round);
      ASSERT_TRUE(agg.ok());
      for (size_t k = 0; k < updates.size(); ++k) {
        ClientUpdate u;
        u.client_id = "client-" + std::to_string(k);
        u.num_examples = updates[k].first;
        u.bundle = updates[k].second.clone();
        ASSERT_TRUE((*agg)->add(std::move(u)).ok());
      }
      auto m = (*agg)->finish({});
      ASSERT_TRUE(m.ok()) << m.status().to_string();
      EXPECT_EQ((*m)["updated"], true);
    }
    const TensorBundle& a = *fedavg.global_bundle();
    const TensorBundle& b = *(*avgm)->global_bundle();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(a.at(i).bitwise_equal(b.at(i))) << "round " << round << ": " << a.at(i).name();
    }
    EXPECT_EQ(b.metadata()["strategy"], "fedavgm");
  }
}

TEST_F(FedOptTest, AStepThatLeavesTheModelNonFiniteKeepsModelAndMoments) {
  // η = 1e300 takes the step 1e300 · Δ past float32's range.
  auto server =
      server_on(parsed(ServerOptimizer::kMomentum, {{"server_lr", 1e300}}), bundle_of(kGlobal));
  const TensorBundle before = server->global_bundle()->clone();
  auto m = round_of(*server, 1, bundle_of(kClientA), bundle_of(kClientB));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(contains(m.status(), "non-finite")) << m.status().message();
  EXPECT_TRUE(contains(m.status(), kWeight)) << m.status().message();
  EXPECT_TRUE(server->global_bundle()->bitwise_equal(before));
  EXPECT_EQ(server->steps(), 0);
  auto state = server->save_state();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->size(), 5u);
}

TEST_F(FedOptTest, ResumeFromASavedStateIsBitExact) {
  for (ServerOptimizer rule : kRules) {
    for (const nlohmann::json& config : hand_cases(rule)) {
      SCOPED_TRACE(std::string(server_optimizer_strategy_name(rule)) + " " + config.dump());
      const FedOptOptions options = parsed(rule, config);
      auto a = server_on(options, bundle_of(kGlobal));
      ASSERT_TRUE(round_of(*a, 1, bundle_of(kClientA), bundle_of(kClientB)).ok());
      auto state = a->save_state();
      ASSERT_TRUE(state.ok()) << state.status().to_string();

      FedOptServer b(options);
      const Status loaded = b.load_state(state->clone());
      ASSERT_TRUE(loaded.ok()) << loaded.to_string();
      EXPECT_EQ(b.steps(), 1);
      EXPECT_TRUE(b.global_bundle()->bitwise_equal(*a->global_bundle()));
      EXPECT_TRUE(b.save_state()->bitwise_equal(*state));

      // Rounds 2 and 3 on both: the moments saved after round 1 drive them alike.
      for (int round = 2; round <= 3; ++round) {
        const TensorBundle u = round2_update(*a->global_bundle());
        ASSERT_TRUE(round_of(*a, round, u, bundle_of(kClientB)).ok());
        ASSERT_TRUE(round_of(b, round, u, bundle_of(kClientB)).ok());
        EXPECT_TRUE(b.global_bundle()->bitwise_equal(*a->global_bundle())) << "round " << round;
      }
      EXPECT_TRUE(b.save_state()->bitwise_equal(*a->save_state()));
    }
  }
}

TEST_F(FedOptTest, LoadStateRefusesMomentsThatDoNotFitAndStaysUnchanged) {
  const FedOptOptions adam = parsed(ServerOptimizer::kAdam, {});
  auto server = server_on(adam, bundle_of(kGlobal));
  ASSERT_TRUE(round_of(*server, 1, bundle_of(kClientA), bundle_of(kClientB)).ok());
  auto state = server->save_state();
  ASSERT_TRUE(state.ok());

  // `state` without `drop`, with `add`, and with metadata key server_steps set to `steps`
  // (erased when null).
  auto edited = [&](const std::string& drop, std::optional<NamedTensor> add,
                    std::optional<nlohmann::json> steps = std::nullopt) {
    TensorBundle out = edited_bundle(*state, drop, std::move(add));
    if (steps) {
      if (steps->is_null()) {
        out.mutable_metadata().erase("server_steps");
      } else {
        out.mutable_metadata()["server_steps"] = *steps;
      }
    }
    return out;
  };
  const std::string mw = std::string("m/") + kWeight, vw = std::string("v/") + kWeight;
  std::vector<std::pair<TensorBundle, std::string>> bad;
  bad.emplace_back(edited(std::string("v/") + kBias, std::nullopt), "is missing");
  bad.emplace_back(edited("", NamedTensor::from_values<float>(std::string("v/") + kRunVar,
                                                              DType::kFloat32, {2}, {1, 1})),
                   "is not a moment");
  bad.emplace_back(
      edited(mw, NamedTensor::from_values<float>(mw, DType::kFloat32, {4}, {0, 0, 0, 0})),
      "is not a moment");
  bad.emplace_back(
      edited(mw, NamedTensor::from_values<double>(mw, DType::kFloat64, {2, 2}, {0, 0, 0, 0})),
      "is not a moment");
  bad.emplace_back(
      edited("", NamedTensor::from_values<float>("m/nonexistent", DType::kFloat32, {1}, {0})),
      "is not a moment");
  bad.emplace_back(
      edited("", NamedTensor::from_values<float>(std::string("velocity/") + kWeight,
                                                 DType::kFloat32, {2, 2}, {0, 0, 0, 0})),
      "unexpected tensor");
  bad.emplace_back(
      edited(vw, NamedTensor::from_values<float>(vw, DType::kFloat32, {2, 2}, {1, -1, 1, 1})),
      "negative");
  bad.emplace_back(edited(mw, NamedTensor::from_values<float>(mw, DType::kFloat32, {2, 2},
                                                              {0, std::nanf(""), 0, 0})),
                   "non-finite");
  bad.emplace_back(edited("", std::nullopt, nlohmann::json()), "server_steps");
  bad.emplace_back(edited("", std::nullopt, nlohmann::json(-1)), "server_steps");
  bad.emplace_back(edited("", std::nullopt, nlohmann::json(1.5)), "server_steps");
  bad.emplace_back(edited("", std::nullopt, nlohmann::json(0)), "present before any step");
  for (const auto& [bundle, message] : bad) {
    SCOPED_TRACE(message);
    FedOptServer fresh(adam);
    const Status st = fresh.load_state(bundle.clone());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
    EXPECT_TRUE(contains(st, message)) << st.message();
    EXPECT_TRUE(fresh.global_bundle() == nullptr);  // unchanged
    EXPECT_EQ(fresh.steps(), 0);
  }
  // Another rule's state is refused by the name it was saved under.
  FedOptServer yogi(parsed(ServerOptimizer::kYogi, {}));
  const Status foreign = yogi.load_state(state->clone());
  EXPECT_EQ(foreign.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(foreign, "fedadam")) << foreign.message();
  // The state itself loads.
  FedOptServer again(adam);
  EXPECT_TRUE(again.load_state(state->clone()).ok());
}

// ---------------------------------------------------------------------------------------------
// A real model

TEST_F(FedOptTest, RealModelRoundsStayFiniteAndResumeBitExactly) {
  std::vector<SimClient> clients = sim_clients(config_, 3);
  for (ServerOptimizer rule : kRules) {
    SCOPED_TRACE(server_optimizer_strategy_name(rule));
    const FedOptOptions options = parsed(rule, {});
    auto client = make_fedopt_client(rule, {});
    ASSERT_TRUE(client.ok());
    FedOptServer a(options);
    Rng init(3);
    ASSERT_TRUE(a.initialize(run_, init).ok());
    const TensorBundle initial = a.global_bundle()->clone();
    for (int round = 1; round <= 2; ++round) {
      const nlohmann::json m = run_round(a, **client, config_, clients, round);
      EXPECT_EQ(m["updated"], true) << m.dump();
      ASSERT_TRUE(m["loss"].is_number()) << m.dump();
      EXPECT_TRUE(std::isfinite(m["loss"].get<double>()));
      const Status finite = check_finite(*a.global_bundle());
      EXPECT_TRUE(finite.ok()) << finite.to_string();
    }
    EXPECT_EQ(a.steps(), 2);
    // Every stepped tensor moved; the BatchNorm variances stay >= 0.
    for (const NamedTensor& t : *a.global_bundle()) {
      if (!fedopt_steps_tensor(t)) continue;
      EXPECT_FALSE(t.bitwise_equal(*initial.find(t.name()))) << t.name();
    }
    for (const NamedTensor& t : *a.global_bundle()) {
      if (t.name().find("running_var") == std::string::npos) continue;
      for (int64_t i = 0; i < t.numel(); ++i) EXPECT_GE(t.data<float>()[i], 0.0f) << t.name();
    }

    // Resume after round 2 into a fresh server; round 3 on both.
    auto state = a.save_state();
    ASSERT_TRUE(state.ok()) << state.status().to_string();
    FedOptServer b(options);
    ASSERT_TRUE(b.load_state(state->clone()).ok());
    const nlohmann::json ma = run_round(a, **client, config_, clients, 3);
    const nlohmann::json mb = run_round(b, **client, config_, clients, 3);
    EXPECT_EQ(ma, mb);
    EXPECT_TRUE(b.global_bundle()->bitwise_equal(*a.global_bundle()));
    EXPECT_TRUE(b.save_state()->bitwise_equal(*a.save_state()));
  }
}

}  // namespace
}  // namespace fedtail::strategies

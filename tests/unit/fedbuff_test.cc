// FedBuff (strategies/fedbuff/): the staleness functions, options and their refusals, server steps
// on a tiny bundle against values computed by hand (staleness weights, server learning rate,
// example weights, momentum over two steps, BatchNorm counters and variances), refused updates
// leaving no trace, exact resume from a saved state, and server steps on a real model.
#include "strategies/fedbuff/fedbuff.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/wire/bundle_checks.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::contains;
using testing::expect_parse_refuses;
using testing::fit_client;
using testing::run_context;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;

FedBuffOptions parsed(const nlohmann::json& config) {
  auto o = parse_fedbuff_options(config);
  EXPECT_TRUE(o.ok()) << o.status().to_string();
  return o.ok() ? *o : FedBuffOptions();
}

// ---------------------------------------------------------------------------------------------
// Staleness functions and options

TEST(FedBuffStalenessTest, FunctionsFollowTheirFormulas) {
  StalenessOptions constant;
  constant.function = StalenessFunction::kConstant;
  for (int tau : {0, 1, 7, 100}) EXPECT_EQ(staleness_weight(constant, tau), 1.0);

  StalenessOptions poly;  // the default: 1 / sqrt(1 + τ)
  EXPECT_EQ(poly.function, StalenessFunction::kPolynomial);
  EXPECT_EQ(staleness_weight(poly, 0), 1.0);
  EXPECT_EQ(staleness_weight(poly, 3), 0.5);
  EXPECT_DOUBLE_EQ(staleness_weight(poly, 8), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(staleness_weight(poly, 1), 1.0 / std::sqrt(2.0));
  EXPECT_EQ(staleness_weight(poly, -2), 1.0);  // counts as 0
  poly.exponent = 1;
  EXPECT_EQ(staleness_weight(poly, 3), 0.25);
  poly.exponent = 2;
  EXPECT_EQ(staleness_weight(poly, 3), 1.0 / 16);
  poly.exponent = 0;
  EXPECT_EQ(staleness_weight(poly, 9), 1.0);

  StalenessOptions hinge;  // FedAsync: 1 up to b, then 1 / (a(τ − b) + 1)
  hinge.function = StalenessFunction::kHinge;
  EXPECT_EQ(hinge.a, 10);
  EXPECT_EQ(hinge.b, 4);
  for (int tau : {0, 1, 4}) EXPECT_EQ(staleness_weight(hinge, tau), 1.0);
  EXPECT_DOUBLE_EQ(staleness_weight(hinge, 5), 1.0 / 11);
  EXPECT_DOUBLE_EQ(staleness_weight(hinge, 6), 1.0 / 21);
  hinge.a = 1;
  hinge.b = 0;
  EXPECT_EQ(staleness_weight(hinge, 1), 0.5);
  EXPECT_EQ(staleness_weight(hinge, 3), 0.25);

  EXPECT_STREQ(staleness_function_name(StalenessFunction::kConstant), "constant");
  EXPECT_STREQ(staleness_function_name(StalenessFunction::kPolynomial), "polynomial");
  EXPECT_STREQ(staleness_function_name(StalenessFunction::kHinge), "hinge");
}

TEST(FedBuffOptionsTest, DefaultsAndSetValues) {
  const FedBuffOptions d = parsed(nullptr);
  EXPECT_EQ(d.async.buffer_size, 10);
  EXPECT_EQ(d.async.max_concurrency, 20);
  EXPECT_EQ(d.async.max_staleness, 10);
  EXPECT_EQ(d.staleness.function, StalenessFunction::kPolynomial);
  EXPECT_EQ(d.staleness.exponent, 0.5);
  EXPECT_EQ(d.server_lr, 1.0);
  EXPECT_EQ(d.server_momentum, 0.0);
  EXPECT_FALSE(d.weight_by_examples);
  EXPECT_EQ(d.round.fraction_evaluate, 1.0);
  EXPECT_EQ(d.round.min_evaluate_clients, 0);

  const FedBuffOptions s = parsed({{"name", "fedbuff"},
                                   {"buffer_size", 3},
                                   {"max_concurrency", 7},
                                   {"max_staleness", 0},
                                   {"staleness", {{"function", "hinge"}, {"a", 2}, {"b", 1.5}}},
                                   {"server_lr", 0.25},
                                   {"server_momentum", 0.9},
                                   {"weight_by_examples", true},
                                   {"fraction_evaluate", 0.5},
                                   {"min_evaluate_clients", 2}});
  EXPECT_EQ(s.async.buffer_size, 3);
  EXPECT_EQ(s.async.max_concurrency, 7);
  EXPECT_EQ(s.async.max_staleness, 0);
  EXPECT_EQ(s.staleness.function, StalenessFunction::kHinge);
  EXPECT_EQ(s.staleness.a, 2.0);
  EXPECT_EQ(s.staleness.b, 1.5);
  EXPECT_EQ(s.server_lr, 0.25);
  EXPECT_EQ(s.server_momentum, 0.9);
  EXPECT_TRUE(s.weight_by_examples);
  EXPECT_EQ(s.round.fraction_evaluate, 0.5);
  EXPECT_EQ(s.round.min_evaluate_clients, 2);

  EXPECT_EQ(parsed({{"staleness", "constant"}}).staleness.function, StalenessFunction::kConstant);
  const FedBuffOptions poly = parsed({{"staleness", {{"exponent", 1}}}});  // function defaults
  EXPECT_EQ(poly.staleness.function, StalenessFunction::kPolynomial);
  EXPECT_EQ(poly.staleness.exponent, 1.0);
  EXPECT_EQ(parsed({{"staleness", "hinge"}}).staleness.a, 10.0);
}

TEST(FedBuffOptionsTest, BadValuesAndSynchronousKeysAreRefusedNamingThePath) {
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"buffer_size", 0}}, "config.strategy.buffer_size: must be >= 1 (got 0)"},
      {{{"max_concurrency", 0}}, "config.strategy.max_concurrency: must be >= 1"},
      {{{"max_staleness", -1}}, "config.strategy.max_staleness: must be >= 0"},
      {{{"buffer_size", 1.5}}, "config.strategy.buffer_size"},
      {{{"staleness", {{"function", "linear"}}}},
       "config.strategy.staleness.function: must be one of constant, polynomial, hinge"},
      {{{"staleness", "exponential"}}, "config.strategy.staleness.function"},
      {{{"staleness", {{"exponent", -0.5}}}}, "config.strategy.staleness.exponent: must be >= 0"},
      {{{"staleness", {{"function", "polynomial"}, {"a", 1}}}},
       "config.strategy.staleness.a: unknown key"},
      {{{"staleness", {{"function", "constant"}, {"exponent", 1}}}},
       "config.strategy.staleness.exponent: unknown key"},
      {{{"staleness", {{"function", "hinge"}, {"b", -1}}}},
       "config.strategy.staleness.b: must be >= 0"},
      {{{"staleness", {{"function", "hinge"}, {"a", -1}}}},
       "config.strategy.staleness.a: must be >= 0"},
      {{{"staleness", 5}}, "config.strategy.staleness: expected an object"},
      {{{"server_lr", 0}}, "config.strategy.server_lr: must be > 0"},
      {{{"server_momentum", 1}}, "config.strategy.server_momentum: must be in [0, 1)"},
      {{{"server_momentum", -0.1}}, "config.strategy.server_momentum: must be in [0, 1)"},
      {{{"weight_by_examples", "yes"}}, "config.strategy.weight_by_examples"},
      {{{"fraction_evaluate", 2}}, "config.strategy.fraction_evaluate: must be in [0, 1]"},
      {{{"min_evaluate_clients", -1}}, "config.strategy.min_evaluate_clients: must be >= 0"},
      {{{"robust", {{"method", "median"}}}}, "config.strategy.robust: not supported by fedbuff"},
      {{{"momentum", 0.9}}, "config.strategy.momentum: unknown key"},
      {nlohmann::json::array(), "config.strategy"}};
  expect_parse_refuses(cases, parse_fedbuff_options, make_fedbuff_server, make_fedbuff_client);
}

TEST(FedBuffOptionsTest, TheSynchronousRoundKeysOfASharedConfigAreIgnored) {
  Result<FedBuffOptions> options = parse_fedbuff_options(
      {{"fraction_fit", 0.2}, {"min_fit_clients", 2}, {"accept_failures", true}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_EQ(options->async.max_concurrency, 20);
}

TEST(FedBuffOptionsTest, RegistryEntryMakesAnAsyncServerAndFedAvgsClient) {
  register_builtin_strategies();
  auto entry = find_strategy("fedbuff");
  ASSERT_TRUE(entry.ok()) << entry.status().to_string();
  EXPECT_EQ(entry->name, "fedbuff");
  EXPECT_NE(entry->description.find("FedBuff"), std::string::npos);
  auto server = entry->server({{"buffer_size", 4}, {"max_concurrency", 8}, {"max_staleness", 2}});
  ASSERT_TRUE(server.ok()) << server.status().to_string();
  auto* async = dynamic_cast<AsyncStrategy*>(server->get());  // what the engine looks for
  ASSERT_NE(async, nullptr);
  EXPECT_EQ(async->async_options().buffer_size, 4);
  EXPECT_EQ(async->async_options().max_concurrency, 8);
  EXPECT_EQ(async->async_options().max_staleness, 2);
  EXPECT_EQ(async->version(), 0);
  EXPECT_EQ(async->buffered(), 0);
  EXPECT_EQ((*server)->global_bundle(), nullptr);
  auto client = entry->client(nlohmann::json::object());
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  EXPECT_NE(dynamic_cast<FedAvgClient*>(client->get()), nullptr);
  EXPECT_FALSE(entry->client({{"buffer_size", 0}}).ok());
}

// ---------------------------------------------------------------------------------------------
// Server steps by hand on a tiny bundle

const char kWeight[] = "layer.weight";           // float32 [2,2]
const char kBias[] = "layer.bias";               // float32 [2]
const char kRunVar[] = "bn.running_var";         // float32 [2]
const char kCount[] = "bn.num_batches_tracked";  // int64 scalar: keeps the global's value

struct Values {
  std::vector<float> weight, bias, run_var;
  int64_t count = 0;
};

TensorBundle bundle_of(const Values& v) {
  TensorBundle b;
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<float>(kWeight, DType::kFloat32, {2, 2}, v.weight)).ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values<float>(kBias, DType::kFloat32, {2}, v.bias)).ok());
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

int64_t count_of(const TensorBundle& b) {
  const NamedTensor* t = b.find(kCount);
  EXPECT_NE(t, nullptr);
  return t == nullptr ? -1 : t->data<int64_t>()[0];
}

// Dyadic values throughout: every expected result below is exact in float32.
const Values kGlobal = {{0.5f, -0.25f, 1.0f, 0.0f}, {0.125f, -2.0f}, {1.0f, 0.25f}, 4};
// Client 1's model, trained from kGlobal: Δ1 = y1 − G
//   weight (0.5, -0.25, 0, 0.25), bias (-0.125, 1), run_var (-0.5, 0.5)
const Values kY1 = {{1.0f, -0.5f, 1.0f, 0.25f}, {0.0f, -1.0f}, {0.5f, 0.75f}, 10};
// Client 2's model.
const Values kY2 = {{1.0f, 0.5f, 0.0f, -0.5f}, {0.5f, -1.0f}, {0.5f, 3.0f}, 100};
// An older global model (version 0 when the server is at version 3), client 2's base in the
// staleness test: Δ2 = y2 − B = weight (1, 0.5, -0.5, -1), bias (0.5, -1), run_var (-0.5, 2).
const Values kOldBase = {{0.0f, 0.0f, 0.5f, 0.5f}, {0.0f, 0.0f}, {1.0f, 1.0f}, 7};

ClientUpdate update_of(const std::string& client, int64_t examples, const TensorBundle& bundle,
                       double loss) {
  ClientUpdate u;
  u.client_id = client;
  u.num_examples = examples;
  u.bundle = bundle.clone();
  u.metrics = {{"loss", loss}, {"steps", 1}};
  return u;
}

class FedBuffTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    run_ = run_context(config_);
  }

  // A server of `options` at `version` whose global model is `global` (loaded as a state: the
  // state of a fedbuff server initialised with the tiny CNN, its tensors replaced by `global`'s).
  std::unique_ptr<FedBuffServer> server_on(const nlohmann::json& options,
                                           const TensorBundle& global, int64_t version = 0) {
    FedBuffServer donor(parsed(options));
    Rng rng(1);
    EXPECT_TRUE(donor.initialize(run_, rng).ok());
    auto state = donor.save_state();
    EXPECT_TRUE(state.ok()) << state.status().to_string();
    TensorBundle tiny = global.clone();
    nlohmann::json meta = state->metadata();
    meta["version"] = version;
    EXPECT_TRUE(tiny.set_metadata(meta).ok());
    auto server = std::make_unique<FedBuffServer>(parsed(options));
    const Status loaded = server->load_state(std::move(tiny));
    EXPECT_TRUE(loaded.ok()) << loaded.to_string();
    EXPECT_EQ(server->version(), version);
    return server;
  }

  RunConfig config_;
  RunContext run_;
};

TEST_F(FedBuffTest, StaleUpdateIsWeightedAndTheMeanScaledByTheServerRate) {
  // K = 2, default staleness (1/√(1+τ)): client 1 fresh (τ = 0, s = 1), client 2 from three
  // versions ago (τ = 3, s = 0.5); η_g = 0.5. x = G + 0.5 · (Δ1 + 0.5·Δ2) / 2:
  //   weight: (Δ1 + 0.5Δ2) = (1, 0, -0.25, -0.25) -> G + (0.25, 0, -0.0625, -0.0625)
  //   bias:   (0.125, 0.5)                        -> G + (0.03125, 0.125)
  //   run_var: (-0.75, 1.5)                       -> G + (-0.1875, 0.375)
  auto server = server_on({{"buffer_size", 2}, {"server_lr", 0.5}}, bundle_of(kGlobal),
                          /*version=*/3);
  const TensorBundle global = server->global_bundle()->clone();
  ASSERT_TRUE(server->buffer_update(update_of("a", 3, bundle_of(kY1), 1.0), global, 0).ok());
  EXPECT_EQ(server->buffered(), 1);
  const Status second =
      server->buffer_update(update_of("b", 5, bundle_of(kY2), 2.0), bundle_of(kOldBase), 3);
  ASSERT_TRUE(second.ok()) << second.to_string();
  EXPECT_EQ(server->buffered(), 2);
  EXPECT_TRUE(server->global_bundle()->bitwise_equal(global));  // nothing applied yet

  auto metrics = server->apply_buffer(/*step=*/4);
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  const TensorBundle& x = *server->global_bundle();
  EXPECT_EQ(floats(x, kWeight), std::vector<float>({0.75f, -0.25f, 0.9375f, -0.0625f}));
  EXPECT_EQ(floats(x, kBias), std::vector<float>({0.15625f, -1.875f}));
  EXPECT_EQ(floats(x, kRunVar), std::vector<float>({0.8125f, 0.625f}));
  EXPECT_EQ(count_of(x), 4);  // the global's counter, not the clients'
  EXPECT_EQ(x.metadata()["strategy"], "fedbuff");
  EXPECT_EQ(x.metadata()["round"], 4);

  EXPECT_EQ(server->version(), 4);
  EXPECT_EQ(server->buffered(), 0);
  const nlohmann::json& m = *metrics;
  EXPECT_EQ(m["updates"], 2);
  EXPECT_EQ(m["examples"], 8);
  EXPECT_DOUBLE_EQ(m["loss"].get<double>(), (3 * 1.0 + 5 * 2.0) / 8);
  EXPECT_DOUBLE_EQ(m["staleness"]["mean"].get<double>(), 1.5);
  EXPECT_EQ(m["staleness"]["max"], 3);
  EXPECT_DOUBLE_EQ(m["staleness"]["mean_weight"].get<double>(), 0.75);
  EXPECT_EQ(m["version"], 4);
  EXPECT_EQ(m["batchnorm_variances_clamped"], 0);

  // The state records the version; no momentum without server_momentum.
  auto state = server->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();
  EXPECT_EQ(state->metadata()["version"], 4);
  EXPECT_EQ(state->names(), std::vector<std::string>({kWeight, kBias, kRunVar, kCount}));
}

TEST_F(FedBuffTest, WeightByExamplesNormalisesByTheExamplesElseByTheCount) {
  // Both fresh (τ = 0), η_g = 1, from G: 1 and 3 examples.
  //   weight_by_examples: x = G + (1·Δ1 + 3·Δ2') / 4 = (1·y1 + 3·y2) / 4, the FedAvg mean;
  //   default:            x = G + (Δ1 + Δ2') / 2 = (y1 + y2) / 2.
  for (bool by_examples : {true, false}) {
    SCOPED_TRACE(by_examples ? "weight_by_examples" : "plain mean");
    auto server =
        server_on({{"buffer_size", 2}, {"weight_by_examples", by_examples}}, bundle_of(kGlobal));
    const TensorBundle global = server->global_bundle()->clone();
    ASSERT_TRUE(server->buffer_update(update_of("a", 1, bundle_of(kY1), 0.5), global, 0).ok());
    ASSERT_TRUE(server->buffer_update(update_of("b", 3, bundle_of(kY2), 0.5), global, 0).ok());
    auto metrics = server->apply_buffer(1);
    ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
    const TensorBundle& x = *server->global_bundle();
    if (by_examples) {
      EXPECT_EQ(floats(x, kWeight), std::vector<float>({1.0f, 0.25f, 0.25f, -0.3125f}));
      EXPECT_EQ(floats(x, kBias), std::vector<float>({0.375f, -1.0f}));
      EXPECT_EQ(floats(x, kRunVar), std::vector<float>({0.5f, 2.4375f}));
    } else {
      EXPECT_EQ(floats(x, kWeight), std::vector<float>({1.0f, 0.0f, 0.5f, -0.125f}));
      EXPECT_EQ(floats(x, kBias), std::vector<float>({0.25f, -1.0f}));
      EXPECT_EQ(floats(x, kRunVar), std::vector<float>({0.5f, 1.875f}));
    }
    EXPECT_EQ(count_of(x), 4);
    EXPECT_EQ((*metrics)["examples"], 4);
    EXPECT_EQ(server->version(), 1);
  }
}

// The momentum test's updates: `base` plus `dw` on the weight (bias and running variance as in
// `base`), so only the weight moves.
TensorBundle weight_step(const TensorBundle& base, const std::vector<float>& dw) {
  Values v;
  v.weight = floats(base, kWeight);
  for (size_t i = 0; i < v.weight.size(); ++i) v.weight[i] += dw[i];
  v.bias = floats(base, kBias);
  v.run_var = floats(base, kRunVar);
  v.count = count_of(base) + 1;
  return bundle_of(v);
}

// Step 1 of the momentum test on `server` (version 0 at G): y1 and y2, both fresh.
void momentum_step1(FedBuffServer& server) {
  const TensorBundle g = server.global_bundle()->clone();
  ASSERT_TRUE(
      server
          .buffer_update(update_of("a", 2, weight_step(g, {0.5f, -0.25f, 0.0f, 0.25f}), 1.0), g, 0)
          .ok());
  ASSERT_TRUE(
      server
          .buffer_update(update_of("b", 2, weight_step(g, {0.5f, 0.75f, -1.0f, -0.5f}), 1.0), g, 0)
          .ok());
  auto m = server.apply_buffer(1);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
}

// Step 2 on `server` (version 1 at x1): client c fresh from x1, client d from G (τ = 1).
Result<nlohmann::json> momentum_step2(FedBuffServer& server, const TensorBundle& g) {
  const TensorBundle x1 = server.global_bundle()->clone();
  FEDTAIL_RETURN_IF_ERROR(server.buffer_update(
      update_of("c", 2, weight_step(x1, {0.25f, 0.25f, 0.25f, 0.25f}), 1.0), x1, 0));
  FEDTAIL_RETURN_IF_ERROR(server.buffer_update(
      update_of("d", 2, weight_step(g, {1.0f, -1.0f, 0.5f, 0.0f}), 1.0), g, 1));
  return server.apply_buffer(2);
}

const nlohmann::json kMomentumOptions = {
    {"buffer_size", 2},
    {"server_momentum", 0.5},
    {"staleness", {{"function", "hinge"}, {"a", 1}, {"b", 0}}}};

TEST_F(FedBuffTest, MomentumCarriesOverTwoSteps) {
  // β = 0.5, η_g = 1, hinge a = 1, b = 0 (s(0) = 1, s(1) = 0.5).
  // Step 1: Δ̄1 = ((0.5,-0.25,0,0.25) + (0.5,0.75,-1,-0.5)) / 2 = (0.5, 0.25, -0.5, -0.125)
  //         m1 = Δ̄1; x1 = G + m1 = (1, 0, 0.5, -0.125).
  // Step 2: Δ̄2 = ((0.25,0.25,0.25,0.25) + 0.5·(1,-1,0.5,0)) / 2 = (0.375, -0.125, 0.25, 0.125)
  //         m2 = 0.5·m1 + Δ̄2 = (0.625, 0, 0, 0.0625); x2 = x1 + m2 = (1.625, 0, 0.5, -0.0625).
  auto server = server_on(kMomentumOptions, bundle_of(kGlobal));
  const TensorBundle g = server->global_bundle()->clone();
  momentum_step1(*server);
  EXPECT_EQ(floats(*server->global_bundle(), kWeight),
            std::vector<float>({1.0f, 0.0f, 0.5f, -0.125f}));
  auto s1 = server->save_state();
  ASSERT_TRUE(s1.ok()) << s1.status().to_string();
  EXPECT_EQ(floats(*s1, "momentum/layer.weight"),
            std::vector<float>({0.5f, 0.25f, -0.5f, -0.125f}));

  auto m2 = momentum_step2(*server, g);
  ASSERT_TRUE(m2.ok()) << m2.status().to_string();
  const TensorBundle& x2 = *server->global_bundle();
  EXPECT_EQ(floats(x2, kWeight), std::vector<float>({1.625f, 0.0f, 0.5f, -0.0625f}));
  EXPECT_EQ(floats(x2, kBias), kGlobal.bias);  // no change: stays, momentum 0
  EXPECT_EQ(floats(x2, kRunVar), kGlobal.run_var);
  EXPECT_EQ(count_of(x2), 4);
  EXPECT_EQ(server->version(), 2);
  EXPECT_EQ((*m2)["version"], 2);
  EXPECT_DOUBLE_EQ((*m2)["staleness"]["mean"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ((*m2)["staleness"]["mean_weight"].get<double>(), 0.75);

  auto s2 = server->save_state();
  ASSERT_TRUE(s2.ok()) << s2.status().to_string();
  EXPECT_EQ(s2->metadata()["version"], 2);
  EXPECT_EQ(floats(*s2, "momentum/layer.weight"),
            std::vector<float>({0.625f, 0.0f, 0.0f, 0.0625f}));
  EXPECT_EQ(floats(*s2, "momentum/layer.bias"), std::vector<float>({0.0f, 0.0f}));
  EXPECT_EQ(floats(*s2, "momentum/bn.running_var"), std::vector<float>({0.0f, 0.0f}));
  EXPECT_EQ(s2->find("momentum/bn.num_batches_tracked"), nullptr);  // not floating-point
}

TEST_F(FedBuffTest, ResumeFromASavedStateIsBitExact) {
  // Non-dyadic settings (polynomial weights, η_g 0.3) so that rounding matters.
  const nlohmann::json options = {{"buffer_size", 2},
                                  {"server_momentum", 0.9},
                                  {"server_lr", 0.3},
                                  {"staleness", {{"function", "polynomial"}, {"exponent", 0.7}}}};
  auto a = server_on(options, bundle_of(kGlobal));
  const TensorBundle g = a->global_bundle()->clone();
  momentum_step1(*a);
  auto saved = a->save_state();
  ASSERT_TRUE(saved.ok()) << saved.status().to_string();

  FedBuffServer b(parsed(options));
  const Status loaded = b.load_state(saved->clone());
  ASSERT_TRUE(loaded.ok()) << loaded.to_string();
  EXPECT_EQ(b.version(), 1);
  EXPECT_EQ(b.buffered(), 0);
  auto resaved = b.save_state();
  ASSERT_TRUE(resaved.ok());
  EXPECT_TRUE(resaved->bitwise_equal(*saved));

  auto ma = momentum_step2(*a, g);
  auto mb = momentum_step2(b, g);
  ASSERT_TRUE(ma.ok()) << ma.status().to_string();
  ASSERT_TRUE(mb.ok()) << mb.status().to_string();
  EXPECT_EQ(*ma, *mb);
  EXPECT_TRUE(a->global_bundle()->bitwise_equal(*b.global_bundle()));
  auto sa = a->save_state();
  auto sb = b.save_state();
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_TRUE(sa->bitwise_equal(*sb));
  EXPECT_EQ(sb->metadata()["version"], 2);
  // The second step changed the saved momentum.
  EXPECT_NE(floats(*sb, "momentum/layer.weight"), floats(*saved, "momentum/layer.weight"));
}

TEST_F(FedBuffTest, BadStatesAreRefusedAndLeaveTheServerUnchanged) {
  auto server = server_on(kMomentumOptions, bundle_of(kGlobal));
  momentum_step1(*server);
  auto good = server->save_state();
  ASSERT_TRUE(good.ok());

  struct Case {
    std::string what;
    std::function<void(TensorBundle*)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"no version", [](TensorBundle* s) { s->mutable_metadata().erase("version"); },
       "\"version\" must be an integer >= 0"},
      {"negative version", [](TensorBundle* s) { s->mutable_metadata()["version"] = -1; },
       "\"version\" must be an integer >= 0"},
      {"momentum missing",
       [](TensorBundle* s) {
         *s = testing::edited_bundle(*s, "momentum/layer.bias", std::nullopt);
       },
       "\"momentum/layer.bias\" is missing"},
      {"momentum at version 0", [](TensorBundle* s) { s->mutable_metadata()["version"] = 0; },
       "present before any step"},
      {"momentum of the wrong shape",
       [](TensorBundle* s) {
         *s = testing::edited_bundle(*s, "momentum/layer.bias",
                                     testing::f32("momentum/layer.bias", {0, 0, 0}));
       },
       "not the momentum of a floating-point global tensor"},
      {"momentum of a counter",
       [](TensorBundle* s) {
         *s =
             testing::edited_bundle(*s, "",
                                    NamedTensor::from_values<int64_t>(
                                        "momentum/bn.num_batches_tracked", DType::kInt64, {}, {0}));
       },
       "momentum/bn.num_batches_tracked"},
      {"unknown extra tensor",
       [](TensorBundle* s) {
         *s = testing::edited_bundle(*s, "", testing::f32("velocity/x", {0}));
       },
       "unexpected tensor \"velocity/x\""},
      {"another strategy's state",
       [](TensorBundle* s) { s->mutable_metadata()["strategy"] = "fedavg"; },
       "saved by strategy \"fedavg\""}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    TensorBundle state = good->clone();
    c.edit(&state);
    const Status s = server->load_state(std::move(state));
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_TRUE(contains(s, c.message)) << s.message();
    EXPECT_EQ(server->version(), 1);
    auto again = server->save_state();
    ASSERT_TRUE(again.ok());
    EXPECT_TRUE(again->bitwise_equal(*good));
  }

  // Momentum saved, loaded into a server without it.
  FedBuffServer plain(parsed({{"buffer_size", 2}}));
  const Status s = plain.load_state(good->clone());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(s, "server_momentum is 0")) << s.message();

  // A fedavg server refuses fedbuff's state.
  FedAvgServer fedavg("fedavg", RoundOptions());
  const Status other = fedavg.load_state(good->clone());
  EXPECT_EQ(other.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(other, "saved by strategy \"fedbuff\"")) << other.message();
}

TEST_F(FedBuffTest, RefusedUpdatesLeaveNoTrace) {
  auto server = server_on({{"buffer_size", 1}, {"max_staleness", 2}}, bundle_of(kGlobal),
                          /*version=*/1);
  const TensorBundle g = server->global_bundle()->clone();
  struct Case {
    std::string what;
    ClientUpdate update;
    const TensorBundle* base;
    int staleness;
    std::string message;
  };
  const TensorBundle bad_shape =
      testing::edited_bundle(bundle_of(kY1), kBias, testing::f32(kBias, {1, 2, 3}));
  const TensorBundle missing = testing::edited_bundle(bundle_of(kY1), kRunVar, std::nullopt);
  std::vector<Case> cases;
  cases.push_back({"shape", update_of("x", 1, bad_shape, 1), &g, 0, "tensor \"layer.bias\""});
  cases.push_back({"missing tensor", update_of("x", 1, missing, 1), &g, 0, "bn.running_var"});
  cases.push_back({"no examples", update_of("x", 0, bundle_of(kY1), 1), &g, 0, "num_examples"});
  cases.push_back(
      {"too stale", update_of("x", 1, bundle_of(kY1), 1), &g, 3, "staleness 3 outside [0, 1]"});
  cases.push_back(
      {"staler than the version", update_of("x", 1, bundle_of(kY1), 1), &g, 2, "model version 1"});
  cases.push_back(
      {"negative staleness", update_of("x", 1, bundle_of(kY1), 1), &g, -1, "staleness -1"});
  cases.push_back({"base of another shape", update_of("x", 1, bundle_of(kY1), 1), &bad_shape, 0,
                   "its base model"});
  for (Case& c : cases) {
    SCOPED_TRACE(c.what);
    const Status s = server->buffer_update(std::move(c.update), *c.base, c.staleness);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_TRUE(contains(s, c.message)) << s.message();
    EXPECT_TRUE(contains(s, "client x")) << s.message();
    EXPECT_EQ(server->buffered(), 0);
  }
  auto empty = server->apply_buffer(2);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(contains(empty.status(), "empty buffer")) << empty.status().message();
  EXPECT_EQ(server->version(), 1);

  // One good update, η_g 1, fresh: the new model is that update, bit for bit (but the counter).
  ASSERT_TRUE(server->buffer_update(update_of("x", 1, bundle_of(kY1), 1), g, 0).ok());
  ASSERT_TRUE(server->apply_buffer(2).ok());
  const TensorBundle& x = *server->global_bundle();
  EXPECT_EQ(floats(x, kWeight), kY1.weight);
  EXPECT_EQ(floats(x, kBias), kY1.bias);
  EXPECT_EQ(floats(x, kRunVar), kY1.run_var);
  EXPECT_EQ(count_of(x), kGlobal.count);
  EXPECT_EQ(server->version(), 2);
}

TEST_F(FedBuffTest, NegativeRunningVariancesAreClampedAndCounted) {
  // η_g = 3 triples client 1's run_var change (-0.5, 0.5): 1 − 1.5 < 0 is clamped to 0, and
  // 0.25 + 1.5 = 1.75.
  auto server = server_on({{"buffer_size", 1}, {"server_lr", 3}}, bundle_of(kGlobal));
  const TensorBundle g = server->global_bundle()->clone();
  ASSERT_TRUE(server->buffer_update(update_of("a", 1, bundle_of(kY1), 1), g, 0).ok());
  auto m = server->apply_buffer(1);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(floats(*server->global_bundle(), kRunVar), std::vector<float>({0.0f, 1.75f}));
  EXPECT_EQ((*m)["batchnorm_variances_clamped"], 1);
}

TEST_F(FedBuffTest, ANonFiniteStepKeepsModelVersionAndBuffer) {
  auto server = server_on({{"buffer_size", 1}, {"server_lr", 1e300}}, bundle_of(kGlobal));
  const TensorBundle g = server->global_bundle()->clone();
  ASSERT_TRUE(server->buffer_update(update_of("a", 1, bundle_of(kY1), 1), g, 0).ok());
  auto m = server->apply_buffer(1);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(contains(m.status(), "non-finite")) << m.status().message();
  EXPECT_TRUE(contains(m.status(), kWeight)) << m.status().message();
  EXPECT_TRUE(server->global_bundle()->bitwise_equal(g));
  EXPECT_EQ(server->version(), 0);
  EXPECT_EQ(server->buffered(), 1);
}

TEST_F(FedBuffTest, SynchronousPathAndMeanAggregationAreRefused) {
  FedBuffServer server(parsed({}));
  const ClientInfo info{"client-0", 10, "cnn"};
  Rng rng(3);
  // Before initialize.
  EXPECT_EQ(server.configure_async_fit(info, rng).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      server.buffer_update(update_of("a", 1, bundle_of(kY1), 1), bundle_of(kGlobal), 0).code(),
      StatusCode::kFailedPrecondition);
  EXPECT_EQ(server.apply_buffer(1).status().code(), StatusCode::kFailedPrecondition);

  ASSERT_TRUE(server.initialize(run_, rng).ok());
  auto fit = server.configure_fit(1, {info}, rng);
  ASSERT_FALSE(fit.ok());
  EXPECT_EQ(fit.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(contains(fit.status(), "fedbuff is asynchronous")) << fit.status().message();
  auto agg = server.begin_aggregation(1);
  ASSERT_FALSE(agg.ok());
  EXPECT_EQ(agg.status().code(), StatusCode::kFailedPrecondition);
  const Status mean = server.supports_mean_aggregation();
  EXPECT_EQ(mean.code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(contains(mean, "synchronous rounds")) << mean.message();

  auto task = server.configure_async_fit(info, rng);
  ASSERT_TRUE(task.ok()) << task.status().to_string();
  EXPECT_EQ(task->client_id, "client-0");
  EXPECT_EQ(task->bundle, server.global_bundle());
  EXPECT_EQ(task->expected_update, server.global_bundle());
  EXPECT_EQ(task->config, nlohmann::json::object());
}

// ---------------------------------------------------------------------------------------------
// A real model

TEST_F(FedBuffTest, ServerStepsOnTheTinyCnnBumpTheVersionAndKeepCounters) {
  auto made = make_fedbuff_server({{"buffer_size", 2}, {"server_momentum", 0.5}});
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  auto* server = dynamic_cast<FedBuffServer*>(made->get());
  ASSERT_NE(server, nullptr);
  Rng init = Rng::derive(config_.seed, "init");
  ASSERT_TRUE(server->initialize(run_, init).ok());
  auto client = make_fedbuff_client({{"buffer_size", 2}, {"server_momentum", 0.5}});
  ASSERT_TRUE(client.ok());
  std::vector<SimClient> clients = sim_clients(config_, 3);
  const TensorBundle initial = server->global_bundle()->clone();

  // Client 2 trains on version 0 throughout: its update arrives at step 2 with staleness 1.
  std::shared_ptr<const TensorBundle> v0 = server->global_bundle();
  auto late = fit_client(**client, config_, clients, 2, *v0);
  ASSERT_TRUE(late.ok()) << late.status().to_string();
  for (int step = 1; step <= 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    std::shared_ptr<const TensorBundle> base = server->global_bundle();
    for (int k = 0; k < 2; ++k) {
      if (step == 2 && k == 1) {
        ClientUpdate u;
        u.client_id = clients[2].id;
        u.num_examples = late->num_examples;
        u.bundle = late->update.clone();
        u.metrics = late->metrics;
        const Status s = server->buffer_update(std::move(u), *v0, /*staleness=*/1);
        ASSERT_TRUE(s.ok()) << s.to_string();
        continue;
      }
      Rng rng(static_cast<uint64_t>(10 * step + k));
      auto task = server->configure_async_fit({clients[k].id, clients[k].train.size(), "cnn"}, rng);
      ASSERT_TRUE(task.ok()) << task.status().to_string();
      auto out = fit_client(**client, config_, clients, k, *task->bundle, step);
      ASSERT_TRUE(out.ok()) << out.status().to_string();
      ASSERT_TRUE(check_compatible(out->update, *task->expected_update).ok());
      ClientUpdate u;
      u.client_id = clients[k].id;
      u.num_examples = out->num_examples;
      u.bundle = std::move(out->update);
      u.metrics = out->metrics;
      const Status s = server->buffer_update(std::move(u), *base, 0);
      ASSERT_TRUE(s.ok()) << s.to_string();
    }
    auto m = server->apply_buffer(step);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    EXPECT_EQ((*m)["version"], step);
    EXPECT_EQ((*m)["updates"], 2);
    EXPECT_TRUE((*m)["loss"].is_number()) << m->dump();
    EXPECT_EQ((*m)["staleness"]["max"], step == 2 ? 1 : 0);
    EXPECT_EQ(server->version(), step);
    EXPECT_EQ(server->global_bundle()->metadata()["round"], step);
    EXPECT_TRUE(check_finite(*server->global_bundle()).ok());
  }
  // Counters keep the initial model's value; the weights moved.
  const TensorBundle& x = *server->global_bundle();
  bool moved = false;
  for (const NamedTensor& t : initial) {
    const NamedTensor* now = x.find(t.name());
    ASSERT_NE(now, nullptr) << t.name();
    if (!dtype_is_floating(t.dtype())) {
      EXPECT_TRUE(now->bitwise_equal(t)) << t.name();
    } else if (!now->bitwise_equal(t)) {
      moved = true;
    }
  }
  EXPECT_TRUE(moved);
}

}  // namespace
}  // namespace fedtail::strategies

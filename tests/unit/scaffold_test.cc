// SCAFFOLD: options, K_eff (against LibTorch's momentum SGD), the corrected loss's gradient, one
// client step by hand (the step along g + c − c_i, and option II giving back g), option II over
// several momentum steps, the round-1 update (no correction) against FedAvg's, the task bundle
// and expected_update against the upload, the server's c update with |S|/N and its η_g step on
// hand-made updates, refused updates, client refusals, a two-round run, and resume bit for bit.
#include "strategies/scaffold/scaffold.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/classification_loss.h"
#include "common/learning/torch_bundle.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/dtype.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::contains;
using testing::copy_state;
using testing::edited_bundle;
using testing::expect_factories_refuse;
using testing::expect_near;
using testing::expect_registry_entry;
using testing::fit_client;
using testing::infos;
using testing::inputs;
using testing::one_step_config;
using testing::run_context;
using testing::run_round;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;

const char kWeight[] = "heads.classifier.weight";
const char kRunningMean[] = "backbone.bn1.running_mean";
const char kBatchesTracked[] = "backbone.bn1.num_batches_tracked";

std::string ctl(const std::string& name) { return kScaffoldControlPrefix + name; }
std::string dlt(const std::string& name) { return kScaffoldDeltaPrefix + name; }
std::string own(const std::string& name) { return kScaffoldClientPrefix + name; }

// Tensor `name` of `bundle` as float64 on the CPU (undefined, with a failure, when missing).
torch::Tensor at(const TensorBundle& bundle, const std::string& name) {
  const NamedTensor* t = bundle.find(name);
  if (t == nullptr) {
    ADD_FAILURE() << "no tensor " << name;
    return torch::Tensor();
  }
  return to_torch(*t).to(torch::kFloat64);
}

double max_abs(const torch::Tensor& t) { return t.abs().max().item<double>(); }

// A float32 tensor of `shape`: scale · sin(phase + 0, 1, 2, …), different for every element.
torch::Tensor pattern(const std::vector<int64_t>& shape, double scale, double phase) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return torch::arange(n, torch::kFloat64)
      .add(phase)
      .sin()
      .mul(scale)
      .to(torch::kFloat32)
      .view(shape);
}

// One tensor `prefix + p` per name p, shaped like p in `global`, valued pattern(scale, phase + i).
TensorBundle per_parameter(const TensorBundle& global, const std::vector<std::string>& names,
                           const std::string& prefix, double scale, double phase) {
  TensorBundle out;
  for (size_t i = 0; i < names.size(); ++i) {
    const NamedTensor* p = global.find(names[i]);
    EXPECT_NE(p, nullptr) << names[i];
    if (p == nullptr) continue;
    auto t = from_torch(prefix + names[i], pattern(p->shape(), scale, phase + 3.0 * i));
    EXPECT_TRUE(t.ok());
    EXPECT_TRUE(out.add(std::move(t).value()).ok());
  }
  return out;
}

// x's tensors followed by the tensors of `extra` (a task bundle: x and c).
TensorBundle combined(const TensorBundle& global, const TensorBundle& extra) {
  TensorBundle out = global.clone();
  for (const NamedTensor& t : extra) EXPECT_TRUE(out.add(t.clone()).ok());
  return out;
}

// An upload for `s`: x's tensors with `shift` added to the floating-point ones, and Δc = `dc`
// for every parameter.
TensorBundle upload(const ScaffoldServer& s, double shift, float dc) {
  const TensorBundle& g = *s.global_bundle();
  TensorBundle out;
  for (const NamedTensor& t : g) {
    if (dtype_is_floating(t.dtype())) {
      EXPECT_TRUE(out.add(from_torch(t.name(), to_torch(t) + shift).value()).ok());
    } else {
      EXPECT_TRUE(out.add(t.clone()).ok());
    }
  }
  for (const std::string& name : s.parameter_names()) {
    const std::vector<int64_t> shape = g.find(name)->shape();
    EXPECT_TRUE(
        out.add(from_torch(dlt(name), torch::full(shape, dc, torch::kFloat32)).value()).ok());
  }
  return out;
}

ClientUpdate update_of(const std::string& client, int64_t examples, TensorBundle bundle) {
  ClientUpdate u;
  u.client_id = client;
  u.num_examples = examples;
  u.bundle = std::move(bundle);
  return u;
}

// ---------------------------------------------------------------------------------------------
// Options

TEST(ScaffoldOptionsTest, DefaultsAndValues) {
  auto o = parse_scaffold_options(nullptr);
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->server_lr, 1.0);
  EXPECT_TRUE(o->effective_steps);
  EXPECT_EQ(o->round.fraction_fit, 1.0);
  EXPECT_EQ(o->round.min_fit_clients, 1);

  auto set = parse_scaffold_options(
      {{"server_lr", 0.5}, {"effective_steps", false}, {"fraction_fit", 0.5}});
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->server_lr, 0.5);
  EXPECT_FALSE(set->effective_steps);
  EXPECT_EQ(set->round.fraction_fit, 0.5);
}

TEST(ScaffoldOptionsTest, BadValuesAndUnknownKeysAreRefusedNamingTheField) {
  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {{{"server_lr", 0}}, "config.strategy.server_lr: must be > 0 (got 0)"},
      {{{"server_lr", -1}}, "config.strategy.server_lr: must be > 0 (got -1)"},
      {{{"server_lr", "1"}}, "config.strategy.server_lr"},
      {{{"effective_steps", 1}}, "config.strategy.effective_steps"},
      {{{"fraction_fit", 0}}, "config.strategy.fraction_fit"},
      {{{"mu", 0.1}}, "config.strategy.mu: unknown key"}};
  expect_factories_refuse(bad, make_scaffold_server, make_scaffold_client);
}

TEST(ScaffoldOptionsTest, RegistryEntryIsNamedScaffold) {
  expect_registry_entry(scaffold_strategy_entry(), "scaffold");
}

// ---------------------------------------------------------------------------------------------
// K_eff and the loss

TEST(ScaffoldEffectiveStepsTest, HandValuesAndLibTorchsMomentumSgd) {
  EXPECT_EQ(effective_steps(5, 0), 5.0);
  EXPECT_EQ(effective_steps(0, 0.9), 0.0);
  EXPECT_EQ(effective_steps(1, 0.9), 1.0);
  EXPECT_DOUBLE_EQ(effective_steps(2, 0.5), 1 + 1.5);
  EXPECT_DOUBLE_EQ(effective_steps(3, 0.5), 1 + 1.5 + 1.75);
  // The closed form (K − μ(1 − μ^K)/(1 − μ)) / (1 − μ) (FedNova's a_i).
  const double mu = 0.9;
  EXPECT_NEAR(effective_steps(10, mu), (10 - mu * (1 - std::pow(mu, 10)) / (1 - mu)) / (1 - mu),
              1e-9);

  // LibTorch's SGD with momentum under a constant gradient g moves w by lr · g · K_eff.
  torch::Tensor w = torch::zeros({1}, torch::kFloat64).requires_grad_(true);
  torch::optim::SGD sgd(std::vector<torch::Tensor>{w}, torch::optim::SGDOptions(0.1).momentum(mu));
  for (int k = 0; k < 7; ++k) {
    sgd.zero_grad();
    (w * 2.0).sum().backward();
    sgd.step();
  }
  EXPECT_NEAR(-w.item<double>() / (0.1 * 2.0), effective_steps(7, mu), 1e-9);
}

TEST(ScaffoldLossTest, ValueIsTheBaseLossAndGradientIsBasePlusCorrection) {
  const RunConfig config = tiny_config();
  Rng init(4);
  Model model = make_model(config.model, init).value();
  model->train();
  const Dataset data = testing::separable(12, /*seed=*/3);
  const torch::Tensor x = inputs(data);
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> corrections;
  for (const auto& p : model->named_parameters()) {
    params.push_back(p.value());
    corrections.push_back(pattern(p.value().sizes().vec(), 0.1, params.size()));
  }
  LossFn corrected = control_corrected_loss(model, ClassificationLoss(), params, corrections);

  auto zero_grads = [&params]() {
    for (torch::Tensor& p : params) {
      if (p.grad().defined()) p.grad().zero_();
    }
  };
  zero_grads();
  torch::Tensor value = corrected(x, data.labels);
  value.backward();
  std::vector<torch::Tensor> with;
  for (torch::Tensor& p : params) with.push_back(p.grad().clone());

  zero_grads();
  torch::Tensor plain = torch::nn::functional::cross_entropy(model->forward(x), data.labels);
  plain.backward();
  EXPECT_NEAR(value.item<double>(), plain.item<double>(), 1e-6);
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_LE(max_abs((with[i] - params[i].grad() - corrections[i]).to(torch::kFloat64)), 1e-6)
        << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Server and client

class ScaffoldTest : public ::testing::Test {
 protected:
  void SetUp() override { use(tiny_config(), 3); }

  void use(const RunConfig& config, int clients) {
    config_ = config;
    clients_ = sim_clients(config_, clients);
    run_ = run_context(config_);
  }

  std::unique_ptr<ScaffoldServer> server(const nlohmann::json& options = nlohmann::json::object()) {
    auto parsed = parse_scaffold_options(options);
    EXPECT_TRUE(parsed.ok()) << parsed.status().to_string();
    auto s = std::make_unique<ScaffoldServer>(parsed.value());
    run_.strategy_config = options;
    Rng rng(11);
    Status status = s->initialize(run_, rng);
    EXPECT_TRUE(status.ok()) << status.to_string();
    return s;
  }

  std::vector<TaskSpec> configure(ScaffoldServer& s, int round,
                                  std::optional<std::vector<ClientInfo>> available = std::nullopt) {
    Rng rng = Rng::derive(config_.seed, "sample", {static_cast<uint64_t>(round)});
    auto tasks = s.configure_fit(round, available ? *available : infos(clients_), rng);
    EXPECT_TRUE(tasks.ok()) << tasks.status().to_string();
    return tasks.ok() ? std::move(tasks).value() : std::vector<TaskSpec>();
  }

  Result<FitOutput> fit(const TensorBundle& bundle, int k,
                        const nlohmann::json& options = nlohmann::json::object(), int round = 1) {
    auto parsed = parse_scaffold_options(options);
    EXPECT_TRUE(parsed.ok());
    ScaffoldClient algorithm(parsed.value());
    return fit_client(algorithm, config_, clients_, k, bundle, round);
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
};

TEST_F(ScaffoldTest, ClientStepIsOneCorrectedSgdStepAndOptionTwoGivesTheGradient) {
  use(one_step_config(), 1);  // one batch of all 32 examples, one plain SGD step, lr 0.1
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  const std::vector<std::string>& names = s->parameter_names();
  const TensorBundle c = per_parameter(global, names, kScaffoldControlPrefix, 0.05, 0.0);
  const TensorBundle ci = per_parameter(global, names, kScaffoldClientPrefix, 0.02, 1.0);
  clients_[0].state.tensors = ci.clone();
  const double lr = config_.local.lr;

  // By hand: g = ∇ CE at x on the batch (autograd), and y = x − lr (g + c − c_i).
  Rng init(999);
  Model ref = make_model(config_.model, init).value();
  ASSERT_TRUE(load_module_state(*ref, global, /*strict=*/true).ok());
  ref->train();
  const Dataset& train = clients_[0].train;
  torch::Tensor loss =
      torch::nn::functional::cross_entropy(ref->forward(inputs(train)), train.labels);
  loss.backward();
  std::map<std::string, torch::Tensor> want;
  std::map<std::string, torch::Tensor> gradient;
  double correction_norm2 = 0;
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : ref->named_parameters()) {
      // c − c_i in float32, as the client computes it.
      const torch::Tensor d = to_torch(*c.find(ctl(p.key()))) - to_torch(*ci.find(own(p.key())));
      correction_norm2 += d.to(torch::kFloat64).pow(2).sum().item<double>();
      gradient[p.key()] = p.value().grad().to(torch::kFloat64);
      want[p.key()] = (p.value() - lr * (p.value().grad() + d)).clone();
    }
    for (const auto& b : ref->named_buffers()) want[b.key()] = b.value().clone();
  }
  ASSERT_EQ(gradient.size(), names.size());

  auto out = fit(combined(global, c), 0);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->metrics["steps"], 1);
  EXPECT_EQ(out->metrics["effective_steps"].get<double>(), 1.0);
  EXPECT_NEAR(out->metrics["loss"].get<double>(), loss.item<double>(), 1e-5);  // the base loss
  EXPECT_NEAR(out->metrics["correction_norm"].get<double>(), std::sqrt(correction_norm2), 1e-9);
  EXPECT_EQ(out->num_examples, train.size());
  expect_near(out->update, want, 2e-5);

  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(clients_[0].state.tensors.contains(own(name)));
    const torch::Tensor next = at(clients_[0].state.tensors, own(name));
    // Option II, K = 1: c_i+ = c_i − c + (x − y)/lr = c_i − c + (g + c − c_i) = g.
    EXPECT_LE(max_abs(next - gradient[name]), 5e-5);
    // The formula itself on the uploaded y, in float64 (up to c_i+'s rounding to float32).
    const torch::Tensor formula =
        at(ci, own(name)) - at(c, ctl(name)) + (at(global, name) - at(out->update, name)) / lr;
    EXPECT_LE(max_abs(next - formula), 1e-6);
    // Δc_i = c_i+ − c_i is uploaded.
    EXPECT_LE(max_abs(at(out->update, dlt(name)) - (next - at(ci, own(name)))), 1e-6);
  }
}

TEST_F(ScaffoldTest, OptionTwoDividesByTheStepsTakenOrTheirMomentumEquivalent) {
  // Client 0 holds 32 examples: 3 epochs of batches of 16 are K = 6 steps of momentum SGD.
  config_.local.epochs = 3;
  config_.local.momentum = 0.9;
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  const std::vector<std::string>& names = s->parameter_names();
  const TensorBundle c = per_parameter(global, names, kScaffoldControlPrefix, 0.05, 0.0);
  const TensorBundle ci = per_parameter(global, names, kScaffoldClientPrefix, 0.02, 1.0);
  const double mu = 0.9;
  const double k_eff = (6 - mu * (1 - std::pow(mu, 6)) / (1 - mu)) / (1 - mu);
  for (bool effective : {true, false}) {
    SCOPED_TRACE(effective ? "effective_steps" : "steps");
    clients_[0].state.tensors = ci.clone();
    auto out = fit(combined(global, c), 0, {{"effective_steps", effective}});
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_EQ(out->metrics["steps"], 6);
    const double k = effective ? k_eff : 6.0;
    EXPECT_NEAR(out->metrics["effective_steps"].get<double>(), k, 1e-9);
    for (const std::string& name : names) {
      SCOPED_TRACE(name);
      const torch::Tensor next = at(clients_[0].state.tensors, own(name));
      const torch::Tensor formula =
          at(ci, own(name)) - at(c, ctl(name)) +
          (at(global, name) - at(out->update, name)) / (k * config_.local.lr);
      EXPECT_LE(max_abs(next - formula), 1e-5);
      EXPECT_LE(max_abs(at(out->update, dlt(name)) - (next - at(ci, own(name)))), 1e-6);
    }
  }
}

TEST_F(ScaffoldTest, WithoutCorrectionTheModelUpdateIsFedAvgsBitForBit) {
  auto s = server();
  const std::vector<TaskSpec> tasks = configure(*s, 1);  // c = 0, and no c_i yet
  ASSERT_FALSE(tasks.empty());
  auto ours = fit(*tasks.front().bundle, 0);
  ASSERT_TRUE(ours.ok()) << ours.status().to_string();
  EXPECT_EQ(ours->metrics["correction_norm"].get<double>(), 0.0);

  FedAvgClient fedavg;
  auto theirs = fit_client(fedavg, config_, clients_, 0, *s->global_bundle());
  ASSERT_TRUE(theirs.ok()) << theirs.status().to_string();
  const std::vector<std::string>& names = s->parameter_names();
  EXPECT_EQ(ours->update.size(), theirs->update.size() + names.size());
  for (const NamedTensor& t : theirs->update) {
    ASSERT_TRUE(ours->update.contains(t.name())) << t.name();
    EXPECT_TRUE(t.bitwise_equal(*ours->update.find(t.name()))) << t.name();
  }
  EXPECT_EQ(ours->metrics["loss"], theirs->metrics["loss"]);
  // c_i was 0: Δc_i = c_i+, which the state now holds for every parameter.
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(clients_[0].state.tensors.contains(own(name)));
    EXPECT_TRUE(
        torch::equal(at(clients_[0].state.tensors, own(name)), at(ours->update, dlt(name))));
  }
}

TEST_F(ScaffoldTest, TasksCarryXAndCAndExpectTheUploadExactly) {
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  const std::vector<std::string>& names = s->parameter_names();
  // The trainable parameters, not the BatchNorm buffers.
  ASSERT_FALSE(names.empty());
  EXPECT_NE(std::find(names.begin(), names.end(), kWeight), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), kRunningMean), names.end());
  EXPECT_EQ(s->control().size(), names.size());

  const std::vector<TaskSpec> tasks = configure(*s, 1);
  ASSERT_EQ(tasks.size(), clients_.size());
  for (const TaskSpec& t : tasks) {
    EXPECT_EQ(t.bundle, tasks.front().bundle);
    EXPECT_EQ(t.expected_update, tasks.front().expected_update);
    ASSERT_NE(t.expected_update, nullptr);
  }
  const TensorBundle& bundle = *tasks.front().bundle;
  const TensorBundle& expected = *tasks.front().expected_update;
  EXPECT_EQ(bundle.size(), global.size() + names.size());
  EXPECT_EQ(expected.size(), global.size() + names.size());
  for (const NamedTensor& t : global) {
    ASSERT_TRUE(bundle.contains(t.name())) << t.name();
    EXPECT_TRUE(t.bitwise_equal(*bundle.find(t.name()))) << t.name();
    EXPECT_TRUE(expected.contains(t.name())) << t.name();
  }
  for (const std::string& name : names) {
    ASSERT_TRUE(bundle.contains(ctl(name))) << name;
    EXPECT_EQ(bundle.find(ctl(name))->shape(), global.find(name)->shape());
    EXPECT_EQ(max_abs(at(bundle, ctl(name))), 0.0);  // c starts at 0
    ASSERT_TRUE(expected.contains(dlt(name))) << name;
    EXPECT_EQ(expected.find(dlt(name))->shape(), global.find(name)->shape());
    EXPECT_FALSE(expected.contains(ctl(name)));
  }

  auto out = fit(bundle, 0);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  const Status compatible = check_compatible(out->update, expected);
  EXPECT_TRUE(compatible.ok()) << compatible.to_string();

  // Evaluation and global_bundle() are the plain model.
  Rng rng(5);
  auto eval = s->configure_evaluate(1, infos(clients_), rng);
  ASSERT_TRUE(eval.ok());
  ASSERT_FALSE(eval->empty());
  EXPECT_EQ(eval->front().bundle, s->global_bundle());
  for (const NamedTensor& t : global) EXPECT_EQ(t.name().rfind("scaffold.", 0), std::string::npos);
}

TEST_F(ScaffoldTest, ServerStepsXByServerLrAndCByTheSumOfDeltasOverN) {
  auto s = server({{"fraction_fit", 0.5}, {"server_lr", 0.5}});
  const std::vector<ClientInfo> four = {
      {"a", 10, "cnn"}, {"b", 10, "cnn"}, {"c", 10, "cnn"}, {"d", 10, "cnn"}};
  const TensorBundle x = s->global_bundle()->clone();
  const std::vector<TaskSpec> tasks = configure(*s, 1, four);
  ASSERT_EQ(tasks.size(), 2u);  // |S| = 2 of N = 4
  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok()) << aggregation.status().to_string();
  // y_1 = x + 2 (1 example), y_2 = x + 4 (3 examples): weighted mean x + 3.5. Δc: 1 and 3.
  ASSERT_TRUE((*aggregation)->add(update_of(tasks[0].client_id, 1, upload(*s, 2.0, 1.0f))).ok());
  ASSERT_TRUE((*aggregation)->add(update_of(tasks[1].client_id, 3, upload(*s, 4.0, 3.0f))).ok());
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  EXPECT_EQ((*metrics)["updated"], true);
  EXPECT_EQ((*metrics)["scaffold"]["available_clients"], 4);
  EXPECT_EQ((*metrics)["scaffold"]["control_updates"], 2);

  // x ← x + 0.5 · 3.5 on the parameters; the BatchNorm statistics take the mean (x + 3.5).
  const TensorBundle& g = *s->global_bundle();
  EXPECT_LE(max_abs(at(g, kWeight) - (at(x, kWeight) + 1.75)), 1e-5);
  EXPECT_LE(max_abs(at(g, kRunningMean) - (at(x, kRunningMean) + 3.5)), 1e-5);
  EXPECT_TRUE(g.find(kBatchesTracked)->bitwise_equal(*x.find(kBatchesTracked)));
  // c ← 0 + (|S|/N) · mean(1, 3) = (1 + 3) / 4 = 1, exactly.
  int64_t elements = 0;
  for (const NamedTensor& c : s->control()) {
    EXPECT_TRUE(torch::equal(to_torch(c), torch::ones(c.shape(), torch::kFloat32))) << c.name();
    elements += c.numel();
  }

  // Round 2 sends c = 1; N = 2 and |S| = 1: c ← 1 + 2/2 = 2.
  const std::vector<ClientInfo> two(four.begin(), four.begin() + 2);
  const std::vector<TaskSpec> next = configure(*s, 2, two);
  ASSERT_EQ(next.size(), 1u);
  for (const std::string& name : s->parameter_names()) {
    EXPECT_EQ(max_abs(at(*next.front().bundle, ctl(name)) - 1.0), 0.0) << name;
  }
  auto second = s->begin_aggregation(2);
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE((*second)->add(update_of(next.front().client_id, 5, upload(*s, 0.0, 2.0f))).ok());
  auto m2 = (*second)->finish({});
  ASSERT_TRUE(m2.ok()) << m2.status().to_string();
  for (const NamedTensor& c : s->control()) {
    EXPECT_TRUE(torch::equal(to_torch(c), torch::full(c.shape(), 2.0, torch::kFloat32)))
        << c.name();
  }
  EXPECT_NEAR((*m2)["scaffold"]["control_norm"].get<double>(),
              2 * std::sqrt(static_cast<double>(elements)), 1e-9);
  // The saved state holds c.
  auto state = s->save_state();
  ASSERT_TRUE(state.ok());
  for (const NamedTensor& c : s->control()) {
    ASSERT_TRUE(state->contains(c.name())) << c.name();
    EXPECT_TRUE(c.bitwise_equal(*state->find(c.name())));
  }
}

TEST_F(ScaffoldTest, ARoundThatKeepsTheModelKeepsC) {
  auto s = server({{"min_fit_clients", 2}});
  const TensorBundle before = s->global_bundle()->clone();
  const std::vector<TaskSpec> tasks = configure(*s, 1);
  ASSERT_EQ(tasks.size(), 3u);
  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());
  ASSERT_TRUE((*aggregation)->add(update_of(tasks[0].client_id, 4, upload(*s, 1.0, 1.0f))).ok());
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  EXPECT_EQ((*metrics)["updated"], false);
  EXPECT_EQ((*metrics)["scaffold"]["control_norm"].get<double>(), 0.0);
  for (const NamedTensor& c : s->control()) EXPECT_EQ(max_abs(to_torch(c)), 0.0) << c.name();
  EXPECT_TRUE(s->global_bundle()->bitwise_equal(before));
}

TEST_F(ScaffoldTest, AggregationRefusesUpdatesWithoutExactlyTheDeltas) {
  auto s = server();
  ASSERT_FALSE(configure(*s, 1).empty());
  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok()) << aggregation.status().to_string();
  const TensorBundle good = upload(*s, 0.0, 0.0f);
  const std::string first = s->parameter_names().front();

  // `good` without tensor `drop`, plus `add` when set.
  auto edited = [&](const std::string& drop, std::optional<NamedTensor> add) {
    return edited_bundle(good, drop, std::move(add));
  };
  std::vector<testing::RefusedUpdate> cases;
  cases.push_back({"a missing delta",
                   edited(dlt(kWeight), std::nullopt),
                   StatusCode::kInvalidArgument,
                   {"scaffold: update of client client-x", dlt(kWeight), "missing"}});
  cases.push_back({"a misshapen delta",
                   edited(dlt(kWeight), from_torch(dlt(kWeight), torch::zeros({1})).value()),
                   StatusCode::kInvalidArgument,
                   {dlt(kWeight), "shape"}});
  cases.push_back(
      {"a float64 delta",
       edited(dlt(kWeight), from_torch(dlt(kWeight), torch::zeros(good.find(dlt(kWeight))->shape(),
                                                                  torch::kFloat64))
                                .value()),
       StatusCode::kInvalidArgument,
       {dlt(kWeight), "dtype"}});
  cases.push_back({"an extra delta",
                   edited("", from_torch(dlt("bogus"), torch::zeros({2})).value()),
                   StatusCode::kInvalidArgument,
                   {dlt("bogus"), "not in the reference"}});
  {
    TensorBundle plain = s->global_bundle()->clone();  // FedAvg's upload: no Δc at all
    cases.push_back({"the model alone",
                     std::move(plain),
                     StatusCode::kInvalidArgument,
                     {dlt(first), "missing"}});
  }
  testing::expect_refused_then_accepted_once(**aggregation, cases, good, 10);
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  EXPECT_EQ((*metrics)["updates"], 1);
  EXPECT_EQ((*metrics)["scaffold"]["control_updates"], 1);
}

TEST_F(ScaffoldTest, BeginAggregationNeedsTheRoundConfigured) {
  auto s = server();
  auto early = s->begin_aggregation(1);
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(contains(early.status(), "configure_fit")) << early.status().message();
  ASSERT_FALSE(configure(*s, 1).empty());
  EXPECT_EQ(s->begin_aggregation(2).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(s->begin_aggregation(1).ok());

  ScaffoldServer fresh{ScaffoldOptions()};
  Rng rng(1);
  EXPECT_EQ(fresh.configure_fit(1, infos(clients_), rng).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST_F(ScaffoldTest, ClientRefusesABadTaskBundleOrStateAndKeepsItsState) {
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  const std::vector<std::string>& names = s->parameter_names();
  const TensorBundle c = per_parameter(global, names, kScaffoldControlPrefix, 0.05, 0.0);
  const TensorBundle good = combined(global, c);

  struct Case {
    std::string what;
    TensorBundle bundle;
    std::vector<std::string> message;
  };
  std::vector<Case> cases;
  cases.push_back({"no c", global.clone(), {ctl(names.front()), "missing"}});
  {
    TensorBundle b;
    for (const NamedTensor& t : good) {
      if (t.name() != ctl(kWeight)) {
        EXPECT_TRUE(b.add(t.clone()).ok());
      }
    }
    EXPECT_TRUE(b.add(from_torch(ctl(kWeight), torch::zeros({3})).value()).ok());
    cases.push_back({"misshapen c", std::move(b), {ctl(kWeight), "!= expected"}});
  }
  {
    TensorBundle b = good.clone();
    EXPECT_TRUE(b.add(from_torch("scaffold.x", torch::zeros({1})).value()).ok());
    cases.push_back({"foreign scaffold tensor", std::move(b), {"scaffold.x", "not expected"}});
  }
  {
    TensorBundle b = good.clone();
    EXPECT_TRUE(b.add(from_torch(ctl("backbone.bn1.running_mean"),
                                 torch::zeros(global.find(kRunningMean)->shape()))
                          .value())
                    .ok());
    cases.push_back({"c of a buffer", std::move(b), {ctl(kRunningMean), "not expected"}});
  }
  for (Case& k : cases) {
    SCOPED_TRACE(k.what);
    auto out = fit(k.bundle, 0);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    for (const std::string& part : k.message) {
      EXPECT_TRUE(contains(out.status(), part)) << out.status().message();
    }
    EXPECT_TRUE(clients_[0].state.tensors.empty());
  }

  // A state with c_i for one parameter only, or a misshapen one.
  const TensorBundle full = per_parameter(global, names, kScaffoldClientPrefix, 0.02, 1.0);
  std::vector<std::pair<TensorBundle, std::vector<std::string>>> states;
  {
    TensorBundle partial;
    EXPECT_TRUE(partial.add(full.find(own(kWeight))->clone()).ok());
    states.emplace_back(std::move(partial), std::vector<std::string>{"client state", "missing"});
  }
  {
    TensorBundle misshapen;
    for (const NamedTensor& t : full) {
      if (t.name() != own(kWeight)) {
        EXPECT_TRUE(misshapen.add(t.clone()).ok());
      }
    }
    EXPECT_TRUE(misshapen.add(from_torch(own(kWeight), torch::zeros({2})).value()).ok());
    states.emplace_back(std::move(misshapen),
                        std::vector<std::string>{"client state", own(kWeight), "!= expected"});
  }
  for (auto& [state, message] : states) {
    clients_[0].state.tensors = state.clone();
    auto out = fit(good, 0);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    for (const std::string& part : message) {
      EXPECT_TRUE(contains(out.status(), part)) << out.status().message();
    }
    EXPECT_TRUE(clients_[0].state.tensors.bitwise_equal(state));  // unchanged
  }
}

TEST_F(ScaffoldTest, TwoRoundsTrainAndMoveTheControlVariates) {
  auto s = server();
  auto client = make_scaffold_client({}).value();
  const TensorBundle initial = s->global_bundle()->clone();
  for (int round = 1; round <= 2; ++round) {
    SCOPED_TRACE(round);
    const nlohmann::json m = run_round(*s, *client, config_, clients_, round);
    ASSERT_TRUE(m.contains("scaffold")) << m.dump();
    EXPECT_EQ(m["updated"], true);
    ASSERT_TRUE(m["loss"].is_number());
    EXPECT_TRUE(std::isfinite(m["loss"].get<double>()));
    EXPECT_EQ(m["scaffold"]["available_clients"], 3);
    EXPECT_EQ(m["scaffold"]["control_updates"], 3);
    EXPECT_GT(m["scaffold"]["control_norm"].get<double>(), 0);
    EXPECT_TRUE(std::isfinite(m["scaffold"]["control_norm"].get<double>()));
  }
  EXPECT_GT(testing::squared_distance(*s->global_bundle(), initial, s->parameter_names()), 0);
  for (const SimClient& c : clients_) {
    EXPECT_EQ(c.state.tensors.size(), s->parameter_names().size()) << c.id;
  }
  // With every client selected (|S| = N), c is the mean of the clients' c_i (up to rounding).
  for (const std::string& name : s->parameter_names()) {
    torch::Tensor mean = torch::zeros_like(at(s->control(), ctl(name)));
    for (const SimClient& c : clients_) mean = mean + at(c.state.tensors, own(name));
    mean = mean / static_cast<double>(clients_.size());
    const double scale = std::max(1.0, max_abs(mean));
    EXPECT_LE(max_abs(at(s->control(), ctl(name)) - mean), 1e-5 * scale) << name;
  }
}

TEST_F(ScaffoldTest, ResumeFromASavedStateWithTheClientsStatesIsBitExact) {
  auto a = server({{"server_lr", 0.8}});
  auto client = make_scaffold_client({{"server_lr", 0.8}}).value();
  for (int round = 1; round <= 2; ++round) run_round(*a, *client, config_, clients_, round);
  auto state = a->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();
  for (const NamedTensor& c : a->control()) {
    ASSERT_TRUE(state->contains(c.name())) << c.name();
    EXPECT_TRUE(c.bitwise_equal(*state->find(c.name())));
  }

  // A fresh coordinator (b) and fresh client processes that kept their states.
  ScaffoldServer b{parse_scaffold_options({{"server_lr", 0.8}}).value()};
  ASSERT_TRUE(b.load_state(state->clone()).ok());
  ASSERT_TRUE(b.resume(run_).ok());
  EXPECT_TRUE(b.control().bitwise_equal(a->control()));
  std::vector<SimClient> resumed = sim_clients(config_, 3);
  for (size_t k = 0; k < resumed.size(); ++k) resumed[k].state = copy_state(clients_[k].state);

  for (int round = 3; round <= 4; ++round) {
    SCOPED_TRACE(round);
    const nlohmann::json ma = run_round(*a, *client, config_, clients_, round);
    const nlohmann::json mb = run_round(b, *client, config_, resumed, round);
    EXPECT_EQ(ma, mb);
    EXPECT_TRUE(a->global_bundle()->bitwise_equal(*b.global_bundle()));
    EXPECT_TRUE(a->control().bitwise_equal(b.control()));
    EXPECT_TRUE(a->save_state()->bitwise_equal(*b.save_state()));
    for (size_t k = 0; k < resumed.size(); ++k) {
      EXPECT_TRUE(clients_[k].state.tensors.bitwise_equal(resumed[k].state.tensors)) << k;
    }
  }
}

TEST_F(ScaffoldTest, LoadStateRefusesAStateWithoutExactlyC) {
  auto s = server();
  auto state = s->save_state();
  ASSERT_TRUE(state.ok());
  const std::string first = s->parameter_names().front();
  auto edited = [&](const std::string& drop, std::optional<NamedTensor> add) {
    return edited_bundle(*state, drop, std::move(add));
  };
  std::vector<std::pair<TensorBundle, std::vector<std::string>>> bad;
  using Strings = std::vector<std::string>;
  bad.emplace_back(edited(ctl(first), std::nullopt), Strings{ctl(first), "missing"});
  bad.emplace_back(edited(ctl(kWeight), from_torch(ctl(kWeight), torch::zeros({1})).value()),
                   Strings{ctl(kWeight), "!= expected"});
  bad.emplace_back(edited("", from_torch(ctl("bogus"), torch::zeros({1})).value()),
                   Strings{"unexpected tensor", ctl("bogus")});
  bad.emplace_back(edited("", from_torch("velocity/x", torch::zeros({1})).value()),
                   Strings{"unexpected tensor", "velocity/x"});
  for (auto& [bundle, message] : bad) {
    SCOPED_TRACE(message.front());
    ScaffoldServer t{ScaffoldOptions()};
    const Status st = t.load_state(bundle.clone());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    for (const std::string& part : message) EXPECT_TRUE(contains(st, part)) << st.message();
    EXPECT_EQ(t.global_bundle(), nullptr);  // unchanged
    EXPECT_TRUE(t.control().empty());
  }
  // The saved state itself loads.
  ScaffoldServer ok{ScaffoldOptions()};
  EXPECT_TRUE(ok.load_state(state->clone()).ok());
  EXPECT_TRUE(ok.control().bitwise_equal(s->control()));
}

}  // namespace
}  // namespace fedtail::strategies

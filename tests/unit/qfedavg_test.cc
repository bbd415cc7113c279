// q-FedAvg: options, the q-FFL sums on hand-made bundles of two clients (Δ_k, h_k and the new
// model computed here from the paper's formulas), the q = 0 reduction to the unweighted mean, the
// gate of QfflSum::add, the loss the client uploads, a server round recomputed by hand from the
// uploads, refused updates (by the q-FedAvg checks and by FedAvg's Aggregation underneath: no trace
// in the sums either way) and states, min_fit_clients / accept_failures (FedAvgServer's rules,
// with the configured RoundOptions), a few rounds, and resume bit for bit.
#include "strategies/qfedavg/qfedavg.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "common/learning/train_loop.h"
#include "common/wire/bundle_checks.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/qfedavg/qffl_sum.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::contains;
using testing::expect_parse_refuses;
using testing::fit_client;
using testing::infos;
using testing::inputs;
using testing::RefusedUpdate;
using testing::run_context;
using testing::run_round;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;

// ---------------------------------------------------------------------------------------------
// Options

TEST(QFedAvgOptionsTest, DefaultsAndSetValues) {
  auto defaults = parse_qfedavg_options(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok()) << defaults.status().to_string();
  EXPECT_EQ(defaults->q, 0.2);
  EXPECT_EQ(defaults->lipschitz, 0.0);  // 1 / config.local.lr at initialize
  EXPECT_EQ(defaults->round.min_fit_clients, 1);
  EXPECT_TRUE(parse_qfedavg_options(nlohmann::json()).ok());

  auto set = parse_qfedavg_options({{"q", 5}, {"lipschitz", 10.0}, {"fraction_fit", 0.5}});
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->q, 5.0);
  EXPECT_EQ(set->lipschitz, 10.0);
  EXPECT_EQ(set->round.fraction_fit, 0.5);
  EXPECT_TRUE(parse_qfedavg_options({{"q", 0.0}}).ok());
  EXPECT_EQ(qfedavg_strategy_entry().name, "qfedavg");
}

TEST(QFedAvgOptionsTest, BadValuesRobustAndUnknownKeysAreRefusedNamingTheField) {
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"q", -1.0}}, "config.strategy.q: must be >= 0"},
      {{{"q", "1"}}, "config.strategy.q"},
      {{{"lipschitz", 0.0}}, "config.strategy.lipschitz: must be > 0"},
      {{{"lipschitz", -2.0}}, "config.strategy.lipschitz: must be > 0"},
      {{{"robust", {{"method", "median"}}}}, "config.strategy.robust"},
      {{{"robust", {{"clip_norm", 1.0}}}}, "config.strategy.robust"},
      {{{"qffl_learning_rate", 0.1}}, "config.strategy.qffl_learning_rate: unknown key"},
  };
  expect_parse_refuses(cases, parse_qfedavg_options, make_qfedavg_server, make_qfedavg_client);
}

// ---------------------------------------------------------------------------------------------
// The q-FFL sums on hand-made bundles

// A tiny "model": fc.weight [2, 2], fc.bias [2] (the parameters: the norm tensors),
// bn.running_var [2] (a float buffer) and bn.num_batches_tracked [1] (an integer buffer).
struct Hand {
  std::vector<float> weight, bias, var;
  int64_t batches;
};

TensorBundle bundle(const Hand& h) {
  TensorBundle b;
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<float>("fc.weight", DType::kFloat32, {2, 2}, h.weight)).ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values<float>("fc.bias", DType::kFloat32, {2}, h.bias)).ok());
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<float>("bn.running_var", DType::kFloat32, {2}, h.var)).ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {1},
                                                      {h.batches}))
                  .ok());
  return b;
}

// The floating-point values in bundle order (weight, bias, var); the first 6 are the parameters.
std::vector<double> floats(const Hand& h) {
  std::vector<double> v;
  for (float x : h.weight) v.push_back(x);
  for (float x : h.bias) v.push_back(x);
  for (float x : h.var) v.push_back(x);
  return v;
}
constexpr size_t kParameterValues = 6;

const std::vector<std::string> kNormNames = {"fc.weight", "fc.bias"};

const Hand kGlobal{{1, 2, 3, 4}, {0.5f, -0.5f}, {1, 1}, 10};
const Hand kClient1{{0.5f, 2, 3, 5}, {0.5f, 0}, {2, 1}, 11};
const Hand kClient2{{1, 1, 2, 4}, {1, -0.5f}, {1, 3}, 12};

std::vector<double> values_of(const TensorBundle& b) {
  std::vector<double> v;
  for (const char* name : {"fc.weight", "fc.bias", "bn.running_var"}) {
    const NamedTensor* t = b.find(name);
    EXPECT_NE(t, nullptr) << name;
    if (t == nullptr) continue;
    for (int64_t i = 0; i < t->numel(); ++i) v.push_back(t->data<float>()[i]);
  }
  return v;
}

Result<QfflSum> make_sum(double q, double lipschitz) {
  return QfflSum::create(std::make_shared<const TensorBundle>(bundle(kGlobal)), kNormNames, q,
                         lipschitz);
}

TEST(QfflSumTest, TwoClientsGiveTheDeltasHsAndStepOfThePaper) {
  const double q = 2, lipschitz = 4;  // L = 1 / lr for lr = 0.25
  const std::vector<std::pair<Hand, double>> clients = {{kClient1, 0.5}, {kClient2, 2.0}};

  // By hand: Δ_k = F_k^q L (w − w̄_k), h_k = q F_k^(q−1) ‖L (w − w̄_k)‖² + L F_k^q (F_k + 1e-10
  // for F_k, as the authors), w' = w − Σ Δ_k / Σ h_k; the norm over the parameters only.
  const std::vector<double> w = floats(kGlobal);
  std::vector<double> delta_sum(w.size(), 0.0);
  double h_sum = 0, weight_sum = 0;
  std::vector<double> hs, weights, squares;
  for (const auto& [client, loss] : clients) {
    const std::vector<double> u = floats(client);
    const double f = loss + 1e-10;
    double norm = 0;  // ‖L (w − w̄_k)‖²
    for (size_t i = 0; i < kParameterValues; ++i) norm += std::pow(lipschitz * (w[i] - u[i]), 2);
    const double h = q * std::pow(f, q - 1) * norm + lipschitz * std::pow(f, q);
    for (size_t i = 0; i < w.size(); ++i) {
      delta_sum[i] += std::pow(f, q) * lipschitz * (w[i] - u[i]);
    }
    hs.push_back(h);
    weights.push_back(std::pow(f, q));
    squares.push_back(norm / (lipschitz * lipschitz));
    h_sum += h;
    weight_sum += std::pow(f, q);
  }
  // The numbers themselves (F = 0.5, 2; ‖w − w̄‖² = 1.5, 2.25): h = 25 and 160, up to the 1e-10
  // added to F.
  EXPECT_NEAR(hs[0], 25.0, 1e-7);
  EXPECT_NEAR(hs[1], 160.0, 1e-7);

  auto sum = make_sum(q, lipschitz);
  ASSERT_TRUE(sum.ok()) << sum.status().to_string();
  for (size_t k = 0; k < clients.size(); ++k) {
    auto terms = sum->add(bundle(clients[k].first), clients[k].second);
    ASSERT_TRUE(terms.ok()) << terms.status().to_string();
    EXPECT_EQ(terms->loss, clients[k].second);
    EXPECT_NEAR(terms->weight, weights[k], 1e-12 * weights[k]);
    EXPECT_NEAR(terms->squared_distance, squares[k], 1e-12);
    EXPECT_NEAR(terms->h, hs[k], 1e-12 * hs[k]);
  }
  EXPECT_EQ(sum->updates(), 2);
  EXPECT_NEAR(sum->h_sum(), h_sum, 1e-12 * h_sum);
  EXPECT_NEAR(sum->weight_sum(), weight_sum, 1e-12 * weight_sum);

  auto next = sum->finish();
  ASSERT_TRUE(next.ok()) << next.status().to_string();
  EXPECT_EQ(next->names(), bundle(kGlobal).names());
  const std::vector<double> got = values_of(*next);
  ASSERT_EQ(got.size(), w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_NEAR(got[i], w[i] - delta_sum[i] / h_sum, 1e-6) << i;
  }
  // The integer buffer: the plain mean of 11 and 12, rounded half away from zero.
  EXPECT_EQ(next->find("bn.num_batches_tracked")->data<int64_t>()[0], 12);
}

TEST(QfflSumTest, BufferChangesDoNotEnterTheNorm) {
  auto a = make_sum(1.0, 4.0);
  auto b = make_sum(1.0, 4.0);
  ASSERT_TRUE(a.ok() && b.ok());
  Hand moved = kClient1;
  moved.var = {100, 1};
  auto ta = a->add(bundle(kClient1), 0.5);
  auto tb = b->add(bundle(moved), 0.5);
  ASSERT_TRUE(ta.ok() && tb.ok());
  EXPECT_EQ(ta->h, tb->h);
  EXPECT_EQ(ta->squared_distance, tb->squared_distance);
  // ...but the step applies to them: with one client, w' = w + s (w̄ − w), s = L a / h.
  auto next = b->finish();
  ASSERT_TRUE(next.ok());
  const double s = 4.0 * tb->weight / tb->h;
  EXPECT_NEAR(next->find("bn.running_var")->data<float>()[0], 1 + s * (100 - 1), 1e-4);
}

TEST(QfflSumTest, QZeroGivesTheUnweightedMeanOfTheClientsWhateverL) {
  for (double lipschitz : {4.0, 0.37, 250.0}) {
    SCOPED_TRACE(lipschitz);
    auto sum = make_sum(0.0, lipschitz);
    ASSERT_TRUE(sum.ok());
    // Very different losses: with q = 0 they do not matter.
    auto t1 = sum->add(bundle(kClient1), 0.01);
    auto t2 = sum->add(bundle(kClient2), 30.0);
    ASSERT_TRUE(t1.ok() && t2.ok());
    EXPECT_EQ(t1->weight, 1.0);
    EXPECT_EQ(t1->h, lipschitz);
    EXPECT_EQ(t2->h, lipschitz);
    auto next = sum->finish();
    ASSERT_TRUE(next.ok()) << next.status().to_string();
    const std::vector<double> u1 = floats(kClient1), u2 = floats(kClient2);
    const std::vector<double> got = values_of(*next);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], (u1[i] + u2[i]) / 2, 1e-6) << i;
  }
}

TEST(QfflSumTest, RefusesBadInputsAndLeavesTheSumsUnchanged) {
  EXPECT_EQ(make_sum(-1, 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(make_sum(1, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(make_sum(std::numeric_limits<double>::quiet_NaN(), 1).status().code(),
            StatusCode::kInvalidArgument);
  auto global = std::make_shared<const TensorBundle>(bundle(kGlobal));
  EXPECT_FALSE(QfflSum::create(global, {"bn.num_batches_tracked"}, 1, 1).ok());  // not floating
  EXPECT_FALSE(QfflSum::create(global, {"fc.missing"}, 1, 1).ok());
  EXPECT_FALSE(QfflSum::create(nullptr, kNormNames, 1, 1).ok());

  auto sum = make_sum(2.0, 4.0);
  ASSERT_TRUE(sum.ok());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double loss : {-0.5, nan, std::numeric_limits<double>::infinity()}) {
    auto refused = sum->add(bundle(kClient1), loss);
    ASSERT_FALSE(refused.ok());
    EXPECT_TRUE(contains(refused.status(), "finite and >= 0")) << refused.status().message();
  }
  TensorBundle missing;
  for (const NamedTensor& t : bundle(kClient1)) {
    if (t.name() != "fc.bias") {
      ASSERT_TRUE(missing.add(t.clone()).ok());
    }
  }
  auto refused = sum->add(missing, 1.0);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(contains(refused.status(), "fc.bias")) << refused.status().message();
  // Powers that overflow: 10^400.
  auto huge = make_sum(400.0, 4.0);
  ASSERT_TRUE(huge.ok());
  auto overflow = huge->add(bundle(kClient1), 10.0);
  ASSERT_FALSE(overflow.ok());
  EXPECT_TRUE(contains(overflow.status(), "not finite")) << overflow.status().message();
  EXPECT_EQ(huge->updates(), 0);
  EXPECT_EQ(huge->finish().status().code(), StatusCode::kFailedPrecondition);

  // Nothing of the refused ones was folded in: the same result as a fresh sum.
  EXPECT_EQ(sum->updates(), 0);
  auto fresh = make_sum(2.0, 4.0);
  ASSERT_TRUE(fresh.ok());
  for (QfflSum* s : {&*sum, &*fresh}) {
    ASSERT_TRUE(s->add(bundle(kClient1), 0.5).ok());
    ASSERT_TRUE(s->add(bundle(kClient2), 2.0).ok());
  }
  EXPECT_TRUE(sum->finish()->bitwise_equal(*fresh->finish()));
}

TEST(QfflSumTest, TheGateRunsAfterTheChecksAndItsRefusalLeavesTheSumsUnchanged) {
  auto sum = make_sum(2.0, 4.0);
  ASSERT_TRUE(sum.ok());
  int calls = 0;
  const auto refuse = [&calls]() {
    ++calls;
    return Status::InvalidArgument("gate says no");
  };
  // A model QfflSum refuses itself: the gate is not called.
  auto bad_loss = sum->add(bundle(kClient1), -1.0, refuse);
  ASSERT_FALSE(bad_loss.ok());
  EXPECT_EQ(calls, 0);
  // A good one the gate refuses: its error, nothing folded.
  auto gated = sum->add(bundle(kClient1), 0.5, refuse);
  ASSERT_FALSE(gated.ok());
  EXPECT_EQ(gated.status().message(), "gate says no");
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(sum->updates(), 0);
  EXPECT_EQ(sum->h_sum(), 0.0);
  EXPECT_EQ(sum->weight_sum(), 0.0);
  // Then accepted: the same result, bit for bit, as a sum that never saw the refused one (the
  // integer mean included).
  const auto accept = [&calls]() {
    ++calls;
    return Status::OK();
  };
  auto fresh = make_sum(2.0, 4.0);
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE(sum->add(bundle(kClient2), 2.0, accept).ok());
  EXPECT_EQ(calls, 2);
  ASSERT_TRUE(fresh->add(bundle(kClient2), 2.0).ok());
  EXPECT_EQ(sum->updates(), 1);
  EXPECT_EQ(sum->h_sum(), fresh->h_sum());
  EXPECT_TRUE(sum->finish()->bitwise_equal(*fresh->finish()));
}

// ---------------------------------------------------------------------------------------------
// Server and client

class QFedAvgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    run_ = run_context(config_);
    clients_ = sim_clients(config_, 3);
  }

  std::unique_ptr<QFedAvgServer> server(const nlohmann::json& options = nlohmann::json::object()) {
    auto parsed = parse_qfedavg_options(options);
    EXPECT_TRUE(parsed.ok()) << parsed.status().to_string();
    auto s = std::make_unique<QFedAvgServer>(parsed.value());
    run_.strategy_config = options;
    Rng rng(11);
    Status status = s->initialize(run_, rng);
    EXPECT_TRUE(status.ok()) << status.to_string();
    return s;
  }

  Result<FitOutput> fit(ClientAlgorithm& algorithm, const TensorBundle& global, int k,
                        int round = 1) {
    return fit_client(algorithm, config_, clients_, k, global, round);
  }

  // `model` plus F_k as kQFedAvgLossTensor.
  static TensorBundle with_loss(const TensorBundle& model, double loss) {
    TensorBundle b = model.clone();
    EXPECT_TRUE(
        b.add(NamedTensor::from_values<double>(kQFedAvgLossTensor, DType::kFloat64, {1}, {loss}))
            .ok());
    return b;
  }

  std::vector<std::string> parameter_names() {
    std::vector<std::string> names;
    for (const auto& p : clients_[0].model->named_parameters()) names.push_back(p.key());
    return names;
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
};

TEST_F(QFedAvgTest, LipschitzDefaultsToTheInverseLocalLearningRate) {
  auto s = server();
  EXPECT_DOUBLE_EQ(s->lipschitz(), 1.0 / config_.local.lr);
  EXPECT_EQ(server({{"lipschitz", 10.0}})->lipschitz(), 10.0);
  // The norm tensors are the trainable parameters: no BatchNorm buffer.
  EXPECT_EQ(s->norm_names(), parameter_names());
  for (const std::string& name : s->norm_names()) {
    EXPECT_EQ(name.find("running_"), std::string::npos) << name;
  }
  auto state = s->save_state();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->metadata()["qfedavg"]["lipschitz"], s->lipschitz());
  EXPECT_EQ(state->metadata()["strategy"], "qfedavg");

  QFedAvgServer fresh{QFedAvgOptions()};
  Rng rng(1);
  EXPECT_EQ(fresh.configure_fit(1, infos(clients_), rng).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(fresh.begin_aggregation(1).status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(QFedAvgTest, TasksCarryTheGlobalModelAndExpectItPlusTheLoss) {
  auto s = server({{"fraction_fit", 0.1}, {"min_fit_clients", 2}, {"accept_failures", false}});
  // The base server has the configured RoundOptions.
  EXPECT_EQ(s->round_options().min_fit_clients, 2);
  EXPECT_EQ(s->round_options().fraction_fit, 0.1);
  EXPECT_FALSE(s->round_options().accept_failures);
  Rng rng(5);
  auto tasks = s->configure_fit(1, infos(clients_), rng);
  ASSERT_TRUE(tasks.ok()) << tasks.status().to_string();
  ASSERT_EQ(tasks->size(), 2u);
  const TensorBundle& global = *s->global_bundle();
  for (const TaskSpec& t : *tasks) {
    EXPECT_EQ(t.bundle, s->global_bundle());
    ASSERT_NE(t.expected_update, nullptr);
    EXPECT_EQ(t.expected_update, tasks->front().expected_update);
  }
  const TensorBundle& expected = *tasks->front().expected_update;
  EXPECT_EQ(expected.size(), global.size() + 1);
  const NamedTensor* loss = expected.find(kQFedAvgLossTensor);
  ASSERT_NE(loss, nullptr);
  EXPECT_EQ(loss->dtype(), DType::kFloat64);
  EXPECT_EQ(loss->shape(), std::vector<int64_t>{1});
  EXPECT_TRUE(check_compatible(with_loss(global, 1.0), expected).ok());
  // Built once per global model.
  Rng again(6);
  auto second = s->configure_fit(1, infos(clients_), again);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->front().expected_update, tasks->front().expected_update);
  // The clients FedAvgServer samples with the same Rng.
  FedAvgServer fedavg("fedavg", s->round_options());
  Rng init(11);
  ASSERT_TRUE(fedavg.initialize(run_, init).ok());
  Rng same(5);
  auto theirs = fedavg.configure_fit(1, infos(clients_), same);
  ASSERT_TRUE(theirs.ok());
  ASSERT_EQ(theirs->size(), tasks->size());
  for (size_t i = 0; i < tasks->size(); ++i) {
    EXPECT_EQ((*tasks)[i].client_id, (*theirs)[i].client_id);
  }

  std::vector<SimClient> one = sim_clients(config_, 1);
  Rng few(7);
  EXPECT_EQ(s->configure_fit(1, infos(one), few).status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(QFedAvgTest, ClientUploadsFedAvgsModelAndTheLossOfTheGlobalModel) {
  auto s = server();
  const TensorBundle& global = *s->global_bundle();
  QFedAvgClient client;
  auto out = fit(client, global, 0);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->num_examples, clients_[0].train.size());
  const NamedTensor* loss = out->update.find(kQFedAvgLossTensor);
  ASSERT_NE(loss, nullptr);
  ASSERT_EQ(loss->dtype(), DType::kFloat64);
  const double f = loss->data<double>()[0];
  EXPECT_EQ(out->metrics["global_loss"].get<double>(), f);

  // F_k by hand: the global model in eval mode, cross-entropy over the whole training set.
  Rng init(3);
  Model m = make_model(config_.model, init).value();
  ASSERT_TRUE(load_module_state(*m, global, /*strict=*/true).ok());
  m->eval();
  double want = 0;
  {
    torch::NoGradGuard no_grad;
    want = torch::nn::functional::cross_entropy(m->forward(inputs(clients_[0].train)),
                                                clients_[0].train.labels)
               .item<double>();
  }
  EXPECT_NEAR(f, want, 1e-5);
  EXPECT_GT(f, 0);

  // The model part is FedAvg's update, bit for bit.
  FedAvgClient fedavg;
  auto theirs = fit(fedavg, global, 0);
  ASSERT_TRUE(theirs.ok());
  TensorBundle model;
  for (const NamedTensor& t : out->update) {
    if (t.name() != kQFedAvgLossTensor) {
      ASSERT_TRUE(model.add(t.clone()).ok());
    }
  }
  EXPECT_TRUE(model.bitwise_equal(theirs->update));
  EXPECT_EQ(out->metrics["loss"], theirs->metrics["loss"]);
}

// Adds `value` to map[name] (inserting it when absent).
void accumulate(std::map<std::string, torch::Tensor>& map, const std::string& name,
                const torch::Tensor& value) {
  auto it = map.find(name);
  if (it == map.end()) {
    map.emplace(name, value);
  } else {
    it->second = it->second + value;
  }
}

// One round driven here, its result recomputed from the uploads by the paper's formulas.
TEST_F(QFedAvgTest, ARoundIsThePapersStepOnTheUploads) {
  for (double q : {0.0, 1.0}) {
    SCOPED_TRACE(q);
    auto s = server({{"q", q}});
    const std::shared_ptr<const TensorBundle> w = s->global_bundle();
    Rng sample(9);
    auto tasks = s->configure_fit(1, infos(clients_), sample);
    ASSERT_TRUE(tasks.ok());
    ASSERT_EQ(tasks->size(), clients_.size());
    auto aggregation = s->begin_aggregation(1);
    ASSERT_TRUE(aggregation.ok());
    QFedAvgClient client;
    std::vector<TensorBundle> uploads;
    for (size_t k = 0; k < tasks->size(); ++k) {
      auto out = fit(client, *(*tasks)[k].bundle, static_cast<int>(k));
      ASSERT_TRUE(out.ok()) << out.status().to_string();
      uploads.push_back(out->update.clone());
      ClientUpdate update;
      update.client_id = clients_[k].id;
      update.num_examples = out->num_examples;
      update.bundle = std::move(out->update);
      update.metrics = out->metrics;
      ASSERT_TRUE((*aggregation)->add(std::move(update)).ok());
    }
    auto metrics = (*aggregation)->finish({});
    ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
    ASSERT_EQ((*metrics)["updated"], true) << metrics->dump();
    EXPECT_EQ((*metrics)["updates"], 3);

    // By hand, in double: Δ_k = (F_k + ε)^q L (w − w̄_k) over every float tensor, h_k with the
    // norm over the trainable parameters, w' = w − Σ Δ_k / Σ h_k; integers: the rounded mean.
    const double lipschitz = 1.0 / config_.local.lr;
    const std::vector<std::string> params = parameter_names();
    std::map<std::string, torch::Tensor> delta_sum, plain_sum;
    std::map<std::string, int64_t> int_sum;
    double h_sum = 0, weight_sum = 0, loss_sum = 0;
    for (const TensorBundle& u : uploads) {
      const double f = u.find(kQFedAvgLossTensor)->data<double>()[0];
      loss_sum += f;
      double norm = 0;
      for (const NamedTensor& t : *w) {
        const NamedTensor* ut = u.find(t.name());
        ASSERT_NE(ut, nullptr);
        if (t.dtype() == DType::kInt64) {
          int_sum[t.name()] += ut->data<int64_t>()[0];
          continue;
        }
        const torch::Tensor d = to_torch(t).to(torch::kFloat64) - to_torch(*ut).to(torch::kFloat64);
        if (std::find(params.begin(), params.end(), t.name()) != params.end()) {
          norm += (lipschitz * d).pow(2).sum().item<double>();
        }
        accumulate(delta_sum, t.name(), std::pow(f + 1e-10, q) * lipschitz * d);
        accumulate(plain_sum, t.name(), to_torch(*ut).to(torch::kFloat64));
      }
      h_sum += q * std::pow(f + 1e-10, q - 1) * norm + lipschitz * std::pow(f + 1e-10, q);
      weight_sum += std::pow(f + 1e-10, q);
    }
    const TensorBundle& next = *s->global_bundle();
    EXPECT_EQ(next.metadata()["round"], 1);
    const double k = static_cast<double>(uploads.size());
    for (const NamedTensor& t : *w) {
      SCOPED_TRACE(t.name());
      const NamedTensor* got = next.find(t.name());
      ASSERT_NE(got, nullptr);
      if (t.dtype() == DType::kInt64) {
        EXPECT_EQ(got->data<int64_t>()[0],
                  std::llround(static_cast<double>(int_sum[t.name()]) / k));
        continue;
      }
      const torch::Tensor want = to_torch(t).to(torch::kFloat64) - delta_sum[t.name()] / h_sum;
      const torch::Tensor have = to_torch(*got).to(torch::kFloat64);
      // float32 rounding of values of any size: relative to max(1, |value|).
      const torch::Tensor scale = want.abs().clamp_min(1);
      EXPECT_LE(((have - want).abs() / scale).max().item<double>(), 2e-6);
      if (q == 0) {  // the unweighted mean of the clients' models
        EXPECT_LE(((have - plain_sum[t.name()] / k).abs() / scale).max().item<double>(), 2e-6);
      }
    }
    const nlohmann::json& m = (*metrics)["qfedavg"];
    EXPECT_EQ(m["q"], q);
    EXPECT_EQ(m["lipschitz"], lipschitz);
    EXPECT_NEAR(m["h_sum"].get<double>(), h_sum, 1e-9 * h_sum);
    EXPECT_NEAR(m["weight_sum"].get<double>(), weight_sum, 1e-9 * weight_sum);
    EXPECT_NEAR(m["step"].get<double>(), lipschitz * weight_sum / h_sum, 1e-9);
    EXPECT_NEAR(m["global_loss"]["mean"].get<double>(), loss_sum / k, 1e-12);
    if (q == 0) {
      EXPECT_NEAR(m["step"].get<double>(), 1.0, 1e-12);
    }
  }
}

TEST_F(QFedAvgTest, AggregationRefusesBadUpdatesAndAcceptsAGoodOneOnce) {
  auto s = server();
  const std::shared_ptr<const TensorBundle> before = s->global_bundle();  // outlives the round
  const TensorBundle& global = *before;
  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto with_tensor = [&](NamedTensor t) {
    TensorBundle b = global.clone();
    EXPECT_TRUE(b.add(std::move(t)).ok());
    return b;
  };
  std::vector<RefusedUpdate> cases;
  cases.push_back(
      {"no loss", global.clone(), StatusCode::kInvalidArgument, {"qfedavg.loss", "missing"}});
  cases.push_back({"float32 loss",
                   with_tensor(NamedTensor::from_values<float>(kQFedAvgLossTensor, DType::kFloat32,
                                                               {1}, {1.0f})),
                   StatusCode::kInvalidArgument,
                   {"float64 [1]"}});
  cases.push_back({"two losses",
                   with_tensor(NamedTensor::from_values<double>(kQFedAvgLossTensor, DType::kFloat64,
                                                                {2}, {1.0, 2.0})),
                   StatusCode::kInvalidArgument,
                   {"float64 [1]"}});
  cases.push_back(
      {"nan loss", with_loss(global, nan), StatusCode::kInvalidArgument, {"finite and >= 0"}});
  cases.push_back({"negative loss",
                   with_loss(global, -0.5),
                   StatusCode::kInvalidArgument,
                   {"finite and >= 0"}});
  {
    TensorBundle foreign = with_loss(global, 1.0);
    EXPECT_TRUE(
        foreign.add(NamedTensor::from_values<float>("extra.x", DType::kFloat32, {1}, {1.0f})).ok());
    cases.push_back(
        {"foreign tensor", std::move(foreign), StatusCode::kInvalidArgument, {"\"extra.x\""}});
  }
  cases.push_back({"no examples",
                   with_loss(global, 1.0),
                   StatusCode::kInvalidArgument,
                   {"num_examples"},
                   /*num_examples=*/-1});
  // The last case ("no examples") and the second good update are refused by FedAvg's
  // Aggregation, after the q-FedAvg checks have passed.
  testing::expect_refused_then_accepted_once(**aggregation, cases, with_loss(global, 0.7), 10);
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  EXPECT_EQ((*metrics)["updated"], true);
  EXPECT_EQ((*metrics)["updates"], 1);
  EXPECT_EQ((*metrics)["examples"], 10);
  // The sums hold the accepted update only: w̄ = w, so ‖w − w̄‖ = 0 and h = L (F + ε)^q.
  const double q = 0.2, lipschitz = 1.0 / config_.local.lr;
  const double a = std::pow(0.7 + 1e-10, q);
  const nlohmann::json& m = (*metrics)["qfedavg"];
  EXPECT_NEAR(m["weight_sum"].get<double>(), a, 1e-12);
  EXPECT_NEAR(m["h_sum"].get<double>(), lipschitz * a, 1e-12 * lipschitz);
  EXPECT_EQ(m["global_loss"]["mean"], 0.7);
  EXPECT_EQ(m["global_loss"]["min"], 0.7);
  EXPECT_EQ(m["global_loss"]["max"], 0.7);
  EXPECT_EQ(m["batchnorm_variances_clamped"], 0);
  // w̄ = w: the model does not move.
  for (const NamedTensor& t : global) {
    EXPECT_TRUE(t.bitwise_equal(*s->global_bundle()->find(t.name()))) << t.name();
  }
}

// An update FedAvg's Aggregation refuses (here a second one from the same client, with another
// model and loss) leaves no trace: the round equals one that never saw it, bit for bit.
TEST_F(QFedAvgTest, AnUpdateFedAvgRefusesLeavesTheRoundUnchanged) {
  auto a = server({{"q", 1.0}});
  auto b = server({{"q", 1.0}});
  ASSERT_TRUE(a->global_bundle()->bitwise_equal(*b->global_bundle()));
  const TensorBundle& global = *a->global_bundle();
  QFedAvgClient client;
  auto first = fit(client, global, 0);
  auto other = fit(client, global, 1);
  ASSERT_TRUE(first.ok() && other.ok());
  auto aa = a->begin_aggregation(1);
  auto ab = b->begin_aggregation(1);
  ASSERT_TRUE(aa.ok() && ab.ok());
  const auto update = [](const std::string& id, const FitOutput& out) {
    ClientUpdate u;
    u.client_id = id;
    u.num_examples = out.num_examples;
    u.bundle = out.update.clone();
    u.metrics = out.metrics;
    return u;
  };
  ASSERT_TRUE((*aa)->add(update("client-0", *first)).ok());
  const Status second = (*aa)->add(update("client-0", *other));
  EXPECT_EQ(second.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(second, "second update")) << second.message();
  ClientUpdate no_examples = update("client-1", *other);
  no_examples.num_examples = 0;
  EXPECT_FALSE((*aa)->add(std::move(no_examples)).ok());
  ASSERT_TRUE((*ab)->add(update("client-0", *first)).ok());
  auto ma = (*aa)->finish({});
  auto mb = (*ab)->finish({});
  ASSERT_TRUE(ma.ok() && mb.ok());
  EXPECT_EQ((*ma)["updated"], true);
  EXPECT_EQ(*ma, *mb);
  EXPECT_TRUE(a->global_bundle()->bitwise_equal(*b->global_bundle()));
}

// FedAvgServer's rules, with the configured RoundOptions.
TEST_F(QFedAvgTest, MinFitClientsAndAcceptFailuresKeepTheModel) {
  {
    auto s = server({{"min_fit_clients", 3}});
    const std::shared_ptr<const TensorBundle> before = s->global_bundle();
    auto aggregation = s->begin_aggregation(1);
    ASSERT_TRUE(aggregation.ok());
    for (int k = 0; k < 2; ++k) {
      ClientUpdate u;
      u.client_id = "client-" + std::to_string(k);
      u.num_examples = 5;
      u.bundle = with_loss(*before, 1.0 + k);
      ASSERT_TRUE((*aggregation)->add(std::move(u)).ok());
    }
    auto metrics = (*aggregation)->finish({});
    ASSERT_TRUE(metrics.ok());
    EXPECT_EQ((*metrics)["updated"], false);
    EXPECT_EQ((*metrics)["updates"], 2);
    EXPECT_NE((*metrics)["reason"].get<std::string>().find("min_fit_clients = 3"),
              std::string::npos);
    EXPECT_EQ(s->global_bundle(), before);
    // The round's sums are still reported.
    EXPECT_EQ((*metrics)["qfedavg"]["global_loss"]["max"], 2.0);
  }
  for (bool accept : {false, true}) {
    SCOPED_TRACE(accept);
    auto s = server({{"accept_failures", accept}});
    const std::shared_ptr<const TensorBundle> before = s->global_bundle();
    auto aggregation = s->begin_aggregation(1);
    ASSERT_TRUE(aggregation.ok());
    ClientUpdate u;
    u.client_id = "client-0";
    u.num_examples = 5;
    u.bundle = with_loss(*before, 1.0);
    ASSERT_TRUE((*aggregation)->add(std::move(u)).ok());
    auto metrics = (*aggregation)->finish({{"client-1", "deadline exceeded"}});
    ASSERT_TRUE(metrics.ok());
    EXPECT_EQ((*metrics)["updated"], accept);
    EXPECT_EQ((*metrics)["failures"], 1);
    if (!accept) {
      EXPECT_NE((*metrics)["reason"].get<std::string>().find("accept_failures"), std::string::npos);
      EXPECT_EQ(s->global_bundle(), before);
    } else {
      EXPECT_EQ(s->global_bundle()->metadata()["round"], 1);
    }
  }
}

TEST_F(QFedAvgTest, RoundsRunAndChangeTheModel) {
  auto s = server();
  QFedAvgClient client;
  std::shared_ptr<const TensorBundle> before = s->global_bundle();
  for (int round = 1; round <= 3; ++round) {
    SCOPED_TRACE(round);
    nlohmann::json m = run_round(*s, client, config_, clients_, round);
    ASSERT_EQ(m["updated"], true) << m.dump();
    ASSERT_TRUE(m["loss"].is_number()) << m.dump();
    EXPECT_TRUE(std::isfinite(m["loss"].get<double>()));
    const double step = m["qfedavg"]["step"].get<double>();
    EXPECT_GT(step, 0);
    EXPECT_LE(step, 1);
    EXPECT_TRUE(std::isfinite(m["qfedavg"]["global_loss"]["mean"].get<double>()));
    EXPECT_EQ(s->global_bundle()->metadata()["round"], round);
    EXPECT_EQ(s->global_bundle()->metadata()["strategy"], "qfedavg");
    EXPECT_FALSE(s->global_bundle()
                     ->find("heads.classifier.weight")
                     ->bitwise_equal(*before->find("heads.classifier.weight")));
    before = s->global_bundle();
  }
}

TEST_F(QFedAvgTest, ResumeFromASavedStateIsBitExact) {
  const nlohmann::json options = {{"q", 1.0}};
  auto a = server(options);
  QFedAvgClient client;
  run_round(*a, client, config_, clients_, 1);
  auto state = a->save_state();
  ASSERT_TRUE(state.ok()) << state.status().to_string();

  QFedAvgServer b{parse_qfedavg_options(options).value()};
  ASSERT_TRUE(b.load_state(state->clone()).ok());
  EXPECT_EQ(b.lipschitz(), a->lipschitz());
  EXPECT_EQ(b.norm_names(), a->norm_names());

  nlohmann::json ma = run_round(*a, client, config_, clients_, 2);
  nlohmann::json mb = run_round(b, client, config_, clients_, 2);
  EXPECT_EQ(ma, mb);
  EXPECT_TRUE(a->global_bundle()->bitwise_equal(*b.global_bundle()));
  EXPECT_TRUE(a->save_state()->bitwise_equal(*b.save_state()));
}

TEST_F(QFedAvgTest, LoadStateRefusesAStateItCannotUse) {
  auto s = server();
  auto state = s->save_state();
  ASSERT_TRUE(state.ok());
  std::vector<std::pair<TensorBundle, std::string>> bad;
  {
    TensorBundle b = state->clone();
    b.mutable_metadata().erase("qfedavg");
    bad.emplace_back(std::move(b), "no \"qfedavg\" object");
  }
  {
    TensorBundle b = state->clone();
    b.mutable_metadata()["qfedavg"]["lipschitz"] = 0.0;
    bad.emplace_back(std::move(b), "state.qfedavg.lipschitz: must be > 0");
  }
  {
    TensorBundle b = state->clone();
    EXPECT_TRUE(
        b.add(NamedTensor::from_values<float>("qfedavg/x", DType::kFloat32, {1}, {1.0f})).ok());
    bad.emplace_back(std::move(b), "unexpected tensor \"qfedavg/x\"");
  }
  for (auto& [bundle, message] : bad) {
    SCOPED_TRACE(message);
    QFedAvgServer t{QFedAvgOptions()};
    const Status st = t.load_state(std::move(bundle));
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(st, message)) << st.message();
    EXPECT_EQ(t.global_bundle(), nullptr);
  }
}

}  // namespace
}  // namespace fedtail::strategies

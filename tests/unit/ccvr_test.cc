// CCVR: the clients' feature statistics against torch's own computation on the same features,
// pooling against the statistics of the whole feature matrix, sampling, one calibration step by
// hand, what a statistics round changes (only the classifier, and only in a copy that evaluation
// uses until the next training round), refused statistics uploads, the round schedule, options,
// and save/load bit for bit.
#include "strategies/ccvr/ccvr.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "common/learning/train_loop.h"
#include "strategies/ccvr/class_gaussians.h"
#include "strategies/classifier_eval.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::infos;
using testing::inputs;
using testing::run_context;
using testing::separable;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;

const std::vector<std::string> kClassifier = {"heads.classifier.weight", "heads.classifier.bias"};

// n×d float32 rows, value (i, j) = uniform · (1 + j) + offset, from `rng`.
torch::Tensor uniform_rows(Rng& rng, int64_t n, int64_t d, double offset) {
  std::vector<float> v(static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < d; ++j) {
      v[static_cast<size_t>(i * d + j)] = static_cast<float>(rng.uniform() * (1 + j) + offset);
    }
  }
  return torch::tensor(v, torch::kFloat32).view({n, d});
}

std::vector<double> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

torch::Tensor to_tensor(const std::vector<double>& v, std::vector<int64_t> shape) {
  return torch::tensor(v, torch::kFloat64).view(shape);
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

bool same(const TensorBundle& a, const TensorBundle& b, const std::string& name) {
  return a.find(name) != nullptr && b.find(name) != nullptr &&
         a.find(name)->bitwise_equal(*b.find(name));
}

// `b` with its tensor of `replacement`'s name replaced by `replacement` (appended when absent).
TensorBundle replaced(const TensorBundle& b, NamedTensor replacement) {
  const std::string name = replacement.name();
  TensorBundle out;
  bool done = false;
  for (const NamedTensor& t : b) {
    if (t.name() == name) {
      EXPECT_TRUE(out.add(std::move(replacement)).ok());
      done = true;
    } else {
      EXPECT_TRUE(out.add(t.clone()).ok());
    }
  }
  if (!done) {
    EXPECT_TRUE(out.add(std::move(replacement)).ok());
  }
  EXPECT_TRUE(out.set_metadata(b.metadata()).ok());
  return out;
}

TensorBundle without(const TensorBundle& b, const std::string& name) {
  TensorBundle out;
  for (const NamedTensor& t : b) {
    if (t.name() != name) {
      EXPECT_TRUE(out.add(t.clone()).ok());
    }
  }
  EXPECT_TRUE(out.set_metadata(b.metadata()).ok());
  return out;
}

NamedTensor zeros(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  return NamedTensor::zeros(name, dtype, std::move(shape)).value();
}

class CcvrTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    clients_ = sim_clients(config_, 3);
    run_ = run_context(config_);
  }

  // A CcvrServer with `options`, initialised for a run of `total_rounds` rounds.
  std::unique_ptr<CcvrServer> server(const nlohmann::json& options = nlohmann::json::object(),
                                     int total_rounds = 3) {
    auto parsed = parse_ccvr_options(options);
    EXPECT_TRUE(parsed.ok()) << parsed.status().to_string();
    auto s = std::make_unique<CcvrServer>(parsed.value());
    run_.total_rounds = total_rounds;
    run_.strategy_config = options;
    Rng rng(11);
    Status status = s->initialize(run_, rng);
    EXPECT_TRUE(status.ok()) << status.to_string();
    return s;
  }

  // A server restored from `s`'s saved state alone (no initialize), as on resume.
  std::unique_ptr<CcvrServer> reload(const CcvrServer& s, const nlohmann::json& options) {
    auto state = s.save_state();
    EXPECT_TRUE(state.ok()) << state.status().to_string();
    auto loaded = std::make_unique<CcvrServer>(parse_ccvr_options(options).value());
    Status status = loaded->load_state(std::move(state).value());
    EXPECT_TRUE(status.ok()) << status.to_string();
    return loaded;
  }

  // One round without network, like testing::run_round, but each client also gets its task's
  // config (what makes a statistics task). Returns finish()'s metrics.
  nlohmann::json run_ccvr_round(ServerStrategy& server, int round) {
    CcvrClient algorithm;
    Rng sample_rng = Rng::derive(config_.seed, "sample", {static_cast<uint64_t>(round)});
    auto tasks = server.configure_fit(round, infos(clients_), sample_rng);
    EXPECT_TRUE(tasks.ok()) << tasks.status().to_string();
    if (!tasks.ok()) return {};
    auto aggregation = server.begin_aggregation(round);
    EXPECT_TRUE(aggregation.ok()) << aggregation.status().to_string();
    if (!aggregation.ok()) return {};
    for (const TaskSpec& task : *tasks) {
      uint64_t index = 0;
      while (index < clients_.size() && clients_[index].id != task.client_id) ++index;
      EXPECT_LT(index, clients_.size());
      if (index == clients_.size()) return {};
      Rng rng = Rng::derive(config_.seed, "fit", {static_cast<uint64_t>(round), index});
      ClientContext ctx = client_context(config_, clients_[index], round, &rng);
      ctx.task_config = task.config;
      auto out = algorithm.fit(ctx, *task.bundle);
      EXPECT_TRUE(out.ok()) << out.status().to_string();
      if (!out.ok()) return {};
      ClientUpdate update;
      update.client_id = task.client_id;
      update.num_examples = out->num_examples;
      update.bundle = std::move(out->update);
      update.metrics = out->metrics;
      Status added = (*aggregation)->add(std::move(update));
      EXPECT_TRUE(added.ok()) << added.to_string();
    }
    auto metrics = (*aggregation)->finish({});
    EXPECT_TRUE(metrics.ok()) << metrics.status().to_string();
    return metrics.ok() ? *metrics : nlohmann::json();
  }

  // Client k's statistics upload for `global`.
  Result<FitOutput> statistics(const TensorBundle& global, int k) {
    Rng rng(5);
    ClientContext ctx = client_context(config_, clients_[k], 1, &rng);
    ctx.task_config = {{"ccvr", "statistics"}};
    CcvrClient algorithm;
    return algorithm.fit(ctx, global);
  }

  ServerEvalContext eval_context(const Dataset* test) const {
    ServerEvalContext eval;
    eval.test = test;
    eval.train_class_counts = {100, 100};
    eval.batch_size = 64;
    return eval;
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
};

// ---------------------------------------------------------------------------------------------
// Client statistics

TEST_F(CcvrTest, ClientStatisticsAreTheClassCountsMeansAndUnbiasedCovariancesOfItsFeatures) {
  auto s = server();
  const TensorBundle& global = *s->trained_bundle();
  const SimClient& c = clients_[1];
  auto out = statistics(global, 1);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->num_examples, c.train.size());
  EXPECT_EQ(out->update.names(), std::vector<std::string>({"ccvr.count", "ccvr.mean", "ccvr.cov"}));
  EXPECT_EQ(out->metrics["classes"], 2);
  const NamedTensor& count = *out->update.find("ccvr.count");
  const NamedTensor& mean = *out->update.find("ccvr.mean");
  const NamedTensor& cov = *out->update.find("ccvr.cov");
  ASSERT_EQ(count.dtype(), DType::kInt64);
  ASSERT_EQ(mean.dtype(), DType::kFloat64);
  ASSERT_EQ(cov.dtype(), DType::kFloat32);
  ASSERT_EQ(cov.shape(), std::vector<int64_t>({2, 16, 16}));

  // By hand: the global model in eval mode (BatchNorm running statistics) on the unaugmented
  // training images; torch's own mean and (unbiased) covariance per class.
  Rng init(999);
  Model ref = make_model(config_.model, init).value();
  ASSERT_TRUE(load_module_state(*ref, global, /*strict=*/true).ok());
  ref->eval();
  torch::Tensor f;
  {
    torch::NoGradGuard no_grad;
    f = ref->features(inputs(c.train)).to(torch::kFloat64);
  }
  const std::vector<int64_t> counts = c.train.class_counts();
  for (int64_t k = 0; k < 2; ++k) {
    SCOPED_TRACE(k);
    const torch::Tensor rows = f.index_select(0, c.train.labels.eq(k).nonzero().squeeze(1));
    EXPECT_EQ(count.data<int64_t>()[k], counts[k]);
    ASSERT_GE(rows.size(0), 2);
    const torch::Tensor want_mean = rows.mean(0);
    const torch::Tensor want_cov = torch::cov(rows.t());
    EXPECT_LE(max_abs_diff(to_torch(mean)[k], want_mean), 1e-5);
    const double scale = 1 + want_cov.abs().max().item<double>();
    EXPECT_LE(max_abs_diff(to_torch(cov)[k], want_cov), 1e-5 * scale);
    // Exactly symmetric.
    EXPECT_TRUE(torch::equal(to_torch(cov)[k], to_torch(cov)[k].t()));
  }

  // Without the task config the client is FedAvg's, bit for bit.
  CcvrClient ccvr;
  FedAvgClient fedavg;
  Rng r1(9), r2(9);
  ClientContext c1 = client_context(config_, clients_[0], 1, &r1);
  ClientContext c2 = client_context(config_, clients_[0], 1, &r2);
  auto a = ccvr.fit(c1, global);
  auto b = fedavg.fit(c2, global);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_TRUE(a->update.bitwise_equal(b->update));
  EXPECT_EQ(a->metrics, b->metrics);

  // Another "ccvr" value is refused.
  Rng r3(9);
  ClientContext c3 = client_context(config_, clients_[0], 1, &r3);
  c3.task_config = {{"ccvr", "train"}};
  auto refused = ccvr.fit(c3, global);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("\"ccvr\""), std::string::npos)
      << refused.status().message();
}

// ---------------------------------------------------------------------------------------------
// Pooling

TEST(CcvrPoolTest, PoolingGivesTheMeanAndUnbiasedCovarianceOfTheWholeMatrix) {
  const int64_t d = 5;
  const int64_t num_classes = 4;
  // (class, rows) per client: class 0 everywhere, class 1 with a single example at client 1,
  // class 2 only at client 2, class 3 a single example in all.
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> parts = {
      {{0, 6}, {1, 4}}, {{0, 5}, {1, 1}, {3, 1}}, {{0, 3}, {2, 7}}};
  Rng rng(3);
  std::vector<torch::Tensor> features, labels;
  for (const auto& part : parts) {
    std::vector<torch::Tensor> f, y;
    for (const auto& [c, n] : part) {
      f.push_back(uniform_rows(rng, n, d, /*offset=*/static_cast<double>(c)));
      y.push_back(torch::full({n}, c, torch::kInt64));
    }
    // Interleave the classes: the statistics must not depend on the rows' order.
    const torch::Tensor all_f = torch::cat(f);
    const torch::Tensor all_y = torch::cat(y);
    std::vector<int64_t> order(static_cast<size_t>(all_y.size(0)));
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    rng.shuffle(order);
    const torch::Tensor perm = torch::tensor(order, torch::kInt64);
    features.push_back(all_f.index_select(0, perm));
    labels.push_back(all_y.index_select(0, perm));
  }

  auto pool = GaussianPool::create(num_classes, d);
  auto reversed = GaussianPool::create(num_classes, d);
  ASSERT_TRUE(pool.ok() && reversed.ok());
  std::vector<TensorBundle> uploads;
  for (size_t k = 0; k < parts.size(); ++k) {
    auto stats = class_statistics(features[k], labels[k], num_classes);
    ASSERT_TRUE(stats.ok()) << stats.status().to_string();
    uploads.push_back(std::move(stats).value());
  }
  for (size_t k = 0; k < uploads.size(); ++k) {
    ASSERT_TRUE(pool->add(uploads[k], labels[k].size(0)).ok());
    const size_t r = uploads.size() - 1 - k;
    ASSERT_TRUE(reversed->add(uploads[r], labels[r].size(0)).ok());
  }
  EXPECT_EQ(pool->updates(), 3);
  EXPECT_EQ(pool->total_examples(), 27);

  const torch::Tensor whole = torch::cat(features).to(torch::kFloat64);
  const torch::Tensor whole_labels = torch::cat(labels);
  for (int64_t c = 0; c < num_classes; ++c) {
    SCOPED_TRACE(c);
    const torch::Tensor rows = whole.index_select(0, whole_labels.eq(c).nonzero().squeeze(1));
    const ClassGaussian g = pool->gaussian(c);
    EXPECT_EQ(g.count, rows.size(0));
    ASSERT_EQ(g.mean.size(), static_cast<size_t>(d));
    EXPECT_LE(max_abs_diff(to_tensor(g.mean, {d}), rows.mean(0)), 1e-6);
    if (rows.size(0) >= 2) {
      ASSERT_EQ(g.cov.size(), static_cast<size_t>(d * d));
      EXPECT_LE(max_abs_diff(to_tensor(g.cov, {d, d}), torch::cov(rows.t())), 1e-6);
    } else {
      EXPECT_TRUE(g.cov.empty());  // class 3: no covariance, no virtual features
    }
    // The arrival order changes nothing.
    const ClassGaussian h = reversed->gaussian(c);
    EXPECT_EQ(g.count, h.count);
    EXPECT_EQ(g.mean, h.mean);
    EXPECT_EQ(g.cov, h.cov);
  }
}

// ---------------------------------------------------------------------------------------------
// Sampling

TEST(CcvrSampleTest, ALargeSampleHasTheGaussiansMeanAndCovarianceAndTheSeedFixesTheBits) {
  const std::vector<double> mean = {1.0, -2.0, 0.5};
  const torch::Tensor a =
      torch::tensor({1.0, 0.0, 0.0, 0.5, 2.0, 0.0, -0.3, 0.4, 0.7}, torch::kFloat64).view({3, 3});
  const torch::Tensor sigma = a.mm(a.t());
  const std::vector<double> cov = to_vector(sigma);
  const int64_t n = 50000;
  Rng rng(42);
  auto s = sample_gaussian(mean, cov, n, rng);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->factor, CovFactor::kCholesky);
  EXPECT_EQ(s->features.size(0), n);
  EXPECT_EQ(s->features.size(1), 3);
  EXPECT_EQ(s->features.scalar_type(), torch::kFloat32);
  const torch::Tensor x = s->features.to(torch::kFloat64);
  const torch::Tensor empirical_mean = x.mean(0);
  const torch::Tensor empirical_cov = torch::cov(x.t());
  for (int64_t i = 0; i < 3; ++i) {
    const double sii = sigma[i][i].item<double>();
    // Six standard errors of the estimators.
    EXPECT_NEAR(empirical_mean[i].item<double>(), mean[i], 6 * std::sqrt(sii / n)) << i;
    for (int64_t j = 0; j < 3; ++j) {
      const double sjj = sigma[j][j].item<double>();
      const double sij = sigma[i][j].item<double>();
      EXPECT_NEAR(empirical_cov[i][j].item<double>(), sij,
                  6 * std::sqrt((sii * sjj + sij * sij) / n))
          << i << "," << j;
    }
  }

  Rng same_a(7), same_b(7), other(8);
  auto first = sample_gaussian(mean, cov, 100, same_a);
  auto second = sample_gaussian(mean, cov, 100, same_b);
  auto third = sample_gaussian(mean, cov, 100, other);
  ASSERT_TRUE(first.ok() && second.ok() && third.ok());
  EXPECT_TRUE(torch::equal(first->features, second->features));
  EXPECT_FALSE(torch::equal(first->features, third->features));
}

TEST(CcvrSampleTest, SingularAndIndefiniteCovariancesStillGiveFiniteSamples) {
  // Rank 1, with a dead feature (row and column 2 zero): Cholesky needs jitter.
  const torch::Tensor v = torch::tensor({1.0, 2.0, 0.0, -1.0}, torch::kFloat64);
  const std::vector<double> mean = {0.5, 0.0, 3.0, -1.0};
  Rng rng(1);
  auto s = sample_gaussian(mean, to_vector(v.unsqueeze(1).mm(v.unsqueeze(0))), 2000, rng);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->factor, CovFactor::kJitteredCholesky);
  EXPECT_GT(s->jitter, 0);
  EXPECT_TRUE(torch::isfinite(s->features).all().item<bool>());
  // The samples stay on the line mu + t·v, up to the jitter's spread (sqrt(1.5e-5) ≈ 0.004).
  const torch::Tensor centred = s->features.to(torch::kFloat64) - to_tensor(mean, {1, 4});
  const torch::Tensor unit = v / v.norm();
  const torch::Tensor off_line = centred - centred.mm(unit.unsqueeze(1)).mm(unit.unsqueeze(0));
  EXPECT_LT(off_line.abs().max().item<double>(), 0.05);
  EXPECT_GT(centred.mm(unit.unsqueeze(1)).std().item<double>(), 1.0);  // ||v|| = sqrt(6)

  // Not positive semi-definite (eigenvalues 4 and -2): no jitter up to the mean diagonal helps,
  // the eigendecomposition samples the PSD part 4·u u^T, u = (1, 1)/sqrt(2).
  Rng rng2(2);
  auto e = sample_gaussian({0.0, 0.0}, {1.0, 3.0, 3.0, 1.0}, 500, rng2);
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  EXPECT_EQ(e->factor, CovFactor::kEigen);
  EXPECT_TRUE(torch::isfinite(e->features).all().item<bool>());
  const torch::Tensor diff = e->features.select(1, 0) - e->features.select(1, 1);
  EXPECT_LT(diff.abs().max().item<double>(), 1e-4);

  // The zero matrix: every sample is the mean.
  Rng rng3(3);
  auto z = sample_gaussian({1.5, -0.25}, {0.0, 0.0, 0.0, 0.0}, 10, rng3);
  ASSERT_TRUE(z.ok());
  EXPECT_EQ(z->factor, CovFactor::kZero);
  EXPECT_TRUE(
      torch::equal(z->features, torch::tensor({1.5f, -0.25f}, torch::kFloat32).expand({10, 2})));

  // Bad input is refused.
  Rng rng4(4);
  EXPECT_EQ(sample_gaussian({1.0}, {std::nan("")}, 3, rng4).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(sample_gaussian({1.0, 2.0}, {1.0}, 3, rng4).status().code(),
            StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Calibration

TEST(CcvrCalibrationTest, OneFullBatchStepIsPlainSgdOnTheCrossEntropy) {
  Rng rng(21);
  const torch::Tensor w0 = uniform_rows(rng, 3, 4, -0.5);
  const torch::Tensor b0 = uniform_rows(rng, 1, 3, -0.5).view({3});
  const torch::Tensor x = uniform_rows(rng, 10, 4, 0.0);
  const torch::Tensor y = torch::arange(10, torch::kInt64).remainder(3);
  const torch::Tensor w_copy = w0.clone();

  CalibrationOptions options;
  options.lr = 0.3;
  options.epochs = 1;
  options.batch_size = 100;  // one batch
  Rng order(1);
  auto r = calibrate_classifier(w0, b0, x, y, options, order);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->steps, 1);

  // By hand: W - lr ∇W CE(x W^T + b, y), the same for b.
  torch::Tensor w = w0.clone().set_requires_grad(true);
  torch::Tensor b = b0.clone().set_requires_grad(true);
  torch::Tensor loss = torch::nn::functional::cross_entropy(torch::addmm(b, x, w.t()), y);
  loss.backward();
  EXPECT_NEAR(r->mean_loss, loss.item<double>(), 1e-6);
  EXPECT_LE(max_abs_diff(r->weight, w.detach() - options.lr * w.grad()), 1e-6);
  EXPECT_LE(max_abs_diff(r->bias, b.detach() - options.lr * b.grad()), 1e-6);
  EXPECT_TRUE(torch::equal(w0, w_copy));  // the input is not modified

  // Batches of 4 over 2 epochs: 3 steps an epoch; no bias in, no bias out.
  options.epochs = 2;
  options.batch_size = 4;
  Rng order2(1);
  auto r2 = calibrate_classifier(w0, torch::Tensor(), x, y, options, order2);
  ASSERT_TRUE(r2.ok()) << r2.status().to_string();
  EXPECT_EQ(r2->steps, 6);
  EXPECT_FALSE(r2->bias.defined());
  EXPECT_FALSE(torch::equal(r2->weight, w0));

  options.lr = 0;
  Rng order3(1);
  EXPECT_EQ(calibrate_classifier(w0, b0, x, y, options, order3).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(CcvrTest, AStatisticsRoundCalibratesOnlyTheClassifierOfACopyThatEvaluationUses) {
  auto s = server({{"calibrate_every", 2}}, /*total_rounds=*/5);
  auto m1 = run_ccvr_round(*s, 1);
  EXPECT_EQ(m1["updated"], true);
  EXPECT_EQ(m1["calibrated"], false);
  const TensorBundle before = s->trained_bundle()->clone();
  EXPECT_EQ(s->calibrated_bundle(), nullptr);

  auto m2 = run_ccvr_round(*s, 2);
  EXPECT_EQ(m2["updated"], true);
  EXPECT_EQ(m2["calibrated"], true);
  EXPECT_EQ(m2["updates"], 3);
  EXPECT_EQ(m2["examples"],
            clients_[0].train.size() + clients_[1].train.size() + clients_[2].train.size());
  EXPECT_EQ(m2["classes_calibrated"], 2);
  EXPECT_EQ(m2["virtual_features"], 400);  // 2 classes × samples_per_class 200
  EXPECT_EQ(m2["calibration_steps"], 25);  // one epoch of 400 in batches of local.batch_size 16
  ASSERT_TRUE(m2["calibration_loss"].is_number()) << m2.dump();
  EXPECT_TRUE(std::isfinite(m2["calibration_loss"].get<double>()));

  // The trained model is unchanged; the copy differs from it in the classifier only.
  EXPECT_TRUE(s->trained_bundle()->bitwise_equal(before));
  std::shared_ptr<const TensorBundle> calibrated = s->calibrated_bundle();
  ASSERT_NE(calibrated, nullptr);
  EXPECT_EQ(s->global_bundle(), calibrated);
  EXPECT_EQ(calibrated->names(), before.names());
  for (const NamedTensor& t : before) {
    const bool classifier = t.name() == kClassifier[0] || t.name() == kClassifier[1];
    EXPECT_EQ(same(*calibrated, before, t.name()), !classifier) << t.name();
  }
  EXPECT_EQ(calibrated->metadata()["calibrated_round"], 2);
  EXPECT_EQ(calibrated->metadata()["round"], 1);

  // Generic accuracy is the copy's; the trained model's is reported beside it.
  Dataset test = separable(100, 31);
  const ServerEvalContext eval = eval_context(&test);
  const ModelOptions model_options = run_model_options(run_).value();
  auto e = s->evaluate(2, eval);
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  auto want_calibrated =
      evaluate_classifier(model_options, config_.local.augment, *calibrated, eval);
  auto want_trained = evaluate_classifier(model_options, config_.local.augment, before, eval);
  ASSERT_TRUE(want_calibrated.ok() && want_trained.ok());
  EXPECT_EQ((*e)["calibrated"], true);
  EXPECT_EQ((*e)["generic"], (*want_calibrated)["generic"]);
  EXPECT_EQ((*e)["generic_by_count_rule"], (*want_calibrated)["generic_by_count_rule"]);
  EXPECT_EQ((*e)["generic_uncalibrated"], (*want_trained)["generic"]);

  // Clients evaluate the copy too (personalised accuracy), but train the trained model.
  Rng er(3);
  auto eval_tasks = s->configure_evaluate(2, infos(clients_), er);
  ASSERT_TRUE(eval_tasks.ok());
  ASSERT_EQ(eval_tasks->size(), 3u);
  for (const TaskSpec& t : *eval_tasks) EXPECT_EQ(t.bundle, calibrated);
  Rng fr(4);
  auto fit_tasks = s->configure_fit(3, infos(clients_), fr);
  ASSERT_TRUE(fit_tasks.ok());
  ASSERT_EQ(fit_tasks->size(), 3u);
  for (const TaskSpec& t : *fit_tasks) {
    EXPECT_EQ(t.bundle, s->trained_bundle());
    EXPECT_FALSE(t.config.contains("ccvr"));
  }

  // A training round replaces the trained model and drops the copy: FedAvg again.
  auto m3 = run_ccvr_round(*s, 3);
  EXPECT_EQ(m3["updated"], true);
  EXPECT_FALSE(s->trained_bundle()->bitwise_equal(before));
  EXPECT_EQ(s->calibrated_bundle(), nullptr);
  EXPECT_EQ(s->global_bundle(), s->trained_bundle());
  auto e3 = s->evaluate(3, eval);
  ASSERT_TRUE(e3.ok());
  EXPECT_EQ((*e3)["calibrated"], false);
  EXPECT_EQ((*e3)["generic"], (*e3)["generic_uncalibrated"]);
}

// ---------------------------------------------------------------------------------------------
// Refused uploads

TEST_F(CcvrTest, MalformedStatisticsUploadsAreRefusedNamingTheProblem) {
  auto s = server();  // 3 rounds: round 3 is the statistics round
  ASSERT_TRUE(s->is_statistics_round(3));
  auto valid = statistics(*s->trained_bundle(), 0);
  ASSERT_TRUE(valid.ok()) << valid.status().to_string();
  const TensorBundle& stats = valid->update;
  const int64_t n = valid->num_examples;
  auto aggregation = s->begin_aggregation(3);
  ASSERT_TRUE(aggregation.ok());

  std::vector<testing::RefusedUpdate> cases;
  {
    TensorBundle b = stats.clone();
    b.find("ccvr.mean")->data<double>()[3] = std::nan("");
    cases.push_back(
        {"NaN mean", std::move(b), StatusCode::kCorruption, {"\"ccvr.mean\"", "non-finite"}});
  }
  {
    TensorBundle b = stats.clone();
    b.find("ccvr.cov")->data<float>()[5] = std::numeric_limits<float>::infinity();
    cases.push_back(
        {"Inf covariance", std::move(b), StatusCode::kCorruption, {"\"ccvr.cov\"", "non-finite"}});
  }
  cases.push_back({"wrong covariance shape",
                   replaced(stats, zeros("ccvr.cov", DType::kFloat32, {2, 16, 17})),
                   StatusCode::kInvalidArgument,
                   {"\"ccvr.cov\"", "shape [2,16,17]"}});
  cases.push_back({"too few classes",
                   replaced(stats, zeros("ccvr.count", DType::kInt64, {1})),
                   StatusCode::kInvalidArgument,
                   {"\"ccvr.count\"", "shape"}});
  cases.push_back({"float32 mean",
                   replaced(stats, zeros("ccvr.mean", DType::kFloat32, {2, 16})),
                   StatusCode::kInvalidArgument,
                   {"\"ccvr.mean\"", "dtype"}});
  cases.push_back({"missing count",
                   without(stats, "ccvr.count"),
                   StatusCode::kInvalidArgument,
                   {"\"ccvr.count\"", "missing"}});
  cases.push_back({"extra tensor",
                   replaced(stats, zeros("heads.classifier.bias", DType::kFloat32, {2})),
                   StatusCode::kInvalidArgument,
                   {"\"heads.classifier.bias\"", "not a CCVR"}});
  cases.push_back({"counts not summing to num_examples",
                   stats.clone(),
                   StatusCode::kInvalidArgument,
                   {"\"ccvr.count\"", "sum to"},
                   n + 1});
  {
    TensorBundle b = stats.clone();
    int64_t* counts = b.find("ccvr.count")->data<int64_t>();
    counts[0] = -1;
    counts[1] = n + 1;  // the sum stays n
    cases.push_back({"negative count",
                     std::move(b),
                     StatusCode::kInvalidArgument,
                     {"\"ccvr.count\"", "negative count"}});
  }
  {
    TensorBundle b = stats.clone();
    const int64_t* counts = b.find("ccvr.count")->data<int64_t>();
    const int64_t c = counts[0] >= 2 ? 0 : 1;
    b.find("ccvr.cov")->data<float>()[c * 16 * 16 + 3 * 16 + 3] = -1.0f;
    cases.push_back({"negative variance",
                     std::move(b),
                     StatusCode::kInvalidArgument,
                     {"\"ccvr.cov\"", "negative variance"}});
  }
  {
    // A model update instead of statistics.
    cases.push_back({"model update",
                     s->trained_bundle()->clone(),
                     StatusCode::kInvalidArgument,
                     {"\"ccvr.count\"", "missing"}});
  }
  testing::expect_refused_then_accepted_once(**aggregation, cases, stats, n);
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  EXPECT_EQ((*metrics)["updates"], 1);
  EXPECT_EQ((*metrics)["examples"], n);
  EXPECT_EQ((*metrics)["calibrated"], true);

  // A training round refuses statistics as it refuses any misshapen model update.
  auto training = s->begin_aggregation(1);
  ASSERT_TRUE(training.ok());
  ClientUpdate update;
  update.client_id = "client-x";
  update.num_examples = n;
  update.bundle = stats.clone();
  EXPECT_EQ((*training)->add(std::move(update)).code(), StatusCode::kInvalidArgument);
}

TEST_F(CcvrTest, TooFewStatisticsKeepTheModels) {
  auto s = server({{"min_fit_clients", 2}});
  auto valid = statistics(*s->trained_bundle(), 0);
  ASSERT_TRUE(valid.ok());
  auto aggregation = s->begin_aggregation(3);
  ASSERT_TRUE(aggregation.ok());
  ClientUpdate update;
  update.client_id = clients_[0].id;
  update.num_examples = valid->num_examples;
  update.bundle = std::move(valid->update);
  ASSERT_TRUE((*aggregation)->add(std::move(update)).ok());
  auto metrics = (*aggregation)->finish({{clients_[1].id, "deadline exceeded"}});
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ((*metrics)["updated"], false);
  EXPECT_EQ((*metrics)["calibrated"], false);
  EXPECT_EQ((*metrics)["failures"], 1);
  EXPECT_NE((*metrics)["reason"].get<std::string>().find("min_fit_clients"), std::string::npos);
  EXPECT_EQ(s->calibrated_bundle(), nullptr);
  EXPECT_EQ(s->global_bundle(), s->trained_bundle());
}

// ---------------------------------------------------------------------------------------------
// Schedule

TEST_F(CcvrTest, TheLastRoundAndEveryKthRoundAreStatisticsRoundsForEveryClient) {
  auto last_only = server({{"fraction_fit", 0.5}}, /*total_rounds=*/3);
  for (int round = 1; round <= 3; ++round) {
    SCOPED_TRACE(round);
    EXPECT_EQ(last_only->is_statistics_round(round), round == 3);
    Rng rng = Rng::derive(config_.seed, "sample", {static_cast<uint64_t>(round)});
    auto tasks = last_only->configure_fit(round, infos(clients_), rng);
    ASSERT_TRUE(tasks.ok()) << tasks.status().to_string();
    if (round < 3) {
      EXPECT_EQ(tasks->size(), 1u);  // FedAvg's sampling: floor(0.5 × 3)
      EXPECT_FALSE((*tasks)[0].config.contains("ccvr"));
      continue;
    }
    ASSERT_EQ(tasks->size(), 3u);  // every client, whatever fraction_fit
    for (size_t k = 0; k < 3; ++k) {
      EXPECT_EQ((*tasks)[k].client_id, clients_[k].id);
      EXPECT_EQ((*tasks)[k].config, nlohmann::json({{"ccvr", "statistics"}}));
      EXPECT_EQ((*tasks)[k].bundle, last_only->trained_bundle());
    }
  }

  auto every_2 = server({{"calibrate_every", 2}}, /*total_rounds=*/5);
  std::vector<int> statistics_rounds;
  for (int round = 1; round <= 5; ++round) {
    if (every_2->is_statistics_round(round)) statistics_rounds.push_back(round);
  }
  EXPECT_EQ(statistics_rounds, std::vector<int>({2, 4, 5}));

  // Resumed from its state alone, the server keeps the schedule (T is in the state).
  auto resumed = reload(*every_2, {{"calibrate_every", 2}});
  EXPECT_EQ(resumed->total_rounds(), 5);
  for (int round = 1; round <= 5; ++round) {
    EXPECT_EQ(resumed->is_statistics_round(round), every_2->is_statistics_round(round)) << round;
  }

  // Too few clients for a statistics round: the engine waits for more.
  auto needs_4 = server({{"min_fit_clients", 4}}, /*total_rounds=*/3);
  Rng rng(1);
  EXPECT_EQ(needs_4->configure_fit(3, infos(clients_), rng).status().code(),
            StatusCode::kFailedPrecondition);
  // Not initialised: nothing to send.
  CcvrServer bare(parse_ccvr_options(nullptr).value());
  EXPECT_FALSE(bare.is_statistics_round(1));
  EXPECT_EQ(bare.configure_fit(1, infos(clients_), rng).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(bare.global_bundle(), nullptr);
}

// ---------------------------------------------------------------------------------------------
// State

TEST_F(CcvrTest, SaveAndLoadRestoreTheServerBitExactlyBeforeAndAfterACalibration) {
  const nlohmann::json options = {{"calibrate_every", 2}, {"samples_per_class", 50}};
  auto a = server(options, /*total_rounds=*/5);

  // Before any calibration.
  auto b = reload(*a, options);
  EXPECT_TRUE(b->save_state()->bitwise_equal(*a->save_state()));
  EXPECT_TRUE(b->global_bundle()->bitwise_equal(*a->global_bundle()));
  EXPECT_EQ(b->calibration_lr(), a->calibration_lr());
  EXPECT_EQ(b->calibration_batch_size(), a->calibration_batch_size());
  EXPECT_EQ(b->calibrated_bundle(), nullptr);

  // After a calibration (round 2).
  run_ccvr_round(*a, 1);
  auto m = run_ccvr_round(*a, 2);
  ASSERT_EQ(m["calibrated"], true);
  auto c = reload(*a, options);
  const TensorBundle saved = a->save_state().value();
  EXPECT_TRUE(saved.contains("calibrated/heads.classifier.weight"));
  EXPECT_TRUE(c->save_state()->bitwise_equal(saved));
  ASSERT_NE(c->calibrated_bundle(), nullptr);
  EXPECT_TRUE(c->calibrated_bundle()->bitwise_equal(*a->calibrated_bundle()));
  EXPECT_TRUE(c->trained_bundle()->bitwise_equal(*a->trained_bundle()));
  Dataset test = separable(60, 31);
  auto ea = a->evaluate(2, eval_context(&test));
  auto ec = c->evaluate(2, eval_context(&test));
  ASSERT_TRUE(ea.ok() && ec.ok()) << ec.status().to_string();
  EXPECT_EQ(*ea, *ec);

  // Both go on identically: a training round, then a statistics round (seed and lr restored).
  for (int round = 3; round <= 4; ++round) {
    auto ma = run_ccvr_round(*a, round);
    auto mc = run_ccvr_round(*c, round);
    EXPECT_EQ(ma, mc) << round;
    EXPECT_TRUE(c->global_bundle()->bitwise_equal(*a->global_bundle())) << round;
  }
  EXPECT_NE(a->calibrated_bundle(), nullptr);

  // Malformed states are refused, and the server is left as it was.
  const TensorBundle good = c->save_state().value();
  {
    TensorBundle bad = good.clone();
    bad.mutable_metadata().erase("ccvr");
    Status status = c->load_state(std::move(bad));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("ccvr"), std::string::npos) << status.message();
  }
  {
    TensorBundle bad =
        replaced(good, zeros("calibrated/heads.classifier.weight", DType::kFloat32, {2, 15}));
    Status status = c->load_state(std::move(bad));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("calibrated/heads.classifier.weight"), std::string::npos)
        << status.message();
  }
  {
    TensorBundle bad = good.clone();
    bad.mutable_metadata()["ccvr"]["calibrated_metadata"] = nullptr;
    Status status = c->load_state(std::move(bad));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("unexpected tensor"), std::string::npos) << status.message();
  }
  EXPECT_TRUE(c->save_state()->bitwise_equal(good));
}

// ---------------------------------------------------------------------------------------------
// Options

TEST(CcvrOptionsTest, DefaultsAreFlBenchsAndErrorsNameTheField) {
  const CcvrOptions defaults = parse_ccvr_options(nullptr).value();
  EXPECT_EQ(defaults.calibrate_every, 0);
  EXPECT_EQ(defaults.samples_per_class, 200);
  EXPECT_EQ(defaults.calibration_epochs, 1);
  EXPECT_EQ(defaults.calibration_lr, 0);          // config.local.lr
  EXPECT_EQ(defaults.calibration_batch_size, 0);  // config.local.batch_size
  const CcvrOptions set = parse_ccvr_options({{"calibrate_every", 3},
                                              {"samples_per_class", 10},
                                              {"calibration_epochs", 2},
                                              {"calibration_lr", 0.2},
                                              {"calibration_batch_size", 8},
                                              {"fraction_fit", 0.5}})
                              .value();
  EXPECT_EQ(set.calibrate_every, 3);
  EXPECT_EQ(set.samples_per_class, 10);
  EXPECT_EQ(set.calibration_epochs, 2);
  EXPECT_EQ(set.calibration_lr, 0.2);
  EXPECT_EQ(set.calibration_batch_size, 8);
  EXPECT_EQ(set.round.fraction_fit, 0.5);

  EXPECT_EQ(parse_ccvr_options({{"samples_per_class", 0}}).status().message(),
            "config.strategy.samples_per_class: must be >= 1 (got 0)");
  const std::vector<nlohmann::json> bad = {
      {{"calibrate_every", -1}},   {{"calibrate_every", 1}},
      {{"samples_per_class", 0}},  {{"calibration_epochs", 0}},
      {{"calibration_lr", 0.0}},   {{"calibration_lr", -0.1}},
      {{"calibration_lr", "0.1"}}, {{"calibration_batch_size", 0}},
      {{"fraction_fit", 0.0}},     {{"bogus", 1}}};
  const StrategyEntry entry = ccvr_strategy_entry();
  EXPECT_EQ(entry.name, "ccvr");
  for (const nlohmann::json& options : bad) {
    const std::string key = options.begin().key();
    for (bool server_side : {true, false}) {
      Status s = server_side ? entry.server(options).status() : entry.client(options).status();
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << options.dump();
      EXPECT_NE(s.message().find("config.strategy." + key), std::string::npos) << s.message();
    }
  }
  EXPECT_TRUE(entry.server(nlohmann::json::object()).ok());
  EXPECT_TRUE(entry.client(nullptr).ok());
}

TEST_F(CcvrTest, CalibrationDefaultsComeFromConfigLocalAndModelGroupsAreRefused) {
  auto defaults = server();
  EXPECT_EQ(defaults->calibration_lr(), config_.local.lr);
  EXPECT_EQ(defaults->calibration_batch_size(), config_.local.batch_size);
  EXPECT_EQ(defaults->total_rounds(), 3);
  auto given = server({{"calibration_lr", 0.5}, {"calibration_batch_size", 7}});
  EXPECT_EQ(given->calibration_lr(), 0.5);
  EXPECT_EQ(given->calibration_batch_size(), 7);

  RunConfig groups = config_;
  groups.model.groups = {"cnn", "resnet8"};
  RunContext run = run_context(groups);
  CcvrServer heterogeneous(parse_ccvr_options(nullptr).value());
  Rng rng(1);
  Status status = heterogeneous.initialize(run, rng);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("config.model.groups"), std::string::npos) << status.message();

  RunContext no_rounds = run_context(config_);
  no_rounds.total_rounds = 0;
  CcvrServer none(parse_ccvr_options(nullptr).value());
  EXPECT_EQ(none.initialize(no_rounds, rng).code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// A tiny federation

TEST_F(CcvrTest, ATinyFederationLearnsAndItsCalibratedModelStillClassifies) {
  config_.local.epochs = 3;
  auto s = server(nlohmann::json::object(), /*total_rounds=*/5);
  for (int round = 1; round <= 5; ++round) {
    auto m = run_ccvr_round(*s, round);
    EXPECT_EQ(m["updated"], true) << round;
    EXPECT_EQ(m["calibrated"], round == 5) << round;
  }
  Dataset test = separable(200, 31);
  auto generic = s->evaluate(5, eval_context(&test));
  ASSERT_TRUE(generic.ok()) << generic.status().to_string();
  std::cout << "ccvr: generic " << (*generic)["generic"]["overall"] << ", uncalibrated "
            << (*generic)["generic_uncalibrated"]["overall"];
  EXPECT_EQ((*generic)["calibrated"], true);
  EXPECT_GT((*generic)["generic"]["overall"].get<double>(), 0.8) << generic->dump();

  // Personalised accuracy: each client scores the calibrated copy.
  CcvrClient algorithm;
  std::vector<EvalReport> reports;
  Rng er(2);
  auto tasks = s->configure_evaluate(5, infos(clients_), er);
  ASSERT_TRUE(tasks.ok());
  for (const TaskSpec& task : *tasks) {
    EXPECT_EQ(task.bundle, s->calibrated_bundle());
    size_t k = 0;
    while (clients_[k].id != task.client_id) ++k;
    Rng rng(77);
    ClientContext ctx = client_context(config_, clients_[k], 5, &rng);
    auto r = algorithm.evaluate(ctx, *task.bundle);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    reports.push_back({clients_[k].id, clients_[k].test.size(), *r});
  }
  auto personal = s->aggregate_evaluate(5, reports, {});
  ASSERT_TRUE(personal.ok());
  std::cout << ", personalised " << (*personal)["personalized"]["mean"] << "\n";
  EXPECT_GT((*personal)["personalized"]["mean"].get<double>(), 0.8) << personal->dump();
}

}  // namespace
}  // namespace fedtail::strategies

// CReFF: the client's gradient upload against autograd on the same images, the closed-form
// classifier gradients against autograd's double backward, the matching distance, feature
// matching and re-training, the pool's unweighted per-class means, what a round installs (FedAvg
// model, matched features, re-trained classifier) and what evaluation scores, refused uploads,
// save/load bit for bit, and the options.
#include "strategies/creff/creff.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "strategies/classifier_eval.h"
#include "strategies/weighted_average.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::infos;
using testing::inputs;
using testing::one_step_config;
using testing::run_context;
using testing::separable;
using testing::sim_clients;
using testing::SimClient;
using testing::tiny_config;

const std::string kWeight = "heads.classifier.weight";
const std::string kBias = "heads.classifier.bias";

// Small enough for fast tests.
const nlohmann::json kSmall = {{"features_per_class", 6},
                               {"match_steps", 4},
                               {"retrain_epochs", 3},
                               {"retrain_batch_size", 4},
                               {"gradient_repeats", 2}};

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

bool same(const TensorBundle& a, const std::string& name_a, const TensorBundle& b,
          const std::string& name_b) {
  const NamedTensor* x = a.find(name_a);
  const NamedTensor* y = b.find(name_b);
  return x != nullptr && y != nullptr && x->dtype() == y->dtype() && x->shape() == y->shape() &&
         std::equal(x->bytes(), x->bytes() + x->nbytes(), y->bytes());
}

// `b` without its creff.* tensors.
TensorBundle model_part(const TensorBundle& b) {
  TensorBundle out;
  for (const NamedTensor& t : b) {
    if (t.name().rfind("creff.", 0) != 0) {
      EXPECT_TRUE(out.add(t.clone()).ok());
    }
  }
  return out;
}

// `b` with tensor `name` removed, or replaced by `replacement` when given.
TensorBundle edited(const TensorBundle& b, const std::string& name,
                    std::optional<NamedTensor> replacement = std::nullopt) {
  TensorBundle out;
  for (const NamedTensor& t : b) {
    if (t.name() != name) {
      EXPECT_TRUE(out.add(t.clone()).ok());
    } else if (replacement) {
      EXPECT_TRUE(out.add(std::move(*replacement)).ok());
    }
  }
  EXPECT_TRUE(out.set_metadata(b.metadata()).ok());
  return out;
}

NamedTensor zeros(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  return NamedTensor::zeros(name, dtype, std::move(shape)).value();
}

// `n` rows of d = 4 features around `center`·(1, 2, 3, 4)-ish means: separable blocks for class
// c = 0, 1, 2 ...
torch::Tensor blocks(int64_t k, int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v;
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < 4; ++j) {
        const double mean = (j == c % 4) ? 3.0 : 0.0;
        v.push_back(static_cast<float>(mean + 0.3 * rng.normal()));
      }
    }
  }
  return torch::tensor(v, torch::kFloat32).view({k * n, 4});
}

// Standard normal draws of `shape` from Rng(seed).
torch::Tensor normals(std::vector<int64_t> shape, uint64_t seed) {
  Rng rng(seed);
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal());
  return torch::tensor(v, torch::kFloat32).view(shape);
}

class CreffTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config();
    clients_ = sim_clients(config_, 3);
    run_ = run_context(config_);
  }

  std::unique_ptr<CreffServer> server(const nlohmann::json& options = kSmall) {
    auto parsed = parse_creff_options(options);
    EXPECT_TRUE(parsed.ok()) << parsed.status().to_string();
    auto s = std::make_unique<CreffServer>(parsed.value());
    run_.strategy_config = options;
    Rng rng(11);
    Status status = s->initialize(run_, rng);
    EXPECT_TRUE(status.ok()) << status.to_string();
    return s;
  }

  std::unique_ptr<CreffServer> reload(const CreffServer& s,
                                      const nlohmann::json& options = kSmall) {
    auto state = s.save_state();
    EXPECT_TRUE(state.ok()) << state.status().to_string();
    auto loaded = std::make_unique<CreffServer>(parse_creff_options(options).value());
    Status status = loaded->load_state(std::move(state).value());
    EXPECT_TRUE(status.ok()) << status.to_string();
    return loaded;
  }

  // Client k's fit on `bundle` with options `options` and Rng(seed).
  Result<FitOutput> fit(const TensorBundle& bundle, int k, uint64_t seed = 5,
                        const nlohmann::json& options = kSmall) {
    Rng rng(seed);
    ClientContext ctx = client_context(config_, clients_[k], 1, &rng);
    CreffClient client(parse_creff_options(options).value());
    return client.fit(ctx, bundle);
  }

  // One round without network; the clients' uploads are copied into `uploads` (with their
  // num_examples) when given. Returns finish()'s metrics.
  nlohmann::json run_creff_round(CreffServer& s, int round,
                                 std::vector<std::pair<TensorBundle, int64_t>>* uploads = nullptr,
                                 const nlohmann::json& options = kSmall) {
    CreffClient algorithm(parse_creff_options(options).value());
    Rng sample_rng = Rng::derive(config_.seed, "sample", {static_cast<uint64_t>(round)});
    auto tasks = s.configure_fit(round, infos(clients_), sample_rng);
    EXPECT_TRUE(tasks.ok()) << tasks.status().to_string();
    if (!tasks.ok()) return {};
    auto aggregation = s.begin_aggregation(round);
    EXPECT_TRUE(aggregation.ok()) << aggregation.status().to_string();
    if (!aggregation.ok()) return {};
    for (const TaskSpec& task : *tasks) {
      EXPECT_EQ(task.bundle, s.training_bundle());
      EXPECT_EQ(task.expected_update, nullptr);  // the update differs from the bundle sent
      uint64_t index = 0;
      while (index < clients_.size() && clients_[index].id != task.client_id) ++index;
      if (index == clients_.size()) return {};
      Rng rng = Rng::derive(config_.seed, "fit", {static_cast<uint64_t>(round), index});
      ClientContext ctx = client_context(config_, clients_[index], round, &rng);
      auto out = algorithm.fit(ctx, *task.bundle);
      EXPECT_TRUE(out.ok()) << out.status().to_string();
      if (!out.ok()) return {};
      if (uploads != nullptr) uploads->emplace_back(out->update.clone(), out->num_examples);
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
// Client

TEST_F(CreffTest, TheGradientUploadIsTheSynClassifiersCrossEntropyGradientByAutograd) {
  // Deterministic: no augmentation, one repeat, every image of a class in its batch.
  config_ = one_step_config();
  const nlohmann::json options = {{"gradient_repeats", 1}, {"gradient_batch", 32}};
  auto s = server(options);
  const TensorBundle& global = *s->training_bundle();
  const SimClient& c = clients_[0];
  ASSERT_LE(c.train.class_counts()[0], 32);
  auto out = fit(global, 0, /*seed=*/5, options);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->num_examples, c.train.size());
  EXPECT_EQ(out->metrics["gradient_classes"], 2);
  const NamedTensor& classes = *out->update.find(kCreffClassesTensor);
  ASSERT_EQ(classes.dtype(), DType::kInt64);
  ASSERT_EQ(classes.shape(), std::vector<int64_t>({2}));
  EXPECT_EQ(classes.data<int64_t>()[0], 0);
  EXPECT_EQ(classes.data<int64_t>()[1], 1);
  const torch::Tensor grad_weight = to_torch(*out->update.find(kCreffGradWeightTensor));
  const torch::Tensor grad_bias = to_torch(*out->update.find(kCreffGradBiasTensor));
  ASSERT_EQ(grad_weight.sizes(), torch::IntArrayRef({2, 2, 16}));
  ASSERT_EQ(grad_bias.sizes(), torch::IntArrayRef({2, 2}));

  // By hand: the global backbone in eval mode, (W, b) from the bundle, autograd.
  Rng init(999);
  Model ref = make_model(config_.model, init).value();
  ASSERT_TRUE(load_module_state(*ref, global, /*strict=*/false).ok());
  ref->eval();
  torch::Tensor f;
  {
    torch::NoGradGuard no_grad;
    f = ref->features(inputs(c.train));
  }
  for (int64_t k = 0; k < 2; ++k) {
    SCOPED_TRACE(k);
    torch::Tensor w = to_torch(*global.find(kCreffClassifierWeight)).set_requires_grad(true);
    torch::Tensor b = to_torch(*global.find(kCreffClassifierBias)).set_requires_grad(true);
    const torch::Tensor rows = f.index_select(0, c.train.labels.eq(k).nonzero().squeeze(1));
    const torch::Tensor loss = torch::nn::functional::cross_entropy(
        torch::addmm(b, rows, w.t()), torch::full({rows.size(0)}, k, torch::kInt64));
    const auto grads = torch::autograd::grad({loss}, {w, b});
    EXPECT_GT(grads[0].abs().max().item<double>(), 1e-3);  // not trivially zero
    EXPECT_LE(max_abs_diff(grad_weight[k], grads[0]), 1e-5);
    EXPECT_LE(max_abs_diff(grad_bias[k], grads[1]), 1e-5);
  }

  // The model part is FedAvg's training from the global model (its classifier, not (W, b)), with
  // the task's Rng after the one draw the gradient stream took.
  Rng advanced(5);
  advanced.next_u64();
  ClientContext ctx = client_context(config_, clients_[0], 1, &advanced);
  FedAvgClient fedavg;
  auto plain = fedavg.fit(ctx, model_part(global));
  ASSERT_TRUE(plain.ok()) << plain.status().to_string();
  EXPECT_TRUE(model_part(out->update).bitwise_equal(plain->update));
  EXPECT_EQ(out->metrics["loss"], plain->metrics["loss"]);

  // A client without class 1 uploads class 0 only.
  clients_[0].train = separable(20, /*seed=*/300, /*class0_share=*/1.0);
  auto one = fit(global, 0, /*seed=*/5, options);
  ASSERT_TRUE(one.ok()) << one.status().to_string();
  EXPECT_EQ(one->update.find(kCreffClassesTensor)->shape(), std::vector<int64_t>({1}));
  EXPECT_EQ(one->update.find(kCreffClassesTensor)->data<int64_t>()[0], 0);
  EXPECT_EQ(one->update.find(kCreffGradWeightTensor)->shape(), std::vector<int64_t>({1, 2, 16}));
  EXPECT_EQ(one->update.find(kCreffGradBiasTensor)->shape(), std::vector<int64_t>({1, 2}));
  EXPECT_EQ(one->metrics["gradient_classes"], 1);
}

TEST_F(CreffTest, TheClientRefusesABundleWithoutTheSynClassifierOrWithExtraTensors) {
  auto s = server();
  const TensorBundle& global = *s->training_bundle();
  auto missing = fit(edited(global, kCreffClassifierBias), 0);
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find(kCreffClassifierBias), std::string::npos)
      << missing.status().message();
  auto misshapen = fit(edited(global, kCreffClassifierWeight,
                              zeros(kCreffClassifierWeight, DType::kFloat32, {2, 15})),
                       0);
  EXPECT_EQ(misshapen.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(misshapen.status().message().find("[2,15]"), std::string::npos)
      << misshapen.status().message();
  TensorBundle extra = global.clone();
  ASSERT_TRUE(extra.add(zeros("creff.other", DType::kFloat32, {1})).ok());
  auto refused = fit(extra, 0);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("creff.other"), std::string::npos);
  auto model_only = fit(model_part(global), 0);
  EXPECT_EQ(model_only.status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Federated features

TEST(CreffFeaturesTest, ClosedFormGradientsAreAutogradsWithCreateGraph) {
  Rng rng(3);
  const int64_t k = 3, n = 5, d = 4;
  auto [w, b] = default_linear(k, d, rng);
  const torch::Tensor x0 = blocks(k, n, 4).view({k, n, d});
  const torch::Tensor classes = torch::tensor({0, 2}, torch::kInt64);
  const torch::Tensor picked = x0.index_select(0, classes);
  const torch::Tensor real_w = normals({2, k, d}, 8);
  const torch::Tensor real_b = normals({2, k}, 9);

  // Ours.
  torch::Tensor x = picked.clone().set_requires_grad(true);
  auto [gw, gb] = class_classifier_gradients(x, classes, w, b);
  const torch::Tensor ours = gradient_match_distance(real_w, real_b, gw, gb).sum();
  const torch::Tensor ours_grad = torch::autograd::grad({ours}, {x})[0];

  // The code's: autograd.grad(create_graph=True) of each class's CE, then the distance.
  torch::Tensor y = picked.clone().set_requires_grad(true);
  torch::Tensor wl = w.clone().set_requires_grad(true);
  torch::Tensor bl = b.clone().set_requires_grad(true);
  torch::Tensor theirs = torch::zeros({});
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t c = classes[i].item<int64_t>();
    const torch::Tensor loss = torch::nn::functional::cross_entropy(
        torch::addmm(bl, y[i], wl.t()), torch::full({n}, c, torch::kInt64));
    const auto g = torch::autograd::grad({loss}, {wl, bl}, {}, /*retain_graph=*/true,
                                         /*create_graph=*/true);
    EXPECT_LE(max_abs_diff(gw[i], g[0]), 1e-6);
    EXPECT_LE(max_abs_diff(gb[i], g[1]), 1e-6);
    // distance_wb: rows of the weight, the bias as one row.
    const torch::Tensor dw =
        (1 - (real_w[i] * g[0]).sum(-1) / (real_w[i].norm(2, {-1}) * g[0].norm(2, {-1}) + 1e-6))
            .sum();
    const torch::Tensor db = 1 - (real_b[i] * g[1]).sum() / (real_b[i].norm() * g[1].norm() + 1e-6);
    theirs = theirs + dw + db;
  }
  const torch::Tensor theirs_grad = torch::autograd::grad({theirs}, {y})[0];
  EXPECT_NEAR(ours.item<double>(), theirs.item<double>(), 1e-5);
  EXPECT_LE(max_abs_diff(ours_grad, theirs_grad), 1e-5);
}

TEST(CreffFeaturesTest, DistanceIsZeroForEqualAndTwoPerRowForOppositeGradients) {
  const int64_t m = 2, k = 3, d = 5;
  const torch::Tensor w = normals({m, k, d}, 1);
  const torch::Tensor b = normals({m, k}, 2);
  const torch::Tensor equal = gradient_match_distance(w, b, w, b);
  ASSERT_EQ(equal.sizes(), torch::IntArrayRef({m}));
  EXPECT_LE(equal.abs().max().item<double>(), 1e-4);
  const torch::Tensor opposite = gradient_match_distance(w, b, -w, -b);
  for (int64_t i = 0; i < m; ++i) EXPECT_NEAR(opposite[i].item<double>(), 2.0 * (k + 1), 1e-4);
  // Scale does not matter; an all-zero real row adds 1.
  EXPECT_LE(gradient_match_distance(w, b, 3 * w, 0.5 * b).abs().max().item<double>(), 1e-4);
  torch::Tensor zero_row = w.clone();
  zero_row[0][1].zero_();
  EXPECT_NEAR(gradient_match_distance(zero_row, b, w, b)[0].item<double>(), 1.0, 1e-4);
}

TEST(CreffFeaturesTest, MatchingReducesTheDistanceAndLeavesClassesWithoutGradientAlone) {
  const int64_t k = 3, ipc = 6, d = 4;
  Rng rng(1);
  auto [w, b] = default_linear(k, d, rng);
  // Real gradients from "real" features of classes 0 and 2; class 1 has none.
  const torch::Tensor real = blocks(k, 20, 2).view({k, 20, d});
  const torch::Tensor classes = torch::tensor({0, 2}, torch::kInt64);
  auto [real_w, real_b] = class_classifier_gradients(real.index_select(0, classes), classes, w, b);
  const torch::Tensor start = normals({k * ipc, d}, 3);
  const torch::Tensor start_copy = start.clone();
  auto r = match_features(start, ipc, {0, 2}, real_w, real_b, w, b, /*steps=*/50, /*lr=*/0.1);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->matched_classes, 2);
  EXPECT_LT(r->last_distance, 0.5 * r->first_distance)
      << r->first_distance << " -> " << r->last_distance;
  EXPECT_TRUE(torch::equal(start, start_copy));  // the input is not modified
  EXPECT_TRUE(torch::equal(r->features.narrow(0, ipc, ipc), start.narrow(0, ipc, ipc)));
  EXPECT_FALSE(torch::equal(r->features.narrow(0, 0, ipc), start.narrow(0, 0, ipc)));

  // The distance reported is the one of gradient_match_distance on the result.
  const torch::Tensor picked = r->features.view({k, ipc, d}).index_select(0, classes);
  auto [syn_w, syn_b] = class_classifier_gradients(picked, classes, w, b);
  EXPECT_NEAR(gradient_match_distance(real_w, real_b, syn_w, syn_b).sum().item<double>(),
              r->last_distance, 1e-5);

  // No step: nothing moves.
  auto none = match_features(start, ipc, {0, 2}, real_w, real_b, w, b, /*steps=*/0, /*lr=*/0.1);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(torch::equal(none->features, start));
  EXPECT_EQ(none->first_distance, none->last_distance);

  EXPECT_EQ(match_features(start, ipc, {2, 0}, real_w, real_b, w, b, 1, 0.1).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(match_features(start, 5, {0, 2}, real_w, real_b, w, b, 1, 0.1).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(CreffFeaturesTest, RetrainingClassifiesSeparatedFeaturesAndTheSeedFixesTheBits) {
  const int64_t k = 3, ipc = 20;
  const torch::Tensor features = blocks(k, ipc, 5);
  CreffOptions options;
  options.retrain_epochs = 30;
  options.retrain_lr = 0.1;
  options.retrain_batch_size = 8;
  Rng a(42), b(42), c(43);
  auto ra = retrain_classifier(features, ipc, k, options, a);
  auto rb = retrain_classifier(features, ipc, k, options, b);
  auto rc = retrain_classifier(features, ipc, k, options, c);
  ASSERT_TRUE(ra.ok() && rb.ok() && rc.ok()) << ra.status().to_string();
  EXPECT_EQ(ra->steps, 30 * 8);  // ceil(60 / 8) steps an epoch
  const torch::Tensor predicted = torch::addmm(ra->bias, features, ra->weight.t()).argmax(1);
  const torch::Tensor labels = torch::arange(k, torch::kInt64).repeat_interleave(ipc);
  EXPECT_TRUE(torch::equal(predicted, labels));
  EXPECT_TRUE(torch::equal(ra->weight, rb->weight));
  EXPECT_TRUE(torch::equal(ra->bias, rb->bias));
  EXPECT_FALSE(torch::equal(ra->weight, rc->weight));

  // The initial Linear is PyTorch's default: uniform within ±1/sqrt(d).
  Rng init(7);
  auto [w, bias] = default_linear(50, 16, init);
  EXPECT_LE(w.abs().max().item<double>(), 0.25);
  EXPECT_LE(bias.abs().max().item<double>(), 0.25);
  EXPECT_GT(w.abs().max().item<double>(), 0.2);
  EXPECT_NEAR(w.mean().item<double>(), 0.0, 0.02);

  EXPECT_EQ(retrain_classifier(features, ipc + 1, k, options, a).status().code(),
            StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Pool

// An upload for `classes` whose gradients are all `value` plus the class index.
TensorBundle upload(const std::vector<int64_t>& classes, float value, int64_t k = 3,
                    int64_t d = 2) {
  const int64_t m = static_cast<int64_t>(classes.size());
  TensorBundle b;
  EXPECT_TRUE(
      b.add(NamedTensor::from_values(kCreffClassesTensor, DType::kInt64, {m}, classes)).ok());
  std::vector<float> w, bias;
  for (int64_t c : classes) {
    for (int64_t i = 0; i < k * d; ++i) w.push_back(value + static_cast<float>(c));
    for (int64_t i = 0; i < k; ++i) bias.push_back(-value - static_cast<float>(c));
  }
  EXPECT_TRUE(
      b.add(NamedTensor::from_values(kCreffGradWeightTensor, DType::kFloat32, {m, k, d}, w)).ok());
  EXPECT_TRUE(
      b.add(NamedTensor::from_values(kCreffGradBiasTensor, DType::kFloat32, {m, k}, bias)).ok());
  return b;
}

TEST(CreffPoolTest, TheRealGradientIsTheUnweightedMeanOverTheClientsHoldingTheClass) {
  auto pool = ClassGradientPool::create(3, 2);
  ASSERT_TRUE(pool.ok());
  // Class 0 at all three clients, class 1 at two, class 2 at one only.
  ASSERT_TRUE(pool->add(upload({0, 1}, 1.0f)).ok());
  ASSERT_TRUE(pool->add(upload({0, 1}, 2.0f)).ok());
  ASSERT_TRUE(pool->add(upload({0, 2}, 6.0f)).ok());
  EXPECT_EQ(pool->uploads(), 3);
  EXPECT_EQ(pool->holders(), std::vector<int64_t>({3, 2, 1}));
  auto means = pool->means();
  ASSERT_TRUE(means.ok());
  EXPECT_EQ(means->classes, std::vector<int64_t>({0, 1, 2}));
  ASSERT_EQ(means->weight.sizes(), torch::IntArrayRef({3, 3, 2}));
  EXPECT_TRUE(torch::allclose(means->weight[0], torch::full({3, 2}, 3.0f)));  // (1+2+6)/3
  EXPECT_TRUE(torch::allclose(means->weight[1], torch::full({3, 2}, 2.5f)));  // (2+3)/2
  EXPECT_TRUE(torch::allclose(means->weight[2], torch::full({3, 2}, 8.0f)));  // 6+2
  EXPECT_TRUE(torch::allclose(means->bias[1], torch::full({3}, -2.5f)));
  EXPECT_TRUE(torch::allclose(means->bias[2], torch::full({3}, -8.0f)));

  // A class nobody holds is not listed.
  auto sparse = ClassGradientPool::create(3, 2);
  ASSERT_TRUE(sparse->add(upload({2}, 1.0f)).ok());
  EXPECT_EQ(sparse->means()->classes, std::vector<int64_t>({2}));
}

TEST(CreffPoolTest, MalformedGradientsAreRefusedNamingTheTensor) {
  auto pool = ClassGradientPool::create(3, 2);
  ASSERT_TRUE(pool.ok());
  std::vector<testing::RefusedUpdate> cases;
  const TensorBundle good = upload({0, 2}, 1.0f);
  {
    TensorBundle b = good.clone();
    b.find(kCreffGradWeightTensor)->data<float>()[3] = std::nanf("");
    cases.push_back({"NaN", std::move(b), StatusCode::kCorruption, {kCreffGradWeightTensor}});
  }
  {
    TensorBundle b = good.clone();
    b.find(kCreffGradBiasTensor)->data<float>()[1] = std::numeric_limits<float>::infinity();
    cases.push_back({"Inf", std::move(b), StatusCode::kCorruption, {kCreffGradBiasTensor}});
  }
  cases.push_back({"missing",
                   edited(good, kCreffGradBiasTensor),
                   StatusCode::kInvalidArgument,
                   {kCreffGradBiasTensor, "missing"}});
  cases.push_back({"missing classes",
                   edited(good, kCreffClassesTensor),
                   StatusCode::kInvalidArgument,
                   {kCreffClassesTensor, "missing"}});
  cases.push_back({"wrong shape",
                   edited(good, kCreffGradWeightTensor,
                          zeros(kCreffGradWeightTensor, DType::kFloat32, {2, 3, 3})),
                   StatusCode::kInvalidArgument,
                   {kCreffGradWeightTensor, "[2,3,3]"}});
  cases.push_back({"gradients for an unlisted class",
                   edited(good, kCreffGradWeightTensor,
                          zeros(kCreffGradWeightTensor, DType::kFloat32, {3, 3, 2})),
                   StatusCode::kInvalidArgument,
                   {kCreffGradWeightTensor, "[3,3,2]"}});
  cases.push_back(
      {"wrong dtype",
       edited(good, kCreffGradBiasTensor, zeros(kCreffGradBiasTensor, DType::kFloat64, {2, 3})),
       StatusCode::kInvalidArgument,
       {kCreffGradBiasTensor, "float64"}});
  cases.push_back({"class out of range",
                   edited(good, kCreffClassesTensor,
                          NamedTensor::from_values(kCreffClassesTensor, DType::kInt64, {2},
                                                   std::vector<int64_t>{0, 3})),
                   StatusCode::kInvalidArgument,
                   {kCreffClassesTensor, "outside"}});
  cases.push_back({"duplicate class",
                   edited(good, kCreffClassesTensor,
                          NamedTensor::from_values(kCreffClassesTensor, DType::kInt64, {2},
                                                   std::vector<int64_t>{2, 2})),
                   StatusCode::kInvalidArgument,
                   {kCreffClassesTensor, "strictly increasing"}});
  {
    TensorBundle b = good.clone();
    EXPECT_TRUE(b.add(zeros("creff.classifier.weight", DType::kFloat32, {3, 2})).ok());
    cases.push_back({"extra",
                     std::move(b),
                     StatusCode::kInvalidArgument,
                     {"creff.classifier.weight", "not a CReFF gradient"}});
  }
  for (testing::RefusedUpdate& c : cases) {
    SCOPED_TRACE(c.what);
    Status status = pool->add(c.bundle);
    EXPECT_EQ(status.code(), c.code) << status.to_string();
    for (const std::string& part : c.message) {
      EXPECT_NE(status.message().find(part), std::string::npos) << status.message();
    }
  }
  EXPECT_EQ(pool->uploads(), 0);  // refused uploads leave no trace
  EXPECT_TRUE(pool->check(good).ok());
}

// ---------------------------------------------------------------------------------------------
// Server

TEST_F(CreffTest, InitialStateIsTheModelASynClassifierAndStandardNormalFeatures) {
  auto s = server();
  const TensorBundle& global = *s->training_bundle();
  EXPECT_EQ(global.find(kCreffClassifierWeight)->shape(), std::vector<int64_t>({2, 16}));
  EXPECT_EQ(global.find(kCreffClassifierBias)->shape(), std::vector<int64_t>({2}));
  EXPECT_EQ(s->features().sizes(), torch::IntArrayRef({12, 16}));  // K·ipc × d
  EXPECT_EQ(s->features().scalar_type(), torch::kFloat32);
  // global_bundle(): the model with (W, b) as its classifier, no creff.* tensors.
  std::shared_ptr<const TensorBundle> retrained = s->global_bundle();
  ASSERT_NE(retrained, nullptr);
  EXPECT_FALSE(retrained->contains(kCreffClassifierWeight));
  EXPECT_TRUE(same(*retrained, kWeight, global, kCreffClassifierWeight));
  EXPECT_TRUE(same(*retrained, kBias, global, kCreffClassifierBias));
  EXPECT_EQ(retrained->size() + 2, global.size());
  // Same Rng, same bits; another, other bits.
  auto again = server();
  EXPECT_TRUE(again->training_bundle()->bitwise_equal(global));
  EXPECT_TRUE(torch::equal(again->features(), s->features()));
}

TEST_F(CreffTest, ARoundInstallsTheFedAvgModelTheMatchedFeaturesAndTheRetrainedClassifier) {
  auto s = server();
  const TensorBundle before = s->training_bundle()->clone();
  const torch::Tensor features_before = s->features().clone();
  std::vector<std::pair<TensorBundle, int64_t>> uploads;
  auto m = run_creff_round(*s, 1, &uploads);
  EXPECT_EQ(m["updated"], true) << m.dump();
  EXPECT_EQ(m["updates"], 3);
  EXPECT_EQ(m["matched_classes"], 2);
  EXPECT_EQ(m["retrain_steps"], 3 * 3);  // 3 epochs of ceil(12 / 4)
  ASSERT_TRUE(m["match_distance_first"].is_number()) << m.dump();
  ASSERT_TRUE(m["retrain_loss"].is_number()) << m.dump();
  ASSERT_EQ(uploads.size(), 3u);
  const TensorBundle& next = *s->training_bundle();
  EXPECT_EQ(next.metadata()["round"], 1);

  // (1) The model tensors are the example-weighted mean of the uploaded models.
  auto reference = std::make_shared<const TensorBundle>(model_part(before));
  auto average = WeightedAverage::create(reference);
  ASSERT_TRUE(average.ok());
  for (const auto& [bundle, n] : uploads) ASSERT_TRUE(average->add(model_part(bundle), n).ok());
  const TensorBundle mean = average->finish().value();
  EXPECT_TRUE(model_part(next).bitwise_equal(mean));

  // (2, 3) The features are match_features of the old ones on the pooled real gradients, with
  // the (W, b) the clients used.
  auto pool = ClassGradientPool::create(2, 16);
  for (const auto& [bundle, n] : uploads) {
    TensorBundle g;
    for (const char* name : {kCreffClassesTensor, kCreffGradWeightTensor, kCreffGradBiasTensor}) {
      ASSERT_TRUE(g.add(bundle.find(name)->clone()).ok());
    }
    ASSERT_TRUE(pool->add(g).ok());
  }
  auto real = pool->means().value();
  const torch::Tensor w0 = to_torch(*before.find(kCreffClassifierWeight));
  const torch::Tensor b0 = to_torch(*before.find(kCreffClassifierBias));
  auto matched = match_features(features_before, 6, real.classes, real.weight, real.bias, w0, b0,
                                /*steps=*/4, /*lr=*/0.1);
  ASSERT_TRUE(matched.ok());
  EXPECT_TRUE(torch::equal(s->features(), matched->features));
  EXPECT_FALSE(torch::equal(s->features(), features_before));
  EXPECT_EQ(m["match_distance_first"], matched->first_distance);
  EXPECT_EQ(m["match_distance_last"], matched->last_distance);

  // (4) (W, b) is a fresh Linear re-trained on them, from the round's seeded Rng.
  Rng rng = Rng::derive(config_.seed, "creff-retrain", {1});
  auto retrained =
      retrain_classifier(matched->features, 6, 2, parse_creff_options(kSmall).value(), rng);
  ASSERT_TRUE(retrained.ok());
  EXPECT_TRUE(torch::equal(to_torch(*next.find(kCreffClassifierWeight)), retrained->weight));
  EXPECT_TRUE(torch::equal(to_torch(*next.find(kCreffClassifierBias)), retrained->bias));

  // global_bundle(): the FedAvg backbone with (W, b) as the classifier; the FedAvg classifier
  // stays in the training bundle.
  std::shared_ptr<const TensorBundle> final_model = s->global_bundle();
  for (const NamedTensor& t : mean) {
    if (t.name() == kWeight || t.name() == kBias) continue;
    EXPECT_TRUE(same(*final_model, t.name(), mean, t.name())) << t.name();
  }
  EXPECT_TRUE(same(*final_model, kWeight, next, kCreffClassifierWeight));
  EXPECT_TRUE(same(*final_model, kBias, next, kCreffClassifierBias));
  EXPECT_FALSE(same(*final_model, kWeight, next, kWeight));
  EXPECT_EQ(final_model->metadata(), next.metadata());

  // Evaluation scores the re-trained model as "generic", the FedAvg model beside it.
  Dataset test = separable(100, 31);
  const ServerEvalContext eval = eval_context(&test);
  const ModelOptions model_options = run_model_options(run_).value();
  auto e = s->evaluate(1, eval);
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  auto want = evaluate_classifier(model_options, config_.local.augment, *final_model, eval);
  auto want_fedavg =
      evaluate_classifier(model_options, config_.local.augment, model_part(next), eval);
  ASSERT_TRUE(want.ok() && want_fedavg.ok());
  EXPECT_EQ((*e)["generic"], (*want)["generic"]);
  EXPECT_EQ((*e)["generic_by_count_rule"], (*want)["generic_by_count_rule"]);
  EXPECT_EQ((*e)["generic_fedavg"], (*want_fedavg)["generic"]);
  EXPECT_EQ((*e)["generic_fedavg_by_count_rule"], (*want_fedavg)["generic_by_count_rule"]);

  // Clients evaluate the re-trained model and train from the training bundle.
  Rng er(3);
  auto eval_tasks = s->configure_evaluate(1, infos(clients_), er);
  ASSERT_TRUE(eval_tasks.ok());
  ASSERT_EQ(eval_tasks->size(), 3u);
  for (const TaskSpec& t : *eval_tasks) EXPECT_EQ(t.bundle, final_model);
  CreffClient client(parse_creff_options(kSmall).value());
  Rng cr(4);
  ClientContext ctx = client_context(config_, clients_[0], 1, &cr);
  auto report = client.evaluate(ctx, *final_model);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ((*report)["examples"], clients_[0].test.size());
  Rng fr(4);
  auto fit_tasks = s->configure_fit(2, infos(clients_), fr);
  ASSERT_TRUE(fit_tasks.ok());
  for (const TaskSpec& t : *fit_tasks) EXPECT_EQ(t.bundle, s->training_bundle());
}

TEST_F(CreffTest, TooFewUpdatesKeepTheModelTheFeaturesAndTheClassifier) {
  auto s = server({{"min_fit_clients", 2},
                   {"features_per_class", 4},
                   {"match_steps", 2},
                   {"retrain_epochs", 2}});
  const TensorBundle before = s->training_bundle()->clone();
  const torch::Tensor features = s->features().clone();
  auto out = fit(before, 0);
  ASSERT_TRUE(out.ok());
  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());
  ClientUpdate update;
  update.client_id = clients_[0].id;
  update.num_examples = out->num_examples;
  update.bundle = std::move(out->update);
  ASSERT_TRUE((*aggregation)->add(std::move(update)).ok());
  auto m = (*aggregation)->finish({{clients_[1].id, "deadline exceeded"}});
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)["updated"], false);
  EXPECT_EQ((*m)["matched_classes"], 0);
  EXPECT_TRUE((*m)["retrain_loss"].is_null());
  EXPECT_TRUE(s->training_bundle()->bitwise_equal(before));
  EXPECT_TRUE(torch::equal(s->features(), features));
}

TEST_F(CreffTest, TheAggregationRefusesBadUploadsAndSecondUpdates) {
  auto s = server();
  const TensorBundle& global = *s->training_bundle();
  auto out = fit(global, 0);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  const TensorBundle good = out->update.clone();
  const int64_t n = out->num_examples;
  auto aggregation = s->begin_aggregation(1);
  ASSERT_TRUE(aggregation.ok());

  std::vector<testing::RefusedUpdate> cases;
  {
    TensorBundle b = good.clone();
    b.find(kCreffGradWeightTensor)->data<float>()[0] = std::nanf("");
    cases.push_back({"NaN", std::move(b), StatusCode::kCorruption, {kCreffGradWeightTensor}});
  }
  {
    TensorBundle b = good.clone();
    b.find(kCreffGradBiasTensor)->data<float>()[0] = -std::numeric_limits<float>::infinity();
    cases.push_back({"Inf", std::move(b), StatusCode::kCorruption, {kCreffGradBiasTensor}});
  }
  cases.push_back({"wrong shape",
                   edited(good, kCreffGradWeightTensor,
                          zeros(kCreffGradWeightTensor, DType::kFloat32, {2, 2, 15})),
                   StatusCode::kInvalidArgument,
                   {kCreffGradWeightTensor, "[2,2,15]"}});
  cases.push_back({"missing gradient",
                   edited(good, kCreffGradBiasTensor),
                   StatusCode::kInvalidArgument,
                   {kCreffGradBiasTensor, "missing"}});
  cases.push_back({"a model update alone",
                   model_part(good),
                   StatusCode::kInvalidArgument,
                   {kCreffClassesTensor, "missing"}});
  cases.push_back({"missing model tensor",
                   edited(good, kBias),
                   StatusCode::kInvalidArgument,
                   {kBias, "missing"}});
  {
    TensorBundle b = good.clone();
    ASSERT_TRUE(b.add(global.find(kCreffClassifierWeight)->clone()).ok());
    cases.push_back({"the syn classifier uploaded",
                     std::move(b),
                     StatusCode::kInvalidArgument,
                     {kCreffClassifierWeight}});
  }
  testing::expect_refused_then_accepted_once(**aggregation, cases, good, n);
  auto metrics = (*aggregation)->finish({});
  ASSERT_TRUE(metrics.ok()) << metrics.status().to_string();
  EXPECT_EQ((*metrics)["updates"], 1);
  EXPECT_EQ((*metrics)["examples"], n);
  EXPECT_EQ((*metrics)["matched_classes"], 2);
}

// ---------------------------------------------------------------------------------------------
// State

TEST_F(CreffTest, SaveAndLoadRestoreTheServerBitExactly) {
  auto a = server();
  auto fresh = reload(*a);
  EXPECT_TRUE(fresh->save_state()->bitwise_equal(*a->save_state()));
  EXPECT_TRUE(fresh->global_bundle()->bitwise_equal(*a->global_bundle()));

  run_creff_round(*a, 1);
  const TensorBundle saved = a->save_state().value();
  EXPECT_TRUE(saved.contains(kCreffFeaturesState));
  EXPECT_TRUE(saved.contains(kCreffClassifierWeight));
  auto b = reload(*a);
  EXPECT_TRUE(b->save_state()->bitwise_equal(saved));
  EXPECT_TRUE(b->training_bundle()->bitwise_equal(*a->training_bundle()));
  EXPECT_TRUE(b->global_bundle()->bitwise_equal(*a->global_bundle()));
  EXPECT_TRUE(torch::equal(b->features(), a->features()));
  Dataset test = separable(60, 31);
  auto ea = a->evaluate(1, eval_context(&test));
  auto eb = b->evaluate(1, eval_context(&test));
  ASSERT_TRUE(ea.ok() && eb.ok()) << eb.status().to_string();
  EXPECT_EQ(*ea, *eb);

  // Both go on identically (the seed is restored).
  auto ma = run_creff_round(*a, 2);
  auto mb = run_creff_round(*b, 2);
  EXPECT_EQ(ma, mb);
  EXPECT_TRUE(b->training_bundle()->bitwise_equal(*a->training_bundle()));
  EXPECT_TRUE(b->global_bundle()->bitwise_equal(*a->global_bundle()));
  EXPECT_TRUE(torch::equal(b->features(), a->features()));
  EXPECT_TRUE(b->save_state()->bitwise_equal(*a->save_state()));

  // Malformed states are refused, and the server is left as it was.
  const TensorBundle good = b->save_state().value();
  {
    TensorBundle bad = good.clone();
    bad.mutable_metadata().erase("creff");
    Status status = b->load_state(std::move(bad));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("creff"), std::string::npos) << status.message();
  }
  {
    TensorBundle bad =
        edited(good, kCreffFeaturesState, zeros(kCreffFeaturesState, DType::kFloat32, {10, 16}));
    Status status = b->load_state(std::move(bad));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find(kCreffFeaturesState), std::string::npos) << status.message();
  }
  {
    Status status = b->load_state(edited(good, kCreffClassifierBias));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find(kCreffClassifierBias), std::string::npos) << status.message();
  }
  {
    TensorBundle bad = good.clone();
    ASSERT_TRUE(bad.add(zeros("creff/other", DType::kFloat32, {1})).ok());
    Status status = b->load_state(std::move(bad));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("unexpected tensor"), std::string::npos) << status.message();
  }
  // Another features_per_class does not fit the saved features.
  CreffServer other(parse_creff_options({{"features_per_class", 5}}).value());
  EXPECT_EQ(other.load_state(good.clone()).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(b->save_state()->bitwise_equal(good));
}

// ---------------------------------------------------------------------------------------------
// Options

TEST(CreffOptionsTest, DefaultsAreTheAuthorsAndErrorsNameTheField) {
  const CreffOptions d = parse_creff_options(nullptr).value();
  EXPECT_EQ(d.features_per_class, 100);
  EXPECT_EQ(d.match_steps, 100);
  EXPECT_EQ(d.feature_lr, 0.1);
  EXPECT_EQ(d.retrain_epochs, 300);
  EXPECT_EQ(d.retrain_lr, 0.01);
  EXPECT_EQ(d.retrain_batch_size, 32);
  EXPECT_EQ(d.gradient_batch, 32);
  EXPECT_EQ(d.gradient_repeats, 10);
  const CreffOptions set = parse_creff_options({{"features_per_class", 3},
                                                {"match_steps", 0},
                                                {"feature_lr", 0.5},
                                                {"retrain_epochs", 2},
                                                {"retrain_lr", 0.2},
                                                {"retrain_batch_size", 8},
                                                {"gradient_batch", 4},
                                                {"gradient_repeats", 1},
                                                {"fraction_fit", 0.5}})
                               .value();
  EXPECT_EQ(set.features_per_class, 3);
  EXPECT_EQ(set.match_steps, 0);
  EXPECT_EQ(set.feature_lr, 0.5);
  EXPECT_EQ(set.retrain_epochs, 2);
  EXPECT_EQ(set.retrain_lr, 0.2);
  EXPECT_EQ(set.retrain_batch_size, 8);
  EXPECT_EQ(set.gradient_batch, 4);
  EXPECT_EQ(set.gradient_repeats, 1);
  EXPECT_EQ(set.round.fraction_fit, 0.5);

  EXPECT_EQ(parse_creff_options({{"features_per_class", 0}}).status().message(),
            "config.strategy.features_per_class: must be >= 1 (got 0)");
  EXPECT_EQ(parse_creff_options({{"feature_lr", -1}}).status().message(),
            "config.strategy.feature_lr: must be > 0 (got -1)");
  const std::vector<nlohmann::json> bad = {{{"features_per_class", 0}},
                                           {{"match_steps", -1}},
                                           {{"feature_lr", 0.0}},
                                           {{"retrain_epochs", 0}},
                                           {{"retrain_lr", -0.1}},
                                           {{"retrain_batch_size", 0}},
                                           {{"gradient_batch", 0}},
                                           {{"gradient_repeats", 0}},
                                           {{"retrain_lr", "0.1"}},
                                           {{"fraction_fit", 0.0}},
                                           {{"bogus", 1}}};
  const StrategyEntry entry = creff_strategy_entry();
  EXPECT_EQ(entry.name, "creff");
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

TEST_F(CreffTest, ModelGroupsAreRefusedAndAnyLocalLossTrains) {
  RunConfig groups = config_;
  groups.model.groups = {"cnn", "resnet8"};
  RunContext run = run_context(groups);
  CreffServer heterogeneous(parse_creff_options(kSmall).value());
  Rng rng(1);
  Status status = heterogeneous.initialize(run, rng);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("config.model.groups"), std::string::npos) << status.message();

  config_.local.loss.kind = LocalLossOptions::Kind::kFocal;
  auto s = server();
  auto m = run_creff_round(*s, 1);
  EXPECT_EQ(m["updated"], true) << m.dump();
}

// ---------------------------------------------------------------------------------------------
// A tiny federation

TEST_F(CreffTest, ATinyFederationLearnsAndItsRetrainedModelClassifies) {
  config_.local.epochs = 3;
  const nlohmann::json options = {{"features_per_class", 20},
                                  {"match_steps", 30},
                                  {"retrain_epochs", 20},
                                  {"retrain_batch_size", 8},
                                  {"gradient_repeats", 3}};
  auto s = server(options);
  for (int round = 1; round <= 4; ++round) {
    auto m = run_creff_round(*s, round, nullptr, options);
    EXPECT_EQ(m["updated"], true) << round;
  }
  Dataset test = separable(200, 31);
  auto e = s->evaluate(4, eval_context(&test));
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  std::cout << "creff: generic " << (*e)["generic"]["overall"] << ", fedavg "
            << (*e)["generic_fedavg"]["overall"] << "\n";
  EXPECT_GT((*e)["generic_fedavg"]["overall"].get<double>(), 0.8) << e->dump();
  EXPECT_GT((*e)["generic"]["overall"].get<double>(), 0.8) << e->dump();
}

}  // namespace
}  // namespace fedtail::strategies

// Test helpers shared by the strategy tests: a tiny separable data set, a tiny run config, and a
// network-free driver for one federated round (configure_fit -> ClientAlgorithm::fit -> aggregate).
#ifndef FEDTAIL_TESTS_UNIT_STRATEGY_TEST_UTIL_H_
#define FEDTAIL_TESTS_UNIT_STRATEGY_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/learning/models.h"
#include "common/learning/run_config.h"
#include "common/wire/bundle_checks.h"
#include "strategies/strategy.h"

namespace fedtail::strategies::testing {

// Two classes of 1×8×8 images: class 0 bright in the top half, class 1 in the bottom half, plus
// noise. `class0_share` of the examples are class 0 (a skewed client).
inline Dataset separable(int64_t n, uint64_t seed, double class0_share = 0.5) {
  Rng rng(seed);
  std::vector<uint8_t> pixels(n * 64);
  std::vector<int64_t> labels(n);
  const int64_t zeros = static_cast<int64_t>(class0_share * n);
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = i < zeros ? 0 : 1;
    for (int r = 0; r < 8; ++r) {
      for (int c = 0; c < 8; ++c) {
        const bool bright = (r < 4) == (labels[i] == 0);
        pixels[i * 64 + r * 8 + c] =
            static_cast<uint8_t>((bright ? 150 : 20) + rng.uniform_int(80));
      }
    }
  }
  Dataset d;
  d.images = torch::tensor(pixels, torch::kUInt8).view({n, 1, 8, 8});
  d.labels = torch::tensor(labels, torch::kInt64);
  d.num_classes = 2;
  d.class_names = {"top", "bottom"};
  return d;
}

inline RunConfig tiny_config() {
  RunConfig c;
  c.seed = 7;
  c.model.arch = "cnn";
  c.model.feature_dim = 16;
  c.model.in_channels = 1;
  c.model.image_size = 8;
  c.model.num_classes = 2;
  c.local.epochs = 1;
  c.local.batch_size = 16;
  c.local.lr = 0.05;
  c.local.augment.crop_padding = 1;
  c.eval.batch_size = 64;
  return c;
}

// tiny_config made for checking one SGD step by hand: no augmentation, the whole training set in
// one batch, one step of plain SGD (lr 0.1, no momentum, no weight decay).
inline RunConfig one_step_config() {
  RunConfig c = tiny_config();
  c.local.augment.crop_padding = 0;
  c.local.augment.horizontal_flip = false;
  c.local.batch_size = 1000;
  c.local.max_steps = 1;
  c.local.lr = 0.1;
  c.local.momentum = 0;
  c.local.weight_decay = 0;
  return c;
}

// The model input of every example of `d`, by hand: pixel/255 mapped to [-1, 1] (tiny_config's
// normalisation, mean = std = 0.5).
inline torch::Tensor inputs(const Dataset& d) {
  return (d.images.to(torch::kFloat32) / 255.0 - 0.5) / 0.5;
}

inline RunContext run_context(const RunConfig& config) {
  RunContext run;
  run.config = &config;
  run.total_rounds = 3;
  run.num_classes = 2;
  run.train_class_counts = {100, 100};
  return run;
}

// A simulated client: its data, persistent state and model (built once, like a worker's).
struct SimClient {
  std::string id;
  Dataset train;
  Dataset test;
  ClientState state;
  Model model{nullptr};
};

inline std::vector<SimClient> sim_clients(const RunConfig& config, int n) {
  std::vector<SimClient> out;
  for (int k = 0; k < n; ++k) {
    SimClient c;
    c.id = "client-" + std::to_string(k);
    // Skewed clients: client k holds mostly class k % 2.
    c.train = separable(32 + 8 * k, /*seed=*/100 + k, k % 2 == 0 ? 0.8 : 0.2);
    c.test = separable(24, /*seed=*/200 + k, k % 2 == 0 ? 0.8 : 0.2);
    Rng rng(500 + k);  // weights are unspecified on entry: each client starts from its own junk
    auto m = make_model(config.model, rng);
    EXPECT_TRUE(m.ok()) << m.status().to_string();
    c.model = std::move(m).value();
    out.push_back(std::move(c));
  }
  return out;
}

inline std::vector<ClientInfo> infos(const std::vector<SimClient>& clients) {
  std::vector<ClientInfo> out;
  for (const auto& c : clients) out.push_back({c.id, c.train.size(), "cnn"});
  return out;
}

inline ClientContext client_context(const RunConfig& config, SimClient& client, int round, Rng* rng,
                                    const nlohmann::json& strategy_config = {}) {
  ClientContext ctx;
  ctx.client_id = client.id;
  ctx.round = round;
  ctx.config = &config;
  ctx.strategy_config = strategy_config;
  ctx.train = &client.train;
  ctx.test = &client.test;
  ctx.device = torch::kCPU;
  ctx.rng = rng;
  ctx.state = &client.state;
  ctx.model = &client.model;
  return ctx;
}

// One round without network: configure_fit, fit on every selected client, add, finish.
// Returns finish()'s metrics.
inline nlohmann::json run_round(ServerStrategy& server, ClientAlgorithm& algorithm,
                                const RunConfig& config, std::vector<SimClient>& clients,
                                int round) {
  Rng sample_rng = Rng::derive(config.seed, "sample", {static_cast<uint64_t>(round)});
  auto tasks = server.configure_fit(round, infos(clients), sample_rng);
  EXPECT_TRUE(tasks.ok()) << tasks.status().to_string();
  if (!tasks.ok()) return {};
  auto aggregation = server.begin_aggregation(round);
  EXPECT_TRUE(aggregation.ok()) << aggregation.status().to_string();
  if (!aggregation.ok()) return {};
  for (const TaskSpec& task : *tasks) {
    SimClient* client = nullptr;
    uint64_t index = 0;
    for (size_t k = 0; k < clients.size(); ++k) {
      if (clients[k].id == task.client_id) {
        client = &clients[k];
        index = k;
      }
    }
    EXPECT_NE(client, nullptr);
    if (client == nullptr) return {};
    Rng rng = Rng::derive(config.seed, "fit", {static_cast<uint64_t>(round), index});
    ClientContext ctx = client_context(config, *client, round, &rng);
    ctx.task_config = task.config;
    auto out = algorithm.fit(ctx, *task.bundle);
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    if (!out.ok()) return {};
    ClientUpdate update;
    update.client_id = client->id;
    update.num_examples = out->num_examples;
    update.bundle = std::move(out->update);
    update.metrics = out->metrics;
    if (task.expected_update) {
      // What the coordinator's decoder would check on the update's header (DecodeLimits).
      Status expected = check_compatible(update.bundle, *task.expected_update);
      EXPECT_TRUE(expected.ok()) << "the update is not the task's expected_update: "
                                 << expected.to_string();
    }
    Status added = (*aggregation)->add(std::move(update));
    EXPECT_TRUE(added.ok()) << added.to_string();
  }
  auto metrics = (*aggregation)->finish({});
  EXPECT_TRUE(metrics.ok()) << metrics.status().to_string();
  return metrics.ok() ? *metrics : nlohmann::json();
}

// An update an Aggregation must refuse: its bundle, the expected code and substrings of the
// message, and its num_examples (0: the accepted update's).
struct RefusedUpdate {
  std::string what;
  TensorBundle bundle;
  StatusCode code;
  std::vector<std::string> message;
  int64_t num_examples = 0;
};

// Offers every case to `aggregation` as client "client-x"'s update and expects each refused with
// its code and message; then offers `good` (`good_examples` examples) twice: the first is accepted
// (the refused ones left no trace), the second refused as a second update from the client.
inline void expect_refused_then_accepted_once(Aggregation& aggregation,
                                              std::vector<RefusedUpdate>& cases,
                                              const TensorBundle& good, int64_t good_examples) {
  for (RefusedUpdate& c : cases) {
    SCOPED_TRACE(c.what);
    ClientUpdate update;
    update.client_id = "client-x";
    update.num_examples = c.num_examples != 0 ? c.num_examples : good_examples;
    update.bundle = std::move(c.bundle);
    Status status = aggregation.add(std::move(update));
    EXPECT_EQ(status.code(), c.code) << status.to_string();
    for (const std::string& part : c.message) {
      EXPECT_NE(status.message().find(part), std::string::npos) << status.message();
    }
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    ClientUpdate update;
    update.client_id = "client-x";
    update.num_examples = good_examples;
    update.bundle = good.clone();
    Status status = aggregation.add(std::move(update));
    if (attempt == 0) {
      EXPECT_TRUE(status.ok()) << status.to_string();
    } else {
      EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
      EXPECT_NE(status.message().find("second update"), std::string::npos) << status.message();
    }
  }
}

// Squared L2 distance between the float32 tensors of `a` and `b` whose names are in `names`.
inline double squared_distance(const TensorBundle& a, const TensorBundle& b,
                               const std::vector<std::string>& names) {
  double sum = 0;
  for (const std::string& n : names) {
    const NamedTensor* x = a.find(n);
    const NamedTensor* y = b.find(n);
    EXPECT_TRUE(x != nullptr && y != nullptr) << n;
    if (x == nullptr || y == nullptr) continue;
    for (int64_t i = 0; i < x->numel(); ++i) {
      const double d = static_cast<double>(x->data<float>()[i]) - y->data<float>()[i];
      sum += d * d;
    }
  }
  return sum;
}

}  // namespace fedtail::strategies::testing

#endif  // FEDTAIL_TESTS_UNIT_STRATEGY_TEST_UTIL_H_

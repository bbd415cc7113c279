// Test helpers shared by the strategy tests: a tiny separable data set, a tiny run config, a
// network-free driver for one federated round (configure_fit -> ClientAlgorithm::fit -> aggregate),
// and small checks and hand-made tensors.
#ifndef FEDTAIL_TESTS_UNIT_STRATEGY_TEST_UTIL_H_
#define FEDTAIL_TESTS_UNIT_STRATEGY_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/base/rng.h"
#include "common/learning/models.h"
#include "common/learning/run_config.h"
#include "common/learning/torch_bundle.h"
#include "common/wire/bundle_checks.h"
#include "strategies/registry.h"
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

// `m`'s tensors after one SGD step of rate `lr` on the gradients now in `m`; buffers as they are.
inline std::map<std::string, torch::Tensor> stepped(const Model& m, double lr) {
  std::map<std::string, torch::Tensor> out;
  torch::NoGradGuard no_grad;
  for (const auto& p : m->named_parameters()) {
    out[p.key()] = (p.value() - lr * p.value().grad()).clone();
  }
  for (const auto& b : m->named_buffers()) out[b.key()] = b.value().clone();
  return out;
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

// Client `k`'s fit of `global` in round `round` with `algorithm`, with the Rng run_round gives it.
inline Result<FitOutput> fit_client(ClientAlgorithm& algorithm, const RunConfig& config,
                                    std::vector<SimClient>& clients, int k,
                                    const TensorBundle& global, int round = 1) {
  Rng rng =
      Rng::derive(config.seed, "fit", {static_cast<uint64_t>(round), static_cast<uint64_t>(k)});
  ClientContext ctx = client_context(config, clients[k], round, &rng);
  return algorithm.fit(ctx, global);
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

// Whether `s`'s message contains `part`.
inline bool contains(const Status& s, const std::string& part) {
  return s.message().find(part) != std::string::npos;
}

// `entry` is named `name` and makes a server and a client from empty options.
inline void expect_registry_entry(const StrategyEntry& entry, const std::string& name) {
  EXPECT_EQ(entry.name, name);
  EXPECT_TRUE(entry.server(nlohmann::json::object()).ok());
  EXPECT_TRUE(entry.client(nlohmann::json::object()).ok());
}

// Both factories refuse each case's options with kInvalidArgument, the message containing its text.
inline void expect_factories_refuse(
    const std::vector<std::pair<nlohmann::json, std::string>>& cases,
    const ServerFactory& make_server, const ClientFactory& make_client) {
  for (const auto& [options, message] : cases) {
    SCOPED_TRACE(options.dump());
    for (bool server_side : {true, false}) {
      const Status s = server_side ? make_server(options).status() : make_client(options).status();
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
      EXPECT_TRUE(contains(s, message)) << s.message();
    }
  }
}

// `parse` refuses each case with kInvalidArgument naming its text; both factories fail on it too.
template <typename Parse>
inline void expect_parse_refuses(const std::vector<std::pair<nlohmann::json, std::string>>& cases,
                                 Parse parse, const ServerFactory& make_server,
                                 const ClientFactory& make_client) {
  for (const auto& [config, message] : cases) {
    SCOPED_TRACE(config.dump());
    auto parsed = parse(config);
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(parsed.status(), message)) << parsed.status().message();
    EXPECT_FALSE(make_server(config).ok());
    EXPECT_FALSE(make_client(config).ok());
  }
}

// The values of `t` as float64, in order.
inline std::vector<double> values(const NamedTensor& t) {
  const torch::Tensor c = to_torch(t).to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// `t` is there and holds `want`, each value within `tol`.
inline void expect_values_near(const NamedTensor* t, const std::vector<double>& want, double tol) {
  ASSERT_NE(t, nullptr);
  const std::vector<double> got = values(*t);
  ASSERT_EQ(got.size(), want.size()) << t->name();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << t->name() << i;
}

// Each tensor of `expected` is within `tol` of the one of `actual` of the same name.
inline void expect_near(const TensorBundle& actual,
                        const std::map<std::string, torch::Tensor>& expected, double tol = 2e-5) {
  ASSERT_FALSE(expected.empty());
  for (const auto& [name, want] : expected) {
    const NamedTensor* got = actual.find(name);
    ASSERT_NE(got, nullptr) << name;
    const double diff =
        (to_torch(*got).to(torch::kFloat64) - want.to(torch::kFloat64)).abs().max().item<double>();
    EXPECT_LE(diff, tol) << name;
  }
}

// A float32 vector tensor `name` holding `v`.
inline NamedTensor f32(const std::string& name, const std::vector<float>& v) {
  return NamedTensor::from_values<float>(name, DType::kFloat32, {static_cast<int64_t>(v.size())},
                                         v);
}

// A float64 vector tensor `name` holding `v`.
inline NamedTensor f64(const std::string& name, const std::vector<double>& v) {
  return NamedTensor::from_values<double>(name, DType::kFloat64, {static_cast<int64_t>(v.size())},
                                          v);
}

// A hand-made bundle's BatchNorm counter: int64 scalar "bn.num_batches_tracked" holding `v`.
inline NamedTensor counter(int64_t v) {
  return NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {}, {v});
}

// `b` without tensor `drop`, plus `add` when set, with `b`'s metadata.
inline TensorBundle edited_bundle(const TensorBundle& b, const std::string& drop,
                                  std::optional<NamedTensor> add) {
  TensorBundle out;
  for (const NamedTensor& t : b) {
    if (t.name() != drop) {
      EXPECT_TRUE(out.add(t.clone()).ok());
    }
  }
  if (add) {
    EXPECT_TRUE(out.add(std::move(*add)).ok());
  }
  EXPECT_TRUE(out.set_metadata(b.metadata()).ok());
  return out;
}

// A copy of `s` that owns its own tensors.
inline ClientState copy_state(const ClientState& s) {
  ClientState out;
  out.tensors = s.tensors.clone();
  out.values = s.values;
  return out;
}

}  // namespace fedtail::strategies::testing

#endif  // FEDTAIL_TESTS_UNIT_STRATEGY_TEST_UTIL_H_

// Test helpers shared by the prototype-strategy tests (fedsa_test, fedproto_test): a tiny
// heterogeneous federation (clients of two architectures with a common feature width) on the
// separable data of strategy_test_util.h.
#ifndef FEDTAIL_TESTS_UNIT_PROTOTYPE_TEST_UTIL_H_
#define FEDTAIL_TESTS_UNIT_PROTOTYPE_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/learning/model_options.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "strategies/prototypes/prototype_set.h"
#include "strategies/strategy.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies::testing {

// tiny_config() with model groups {cnn, resnet8} and feature_dim 16, SGD without momentum.
inline RunConfig hetero_config() {
  RunConfig c = tiny_config();
  c.model.groups = {"cnn", "resnet8"};
  c.local.momentum = 0;
  c.local.weight_decay = 0;
  c.local.batch_size = 10;
  c.local.lr = 0.01;
  return c;
}

// Clients 0..n-1 as sim_clients, but client k's model has its group's architecture.
inline std::vector<SimClient> hetero_clients(const RunConfig& config, int n) {
  std::vector<SimClient> out = sim_clients(config, n);
  for (int k = 0; k < n; ++k) {
    Rng rng(900 + k);
    auto m = make_model(client_model_options(config.model, k), rng);
    EXPECT_TRUE(m.ok()) << m.status().to_string();
    out[static_cast<size_t>(k)].model = std::move(m).value();
  }
  return out;
}

inline std::vector<ClientInfo> hetero_infos(const std::vector<SimClient>& clients) {
  std::vector<ClientInfo> out;
  for (const auto& c : clients) out.push_back({c.id, c.train.size(), c.model->options().arch});
  return out;
}

// A PrototypeSet from rows (C vectors of D) and counts.
inline PrototypeSet make_set(const std::vector<std::vector<float>>& rows,
                             const std::vector<int64_t>& counts) {
  PrototypeSet s = PrototypeSet::empty(static_cast<int64_t>(rows.size()),
                                       static_cast<int64_t>(rows.front().size()));
  for (size_t c = 0; c < rows.size(); ++c) {
    for (size_t k = 0; k < rows[c].size(); ++k) s.rows[c * rows[c].size() + k] = rows[c][k];
  }
  s.counts = counts;
  return s;
}

// An update bundle holding `set`.
inline ClientUpdate prototype_update(const std::string& client, const PrototypeSet& set,
                                     int64_t examples = 10) {
  ClientUpdate u;
  u.client_id = client;
  u.num_examples = examples;
  Status s = add_prototype_tensors(set, &u.bundle);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return u;
}

inline std::vector<float> float_values(const NamedTensor& t) {
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

inline torch::Tensor matrix(const std::vector<std::vector<float>>& rows) {
  std::vector<float> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return torch::tensor(flat).view(
      {static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows.front().size())});
}

}  // namespace fedtail::strategies::testing

#endif  // FEDTAIL_TESTS_UNIT_PROTOTYPE_TEST_UTIL_H_

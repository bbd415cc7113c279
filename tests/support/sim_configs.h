// Test support: the small fedtail-sim federation the integration tests run (4 clients, a few
// hundred Fashion-MNIST images, the small CNN), as a config to adjust. Header-only.
#ifndef FEDTAIL_TESTS_SUPPORT_SIM_CONFIGS_H_
#define FEDTAIL_TESTS_SUPPORT_SIM_CONFIGS_H_

#include <nlohmann/json.hpp>

namespace fedtail::test_support {

// `rounds` rounds of FedAvg over all 4 clients; evaluation only after the last round (10,000 test
// images on the server and as many over the clients dominate a round this small). Replace
// "simulation" to run other strategies.
inline nlohmann::json tiny_sim_config(int rounds) {
  return {{"seed", 3},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", rounds},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"imbalance_factor", 10},
            {"partition", "dirichlet"},
            {"alpha", 1.0},
            {"clients", 4},
            {"max_examples_per_class", 60}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 32}, {"lr", 0.05}}},
          {"eval", {{"batch_size", 1000}, {"every", rounds}}},
          {"strategy", {{"fraction_fit", 1.0}}},
          {"federation",
           {{"poll_timeout_ms", 1000}, {"heartbeat_interval_ms", 500}, {"client_timeout_s", 4}}},
          {"simulation", {{"strategies", {{{"name", "fedavg"}}}}}}};
}

}  // namespace fedtail::test_support

#endif  // FEDTAIL_TESTS_SUPPORT_SIM_CONFIGS_H_

#include "strategies/fedprox/fedprox.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/learning/torch_bundle.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

using testing::client_context;
using testing::sim_clients;
using testing::SimClient;

TEST(FedProxOptionsTest, DefaultsValidationAndUnknownKeys) {
  auto defaults = parse_fedprox_options(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->mu, 0.01);
  EXPECT_EQ(defaults->round.min_fit_clients, 1);

  auto set = parse_fedprox_options({{"mu", 0.5}, {"min_fit_clients", 2}});
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(set->mu, 0.5);
  EXPECT_EQ(set->round.min_fit_clients, 2);

  auto negative = parse_fedprox_options({{"mu", -0.1}});
  ASSERT_FALSE(negative.ok());
  EXPECT_NE(negative.status().message().find("config.strategy.mu: must be >= 0"), std::string::npos)
      << negative.status().message();
  auto unknown = parse_fedprox_options({{"momentum", 0.9}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("config.strategy.momentum: unknown key"),
            std::string::npos);
}

class FedProxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    register_builtin_strategies();
    config_ = testing::tiny_config();
    config_.local.epochs = 3;
    config_.local.lr = 0.1;
    run_ = testing::run_context(config_);
    clients_ = sim_clients(config_, 1);
    auto server = make_server_strategy("fedprox", {{"mu", 0.0}});
    ASSERT_TRUE(server.ok());
    server_ = std::move(server).value();
    Rng init(1);
    ASSERT_TRUE(server_->initialize(run_, init).ok());
  }

  // Trains client 0 from the global model with `name`'s client algorithm; a fixed Rng.
  TensorBundle fit(const std::string& name, const nlohmann::json& strategy_config) {
    auto algorithm = make_client_algorithm(name, strategy_config);
    EXPECT_TRUE(algorithm.ok()) << algorithm.status().to_string();
    Rng rng(77);
    ClientContext ctx = client_context(config_, clients_[0], 1, &rng, strategy_config);
    auto out = (*algorithm)->fit(ctx, *server_->global_bundle());
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_EQ(out->num_examples, clients_[0].train.size());
    EXPECT_TRUE(out->metrics["loss"].is_number());
    return std::move(out->update);
  }

  // Names of the trainable parameters (not the BatchNorm buffers).
  std::vector<std::string> parameter_names() {
    std::vector<std::string> names;
    for (const auto& p : clients_[0].model->named_parameters()) names.push_back(p.key());
    return names;
  }

  RunConfig config_;
  RunContext run_;
  std::vector<SimClient> clients_;
  std::unique_ptr<ServerStrategy> server_;
};

TEST_F(FedProxTest, MuZeroGivesExactlyFedAvgsUpdate) {
  const TensorBundle fedavg = fit("fedavg", {});
  const TensorBundle prox = fit("fedprox", {{"mu", 0.0}});
  EXPECT_TRUE(prox.bitwise_equal(fedavg));
}

TEST_F(FedProxTest, PositiveMuPullsTheUpdateTowardTheGlobalModel) {
  const TensorBundle& global = *server_->global_bundle();
  const std::vector<std::string> params = parameter_names();
  const double d_avg = testing::squared_distance(fit("fedavg", {}), global, params);
  const double d_small = testing::squared_distance(fit("fedprox", {{"mu", 0.1}}), global, params);
  const double d_large = testing::squared_distance(fit("fedprox", {{"mu", 2.0}}), global, params);
  EXPECT_GT(d_avg, 0);
  EXPECT_LT(d_small, d_avg);
  EXPECT_LT(d_large, d_small);
  EXPECT_LT(d_large, 0.5 * d_avg) << d_large << " vs " << d_avg;
}

TEST_F(FedProxTest, TheServerIsFedAvgsUnderItsOwnName) {
  EXPECT_NE(dynamic_cast<FedAvgServer*>(server_.get()), nullptr);
  EXPECT_EQ(server_->global_bundle()->metadata()["strategy"], "fedprox");
  auto state = server_->save_state();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->metadata()["strategy"], "fedprox");
}

}  // namespace
}  // namespace fedtail::strategies

#include <gtest/gtest.h>

#include "coordinator/options.h"

namespace fedtail::coordinator {
namespace {

nlohmann::json minimal() {
  return {{"rounds", 3}, {"strategy", {{"name", "fedavg"}, {"fraction_fit", 0.5}}}};
}

void expect_error(const nlohmann::json& sections, const std::string& fragment) {
  Result<CoordinatorOptions> options = parse_coordinator_options(sections);
  ASSERT_FALSE(options.ok()) << sections.dump();
  EXPECT_EQ(options.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(options.status().message().find(fragment), std::string::npos)
      << options.status().message();
}

TEST(CoordinatorOptions, ParsesRoundsStrategyAndDefaults) {
  Result<CoordinatorOptions> options = parse_coordinator_options(minimal());
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_EQ(options->rounds, 3);
  EXPECT_EQ(options->strategy_name, "fedavg");
  // The factory gets the strategy's options without "name".
  EXPECT_EQ(options->strategy_config, nlohmann::json({{"fraction_fit", 0.5}}));
  EXPECT_EQ(options->federation.min_available_clients, 2);
  EXPECT_DOUBLE_EQ(options->federation.round_timeout_s, 600);
  EXPECT_EQ(options->federation.poll_timeout_ms, 20000);
  EXPECT_EQ(options->federation.max_update_bytes, uint64_t{1} << 30);
  EXPECT_EQ(options->federation.max_concurrent_uploads, 4);
  EXPECT_TRUE(options->federation.server_eval);
}

TEST(CoordinatorOptions, ReadsEveryFederationKey) {
  nlohmann::json sections = minimal();
  sections["federation"] = {{"min_available_clients", 5},  {"round_timeout_s", 1.5},
                            {"poll_timeout_ms", 100},      {"heartbeat_interval_ms", 200},
                            {"client_timeout_s", 0.5},     {"max_update_bytes", 1000},
                            {"max_concurrent_uploads", 2}, {"server_eval", false}};
  Result<CoordinatorOptions> options = parse_coordinator_options(sections);
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  const FederationOptions& f = options->federation;
  EXPECT_EQ(f.min_available_clients, 5);
  EXPECT_DOUBLE_EQ(f.round_timeout_s, 1.5);
  EXPECT_EQ(f.poll_timeout_ms, 100);
  EXPECT_EQ(f.heartbeat_interval_ms, 200);
  EXPECT_DOUBLE_EQ(f.client_timeout_s, 0.5);
  EXPECT_EQ(f.max_update_bytes, 1000u);
  EXPECT_EQ(f.max_concurrent_uploads, 2);
  EXPECT_FALSE(f.server_eval);
}

TEST(CoordinatorOptions, MissingRoundsOrStrategyNameNamesThePath) {
  expect_error({{"strategy", {{"name", "fedavg"}}}}, "config.rounds: missing required field");
  expect_error({{"rounds", 3}}, "config.strategy: missing required field");
  expect_error({{"rounds", 3}, {"strategy", nlohmann::json::object()}},
               "config.strategy.name: missing required field");
  expect_error({{"rounds", 3}, {"strategy", {{"name", ""}}}}, "config.strategy.name");
  expect_error({{"rounds", 3}, {"strategy", "fedavg"}}, "config.strategy: expected an object");
}

TEST(CoordinatorOptions, RejectsAbsurdValues) {
  nlohmann::json s = minimal();
  s["rounds"] = 0;
  expect_error(s, "config.rounds: must be >= 1 (got 0)");
  s = minimal();
  s["rounds"] = "ten";
  expect_error(s, "config.rounds: expected");
  auto with = [](const char* key, nlohmann::json value) {
    nlohmann::json sections = minimal();
    sections["federation"] = {{key, value}};
    return sections;
  };
  expect_error(with("min_available_clients", 0), "config.federation.min_available_clients");
  expect_error(with("round_timeout_s", 0), "config.federation.round_timeout_s: must be > 0");
  expect_error(with("round_timeout_s", -5), "config.federation.round_timeout_s");
  expect_error(with("poll_timeout_ms", 0), "config.federation.poll_timeout_ms");
  expect_error(with("heartbeat_interval_ms", -1), "config.federation.heartbeat_interval_ms");
  expect_error(with("client_timeout_s", 0), "config.federation.client_timeout_s");
  expect_error(with("max_update_bytes", 0), "config.federation.max_update_bytes");
  expect_error(with("max_concurrent_uploads", 0), "config.federation.max_concurrent_uploads");
  expect_error(with("server_eval", "yes"), "config.federation.server_eval: expected");
}

TEST(CoordinatorOptions, ClientTimeoutMustExceedThePollTimeout) {
  nlohmann::json s = minimal();
  // The default poll timeout is 20 s: a 10 s client timeout would expire polling clients.
  s["federation"] = {{"client_timeout_s", 10}};
  expect_error(s, "config.federation.client_timeout_s: must exceed poll_timeout_ms");
}

TEST(CoordinatorOptions, UnknownFederationKeyIsRejected) {
  nlohmann::json s = minimal();
  s["federation"] = {{"min_clients", 3}};
  expect_error(s, "config.federation.min_clients: unknown key");
}

}  // namespace
}  // namespace fedtail::coordinator

#include "strategies/registry.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace fedtail::strategies {
namespace {

bool has_name(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

StrategyEntry entry_named(const std::string& name) {
  return {name, "a test strategy",
          [](const nlohmann::json&) -> Result<std::unique_ptr<ServerStrategy>> {
            return Status::Internal("not for use");
          },
          [](const nlohmann::json&) -> Result<std::unique_ptr<ClientAlgorithm>> {
            return Status::Internal("not for use");
          }};
}

TEST(RegistryTest, BuiltinsAreRegisteredOnceAndListedSorted) {
  register_builtin_strategies();
  register_builtin_strategies();  // idempotent
  const std::vector<std::string> names = strategy_names();
  EXPECT_TRUE(has_name(names, "fedavg"));
  EXPECT_TRUE(has_name(names, "fedprox"));
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(std::count(names.begin(), names.end(), "fedavg"), 1);

  auto entry = find_strategy("fedavg");
  ASSERT_TRUE(entry.ok()) << entry.status().to_string();
  EXPECT_EQ(entry->name, "fedavg");
  EXPECT_FALSE(entry->description.empty());
  auto server = make_server_strategy("fedavg", nlohmann::json::object());
  ASSERT_TRUE(server.ok()) << server.status().to_string();
  EXPECT_EQ((*server)->global_bundle(), nullptr);  // not initialised yet
  auto client = make_client_algorithm("fedprox", {{"mu", 0.5}});
  EXPECT_TRUE(client.ok()) << client.status().to_string();
}

TEST(RegistryTest, DuplicateNameIsRefused) {
  register_builtin_strategies();
  ASSERT_TRUE(register_strategy(entry_named("registry_test_dup")).ok());
  Status again = register_strategy(entry_named("registry_test_dup"));
  EXPECT_EQ(again.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(again.message().find("\"registry_test_dup\" is already registered"), std::string::npos)
      << again.message();
  Status builtin = register_strategy(entry_named("fedavg"));
  EXPECT_EQ(builtin.code(), StatusCode::kInvalidArgument);
  // The original fedavg entry is untouched.
  EXPECT_TRUE(make_server_strategy("fedavg", nlohmann::json::object()).ok());
}

TEST(RegistryTest, EmptyNameOrMissingFactoryIsRefused) {
  EXPECT_EQ(register_strategy(entry_named("")).code(), StatusCode::kInvalidArgument);
  StrategyEntry no_client = entry_named("registry_test_no_client");
  no_client.client = nullptr;
  Status s = register_strategy(std::move(no_client));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("registry_test_no_client"), std::string::npos);
  EXPECT_FALSE(find_strategy("registry_test_no_client").ok());
}

TEST(RegistryTest, UnknownNameListsTheKnownOnes) {
  register_builtin_strategies();
  auto missing = find_strategy("fedmagic");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  const std::string& m = missing.status().message();
  EXPECT_NE(m.find("\"fedmagic\""), std::string::npos) << m;
  EXPECT_NE(m.find("fedavg"), std::string::npos) << m;
  EXPECT_NE(m.find("fedprox"), std::string::npos) << m;
  EXPECT_EQ(make_server_strategy("fedmagic", {}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(make_client_algorithm("fedmagic", {}).status().code(), StatusCode::kNotFound);
}

TEST(RegistryTest, FactoriesValidateTheStrategyConfig) {
  register_builtin_strategies();
  auto bad_mu = make_server_strategy("fedprox", {{"mu", -1.0}});
  ASSERT_FALSE(bad_mu.ok());
  EXPECT_EQ(bad_mu.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_mu.status().message().find("config.strategy.mu: must be >= 0"), std::string::npos)
      << bad_mu.status().message();

  auto unknown = make_client_algorithm("fedavg", {{"mu", 0.1}});  // fedavg has no mu
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("config.strategy.mu"), std::string::npos)
      << unknown.status().message();

  auto bad_fraction = make_server_strategy("fedavg", {{"fraction_fit", 0.0}});
  ASSERT_FALSE(bad_fraction.ok());
  EXPECT_NE(bad_fraction.status().message().find("config.strategy.fraction_fit"),
            std::string::npos);
  // A null config counts as {}.
  EXPECT_TRUE(make_server_strategy("fedavg", nlohmann::json()).ok());
}

TEST(RegistryTest, AFactoryThatThrowsBecomesAnInternalError) {
  StrategyEntry throwing = entry_named("registry_test_throws");
  throwing.server = [](const nlohmann::json&) -> Result<std::unique_ptr<ServerStrategy>> {
    throw std::runtime_error("boom");
  };
  ASSERT_TRUE(register_strategy(std::move(throwing)).ok());
  auto server = make_server_strategy("registry_test_throws", {});
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInternal);
  EXPECT_NE(server.status().message().find("boom"), std::string::npos);
}

}  // namespace
}  // namespace fedtail::strategies

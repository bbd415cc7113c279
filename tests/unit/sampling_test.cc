#include "strategies/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

namespace fedtail::strategies {
namespace {

std::vector<ClientInfo> clients(int n) {
  std::vector<ClientInfo> out;
  for (int i = 0; i < n; ++i) {
    char id[16];
    std::snprintf(id, sizeof(id), "client-%02d", i);
    out.push_back({id, 100 + i, "cnn"});
  }
  return out;
}

std::vector<std::string> ids(const std::vector<ClientInfo>& v) {
  std::vector<std::string> out;
  for (const auto& c : v) out.push_back(c.id);
  return out;
}

TEST(RoundOptionsTest, DefaultsAndParsing) {
  auto defaults = parse_round_options(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->fraction_fit, 1.0);
  EXPECT_EQ(defaults->min_fit_clients, 1);
  EXPECT_EQ(defaults->fraction_evaluate, 1.0);
  EXPECT_EQ(defaults->min_evaluate_clients, 0);
  EXPECT_TRUE(defaults->accept_failures);

  auto set = parse_round_options({{"fraction_fit", 0.25},
                                  {"min_fit_clients", 3},
                                  {"fraction_evaluate", 0.0},
                                  {"min_evaluate_clients", 2},
                                  {"accept_failures", false}});
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->fraction_fit, 0.25);
  EXPECT_EQ(set->min_fit_clients, 3);
  EXPECT_EQ(set->fraction_evaluate, 0.0);
  EXPECT_EQ(set->min_evaluate_clients, 2);
  EXPECT_FALSE(set->accept_failures);
}

TEST(RoundOptionsTest, BadValuesAndUnknownKeysNameTheField) {
  struct Case {
    nlohmann::json config;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"fraction_fit", 0.0}}, "config.strategy.fraction_fit: must be in (0, 1]"},
      {{{"fraction_fit", 1.5}}, "config.strategy.fraction_fit: must be in (0, 1]"},
      {{{"min_fit_clients", 0}}, "config.strategy.min_fit_clients: must be >= 1"},
      {{{"fraction_evaluate", -0.1}}, "config.strategy.fraction_evaluate: must be in [0, 1]"},
      {{{"min_evaluate_clients", -1}}, "config.strategy.min_evaluate_clients: must be >= 0"},
      {{{"fraction_fit", "half"}}, "config.strategy.fraction_fit: expected a number"},
      {{{"fractionfit", 0.5}}, "config.strategy.fractionfit: unknown key"},
  };
  for (const Case& c : cases) {
    auto r = parse_round_options(c.config);
    ASSERT_FALSE(r.ok()) << c.config.dump();
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.message), std::string::npos)
        << r.status().message() << " for " << c.config.dump();
  }
}

TEST(SamplingTest, TakesTheFractionOfAvailableClientsSortedById) {
  const auto available = clients(10);
  Rng rng(1);
  auto chosen = sample_clients(available, 0.3, 1, rng);
  ASSERT_TRUE(chosen.ok()) << chosen.status().to_string();
  ASSERT_EQ(chosen->size(), 3u);
  const auto chosen_ids = ids(*chosen);
  EXPECT_TRUE(std::is_sorted(chosen_ids.begin(), chosen_ids.end()));
  EXPECT_EQ(std::set<std::string>(chosen_ids.begin(), chosen_ids.end()).size(), 3u);
  for (const ClientInfo& c : *chosen) {
    auto it = std::find_if(available.begin(), available.end(),
                           [&](const ClientInfo& a) { return a.id == c.id; });
    ASSERT_NE(it, available.end());
    EXPECT_EQ(it->num_examples, c.num_examples);  // the whole ClientInfo is carried over
  }
  EXPECT_EQ(sample_size(100, 0.29, 1), 29);  // no floating-point shortfall
  EXPECT_EQ(sample_size(10, 0.05, 1), 1);
  EXPECT_EQ(sample_size(10, 0.0, 0), 0);
}

TEST(SamplingTest, MinimumAndAllAreHonoured) {
  const auto available = clients(10);
  Rng rng(2);
  auto at_least = sample_clients(available, 0.1, 4, rng);
  ASSERT_TRUE(at_least.ok());
  EXPECT_EQ(at_least->size(), 4u);
  auto all = sample_clients(available, 1.0, 1, rng);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(ids(*all), ids(available));
  auto none = sample_clients(available, 0.0, 0, rng);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(SamplingTest, TooFewAvailableClientsIsAFailedPrecondition) {
  Rng rng(3);
  auto r = sample_clients(clients(2), 1.0, 3, rng);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("2 client(s) available, 3 needed"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(sample_clients(clients(0), 0.5, 1, rng).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(sample_clients(clients(3), 1.5, 1, rng).status().code(), StatusCode::kInvalidArgument);
}

TEST(SamplingTest, DeterministicFromTheRngAndVariesWithIt) {
  const auto available = clients(20);
  std::set<std::vector<std::string>> distinct;
  for (uint64_t round = 1; round <= 8; ++round) {
    Rng a = Rng::derive(99, "sample", {round});
    Rng b = Rng::derive(99, "sample", {round});
    auto x = sample_clients(available, 0.25, 1, a);
    auto y = sample_clients(available, 0.25, 1, b);
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(ids(*x), ids(*y));
    distinct.insert(ids(*x));
  }
  EXPECT_GE(distinct.size(), 6u);  // 5 of 20: repeats are very unlikely
}

TEST(SamplingTest, EveryClientIsPickedEquallyOften) {
  const auto available = clients(10);
  std::map<std::string, int> picks;
  Rng rng(5);
  const int trials = 3000;
  for (int t = 0; t < trials; ++t) {
    auto chosen = sample_clients(available, 0.3, 1, rng);
    ASSERT_TRUE(chosen.ok());
    for (const auto& c : *chosen) ++picks[c.id];
  }
  ASSERT_EQ(picks.size(), 10u);
  for (const auto& [id, count] : picks) {
    EXPECT_NEAR(count, trials * 0.3, 120) << id;  // sd ≈ 25
  }
}

}  // namespace
}  // namespace fedtail::strategies

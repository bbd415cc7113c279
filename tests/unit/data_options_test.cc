// Tests for parsing and validating DataOptions from JSON.
#include "common/data/data_options.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace fedtail {
namespace {

using nlohmann::json;

// The error message of parsing `j` at path "config.data" (empty when it parses).
std::string error_of(const json& j) {
  auto r = parse_data_options(j, "config.data");
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  return r.status().message();
}

TEST(DataOptions, DefaultsAreBalancedFashionMnistOnOneClient) {
  auto o = parse_data_options(json::object(), "config.data");
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->dataset, "fashion-mnist");
  EXPECT_EQ(o->root, "");
  EXPECT_EQ(o->imbalance_factor, 1.0);
  EXPECT_EQ(o->partition, "dirichlet");
  EXPECT_EQ(o->alpha, 0.5);
  EXPECT_EQ(o->classes_per_client, 2);
  EXPECT_EQ(o->clients, 1);
  EXPECT_EQ(o->min_client_size, 1);
  EXPECT_EQ(o->max_examples_per_class, 0);
  // A null section is an absent one.
  EXPECT_TRUE(parse_data_options(json(nullptr), "config.data").ok());
}

TEST(DataOptions, ReadsEveryField) {
  const json j = {{"dataset", "cifar100"},
                  {"root", "/data/c100"},
                  {"imbalance_factor", 50},
                  {"partition", "pathological"},
                  {"alpha", 1.0},
                  {"classes_per_client", 20},
                  {"clients", 40},
                  {"min_client_size", 8},
                  {"max_examples_per_class", 100},
                  {"validation_per_class", 500}};
  auto o = parse_data_options(j, "config.data");
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->dataset, "cifar100");
  EXPECT_EQ(o->root, "/data/c100");
  EXPECT_EQ(o->imbalance_factor, 50.0);
  EXPECT_EQ(o->partition, "pathological");
  EXPECT_EQ(o->classes_per_client, 20);
  EXPECT_EQ(o->clients, 40);
  EXPECT_EQ(o->min_client_size, 8);
  EXPECT_EQ(o->max_examples_per_class, 100);
  EXPECT_EQ(o->validation_per_class, 500);
  // The JSON form reads back to the same options.
  auto back = parse_data_options(data_options_to_json(*o), "config.data");
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(data_options_to_json(*back), data_options_to_json(*o));
}

TEST(DataOptions, AbsurdValuesNameTheField) {
  EXPECT_EQ(error_of({{"alpha", -1}}), "config.data.alpha: must be > 0 (got -1)");
  EXPECT_EQ(error_of({{"alpha", 0}}), "config.data.alpha: must be > 0 (got 0)");
  EXPECT_EQ(error_of({{"imbalance_factor", 0.5}}),
            "config.data.imbalance_factor: must be >= 1 (got 0.5)");
  EXPECT_EQ(error_of({{"clients", 0}}), "config.data.clients: must be in [1, 1000000] (got 0)");
  EXPECT_EQ(error_of({{"clients", 5000000}}),
            "config.data.clients: must be in [1, 1000000] (got 5000000)");
  EXPECT_EQ(error_of({{"classes_per_client", 11}}),
            "config.data.classes_per_client: must be in [1, 10] (got 11)");
  EXPECT_EQ(error_of({{"min_client_size", -2}}),
            "config.data.min_client_size: must be >= 0 (got -2)");
  EXPECT_EQ(error_of({{"max_examples_per_class", -1}}),
            "config.data.max_examples_per_class: must be >= 0 (got -1)");
  EXPECT_EQ(error_of({{"validation_per_class", -1}}),
            "config.data.validation_per_class: must be >= 0 (got -1)");
  EXPECT_EQ(error_of({{"dataset", "folder"}}), "config.data.root: required for dataset \"folder\"");
  // cifar100 allows up to 100 classes per client.
  EXPECT_EQ(error_of({{"dataset", "cifar100"}, {"classes_per_client", 100}}), "");
}

TEST(DataOptions, BadTypesAndNamesNameTheField) {
  EXPECT_EQ(error_of({{"alpha", "0.5"}}), "config.data.alpha: expected a number (got \"0.5\")");
  EXPECT_EQ(error_of({{"clients", 2.5}}), "config.data.clients: expected an integer (got 2.5)");
  EXPECT_EQ(error_of({{"dataset", "mnist"}}),
            "config.data.dataset: must be one of fashion-mnist, cifar10, cifar100, folder (got "
            "\"mnist\")");
  EXPECT_EQ(error_of({{"partition", "shards"}}),
            "config.data.partition: must be one of dirichlet, pathological, iid (got \"shards\")");
  EXPECT_EQ(error_of({{"alpah", 0.5}}), "config.data.alpah: unknown key");
  EXPECT_EQ(error_of(json::array()), "config.data: expected an object (got array)");
}

}  // namespace
}  // namespace fedtail

#include "client/client_options.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "client/backoff.h"

namespace fedtail::client {
namespace {

TEST(ClientOptionsTest, ReadsEveryField) {
  nlohmann::json j = {{"client_id", "client-3"},
                      {"partition", 3},
                      {"data_root", "/data"},
                      {"threads", 4},
                      {"state_dir", "/var/fedtail"}};
  Result<ClientOptions> o = parse_client_options(j, "client.json", /*require_identity=*/true);
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->client_id, "client-3");
  EXPECT_EQ(o->partition, 3);
  EXPECT_EQ(o->data_root, "/data");
  EXPECT_EQ(o->threads, 4);
  EXPECT_EQ(o->state_dir, "/var/fedtail");
}

TEST(ClientOptionsTest, IdentityIsRequiredOnlyWhenAsked) {
  nlohmann::json j = {{"data_root", "/data"}};
  Result<ClientOptions> required = parse_client_options(j, "client.json", true);
  ASSERT_FALSE(required.ok());
  EXPECT_EQ(required.status().message(), "client.json.client_id: missing required field");
  Result<ClientOptions> optional = parse_client_options(j, "client.json", false);
  ASSERT_TRUE(optional.ok());
  EXPECT_EQ(optional->partition, -1);
  EXPECT_EQ(optional->client_id, "");
}

TEST(ClientOptionsTest, ErrorsNameThePath) {
  auto message = [](const nlohmann::json& j) {
    return parse_client_options(j, "client.json", true).status().message();
  };
  EXPECT_EQ(message({{"client_id", "c"}, {"partition", -2}}),
            "client.json.partition: must be >= 0 (got -2)");
  EXPECT_EQ(message({{"client_id", "c"}, {"partition", "3"}}),
            "client.json.partition: expected an integer (got \"3\")");
  EXPECT_EQ(message({{"client_id", "c"}, {"partition", 1}, {"partiton", 1}}),
            "client.json.partiton: unknown key");
  EXPECT_EQ(message({{"client_id", "a/b"}, {"partition", 1}}),
            "client.json.client_id: may hold only letters, digits, '.', '_' and '-' (got \"a/b\")");
  EXPECT_EQ(message({{"client_id", "c"}, {"partition", 1}, {"threads", -1}}),
            "client.json.threads: must be >= 0 (got -1; 0 = the run config's)");
}

TEST(ClientOptionsTest, ClientIdRules) {
  EXPECT_TRUE(validate_client_id("client-3", "id").ok());
  EXPECT_TRUE(validate_client_id("Site_A.gpu-1", "id").ok());
  EXPECT_EQ(validate_client_id("", "--id").message(), "--id: must not be empty");
  EXPECT_FALSE(validate_client_id(".hidden", "--id").ok());
  EXPECT_FALSE(validate_client_id("a b", "--id").ok());
  EXPECT_FALSE(validate_client_id(std::string(65, 'a'), "--id").ok());
  EXPECT_TRUE(validate_client_id(std::string(64, 'a'), "--id").ok());
}

TEST(ClientOptionsTest, LoadsFileAndNamesMissingFile) {
  const std::string dir = std::string(FEDTAIL_TEST_TMP) + "/client_options_test";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/client.json";
  std::ofstream(path) << R"({"client_id": "client-0", "partition": 0})";
  Result<ClientOptions> o = load_client_options(path, true);
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->client_id, "client-0");
  Result<ClientOptions> missing = load_client_options(dir + "/nope.json", true);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.json"), std::string::npos);
}

TEST(ClientRangeTest, ParsesRangesAndSingles) {
  Result<ClientRange> r = parse_client_range("3-7");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first, 3);
  EXPECT_EQ(r->last, 7);
  EXPECT_EQ(r->size(), 5);
  Result<ClientRange> one = parse_client_range("4");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->first, 4);
  EXPECT_EQ(one->last, 4);
  Result<ClientRange> same = parse_client_range("0-0");
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->size(), 1);
}

TEST(ClientRangeTest, RejectsMalformedRanges) {
  for (const char* bad :
       {"", "7-3", "-3", "3-", "a-b", "1-2-3", " 1-2", "+1-2", "1--2", "99999999999-1"}) {
    Result<ClientRange> r = parse_client_range(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().message(),
              std::string("--clients: expected A-B with 0 <= A <= B, or A (got \"") + bad + "\")");
  }
}

TEST(ClientRangeTest, VirtualClientIds) {
  EXPECT_EQ(virtual_client_id(0), "client-0");
  EXPECT_EQ(virtual_client_id(12), "client-12");
}

TEST(BackoffTest, GrowsExponentiallyWithJitterUpToTheCap) {
  Backoff backoff("client-3", {/*base_s=*/0.5, /*cap_s=*/30});
  for (int attempt = 0; attempt < 12; ++attempt) {
    const double d = std::min(30.0, 0.5 * (1 << attempt));
    const double delay = backoff.next_delay_s();
    EXPECT_GE(delay, d / 2) << attempt;
    EXPECT_LT(delay, d) << attempt;
  }
  backoff.reset();
  EXPECT_EQ(backoff.attempts(), 0);
  const double first = backoff.next_delay_s();
  EXPECT_GE(first, 0.25);
  EXPECT_LT(first, 0.5);
}

TEST(BackoffTest, JitterIsAFunctionOfTheClientId) {
  Backoff a("client-3"), b("client-3"), c("client-4");
  bool differs = false;
  for (int i = 0; i < 5; ++i) {
    const double da = a.next_delay_s();
    EXPECT_EQ(da, b.next_delay_s());
    differs = differs || da != c.next_delay_s();
  }
  EXPECT_TRUE(differs);
}

}  // namespace
}  // namespace fedtail::client

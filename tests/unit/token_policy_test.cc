// TokenPolicy (coordinator/token_policy.h): join tokens checked against the coordinator's
// federation, and a revocation file re-read when it changes.
#include "coordinator/token_policy.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "common/security/join_token.h"

namespace fedtail::coordinator {
namespace {

using namespace std::chrono_literals;

const std::string kSecret(64, 'k');
constexpr int64_t kNow = 1700000000;

class TokenPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::string(FEDTAIL_TEST_TMP) + "/token_policy_test." + std::to_string(::getpid()) +
           "." + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    revoked_ = dir_ + "/revoked.txt";
  }

  // Writes the revocation file and sets its modification time `age_s` seconds after a fixed
  // base, so that each rewrite has a later time than the last whatever the clock's resolution.
  void write_revoked(const std::string& text, int age_s) {
    std::ofstream(revoked_, std::ios::trunc) << text;
    const timespec times[2] = {{1600000000 + age_s, 0}, {1600000000 + age_s, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, revoked_.c_str(), times, 0), 0);
  }

  std::unique_ptr<TokenPolicy> policy(std::chrono::milliseconds recheck = 0ms,
                                      const std::string& file = "") {
    TokenPolicyOptions options;
    options.secret = kSecret;
    options.federation = "lab";
    options.revocation_file = file.empty() ? revoked_ : file;
    options.recheck_interval = recheck;
    Result<std::unique_ptr<TokenPolicy>> made = TokenPolicy::create(options);
    EXPECT_TRUE(made.ok()) << made.status().to_string();
    return made.ok() ? std::move(*made) : nullptr;
  }

  static std::string token(const std::string& id) {
    return make_join_token(kSecret, id, "lab", kNow + 3600);
  }
  static std::string mac_of(const std::string& token) { return token.substr(token.rfind('.') + 1); }

  std::string dir_;
  std::string revoked_;
};

TEST_F(TokenPolicyTest, ChecksFederationExpiryAndSignature) {
  write_revoked("", 0);
  std::unique_ptr<TokenPolicy> tokens = policy();
  ASSERT_TRUE(tokens);
  EXPECT_EQ(tokens->federation(), "lab");
  EXPECT_TRUE(tokens->check("client-1", token("client-1"), kNow).ok());
  EXPECT_NE(tokens->check("client-1", token("client-1"), kNow + 3600).message().find("expired at"),
            std::string::npos);
  EXPECT_NE(tokens->check("client-2", token("client-1"), kNow).message().find("bad signature"),
            std::string::npos);
  const std::string other = make_join_token(kSecret, "client-1", "fedtail", kNow + 3600);
  EXPECT_EQ(tokens->check("client-1", other, kNow).message(),
            "issued for federation \"fedtail\", this coordinator is \"lab\"");
}

TEST_F(TokenPolicyTest, RevokesClientIdsAndSingleTokensAndRereadsTheFileWhenItChanges) {
  const std::string first = token("client-1");
  write_revoked("# revoked on the 1st\nclient-2\n\n  " + mac_of(first) + "  # lost laptop\n", 0);
  std::unique_ptr<TokenPolicy> tokens = policy();
  ASSERT_TRUE(tokens);
  EXPECT_EQ(tokens->revoked_count(), 2u);
  Status id_revoked = tokens->check("client-2", token("client-2"), kNow);
  EXPECT_EQ(id_revoked.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(id_revoked.message().find("revoked"), std::string::npos) << id_revoked.message();
  Status token_revoked = tokens->check("client-1", first, kNow);
  EXPECT_NE(token_revoked.message().find("revoked"), std::string::npos);
  EXPECT_EQ(token_revoked.message().find(mac_of(first)), std::string::npos);
  // Another token of client-1 (another expiry) is not the revoked one.
  EXPECT_TRUE(
      tokens->check("client-1", make_join_token(kSecret, "client-1", "lab", kNow + 7200), kNow)
          .ok());
  EXPECT_TRUE(tokens->check("client-3", token("client-3"), kNow).ok());

  // The operator un-revokes client-2 and revokes client-3 (upper-case MAC digits work too).
  write_revoked("client-3\n", 10);
  EXPECT_TRUE(tokens->check("client-2", token("client-2"), kNow).ok());
  EXPECT_TRUE(tokens->check("client-1", first, kNow).ok());
  EXPECT_FALSE(tokens->check("client-3", token("client-3"), kNow).ok());
  std::string upper = mac_of(token("client-4"));
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  write_revoked(upper + "\n", 20);
  EXPECT_TRUE(tokens->check("client-3", token("client-3"), kNow).ok());
  EXPECT_FALSE(tokens->check("client-4", token("client-4"), kNow).ok());
}

TEST_F(TokenPolicyTest, LooksAtTheFileAtMostOncePerInterval) {
  write_revoked("client-2\n", 0);
  std::unique_ptr<TokenPolicy> tokens = policy(/*recheck=*/1h);
  ASSERT_TRUE(tokens);
  EXPECT_FALSE(tokens->check("client-2", token("client-2"), kNow).ok());
  write_revoked("", 10);
  // Not looked at again within the hour: the list read at creation stays in force.
  EXPECT_FALSE(tokens->check("client-2", token("client-2"), kNow).ok());
}

TEST_F(TokenPolicyTest, AFailedRereadKeepsThePreviousList) {
  write_revoked("client-2\n", 0);
  std::unique_ptr<TokenPolicy> tokens = policy();
  ASSERT_TRUE(tokens);
  write_revoked("client-2\nnot a client id!\n", 10);
  EXPECT_FALSE(tokens->check("client-2", token("client-2"), kNow).ok());
  std::filesystem::remove(revoked_);
  EXPECT_FALSE(tokens->check("client-2", token("client-2"), kNow).ok());
  EXPECT_EQ(tokens->revoked_count(), 1u);
  write_revoked("", 20);  // back, and empty
  EXPECT_TRUE(tokens->check("client-2", token("client-2"), kNow).ok());
}

TEST_F(TokenPolicyTest, CreateRefusesBadOptionsNamingTheFlagOrFile) {
  TokenPolicyOptions options;
  options.secret = kSecret;
  options.federation = "no spaces";
  Result<std::unique_ptr<TokenPolicy>> bad_name = TokenPolicy::create(options);
  EXPECT_EQ(bad_name.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_name.status().message().find("--federation"), std::string::npos);

  options.federation = "lab";
  options.revocation_file = dir_ + "/missing.txt";
  Result<std::unique_ptr<TokenPolicy>> missing = TokenPolicy::create(options);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("missing.txt"), std::string::npos);

  write_revoked("client-1\nbad line here\n", 0);
  options.revocation_file = revoked_;
  Result<std::unique_ptr<TokenPolicy>> bad_line = TokenPolicy::create(options);
  EXPECT_EQ(bad_line.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_line.status().message().find("line 2"), std::string::npos)
      << bad_line.status().message();

  options.revocation_file.clear();
  options.secret.clear();
  EXPECT_EQ(TokenPolicy::create(options).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(TokenPolicyTest, WithoutARevocationFileOnlyTheTokenCounts) {
  TokenPolicyOptions options;
  options.secret = kSecret;
  Result<std::unique_ptr<TokenPolicy>> tokens = TokenPolicy::create(options);
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ((*tokens)->federation(), kDefaultFederation);
  EXPECT_TRUE((*tokens)
                  ->check("client-1",
                          make_join_token(kSecret, "client-1", kDefaultFederation, kNow + 1), kNow)
                  .ok());
}

}  // namespace
}  // namespace fedtail::coordinator

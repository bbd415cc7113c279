#include "common/security/certs.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/security/join_token.h"
#include "common/security/tls.h"

namespace fedtail::certs {
namespace {

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(FEDTAIL_TEST_TMP) + "/certs_test/" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

unsigned mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class CertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fresh_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    ca_ = dir_ + "/ca";
    ASSERT_TRUE(make_ca(ca_, "test CA", 30, /*overwrite=*/false).ok());
  }
  std::string dir_;
  std::string ca_;
};

TEST_F(CertsTest, CaFilesHaveTheRightModes) {
  EXPECT_TRUE(std::filesystem::exists(ca_ + "/ca.pem"));
  EXPECT_EQ(mode_of(ca_ + "/ca.key"), 0600u);
  EXPECT_EQ(mode_of(ca_ + "/ca.pem"), 0644u);
  EXPECT_NE(slurp(ca_ + "/ca.pem").find("BEGIN CERTIFICATE"), std::string::npos);
  EXPECT_NE(slurp(ca_ + "/ca.key").find("BEGIN PRIVATE KEY"), std::string::npos);
  Result<std::string> cn = certificate_common_name(ca_ + "/ca.pem");
  ASSERT_TRUE(cn.ok());
  EXPECT_EQ(*cn, "test CA");
  // Self-signed: the CA verifies against itself.
  EXPECT_TRUE(verify_certificate(ca_ + "/ca.pem", ca_ + "/ca.pem").ok());
}

TEST_F(CertsTest, ServerCertificateChainsToTheCaWithItsSans) {
  Result<std::vector<std::string>> sans = parse_san_list("localhost, 127.0.0.1,host.example,::1");
  ASSERT_TRUE(sans.ok()) << sans.status().to_string();
  const std::string out = dir_ + "/server";
  ASSERT_TRUE(make_server_certificate(ca_, out, *sans, "", 30, false).ok());
  Status verified = verify_certificate(out + "/server.pem", ca_ + "/ca.pem");
  EXPECT_TRUE(verified.ok()) << verified.to_string();
  Result<std::vector<std::string>> names = certificate_subject_alt_names(out + "/server.pem");
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"DNS:localhost", "IP:127.0.0.1", "DNS:host.example",
                                              "IP:::1"}));
  EXPECT_EQ(*certificate_common_name(out + "/server.pem"), "localhost");
  EXPECT_EQ(mode_of(out + "/server.key"), 0600u);
  // The credentials gRPC builds from these files are accepted.
  EXPECT_TRUE(
      make_server_credentials({out + "/server.pem", out + "/server.key", ca_ + "/ca.pem"}, false)
          .ok());
}

TEST_F(CertsTest, ClientCertificateCarriesTheClientIdAsCn) {
  const std::string out = dir_ + "/clients";
  ASSERT_TRUE(make_client_certificate(ca_, out, "client-3", 30, false).ok());
  ASSERT_TRUE(make_client_certificate(ca_, out, "client-4", 30, false).ok());
  EXPECT_EQ(*certificate_common_name(out + "/client-3.pem"), "client-3");
  EXPECT_EQ(*certificate_common_name(out + "/client-4.pem"), "client-4");
  EXPECT_TRUE(verify_certificate(out + "/client-3.pem", ca_ + "/ca.pem").ok());
  EXPECT_EQ(mode_of(out + "/client-3.key"), 0600u);
  EXPECT_TRUE(certificate_subject_alt_names(out + "/client-3.pem")->empty());
}

TEST_F(CertsTest, CertificateFromAnotherCaDoesNotVerify) {
  const std::string other = dir_ + "/other-ca";
  ASSERT_TRUE(make_ca(other, "other CA", 30, false).ok());
  ASSERT_TRUE(make_client_certificate(other, dir_ + "/rogue", "client-3", 30, false).ok());
  Status verified = verify_certificate(dir_ + "/rogue/client-3.pem", ca_ + "/ca.pem");
  ASSERT_FALSE(verified.ok());
  EXPECT_EQ(verified.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(verified.message().find("does not verify"), std::string::npos) << verified.message();
}

TEST_F(CertsTest, ExistingFilesAreKeptUnlessOverwrite) {
  const std::string before = slurp(ca_ + "/ca.pem");
  Status again = make_ca(ca_, "test CA", 30, false);
  EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(again.message().find("ca.pem: exists; pass --force"), std::string::npos)
      << again.message();
  EXPECT_EQ(slurp(ca_ + "/ca.pem"), before);
  ASSERT_TRUE(make_ca(ca_, "test CA", 30, /*overwrite=*/true).ok());
  EXPECT_NE(slurp(ca_ + "/ca.pem"), before);
}

TEST_F(CertsTest, BadInputsGiveClearErrors) {
  EXPECT_EQ(make_client_certificate(ca_, dir_ + "/c", "bad id", 30, false).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(make_client_certificate(ca_, dir_ + "/c", std::string(65, 'a'), 30, false).code(),
            StatusCode::kInvalidArgument);
  Status no_ca = make_client_certificate(dir_ + "/nowhere", dir_ + "/c", "client-1", 30, false);
  EXPECT_EQ(no_ca.code(), StatusCode::kNotFound);
  EXPECT_NE(no_ca.message().find("nowhere/ca.pem"), std::string::npos) << no_ca.message();
  EXPECT_EQ(make_ca(dir_ + "/x", "x", 0, false).message(), "--days: must be >= 1 (got 0)");
  EXPECT_EQ(parse_san_list("localhost,,x").status().message(), "--san: entry 2 is empty");
  EXPECT_EQ(parse_san_list("bad_name!").status().message(),
            "--san: \"bad_name!\" is neither an IP address nor a DNS name");
  EXPECT_TRUE(parse_san_list("*.example.com").ok());
  Result<std::string> not_pem = certificate_common_name(ca_ + "/ca.key");
  EXPECT_EQ(not_pem.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(CertsTest, SecretFileIsPrivateAndGivesVerifiableTokens) {
  const std::string path = dir_ + "/secret";
  ASSERT_TRUE(make_secret_file(path, false).ok());
  EXPECT_EQ(mode_of(path), 0600u);
  Result<std::string> secret = read_secret_file(path);
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(secret->size(), 64u);  // at least kMinTokenSecretBytes
  EXPECT_GE(secret->size(), kMinTokenSecretBytes);
  const int64_t now = 1700000000;
  const std::string token = make_join_token(*secret, "client-3", "fedtail", now + 3600);
  EXPECT_TRUE(check_join_token(*secret, "client-3", token, "fedtail", now).ok());
  EXPECT_FALSE(check_join_token(*secret, "client-4", token, "fedtail", now).ok());
  EXPECT_FALSE(check_join_token(*secret, "client-3", token, "fedtail", now + 3600).ok());
  // A second secret differs (drawn from the CSPRNG).
  ASSERT_TRUE(make_secret_file(path, /*overwrite=*/true).ok());
  EXPECT_NE(*read_secret_file(path), *secret);
}

}  // namespace
}  // namespace fedtail::certs

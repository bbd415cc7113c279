// simulations/run_credentials.h: the CA, server certificate and token secret made for one run.
#include "simulations/run_credentials.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/security/certs.h"

namespace fedtail::simulation {
namespace {

namespace fs = std::filesystem;

std::string temp_dir() {
  const fs::path dir =
      fs::temp_directory_path() / ("run-credentials-test." + std::to_string(::getpid()));
  fs::remove_all(dir);
  return dir.string();
}

TEST(RunCredentials, CertifiesTheDialedHostsAndDropsTheCaKey) {
  const std::string dir = temp_dir() + "/tls";
  Result<RunCredentials> made =
      make_run_credentials(dir, {"node7", "node7", "localhost", "127.0.0.1"});
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  EXPECT_EQ(made->ca_cert, dir + "/ca.pem");
  EXPECT_TRUE(certs::verify_certificate(made->server_cert, made->ca_cert).ok());
  Result<std::vector<std::string>> sans = certs::certificate_subject_alt_names(made->server_cert);
  ASSERT_TRUE(sans.ok()) << sans.status().to_string();
  EXPECT_EQ(*sans, std::vector<std::string>({"DNS:node7", "DNS:localhost", "IP:127.0.0.1"}));
  EXPECT_FALSE(fs::exists(dir + "/ca.key"));  // nothing else is ever signed with it
  struct stat info {};
  ASSERT_EQ(::stat(made->token_secret.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(made->server_key.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);

  // A second run in the same place (a resume) gets new files: another secret.
  const std::string first_secret = made->token_secret;
  std::string before;
  {
    FILE* f = std::fopen(first_secret.c_str(), "r");
    char buf[128] = {};
    ASSERT_NE(f, nullptr);
    before = std::string(buf, std::fread(buf, 1, sizeof(buf), f));
    std::fclose(f);
  }
  Result<RunCredentials> again = make_run_credentials(dir, {"node8"});
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  FILE* f = std::fopen(again->token_secret.c_str(), "r");
  char buf[128] = {};
  ASSERT_NE(f, nullptr);
  const std::string after(buf, std::fread(buf, 1, sizeof(buf), f));
  std::fclose(f);
  EXPECT_EQ(after.size(), 65u);  // 64 hex digits and a newline
  EXPECT_NE(after, before);
  fs::remove_all(fs::path(dir).parent_path());
}

TEST(RunCredentials, RefusesNoHostOrABadName) {
  const std::string dir = temp_dir();
  Result<RunCredentials> none = make_run_credentials(dir + "/a", {"", ""});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kInvalidArgument);
  Result<RunCredentials> bad = make_run_credentials(dir + "/b", {"bad_host name"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("bad_host name"), std::string::npos)
      << bad.status().message();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fedtail::simulation

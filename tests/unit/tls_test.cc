// Transport-security helpers (common/security/tls.h), join tokens (common/security/join_token.h)
// and the Status <-> grpc::Status mapping (common/wire/grpc_status.h).
#include "common/security/tls.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/security/crypto.h"
#include "common/security/join_token.h"
#include "common/wire/grpc_status.h"

namespace fedtail {
namespace {

std::string scratch(const std::string& name) {
  std::filesystem::path dir = std::filesystem::path(FEDTAIL_TEST_TMP) / "tls_test";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

TEST(IsLoopbackAddress, AcceptsLoopbackHostsWithAndWithoutPort) {
  EXPECT_TRUE(is_loopback_address("127.0.0.1:50051"));
  EXPECT_TRUE(is_loopback_address("127.3.4.5:1"));
  EXPECT_TRUE(is_loopback_address("127.0.0.1"));
  EXPECT_TRUE(is_loopback_address("localhost:50051"));
  EXPECT_TRUE(is_loopback_address("LocalHost:50051"));
  EXPECT_TRUE(is_loopback_address("[::1]:50051"));
  EXPECT_TRUE(is_loopback_address("::1"));
  EXPECT_TRUE(is_loopback_address("[::ffff:127.0.0.1]:9"));
  EXPECT_TRUE(is_loopback_address("dns:///localhost:50051"));
  EXPECT_TRUE(is_loopback_address("ipv4:127.0.0.1:50051"));
  EXPECT_TRUE(is_loopback_address("ipv6:[::1]:50051"));
}

TEST(IsLoopbackAddress, RejectsEverythingElse) {
  EXPECT_FALSE(is_loopback_address("0.0.0.0:50051"));
  EXPECT_FALSE(is_loopback_address("[::]:50051"));
  EXPECT_FALSE(is_loopback_address("10.0.0.1:50051"));
  EXPECT_FALSE(is_loopback_address("128.0.0.1:50051"));
  EXPECT_FALSE(is_loopback_address("example.com:50051"));
  EXPECT_FALSE(is_loopback_address("localhost.example.com:1"));
  EXPECT_FALSE(is_loopback_address("[::1"));
  EXPECT_FALSE(is_loopback_address("[::1]x"));
  EXPECT_FALSE(is_loopback_address(""));
  EXPECT_FALSE(is_loopback_address(":50051"));
}

// A secret as long as the ones `fedtail-certs secret` writes (64 characters).
const std::string kSecret(64, 'k');
constexpr int64_t kNow = 1700000000;  // 2023-11-14T22:13:20Z
constexpr int64_t kDay = 86400;

TEST(JoinToken, CarriesFederationExpiryAndTheMacOfAllThreeWithTheClientId) {
  const std::string token = make_join_token(kSecret, "client-3", "fed.a-1", kNow + kDay);
  const std::string expires = std::to_string(kNow + kDay);
  EXPECT_EQ(token, "ft1.fed.a-1." + expires + "." +
                       to_hex(hmac_sha256(kSecret, "ft1|fed.a-1|" + expires + "|client-3")));
  Result<ParsedJoinToken> parsed = parse_join_token(token);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ(parsed->federation, "fed.a-1");  // dots in the federation: parsed from the right
  EXPECT_EQ(parsed->expires_unix_s, kNow + kDay);
  EXPECT_EQ(parsed->mac_hex.size(), 64u);
}

TEST(JoinToken, AdmitsTheRightClientInTheRightFederationBeforeExpiry) {
  const std::string token = make_join_token(kSecret, "client-3", "fedtail", kNow + kDay);
  EXPECT_TRUE(check_join_token(kSecret, "client-3", token, "fedtail", kNow).ok());
  EXPECT_TRUE(check_join_token(kSecret, "client-3", token, "fedtail", kNow + kDay - 1).ok());
  // Either hex case of the MAC.
  std::string upper = token;
  for (size_t i = upper.rfind('.') + 1; i < upper.size(); ++i) {
    upper[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(upper[i])));
  }
  EXPECT_TRUE(check_join_token(kSecret, "client-3", upper, "fedtail", kNow).ok());
}

TEST(JoinToken, RefusesAnExpiredTokenNamingTheExpiry) {
  const std::string token = make_join_token(kSecret, "client-3", "fedtail", kNow);
  Status expired = check_join_token(kSecret, "client-3", token, "fedtail", kNow);
  EXPECT_EQ(expired.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(expired.message(), "expired at 2023-11-14T22:13:20Z");
  EXPECT_EQ(expired.message().find(token), std::string::npos);
}

TEST(JoinToken, RefusesATokenOfAnotherFederationNamingBoth) {
  const std::string token = make_join_token(kSecret, "client-3", "other", kNow + kDay);
  Status wrong = check_join_token(kSecret, "client-3", token, "fedtail", kNow);
  EXPECT_EQ(wrong.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(wrong.message(), "issued for federation \"other\", this coordinator is \"fedtail\"");
}

TEST(JoinToken, RefusesAnotherClientAnotherSecretAndATamperedToken) {
  const std::string token = make_join_token(kSecret, "client-3", "fedtail", kNow + kDay);
  for (const Status& bad :
       {check_join_token(kSecret, "client-4", token, "fedtail", kNow),
        check_join_token(std::string(64, 'x'), "client-3", token, "fedtail", kNow)}) {
    EXPECT_EQ(bad.code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(bad.message().rfind("bad signature", 0), 0u) << bad.message();
    EXPECT_EQ(bad.message().find(kSecret), std::string::npos);
  }
  // A flipped MAC digit.
  std::string flipped = token;
  flipped.back() = flipped.back() == '0' ? '1' : '0';
  EXPECT_EQ(check_join_token(kSecret, "client-3", flipped, "fedtail", kNow)
                .message()
                .rfind("bad signature", 0),
            0u);
  // A later expiry spliced into a genuine token: the MAC covers it.
  const std::string extended =
      "ft1.fedtail." + std::to_string(kNow + 365 * kDay) + token.substr(token.rfind('.'));
  EXPECT_EQ(check_join_token(kSecret, "client-3", extended, "fedtail", kNow)
                .message()
                .rfind("bad signature", 0),
            0u);
  // Another federation spliced in, checked against a coordinator of that federation.
  const std::string moved = "ft1.other" + token.substr(std::string("ft1.fedtail").size());
  EXPECT_EQ(check_join_token(kSecret, "client-3", moved, "other", kNow)
                .message()
                .rfind("bad signature", 0),
            0u);
}

TEST(JoinToken, RefusesALegacyTokenTellingHowToIssueANewOne) {
  // Earlier releases: hex HMAC-SHA256(secret, client_id), valid forever.
  const std::string legacy = to_hex(hmac_sha256(kSecret, "client-3"));
  Status refused = check_join_token(kSecret, "client-3", legacy, "fedtail", kNow);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("earlier fedtail release"), std::string::npos);
  EXPECT_NE(refused.message().find("fedtail-certs token"), std::string::npos);
  EXPECT_NE(refused.message().find("--expires"), std::string::npos);
  EXPECT_NE(refused.message().find("--federation"), std::string::npos);
  EXPECT_EQ(refused.message().find(legacy), std::string::npos);
}

TEST(JoinToken, ParserRefusesMalformedTokensWithoutEchoingThem) {
  const std::string mac(64, 'a');
  const std::string exp = std::to_string(kNow);
  for (const std::string& bad : std::vector<std::string>{
           "",
           "ft1.",
           "ft1...",
           "hello",
           "FT1.fedtail." + exp + "." + mac,         // the prefix is case-sensitive
           "ft2.fedtail." + exp + "." + mac,         // another version
           "ft1.fedtail." + mac,                     // no expiry
           "ft1." + exp + "." + mac,                 // no federation
           "ft1.." + exp + "." + mac,                // empty federation
           "ft1.fedtail." + exp + "." + mac + ".",   // an extra dot at the end
           "ft1.fedtail." + exp + ".." + mac,        // an extra dot before the MAC
           "ft1.fedtail.." + exp + "." + mac + "x",  // a MAC of 65 characters
           "ft1.fedtail." + exp + "." + mac.substr(1),
           "ft1.fedtail." + exp + "." + std::string(63, 'a') + "g",
           "ft1.fedtail.0" + exp + "." + mac,  // leading zero: one spelling per expiry
           "ft1.fedtail.-1." + mac,
           "ft1.fedtail.+1." + mac,
           "ft1.fedtail.1e9." + mac,
           "ft1.fedtail.99999999999999999999." + mac,  // does not fit an int64
           "ft1.fed tail." + exp + "." + mac,
           "ft1.fed|tail." + exp + "." + mac,
           "ft1." + std::string(65, 'f') + "." + exp + "." + mac,
       }) {
    Result<ParsedJoinToken> parsed = parse_join_token(bad);
    EXPECT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << bad;
    if (bad.size() > 4) {
      EXPECT_EQ(parsed.status().message().find(bad), std::string::npos) << bad;
    }
    EXPECT_FALSE(check_join_token(kSecret, "client-3", bad, "fedtail", kNow).ok()) << bad;
  }
  EXPECT_EQ(parse_join_token("hello").status().message(), "not a fedtail token (ft1.*)");
  // The longest federation name, and a federation that looks like an expiry.
  EXPECT_TRUE(parse_join_token("ft1." + std::string(64, 'f') + "." + exp + "." + mac).ok());
  Result<ParsedJoinToken> numeric = parse_join_token("ft1.12.34." + mac);
  ASSERT_TRUE(numeric.ok());
  EXPECT_EQ(numeric->federation, "12");
  EXPECT_EQ(numeric->expires_unix_s, 34);
}

TEST(JoinToken, FederationNamesAndDurations) {
  EXPECT_TRUE(validate_federation_name("fedtail", "--federation").ok());
  EXPECT_TRUE(validate_federation_name("a.b_c-D9", "--federation").ok());
  EXPECT_FALSE(validate_federation_name("", "--federation").ok());
  EXPECT_FALSE(validate_federation_name(std::string(65, 'a'), "--federation").ok());
  EXPECT_EQ(validate_federation_name("a/b", "--federation").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*parse_duration_s("90s", "--expires"), 90);
  EXPECT_EQ(*parse_duration_s("45m", "--expires"), 45 * 60);
  EXPECT_EQ(*parse_duration_s("12h", "--expires"), 12 * 3600);
  EXPECT_EQ(*parse_duration_s("30d", "--expires"), 30 * kDay);
  for (const char* bad : {"", "d", "0d", "30", "30w", "-1d", "1.5d", "1234567890d", "3 d"}) {
    Result<int64_t> refused = parse_duration_s(bad, "--expires");
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(format_utc_time(0), "1970-01-01T00:00:00Z");
}

TEST(ReadSecretFile, StripsOneTrailingNewline) {
  const std::string path = scratch("secret.txt");
  write_text(path, kSecret + "\r\n");
  Result<std::string> secret = read_secret_file(path);
  ASSERT_TRUE(secret.ok()) << secret.status().to_string();
  EXPECT_EQ(*secret, kSecret);
}

TEST(ReadSecretFile, MissingFileIsNotFoundAndEmptyFileInvalid) {
  Result<std::string> missing = read_secret_file(scratch("no-such-secret"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no-such-secret"), std::string::npos);
  const std::string empty = scratch("empty-secret");
  write_text(empty, "\n");
  EXPECT_EQ(read_secret_file(empty).status().code(), StatusCode::kInvalidArgument);
}

TEST(ReadSecretFile, RefusesASecretShorterThan32BytesNamingTheFile) {
  const std::string path = scratch("short-secret");
  write_text(path, std::string(31, 's') + "\n");
  Result<std::string> short_secret = read_secret_file(path);
  EXPECT_EQ(short_secret.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_secret.status().message().find(path), std::string::npos);
  EXPECT_NE(short_secret.status().message().find("31 bytes"), std::string::npos);
  EXPECT_EQ(short_secret.status().message().find(std::string(31, 's')), std::string::npos);
  write_text(path, std::string(32, 's'));
  EXPECT_TRUE(read_secret_file(path).ok());
}

TEST(ServerCredentials, PlaintextOnlyWhenAllowed) {
  EXPECT_EQ(make_server_credentials({}, /*insecure_ok=*/false).status().code(),
            StatusCode::kFailedPrecondition);
  Result<std::shared_ptr<grpc::ServerCredentials>> insecure =
      make_server_credentials({}, /*insecure_ok=*/true);
  ASSERT_TRUE(insecure.ok());
  EXPECT_NE(insecure->get(), nullptr);
}

TEST(ServerCredentials, MissingFilesAreNotFoundNamingTheFile) {
  const std::string key = scratch("server.key");
  write_text(key, "not really a key");
  TlsFiles files{scratch("missing-server.crt"), key, ""};
  Result<std::shared_ptr<grpc::ServerCredentials>> result = make_server_credentials(files, false);
  EXPECT_EQ(result.status().code(), StatusCode::kNotFound);
  EXPECT_NE(result.status().message().find("missing-server.crt"), std::string::npos);
  EXPECT_NE(result.status().message().find("--tls-cert"), std::string::npos);

  const std::string cert = scratch("server.crt");
  write_text(cert, "not really a cert");
  files = {cert, key, scratch("missing-ca.pem")};
  result = make_server_credentials(files, false);
  EXPECT_EQ(result.status().code(), StatusCode::kNotFound);
  EXPECT_NE(result.status().message().find("missing-ca.pem"), std::string::npos);
}

TEST(ServerCredentials, IncompleteSetsAreInvalid) {
  EXPECT_EQ(make_server_credentials({"a.crt", "", ""}, true).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(make_server_credentials({"", "a.key", ""}, true).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(make_server_credentials({"", "", "ca.pem"}, true).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ChannelCredentials, PlaintextOnlyWhenAllowedAndFilesChecked) {
  EXPECT_EQ(make_channel_credentials({}, false).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(make_channel_credentials({}, true).ok());
  Result<std::shared_ptr<grpc::ChannelCredentials>> missing =
      make_channel_credentials({"", "", scratch("missing-root.pem")}, false);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("missing-root.pem"), std::string::npos);
  // A client certificate needs its key and a root to verify the server with.
  EXPECT_EQ(make_channel_credentials({"c.crt", "", "ca.pem"}, false).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(make_channel_credentials({"c.crt", "c.key", ""}, false).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(GrpcStatus, MapsCodesBothWaysAndKeepsTheMessage) {
  EXPECT_TRUE(to_grpc(Status::OK()).ok());
  grpc::Status g = to_grpc(Status::InvalidArgument("config.rounds: must be >= 1"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(g.error_message(), "config.rounds: must be >= 1");
  EXPECT_EQ(to_grpc(Status::Corruption("x")).error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(to_grpc(Status::Unavailable("x")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(to_grpc(Status::ResourceExhausted("x")).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(to_grpc(Status::FailedPrecondition("x")).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  EXPECT_TRUE(from_grpc(grpc::Status::OK).ok());
  Status s = from_grpc(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad join token"));
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "UNAUTHENTICATED: bad join token");
  EXPECT_EQ(from_grpc(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "")).code(),
            StatusCode::kDeadlineExceeded);
  EXPECT_EQ(from_grpc(grpc::Status(grpc::StatusCode::DATA_LOSS, "")).code(),
            StatusCode::kCorruption);
  EXPECT_EQ(from_grpc(grpc::Status(grpc::StatusCode::CANCELLED, "")).code(),
            StatusCode::kUnavailable);
}

}  // namespace
}  // namespace fedtail

// Transport-security helpers (common/security/tls.h) and the Status <-> grpc::Status mapping
// (common/wire/grpc_status.h).
#include "common/security/tls.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/security/crypto.h"
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

TEST(JoinToken, IsHexHmacOfTheClientId) {
  const std::string token = join_token("secret", "client-3");
  EXPECT_EQ(token, to_hex(hmac_sha256("secret", "client-3")));
  EXPECT_EQ(token.size(), 64u);
}

TEST(JoinToken, VerifiesOnlyTheRightTokenForTheRightClient) {
  const std::string token = join_token("secret", "client-3");
  EXPECT_TRUE(verify_join_token("secret", "client-3", token));
  std::string upper = token;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_TRUE(verify_join_token("secret", "client-3", upper));
  EXPECT_FALSE(verify_join_token("secret", "client-4", token));
  EXPECT_FALSE(verify_join_token("other", "client-3", token));
  EXPECT_FALSE(verify_join_token("secret", "client-3", ""));
  EXPECT_FALSE(verify_join_token("secret", "client-3", token.substr(0, 63)));
  std::string flipped = token;
  flipped[10] = flipped[10] == '0' ? '1' : '0';
  EXPECT_FALSE(verify_join_token("secret", "client-3", flipped));
}

TEST(ReadSecretFile, StripsOneTrailingNewline) {
  const std::string path = scratch("secret.txt");
  write_text(path, "s3cret\r\n");
  Result<std::string> secret = read_secret_file(path);
  ASSERT_TRUE(secret.ok()) << secret.status().to_string();
  EXPECT_EQ(*secret, "s3cret");
}

TEST(ReadSecretFile, MissingFileIsNotFoundAndEmptyFileInvalid) {
  Result<std::string> missing = read_secret_file(scratch("no-such-secret"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no-such-secret"), std::string::npos);
  const std::string empty = scratch("empty-secret");
  write_text(empty, "\n");
  EXPECT_EQ(read_secret_file(empty).status().code(), StatusCode::kInvalidArgument);
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

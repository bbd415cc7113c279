// Under mutual TLS a session belongs to the certificate that joined: a real fedtail-coordinator
// with client certificates required, and two peers speaking the wire protocol through the
// generated stub over TLS, one with client-0's certificate and one with client-1's. client-0
// joins; client-1, holding client-0's session token (stolen, or guessed from a log), must not be
// able to use it (Heartbeat, PullTask, PushResult, Leave: PERMISSION_DENIED), while client-0 can.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/security/certs.h"
#include "common/security/tls.h"
#include "fedtail/v1/federation.grpc.pb.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

using namespace std::chrono_literals;
using test_support::Process;

std::unique_ptr<v1::Federation::Stub> stub_for(const std::string& port, const std::string& pki,
                                               const std::string& id) {
  TlsFiles files;
  files.ca = pki + "/ca/ca.pem";
  files.cert = pki + "/clients/" + id + ".pem";
  files.key = pki + "/clients/" + id + ".key";
  Result<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      make_channel_credentials(files, false);
  EXPECT_TRUE(credentials.ok()) << credentials.status().to_string();
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  return v1::Federation::NewStub(
      grpc::CreateCustomChannel("127.0.0.1:" + port, *credentials, args));
}

grpc::Status heartbeat(v1::Federation::Stub* stub, const std::string& token) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 30s);
  v1::HeartbeatRequest request;
  request.set_session_token(token);
  v1::HeartbeatResponse response;
  return stub->Heartbeat(&context, request, &response);
}

grpc::Status pull(v1::Federation::Stub* stub, const std::string& token) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 30s);
  v1::PullTaskRequest request;
  request.set_session_token(token);
  request.set_poll_timeout_ms(200);
  std::unique_ptr<grpc::ClientReader<v1::TaskChunk>> reader = stub->PullTask(&context, request);
  v1::TaskChunk chunk;
  while (reader->Read(&chunk)) {
  }
  return reader->Finish();
}

grpc::Status push(v1::Federation::Stub* stub, const std::string& token) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 30s);
  v1::PushResultResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::ResultChunk>> writer =
      stub->PushResult(&context, &response);
  v1::ResultChunk first;
  first.mutable_header()->set_session_token(token);
  first.mutable_header()->set_task_id("no-such-task");
  first.mutable_header()->set_client_id("client-0");
  first.mutable_header()->set_ok(true);
  first.mutable_header()->set_num_examples(1);
  writer->Write(first);
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status leave(v1::Federation::Stub* stub, const std::string& token) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 30s);
  v1::LeaveRequest request;
  request.set_session_token(token);
  v1::LeaveResponse response;
  return stub->Leave(&context, request, &response);
}

TEST(SessionBinding, ASessionTokenIsOfNoUseToAnotherClientCertificate) {
  const std::string dir = test_support::scratch_dir("session_binding");
  ASSERT_TRUE(certs::make_ca(dir + "/ca", "session_binding_test CA", 2, false).ok());
  ASSERT_TRUE(certs::make_server_certificate(dir + "/ca", dir + "/server",
                                             {"localhost", "127.0.0.1"}, "", 2, false)
                  .ok());
  for (const char* id : {"client-0", "client-1"}) {
    ASSERT_TRUE(certs::make_client_certificate(dir + "/ca", dir + "/clients", id, 2, false).ok());
  }
  // The run never starts (it waits for 3 clients): only the service is exercised.
  const nlohmann::json run = {
      {"seed", 1},
      {"rounds", 1},
      {"device", "cpu"},
      {"strategy", {{"name", "fedavg"}}},
      {"federation", {{"min_available_clients", 3}, {"server_eval", false}}},
      {"data", {{"dataset", "fashion-mnist"}, {"max_examples_per_class", 10}, {"clients", 3}}},
      {"model", {{"arch", "cnn"}}}};
  test_support::write_file(dir + "/run.json", run.dump());
  if (!test_support::missing_federation_prerequisite().empty()) {
    GTEST_SKIP() << test_support::missing_federation_prerequisite();
  }
  Process coordinator({test_support::binary_path("fedtail-coordinator"), "--config",
                       dir + "/run.json", "--listen", "127.0.0.1:0", "--state-dir", dir + "/state",
                       "--threads", "1", "--tls-cert", dir + "/server/server.pem", "--tls-key",
                       dir + "/server/server.key", "--tls-client-ca", dir + "/ca/ca.pem"},
                      dir + "/coordinator.log");
  const std::string port = test_support::wait_for_file(dir + "/state/port", 120s);
  ASSERT_FALSE(port.empty()) << coordinator.log();

  std::unique_ptr<v1::Federation::Stub> alice = stub_for(port, dir, "client-0");
  std::unique_ptr<v1::Federation::Stub> mallory = stub_for(port, dir, "client-1");
  v1::JoinRequest join;
  join.set_protocol_version(v1::PROTOCOL_VERSION_1);
  join.set_client_id("client-0");
  join.set_num_examples(10);
  v1::JoinResponse joined;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 30s);
    const grpc::Status status = alice->Join(&context, join, &joined);
    ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << coordinator.log();
  }
  const std::string token = joined.session_token();

  // client-1's certificate with client-0's token: refused, every call.
  for (const grpc::Status& s : {heartbeat(mallory.get(), token), pull(mallory.get(), token),
                                push(mallory.get(), token), leave(mallory.get(), token)}) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
    EXPECT_NE(s.error_message().find("another client certificate"), std::string::npos)
        << s.error_message();
  }
  // The owner's calls still work, and its session survived mallory's Leave.
  EXPECT_TRUE(heartbeat(alice.get(), token).ok());
  EXPECT_TRUE(pull(alice.get(), token).ok());
  EXPECT_TRUE(leave(alice.get(), token).ok());
  EXPECT_EQ(heartbeat(alice.get(), token).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(coordinator.stop(30s), Process::kTimedOut);
}

}  // namespace
}  // namespace fedtail

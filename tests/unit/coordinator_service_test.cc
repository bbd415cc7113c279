// FederationService over real gRPC on loopback, in-process: Join checks, session tokens, the
// long-poll PullTask stream and the chunked PushResult stream, with the in-test strategy.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "common/security/crypto.h"
#include "common/security/join_token.h"
#include "common/security/tls.h"
#include "common/wire/bundle_codec.h"
#include "coordinator/service.h"
#include "coordinator_test_strategy.h"

namespace fedtail::coordinator {
namespace {

using testing::StrategyLog;
using testing::TestStrategy;
using namespace std::chrono_literals;

constexpr char kSecret[] = "s3cret-s3cret-s3cret-s3cret-s3cret";

int64_t now_unix_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A join token of `id` for the default federation, valid for an hour.
std::string token_for(const std::string& id) {
  return make_join_token(kSecret, id, kDefaultFederation, now_unix_s() + 3600);
}

struct Pulled {
  grpc::Status status;
  v1::TaskHeader header;
  Result<TensorBundle> bundle = Status::NotFound("no bundle");
  int chunks = 0;
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_config_.seed = 3;
    options_.rounds = 1;
    options_.strategy_name = "test";
    options_.federation.min_available_clients = 2;
    options_.federation.round_timeout_s = 10;
    options_.federation.poll_timeout_ms = 300;
    options_.federation.client_timeout_s = 5;
    options_.federation.max_concurrent_uploads = 1;
  }

  void start(const std::string& secret = kSecret) {
    log_ = std::make_shared<StrategyLog>();
    strategy_ = std::make_unique<TestStrategy>(log_);
    strategy_->set_evaluate_clients(false);
    registry_ = std::make_unique<ClientRegistry>(5000ms);
    EngineConfig config;
    config.options = options_;
    config.run_config = &run_config_;
    config.run_id = "run-42";
    engine_ = std::make_unique<RoundEngine>(std::move(config), strategy_.get(), registry_.get());
    ServiceOptions service_options;
    service_options.run_id = "run-42";
    service_options.run_config_json = R"({"rounds": 1})";
    service_options.federation = options_.federation;
    service_options.token_secret = secret;
    if (!secret.empty()) {
      TokenPolicyOptions token_options;
      token_options.secret = secret;
      Result<std::unique_ptr<TokenPolicy>> tokens = TokenPolicy::create(token_options);
      ASSERT_TRUE(tokens.ok()) << tokens.status().to_string();
      service_options.tokens = std::move(*tokens);
    }
    service_ = std::make_unique<FederationService>(service_options, registry_.get(), engine_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_);
    ASSERT_GT(port, 0);
    stub_ = v1::Federation::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                        grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (engine_) engine_->request_stop();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  static void deadline(grpc::ClientContext* context, std::chrono::milliseconds d = 10s) {
    context->set_deadline(std::chrono::system_clock::now() + d);
  }

  grpc::Status join(const std::string& id, v1::JoinResponse* response,
                    const std::string& token = "", uint32_t version = 1) {
    v1::JoinRequest request;
    request.set_client_id(id);
    request.set_protocol_version(version);
    request.set_join_token(token.empty() ? token_for(id) : token);
    request.set_num_examples(10);
    request.set_model_family("cnn");
    grpc::ClientContext context;
    deadline(&context);
    return stub_->Join(&context, request, response);
  }

  std::string joined(const std::string& id) {
    v1::JoinResponse response;
    grpc::Status status = join(id, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.session_token();
  }

  Pulled pull(const std::string& token) {
    v1::PullTaskRequest request;
    request.set_session_token(token);
    request.set_poll_timeout_ms(300);
    grpc::ClientContext context;
    deadline(&context);
    std::unique_ptr<grpc::ClientReader<v1::TaskChunk>> reader = stub_->PullTask(&context, request);
    Pulled pulled;
    BundleDecoder decoder;
    v1::TaskChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.has_header()) {
        pulled.header = chunk.header();
      } else {
        ++pulled.chunks;
        EXPECT_TRUE(decoder.add(chunk.bundle()).ok());
      }
    }
    pulled.status = reader->Finish();
    if (pulled.chunks > 0) pulled.bundle = decoder.finish();
    return pulled;
  }

  // Pulls until something other than WAIT arrives.
  Pulled pull_task(const std::string& token) {
    for (int i = 0; i < 50; ++i) {
      Pulled p = pull(token);
      if (!p.status.ok() || p.header.kind() != v1::TASK_KIND_WAIT) return p;
    }
    return Pulled{};
  }

  grpc::Status push(const std::string& token, const v1::TaskHeader& task, const TensorBundle& b,
                    int64_t examples, v1::PushResultResponse* response) {
    grpc::ClientContext context;
    deadline(&context);
    std::unique_ptr<grpc::ClientWriter<v1::ResultChunk>> writer =
        stub_->PushResult(&context, response);
    v1::ResultChunk chunk;
    v1::ResultHeader* header = chunk.mutable_header();
    header->set_session_token(token);
    header->set_task_id(task.task_id());
    header->set_client_id(task.client_id());
    header->set_ok(true);
    header->set_num_examples(examples);
    header->set_metrics_json(R"({"loss": 0.1})");
    writer->Write(chunk);
    BundleEncoder encoder(b, /*chunk_bytes=*/1 << 20);
    while (encoder.next(chunk.mutable_bundle())) {
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  static TensorBundle bundle_of(std::vector<float> values, const char* name = "w") {
    TensorBundle b;
    EXPECT_TRUE(b.add(NamedTensor::from_values(name, DType::kFloat32,
                                               {static_cast<int64_t>(values.size())}, values))
                    .ok());
    return b;
  }

  RunConfig run_config_;
  CoordinatorOptions options_;
  std::shared_ptr<StrategyLog> log_;
  std::unique_ptr<TestStrategy> strategy_;
  std::unique_ptr<ClientRegistry> registry_;
  std::unique_ptr<RoundEngine> engine_;
  std::unique_ptr<FederationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Federation::Stub> stub_;
};

TEST_F(ServiceTest, JoinChecksProtocolVersionAndToken) {
  start();
  v1::JoinResponse response;
  EXPECT_EQ(join("client-1", &response, "", /*version=*/2).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  grpc::Status bad = join("client-1", &response, token_for("client-2"));
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(bad.error_message().find("client-1"), std::string::npos);
  EXPECT_NE(bad.error_message().find("bad signature"), std::string::npos) << bad.error_message();
  grpc::Status ok = join("client-1", &response);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(response.session_token().size(), 64u);
  EXPECT_EQ(response.run_id(), "run-42");
  EXPECT_EQ(response.run_config_json(), R"({"rounds": 1})");
  EXPECT_EQ(response.heartbeat_interval_ms(), 5000u);
  EXPECT_EQ(response.max_update_bytes(), uint64_t{1} << 30);
  // The same id again while the first session is live.
  grpc::Status again = join("client-1", &response);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(ServiceTest, JoinRefusalNamesWhatIsWrongWithTheToken) {
  start();
  v1::JoinResponse response;
  const std::string expired =
      make_join_token(kSecret, "client-1", kDefaultFederation, now_unix_s() - 10);
  grpc::Status refused = join("client-1", &response, expired);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(refused.error_message().find("expired at "), std::string::npos)
      << refused.error_message();
  EXPECT_EQ(refused.error_message().find(expired), std::string::npos);
  refused = join("client-1", &response,
                 make_join_token(kSecret, "client-1", "elsewhere", now_unix_s() + 60));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(refused.error_message().find("issued for federation \"elsewhere\""), std::string::npos)
      << refused.error_message();
  // A token of an earlier release (plain HMAC, no expiry).
  refused = join("client-1", &response, to_hex(hmac_sha256(kSecret, "client-1")));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(refused.error_message().find("fedtail-certs token"), std::string::npos)
      << refused.error_message();
  EXPECT_EQ(engine_->refusals().snapshot()["join_token"], 3u);
}

TEST_F(ServiceTest, WithoutASecretTheClaimedIdIsTaken) {
  start(/*secret=*/"");
  v1::JoinResponse response;
  EXPECT_TRUE(join("anyone", &response, "not-a-token").ok());
}

TEST_F(ServiceTest, VirtualClientsNeedTheirOwnTokens) {
  start();
  auto request_for = [](const std::string& bad_id) {
    v1::JoinRequest request;
    request.set_client_id("worker-0");
    request.set_protocol_version(1);
    for (const char* id : {"client-0", "client-1"}) {
      v1::VirtualClient* v = request.add_virtual_clients();
      v->set_client_id(id);
      v->set_num_examples(5);
      v->set_join_token(token_for(id == bad_id ? "other" : id));
    }
    return request;
  };
  v1::JoinResponse response;
  {
    grpc::ClientContext context;
    deadline(&context);
    grpc::Status status = stub_->Join(&context, request_for("client-1"), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_NE(status.error_message().find("client-1"), std::string::npos);
  }
  grpc::ClientContext context;
  deadline(&context);
  ASSERT_TRUE(stub_->Join(&context, request_for(""), &response).ok());
  EXPECT_EQ(registry_->available_count(), 2);
}

TEST_F(ServiceTest, EveryCallButJoinNeedsAKnownSession) {
  start();
  EXPECT_EQ(pull("bogus").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  v1::TaskHeader task;
  task.set_task_id("t");
  v1::PushResultResponse pushed;
  EXPECT_EQ(push("bogus", task, TensorBundle(), 1, &pushed).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  {
    v1::HeartbeatRequest request;
    request.set_session_token("bogus");
    v1::HeartbeatResponse response;
    grpc::ClientContext context;
    deadline(&context);
    EXPECT_EQ(stub_->Heartbeat(&context, request, &response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  v1::LeaveRequest request;
  request.set_session_token("bogus");
  v1::LeaveResponse response;
  grpc::ClientContext context;
  deadline(&context);
  EXPECT_EQ(stub_->Leave(&context, request, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ServiceTest, ARoundOverGrpcFromJoinToShutdown) {
  start();
  const std::string a = joined("client-a");
  const std::string b = joined("client-b");
  // Before the engine runs, a poll is held for the poll time and answered WAIT.
  const auto before = std::chrono::steady_clock::now();
  Pulled waited = pull(a);
  ASSERT_TRUE(waited.status.ok()) << waited.status.error_message();
  EXPECT_EQ(waited.header.kind(), v1::TASK_KIND_WAIT);
  EXPECT_GE(std::chrono::steady_clock::now() - before, 250ms);

  ASSERT_TRUE(engine_->start().ok());
  Pulled ta = pull_task(a);
  Pulled tb = pull_task(b);
  ASSERT_EQ(ta.header.kind(), v1::TASK_KIND_FIT);
  ASSERT_EQ(tb.header.kind(), v1::TASK_KIND_FIT);
  EXPECT_EQ(ta.header.client_id(), "client-a");
  EXPECT_EQ(ta.header.round(), 1u);
  EXPECT_EQ(ta.header.strategy(), "test");
  EXPECT_GT(ta.header.deadline_unix_ms(), 0u);
  ASSERT_TRUE(ta.bundle.ok()) << ta.bundle.status().to_string();
  EXPECT_TRUE(ta.bundle->bitwise_equal(*strategy_->global_bundle()));

  // Heartbeat while working: keep going.
  {
    v1::HeartbeatRequest request;
    request.set_session_token(a);
    request.set_task_id(ta.header.task_id());
    v1::HeartbeatResponse response;
    grpc::ClientContext context;
    deadline(&context);
    ASSERT_TRUE(stub_->Heartbeat(&context, request, &response).ok());
    EXPECT_FALSE(response.cancel());
  }
  // A multi-chunk update of the wrong shape (3 MiB): read whole, refused with the reason.
  v1::PushResultResponse response;
  ASSERT_TRUE(push(a, ta.header, bundle_of(std::vector<float>(3 << 18, 1.0f)), 10, &response).ok());
  EXPECT_FALSE(response.accepted());
  EXPECT_NE(response.reason().find("shape"), std::string::npos) << response.reason();
  // The second push of a's task is a duplicate of that refusal.
  ASSERT_TRUE(push(a, ta.header, bundle_of({1, 1, 1, 1}), 10, &response).ok());
  EXPECT_TRUE(response.duplicate());
  EXPECT_FALSE(response.accepted());
  ASSERT_TRUE(push(b, tb.header, bundle_of({2, 2, 2, 2}), 10, &response).ok());
  EXPECT_TRUE(response.accepted());
  EXPECT_FALSE(response.duplicate());
  ASSERT_TRUE(push(b, tb.header, bundle_of({2, 2, 2, 2}), 10, &response).ok());
  EXPECT_TRUE(response.accepted());
  EXPECT_TRUE(response.duplicate());

  ASSERT_TRUE(engine_->wait().ok());
  for (float w : std::vector<float>(strategy_->global_bundle()->find("w")->data<float>(),
                                    strategy_->global_bundle()->find("w")->data<float>() + 4)) {
    EXPECT_FLOAT_EQ(w, 2.0f);
  }
  EXPECT_EQ(pull(a).header.kind(), v1::TASK_KIND_SHUTDOWN);
  EXPECT_EQ(pull(b).header.kind(), v1::TASK_KIND_SHUTDOWN);
  EXPECT_TRUE(engine_->wait_sessions_shut_down(1s));
  // Leave ends the session.
  v1::LeaveRequest request;
  request.set_session_token(a);
  request.set_reason("done");
  v1::LeaveResponse left;
  grpc::ClientContext context;
  deadline(&context);
  EXPECT_TRUE(stub_->Leave(&context, request, &left).ok());
  EXPECT_EQ(pull(a).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ServiceTest, AClientThatVanishesMidPollCanRejoinAtOnce) {
  start();
  const std::string a = joined("client-a");
  {
    // A poll whose client goes away (its deadline passes long before the server's poll time).
    v1::PullTaskRequest request;
    request.set_session_token(a);
    request.set_poll_timeout_ms(300);
    grpc::ClientContext context;
    deadline(&context, 50ms);
    auto reader = stub_->PullTask(&context, request);
    v1::TaskChunk chunk;
    while (reader->Read(&chunk)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // The server saw the cancellation: the session is stale and the id may be taken over.
  for (int i = 0; i < 50 && registry_->available_count() != 0; ++i)
    std::this_thread::sleep_for(20ms);
  v1::JoinResponse response;
  grpc::Status status = join("client-a", &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

}  // namespace
}  // namespace fedtail::coordinator

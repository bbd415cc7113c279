// Test support: "mallory", a peer that misbehaves — a plain gRPC client of the Federation service
// (the generated stub, no fedtail client code), for the integration tests that attack a real
// coordinator (hostile_inputs_test, hardening_test). Header-only.
#ifndef FEDTAIL_TESTS_SUPPORT_MALLORY_H_
#define FEDTAIL_TESTS_SUPPORT_MALLORY_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/wire/bundle_codec.h"
#include "common/wire/bundle_file.h"
#include "fedtail/v1/federation.grpc.pb.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail::test_support {

// The bundle as protocol chunks of `chunk_bytes` (small chunks: every bundle has several).
inline std::vector<v1::BundleChunk> encode_chunks(const TensorBundle& bundle,
                                                  size_t chunk_bytes = 16 << 10) {
  std::vector<v1::BundleChunk> chunks;
  BundleEncoder encoder(bundle, chunk_bytes);
  v1::BundleChunk chunk;
  while (encoder.next(&chunk)) chunks.push_back(chunk);
  return chunks;
}

class Mallory {
 public:
  explicit Mallory(const std::string& address)
      : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
        stub_(v1::Federation::NewStub(channel_)) {}

  grpc::Status join(const v1::JoinRequest& request, v1::JoinResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub_->Join(&context, request, response);
  }

  static v1::JoinRequest join_request(const std::string& id) {
    v1::JoinRequest request;
    request.set_client_id(id);
    request.set_protocol_version(v1::PROTOCOL_VERSION_1);
    request.set_num_examples(100);
    return request;
  }

  grpc::Status heartbeat(const std::string& token) {
    grpc::ClientContext context;
    v1::HeartbeatRequest request;
    request.set_session_token(token);
    v1::HeartbeatResponse response;
    return stub_->Heartbeat(&context, request, &response);
  }

  grpc::Status leave(const std::string& token) {
    grpc::ClientContext context;
    v1::LeaveRequest request;
    request.set_session_token(token);
    request.set_reason("mallory is done");
    v1::LeaveResponse response;
    return stub_->Leave(&context, request, &response);
  }

  // One PullTask: the header and, for a task, its decoded bundle.
  grpc::Status pull(const std::string& token, v1::TaskHeader* header, TensorBundle* bundle,
                    uint32_t poll_timeout_ms = 1000) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::PullTaskRequest request;
    request.set_session_token(token);
    request.set_poll_timeout_ms(poll_timeout_ms);
    std::unique_ptr<grpc::ClientReader<v1::TaskChunk>> reader = stub_->PullTask(&context, request);
    BundleDecoder decoder;
    v1::TaskChunk chunk;
    bool have_header = false;
    while (reader->Read(&chunk)) {
      if (chunk.has_header()) {
        *header = chunk.header();
        have_header = true;
      } else if (chunk.has_bundle()) {
        EXPECT_TRUE(decoder.add(chunk.bundle()).ok());
      }
    }
    grpc::Status status = reader->Finish();
    if (status.ok() && have_header && header->kind() == v1::TASK_KIND_FIT) {
      Result<TensorBundle> decoded = decoder.finish();
      EXPECT_TRUE(decoded.ok()) << decoded.status().to_string();
      if (decoded.ok()) *bundle = std::move(decoded).value();
    }
    return status;
  }

  // One PushResult with these messages, in this order.
  grpc::Status push(const std::vector<v1::ResultChunk>& messages,
                    v1::PushResultResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    std::unique_ptr<grpc::ClientWriter<v1::ResultChunk>> writer =
        stub_->PushResult(&context, response);
    for (const v1::ResultChunk& message : messages) {
      if (!writer->Write(message)) break;  // the coordinator answered early
    }
    writer->WritesDone();
    return writer->Finish();
  }

  static std::vector<v1::ResultChunk> result(const v1::ResultHeader& header,
                                             const std::vector<v1::BundleChunk>& chunks) {
    std::vector<v1::ResultChunk> messages(1);
    *messages[0].mutable_header() = header;
    for (const v1::BundleChunk& chunk : chunks) *messages.emplace_back().mutable_bundle() = chunk;
    return messages;
  }

  // Raw bytes that are not a JoinRequest, sent to Join.
  grpc::Status garbage_join() {
    grpc::GenericStub generic(channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    const std::string bytes = "\xff\xff\xff\xff\x0f not a protobuf \x0a\xff";
    grpc::Slice slice(bytes.data(), bytes.size());
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&context, "/fedtail.v1.Federation/Join", grpc::StubOptions(), &request,
                      &response, [&done](grpc::Status status) { done.set_value(status); });
    return done.get_future().get();
  }

  v1::Federation::Stub* stub() { return stub_.get(); }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Federation::Stub> stub_;
};

// The federation mallory attacks: in `dir`, run `name` is a fedtail-coordinator on 127.0.0.1 (any
// port) with `config` (written to <name>.json; state in <name>-state) ...
inline std::unique_ptr<Process> start_loopback_coordinator(const std::string& dir,
                                                           const std::string& name,
                                                           const nlohmann::json& config) {
  write_file(dir + "/" + name + ".json", config.dump(2));
  return std::make_unique<Process>(
      std::vector<std::string>{binary_path("fedtail-coordinator"), "--config",
                               dir + "/" + name + ".json", "--listen", "127.0.0.1:0", "--state-dir",
                               dir + "/" + name + "-state", "--threads", "1"},
      dir + "/" + name + "-coordinator.log");
}

// ... and one fedtail-client process hosting the honest clients 0 and 1.
inline std::unique_ptr<Process> start_honest_clients(const std::string& dir,
                                                     const std::string& name,
                                                     const std::string& port) {
  return std::make_unique<Process>(
      std::vector<std::string>{binary_path("fedtail-client"), "--coordinator", "127.0.0.1:" + port,
                               "--clients", "0-1", "--state-dir",
                               dir + "/" + name + "-client-state", "--device", "cpu", "--threads",
                               "1", "--retry-timeout", "60"},
      dir + "/" + name + "-clients.log");
}

// Nothing of mallory reached the model: the final models of two state directories are equal, bit
// for bit.
inline void expect_same_final_model(const std::string& clean_state,
                                    const std::string& attacked_state) {
  Result<TensorBundle> clean = read_bundle_file(clean_state + "/final_model.bundle");
  Result<TensorBundle> attacked = read_bundle_file(attacked_state + "/final_model.bundle");
  ASSERT_TRUE(clean.ok()) << clean.status().to_string();
  ASSERT_TRUE(attacked.ok()) << attacked.status().to_string();
  ASSERT_EQ(clean->size(), attacked->size());
  for (const NamedTensor& t : *clean) {
    const NamedTensor* other = attacked->find(t.name());
    ASSERT_NE(other, nullptr) << t.name();
    EXPECT_TRUE(t.bitwise_equal(*other)) << t.name();
  }
}

}  // namespace fedtail::test_support

#endif  // FEDTAIL_TESTS_SUPPORT_MALLORY_H_

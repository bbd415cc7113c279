// A hostile coordinator against a real fedtail-client process: this test serves
// fedtail.v1.Federation itself (a fake coordinator over loopback) and sends what a hostile or
// broken coordinator could:
//   - a run config (JoinResponse.run_config_json) nested 100000 deep;
//   - a task whose config_json is nested 100000 deep;
//   - a task whose bundle is over the client's --max-bundle-bytes;
//   - a run config whose data.root points at another folder of the client's machine.
// The client must refuse each without crashing (an exit code, never a signal), say why (naming the
// nesting, the flag), report a refused task to the coordinator as a failed result, and read its
// data only from its own data root. Each case takes a few seconds (Fashion-MNIST, 20 examples a
// class).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/wire/bundle_codec.h"
#include "common/wire/tensor_bundle.h"
#include "fedtail/v1/federation.grpc.pb.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

constexpr int kDeep = 100000;
constexpr uint64_t kMaxBundleBytes = uint64_t{1} << 20;  // the client's --max-bundle-bytes

std::string nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

nlohmann::json run_config() {
  return {{"seed", 3},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", 1},
          {"strategy", {{"name", "fedavg"}}},
          {"federation", {{"poll_timeout_ms", 500}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 20},
            {"partition", "iid"},
            {"clients", 1}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 16}}}};
}

// The fake coordinator: Join answers with `run_config_json`; the first PullTask streams `task` (a
// header and bundle chunks; none: SHUTDOWN at once), later ones SHUTDOWN; PushResult records the
// result header. Handlers run on gRPC's threads: state is guarded by mu_.
class FakeCoordinator final : public v1::Federation::Service {
 public:
  FakeCoordinator(std::string run_config_json, std::vector<v1::TaskChunk> task)
      : run_config_json_(std::move(run_config_json)), task_(std::move(task)) {}

  grpc::Status Join(grpc::ServerContext*, const v1::JoinRequest*,
                    v1::JoinResponse* response) override {
    response->set_session_token("session");
    response->set_run_id("hostile-run");
    response->set_run_config_json(run_config_json_);
    response->set_heartbeat_interval_ms(500);
    return grpc::Status::OK;
  }

  grpc::Status PullTask(grpc::ServerContext*, const v1::PullTaskRequest*,
                        grpc::ServerWriter<v1::TaskChunk>* writer) override {
    std::vector<v1::TaskChunk> chunks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      chunks.swap(task_);
    }
    if (chunks.empty()) {
      v1::TaskChunk shutdown;
      shutdown.mutable_header()->set_task_id("shutdown");
      shutdown.mutable_header()->set_kind(v1::TASK_KIND_SHUTDOWN);
      writer->Write(shutdown);
      return grpc::Status::OK;
    }
    for (const v1::TaskChunk& chunk : chunks) {
      if (!writer->Write(chunk)) break;  // the client cancelled the stream
    }
    return grpc::Status::OK;
  }

  grpc::Status PushResult(grpc::ServerContext*, grpc::ServerReader<v1::ResultChunk>* reader,
                          v1::PushResultResponse* response) override {
    v1::ResultChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.has_header()) {
        std::lock_guard<std::mutex> lock(mu_);
        results_.push_back(chunk.header());
      }
    }
    response->set_accepted(true);
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*,
                         v1::HeartbeatResponse*) override {
    return grpc::Status::OK;
  }

  grpc::Status Leave(grpc::ServerContext*, const v1::LeaveRequest*, v1::LeaveResponse*) override {
    return grpc::Status::OK;
  }

  std::vector<v1::ResultHeader> results() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_;
  }

 private:
  const std::string run_config_json_;
  std::mutex mu_;
  std::vector<v1::TaskChunk> task_;        // guarded by mu_
  std::vector<v1::ResultHeader> results_;  // guarded by mu_
};

v1::TaskChunk fit_header(const std::string& config_json) {
  v1::TaskChunk chunk;
  v1::TaskHeader* header = chunk.mutable_header();
  header->set_task_id("task-1");
  header->set_kind(v1::TASK_KIND_FIT);
  header->set_round(1);
  header->set_strategy("fedavg");
  header->set_config_json(config_json);
  header->set_client_id("client-0");
  return chunk;
}

class HostileCoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(test_support::binary_path("fedtail-client"))) {
      GTEST_SKIP() << "fedtail-client is not built";
    }
    dir_ = test_support::scratch_dir("hostile_coordinator");
    test_support::write_file(dir_ + "/client.json", R"({"client_id": "client-0", "partition": 0})");
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  void skip_without_dataset() {
    if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
  }

  // Serves `coordinator` on a free loopback port; returns "127.0.0.1:<port>".
  std::string serve(FakeCoordinator* coordinator) {
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(coordinator);
    server_ = builder.BuildAndStart();
    EXPECT_NE(server_, nullptr);
    EXPECT_GT(port, 0);
    return "127.0.0.1:" + std::to_string(port);
  }

  // Runs fedtail-client against `target` until it exits (at most 60 s); returns its exit code.
  int run_client(const std::string& target, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {test_support::binary_path("fedtail-client"),
                                     "--coordinator",
                                     target,
                                     "--config",
                                     dir_ + "/client.json",
                                     "--state-dir",
                                     ":memory:",
                                     "--threads",
                                     "1",
                                     "--retry-timeout",
                                     "5"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    client_ = std::make_unique<Process>(argv, dir_ + "/client.log");
    EXPECT_TRUE(client_->started()) << client_->start_error();
    return client_->wait(60s);
  }

  std::string log() const { return client_ ? client_->log() : ""; }

  std::string dir_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Process> client_;
};

TEST_F(HostileCoordinatorTest, RefusesDeeplyNestedRunConfig) {
  FakeCoordinator coordinator(nested(kDeep), {});
  const int code = run_client(serve(&coordinator));
  EXPECT_NE(code, Process::kSignalled) << client_->describe_exit() << "\n" << log();
  EXPECT_NE(code, Process::kTimedOut) << log();
  EXPECT_EQ(code, 1) << client_->describe_exit() << "\n" << log();
  EXPECT_NE(log().find("nested deeper than"), std::string::npos) << log();
  EXPECT_NE(log().find("run config sent by the coordinator"), std::string::npos) << log();
}

TEST_F(HostileCoordinatorTest, RefusesTaskWithDeeplyNestedConfig) {
  skip_without_dataset();
  FakeCoordinator coordinator(run_config().dump(), {fit_header(nested(kDeep))});
  const int code = run_client(serve(&coordinator));
  EXPECT_EQ(code, 0) << client_->describe_exit() << "\n" << log();
  std::vector<v1::ResultHeader> results = coordinator.results();
  ASSERT_EQ(results.size(), 1u) << log();
  EXPECT_EQ(results[0].task_id(), "task-1");
  EXPECT_FALSE(results[0].ok());
  EXPECT_NE(results[0].error().find("config_json"), std::string::npos) << results[0].error();
  EXPECT_NE(results[0].error().find("nested deeper than"), std::string::npos) << results[0].error();
}

TEST_F(HostileCoordinatorTest, RefusesBundleOverMaxBundleBytes) {
  skip_without_dataset();
  // A real, well-formed 2 MiB bundle: the client refuses it from its header alone.
  TensorBundle bundle;
  ASSERT_TRUE(bundle
                  .add_zeros("w", DType::kFloat32,
                             {static_cast<int64_t>(2 * kMaxBundleBytes / sizeof(float))})
                  .ok());
  std::vector<v1::TaskChunk> task = {fit_header("{}")};
  for (v1::BundleChunk& data : encode_all(bundle)) {
    v1::TaskChunk chunk;
    *chunk.mutable_bundle() = std::move(data);
    task.push_back(std::move(chunk));
  }
  FakeCoordinator coordinator(run_config().dump(), std::move(task));
  const int code =
      run_client(serve(&coordinator), {"--max-bundle-bytes", std::to_string(kMaxBundleBytes)});
  EXPECT_EQ(code, 0) << client_->describe_exit() << "\n" << log();
  std::vector<v1::ResultHeader> results = coordinator.results();
  ASSERT_EQ(results.size(), 1u) << log();
  EXPECT_FALSE(results[0].ok());
  EXPECT_NE(results[0].error().find("--max-bundle-bytes"), std::string::npos) << results[0].error();
  EXPECT_NE(log().find("--max-bundle-bytes"), std::string::npos) << log();
}

TEST_F(HostileCoordinatorTest, IgnoresCoordinatorsDataRoot) {
  skip_without_dataset();
  const std::string elsewhere = dir_ + "/elsewhere";
  fs::create_directories(elsewhere);
  nlohmann::json config = run_config();
  config["data"]["root"] = elsewhere;
  FakeCoordinator coordinator(config.dump(), {});
  // No --data-root: the client's own root is the dataset's default location, where Fashion-MNIST
  // is; the coordinator's folder is empty, so a client that used it could not set the run up.
  const int code = run_client(serve(&coordinator));
  EXPECT_EQ(code, 0) << client_->describe_exit() << "\n" << log();
  EXPECT_NE(log().find("ignoring the coordinator's config.data.root \"" + elsewhere + "\""),
            std::string::npos)
      << log();
  EXPECT_NE(log().find("data ready"), std::string::npos) << log();
  EXPECT_TRUE(fs::is_empty(elsewhere));
}

TEST_F(HostileCoordinatorTest, DataRootFlagIsTheClientsOwn) {
  skip_without_dataset();
  // The client's --data-root wins over the coordinator's, even when the coordinator's is the
  // right one: a missing folder of the client's makes the setup fail, naming it.
  const std::string missing = dir_ + "/no-such-folder";
  nlohmann::json config = run_config();
  config["data"]["root"] = "/usr/share/datasets/fashion-mnist";
  FakeCoordinator coordinator(config.dump(), {});
  const int code = run_client(serve(&coordinator), {"--data-root", missing});
  EXPECT_EQ(code, 1) << client_->describe_exit() << "\n" << log();
  EXPECT_NE(log().find(missing), std::string::npos) << log();
}

}  // namespace
}  // namespace fedtail

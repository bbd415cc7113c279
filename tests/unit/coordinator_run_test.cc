// The whole coordinator in-process (Coordinator: config, data, FedAvg, gRPC server, checkpoints,
// summary) with fake gRPC clients that echo the global model back, slightly scaled. Checks the
// state directory's files and that a run stopped after round 1 and resumed ends bit-identical to
// an uninterrupted run.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "common/wire/bundle_codec.h"
#include "common/wire/bundle_file.h"
#include "coordinator/checkpoint.h"
#include "coordinator/coordinator.h"
#include "fedtail/v1/federation.grpc.pb.h"
#include "strategies/registry.h"

namespace fedtail::coordinator {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";

std::string scratch(const std::string& name) {
  fs::path dir = fs::path(FEDTAIL_TEST_TMP) / "coordinator_run_test" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

nlohmann::json run_json(bool server_eval) {
  return {{"seed", 5},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", 2},
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 2}}},
          {"federation",
           {{"min_available_clients", 2},
            {"round_timeout_s", 60},
            {"poll_timeout_ms", 300},
            {"heartbeat_interval_ms", 1000},
            {"client_timeout_s", 10},
            {"server_eval", server_eval}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 20},
            {"imbalance_factor", 4},
            {"clients", 2}}},
          {"model", {{"arch", "cnn"}, {"feature_dim", 16}}},
          // Evaluated at the last round only (server evaluation of 10k images dominates the time).
          {"eval", {{"batch_size", 1000}, {"every", 2}}}};
}

// A client over real gRPC: answers FIT with the global bundle's floating tensors scaled by
// `scale` (so the two clients differ), EVALUATE with 3 of 4 correct; leaves on SHUTDOWN.
// `on_task(round, kind)` runs before each task is answered; returning false stops the client.
class EchoClient {
 public:
  EchoClient(const std::string& address, std::string id, float scale,
             std::function<bool(int, v1::TaskKind)> on_task = nullptr)
      : id_(std::move(id)), scale_(scale), on_task_(std::move(on_task)) {
    stub_ =
        v1::Federation::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    thread_ = std::thread([this] { loop(); });
  }
  ~EchoClient() {
    stop_ = true;
    thread_.join();
  }
  bool got_shutdown() const { return shutdown_.load(); }

 private:
  void loop() {
    std::string token;
    while (!stop_) {
      if (token.empty()) {
        v1::JoinRequest request;
        request.set_client_id(id_);
        request.set_protocol_version(1);
        request.set_num_examples(10);
        request.set_model_family("cnn");
        v1::JoinResponse response;
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + 5s);
        if (!stub_->Join(&context, request, &response).ok()) {
          std::this_thread::sleep_for(100ms);
          continue;
        }
        token = response.session_token();
      }
      v1::PullTaskRequest request;
      request.set_session_token(token);
      request.set_poll_timeout_ms(300);
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + 10s);
      auto reader = stub_->PullTask(&context, request);
      v1::TaskChunk chunk;
      v1::TaskHeader header;
      BundleDecoder decoder;
      while (reader->Read(&chunk)) {
        if (chunk.has_header()) {
          header = chunk.header();
        } else {
          (void)decoder.add(chunk.bundle());
        }
      }
      if (!reader->Finish().ok()) {
        std::this_thread::sleep_for(100ms);
        continue;
      }
      if (header.kind() == v1::TASK_KIND_SHUTDOWN) {
        shutdown_ = true;
        return;
      }
      if (header.kind() != v1::TASK_KIND_FIT && header.kind() != v1::TASK_KIND_EVALUATE) continue;
      if (on_task_ && !on_task_(static_cast<int>(header.round()), header.kind())) return;
      TensorBundle update;
      v1::ResultHeader result;
      result.set_session_token(token);
      result.set_task_id(header.task_id());
      result.set_client_id(header.client_id());
      result.set_ok(true);
      if (header.kind() == v1::TASK_KIND_FIT) {
        Result<TensorBundle> global = decoder.finish();
        if (!global.ok()) continue;
        update = std::move(global).value();
        update.mutable_metadata() = nlohmann::json::object();
        for (NamedTensor& t : update) {
          if (t.dtype() != DType::kFloat32) continue;
          float* data = t.data<float>();
          for (int64_t i = 0; i < t.numel(); ++i) data[i] *= scale_;
        }
        result.set_num_examples(10);
        result.set_metrics_json(R"({"loss": 1.5})");
      } else {
        result.set_num_examples(4);
        result.set_metrics_json(R"({"correct": 3, "examples": 4})");
      }
      v1::PushResultResponse response;
      grpc::ClientContext push_context;
      push_context.set_deadline(std::chrono::system_clock::now() + 10s);
      auto writer = stub_->PushResult(&push_context, &response);
      v1::ResultChunk out;
      *out.mutable_header() = result;
      writer->Write(out);
      BundleEncoder encoder(update);
      while (encoder.next(out.mutable_bundle())) writer->Write(out);
      writer->WritesDone();
      (void)writer->Finish();
    }
  }

  std::string id_;
  float scale_;
  std::function<bool(int, v1::TaskKind)> on_task_;
  std::unique_ptr<v1::Federation::Stub> stub_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> shutdown_{false};
  std::thread thread_;
};

class CoordinatorRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kFashionMnist)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    strategies::register_builtin_strategies();
  }

  CoordinatorFlags flags(const std::string& dir, bool server_eval) {
    const std::string config = dir + "/run.json";
    std::ofstream(config) << run_json(server_eval).dump(2);
    CoordinatorFlags f;
    f.config_path = config;
    f.listen = "127.0.0.1:0";
    f.state_dir = dir + "/state";
    f.threads = 1;
    return f;
  }

  static nlohmann::json read_json(const std::string& path) {
    std::ifstream in(path);
    return nlohmann::json::parse(in);
  }
};

TEST_F(CoordinatorRunTest, WritesMetricsCheckpointFinalModelAndSummary) {
  const std::string dir = scratch("files");
  Result<std::unique_ptr<Coordinator>> created = Coordinator::create(flags(dir, true));
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Coordinator& coordinator = **created;
  ASSERT_TRUE(coordinator.start().ok());
  std::ifstream port_file(dir + "/state/port");
  int port = 0;
  port_file >> port;
  EXPECT_EQ(port, coordinator.port());
  {
    EchoClient a(coordinator.address(), "client-0", 1.0f);
    EchoClient b(coordinator.address(), "client-1", 1.0f);
    ASSERT_TRUE(coordinator.wait().ok());
    for (int i = 0; i < 100 && !(a.got_shutdown() && b.got_shutdown()); ++i) {
      std::this_thread::sleep_for(20ms);
    }
    EXPECT_TRUE(a.got_shutdown());
    EXPECT_TRUE(b.got_shutdown());
  }
  const std::string state = dir + "/state/";
  Result<std::vector<nlohmann::json>> lines = read_metrics_lines(state + kMetricsFile);
  ASSERT_TRUE(lines.ok());
  ASSERT_EQ(lines->size(), 2u);
  EXPECT_EQ((*lines)[1]["fit"]["updates"], 2);
  EXPECT_DOUBLE_EQ((*lines)[1]["fit"]["metrics"]["loss"].get<double>(), 1.5);
  EXPECT_TRUE((*lines)[1]["server_eval"]["generic"]["overall"].is_number());

  nlohmann::json summary = read_json(state + kSummaryFile);
  EXPECT_EQ(summary["strategy"], "fedavg");
  EXPECT_EQ(summary["rounds_completed"], 2);
  EXPECT_EQ(summary["run_id"], coordinator.run_id());
  EXPECT_GT(summary["wall_seconds"].get<double>(), 0.0);
  const double generic = summary["final"]["generic_accuracy"].get<double>();
  EXPECT_GE(generic, 0.0);
  EXPECT_LE(generic, 1.0);
  EXPECT_TRUE(summary["final"]["generic_by_group"].contains("few"));
  EXPECT_DOUBLE_EQ(summary["final"]["personalized_accuracy"].get<double>(), 0.75);

  Result<Checkpoint> checkpoint = read_checkpoint(state + kCheckpointFile);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  EXPECT_EQ(checkpoint->info.round, 2);
  EXPECT_EQ(checkpoint->info.metrics_lines, 2);
  EXPECT_TRUE(read_bundle_file(state + kFinalModelFile).ok());

  // The state directory now holds a checkpoint: a fresh run there is refused, a resume of the
  // finished run only rewrites the summary, and a resume with another config is refused.
  Result<std::unique_ptr<Coordinator>> again = Coordinator::create(flags(dir, true));
  EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(again.status().message().find("--resume"), std::string::npos);
  CoordinatorFlags other = flags(dir, true);
  other.resume = true;
  other.rounds = 3;
  Result<std::unique_ptr<Coordinator>> changed = Coordinator::create(other);
  EXPECT_EQ(changed.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(changed.status().message().find("differs"), std::string::npos);
}

TEST_F(CoordinatorRunTest, AStoppedRunResumesBitExactly) {
  // Uninterrupted.
  const std::string straight_dir = scratch("straight");
  {
    Result<std::unique_ptr<Coordinator>> c = Coordinator::create(flags(straight_dir, false));
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    ASSERT_TRUE((*c)->start().ok());
    EchoClient a((*c)->address(), "client-0", 0.5f);
    EchoClient b((*c)->address(), "client-1", 1.5f);
    ASSERT_TRUE((*c)->wait().ok());
  }
  // Stopped when round 2's fit arrives, then resumed.
  const std::string dir = scratch("resumed");
  std::string stopped_run_id;
  {
    Result<std::unique_ptr<Coordinator>> c = Coordinator::create(flags(dir, false));
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    Coordinator* coordinator = c->get();
    ASSERT_TRUE(coordinator->start().ok());
    auto stop_at_round_2 = [coordinator](int round, v1::TaskKind) {
      if (round < 2) return true;
      coordinator->request_stop();
      return false;
    };
    EchoClient a(coordinator->address(), "client-0", 0.5f, stop_at_round_2);
    EchoClient b(coordinator->address(), "client-1", 1.5f, stop_at_round_2);
    Status stopped = coordinator->wait();
    EXPECT_EQ(stopped.code(), StatusCode::kUnavailable);
    stopped_run_id = coordinator->run_id();
  }
  ASSERT_EQ(read_checkpoint(dir + "/state/" + kCheckpointFile)->info.round, 1);
  ASSERT_EQ(read_metrics_lines(dir + "/state/" + kMetricsFile)->size(), 1u);
  {
    CoordinatorFlags f = flags(dir, false);
    f.resume = true;
    Result<std::unique_ptr<Coordinator>> c = Coordinator::create(f);
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    ASSERT_TRUE((*c)->start().ok());
    EchoClient a((*c)->address(), "client-0", 0.5f);
    EchoClient b((*c)->address(), "client-1", 1.5f);
    ASSERT_TRUE((*c)->wait().ok());
  }
  Result<TensorBundle> straight = read_bundle_file(straight_dir + "/state/" + kFinalModelFile);
  Result<TensorBundle> resumed = read_bundle_file(dir + "/state/" + kFinalModelFile);
  ASSERT_TRUE(straight.ok() && resumed.ok());
  EXPECT_TRUE(straight->bitwise_equal(*resumed));
  Result<std::vector<nlohmann::json>> lines = read_metrics_lines(dir + "/state/" + kMetricsFile);
  ASSERT_EQ(lines->size(), 2u);
  EXPECT_EQ((*lines)[1]["round"], 2);
  nlohmann::json summary = read_json(dir + "/state/" + kSummaryFile);
  EXPECT_EQ(summary["rounds_completed"], 2);
  // The resumed run keeps the stopped run's id.
  EXPECT_EQ(summary["run_id"], stopped_run_id);
}

}  // namespace
}  // namespace fedtail::coordinator

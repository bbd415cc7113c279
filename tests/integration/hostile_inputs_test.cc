// Hostile input against a running federation: a real fedtail-coordinator and a real fedtail-client
// process (two virtual clients, FedAvg, Fashion-MNIST slice) over loopback, and "mallory", this
// test, speaking the wire protocol through the generated stub with everything a broken or hostile
// peer could send:
//   before joining: a foreign protocol version, an empty client id, the id of a connected client,
//   forged session tokens (Heartbeat, PullTask), a PushResult whose first message is not a
//   header, raw bytes that are no protobuf at all (gRPC answers those itself, UNIMPLEMENTED);
//   then, as a selected client, one bad result per round: a header naming another client, a
//   flipped payload byte (digest), the same result replayed, a result for a task id never handed
//   out, NaN, a renamed tensor, an update over federation.max_update_bytes, a truncated stream,
//   chunks out of order, metrics_json nested 100000 deep, num_examples < 0, and the replayed token
//   of a session that left.
// Each must be refused with a status or reason that names the problem and counted under its kind
// ("refused" in metrics.jsonl lines, summed in summary.json), and the run must be unharmed: every
// round completes with the two honest updates, and the final model is bit-identical to a run
// without mallory (same seed).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/wire/bundle_codec.h"
#include "common/wire/bundle_file.h"
#include "fedtail/v1/federation.grpc.pb.h"
#include "tests/support/cli.h"
#include "tests/support/mallory.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Mallory;
using test_support::Process;

constexpr int kRounds = 8;  // one bad result per round (see Mallory::attack)
constexpr uint64_t kMaxUpdateBytes = 8ull << 20;
constexpr size_t kChunkBytes = 16 << 10;  // small chunks: every bundle has several

nlohmann::json run_config(int min_available_clients) {
  return {{"seed", 11},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", kRounds},
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 2}, {"fraction_evaluate", 0.0}}},
          {"federation",
           {{"min_available_clients", min_available_clients},
            {"round_timeout_s", 120},
            {"poll_timeout_ms", 1000},
            {"heartbeat_interval_ms", 500},
            {"client_timeout_s", 30},
            {"max_update_bytes", kMaxUpdateBytes},
            {"server_eval", false}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 40},
            {"imbalance_factor", 10},
            {"partition", "iid"},
            {"clients", 2}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 16}}}};
}

std::vector<v1::BundleChunk> encode(const TensorBundle& bundle) {
  return test_support::encode_chunks(bundle, kChunkBytes);
}

// What mallory saw of one attack.
struct Outcome {
  std::string attack;  // the refusal kind expected, optionally "/variant"
  grpc::Status status;
  v1::PushResultResponse response;
};

class HostileInputs : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("hostile_inputs");
  }

  std::unique_ptr<Process> start_coordinator(const std::string& name, int min_available) {
    return test_support::start_loopback_coordinator(dir_, name, run_config(min_available));
  }

  std::unique_ptr<Process> start_clients(const std::string& name, const std::string& port) {
    return test_support::start_honest_clients(dir_, name, port);
  }

  std::string state(const std::string& name, const char* file) const {
    return dir_ + "/" + name + "-state/" + file;
  }

  std::string dir_;
};

// The attacks mallory makes before it joins. Returns what it saw.
std::vector<Outcome> attack_from_outside(Mallory& mallory) {
  std::vector<Outcome> seen;
  v1::JoinResponse joined;

  v1::JoinRequest foreign = Mallory::join_request("mallory");
  foreign.set_protocol_version(99);
  seen.push_back({"protocol_version", mallory.join(foreign, &joined), {}});
  seen.push_back({"bad_join", mallory.join(Mallory::join_request(""), &joined), {}});
  seen.push_back(
      {"already_connected", mallory.join(Mallory::join_request("client-0"), &joined), {}});
  seen.push_back({"unknown_session", mallory.heartbeat("forged-session-token"), {}});
  v1::TaskHeader header;
  TensorBundle bundle;
  seen.push_back({"unknown_session", mallory.pull("forged-session-token", &header, &bundle), {}});

  // A PushResult whose first message is a bundle chunk, not a ResultHeader.
  std::vector<v1::ResultChunk> headless(1);
  headless[0].mutable_bundle()->mutable_data()->assign("data before any header");
  Outcome no_header{"malformed_stream", {}, {}};
  no_header.status = mallory.push(headless, &no_header.response);
  seen.push_back(no_header);

  // Not a protobuf at all: gRPC refuses it before any handler sees it (not counted).
  seen.push_back({"garbage", mallory.garbage_join(), {}});
  return seen;
}

// Mallory's answer to its k-th fit task (k = 0, 1, ...): a bad result of a different kind each
// time. Appends what it saw to `seen`.
void attack(Mallory& mallory, const std::string& token, int k, const v1::TaskHeader& task,
            TensorBundle model, std::vector<Outcome>* seen) {
  v1::ResultHeader header;
  header.set_session_token(token);
  header.set_task_id(task.task_id());
  header.set_client_id(task.client_id());
  header.set_ok(true);
  header.set_num_examples(100);
  header.set_metrics_json(R"({"loss": 1.0})");
  auto push = [&](const char* kind, const v1::ResultHeader& h,
                  const std::vector<v1::BundleChunk>& chunks) {
    Outcome outcome{kind, {}, {}};
    outcome.status = mallory.push(Mallory::result(h, chunks), &outcome.response);
    seen->push_back(outcome);
  };
  switch (k) {
    case 0: {
      v1::ResultHeader other = header;
      other.set_client_id("client-0");
      push("wrong_client", other, encode(model));
      std::vector<v1::BundleChunk> chunks = encode(model);
      EXPECT_GE(chunks.size(), 3u);
      (*chunks[1].mutable_data())[7] ^= 0x10;  // one flipped bit in the payload
      push("digest_mismatch", header, chunks);
      push("duplicate", header, chunks);  // the same result, replayed
      v1::ResultHeader unknown = header;
      unknown.set_task_id("no-such-task");
      push("unknown_task", unknown, encode(model));
      break;
    }
    case 1:
      model.at(0).data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
      push("non_finite", header, encode(model));
      break;
    case 2: {
      TensorBundle renamed;
      for (const NamedTensor& t : model) {
        NamedTensor copy = t.clone();
        Result<NamedTensor> moved = NamedTensor::zeros(
            &t == &model.at(0) ? "mallory.weight" : t.name(), t.dtype(), t.shape());
        ASSERT_TRUE(moved.ok());
        std::memcpy(moved->mutable_bytes(), copy.bytes(), copy.nbytes());
        ASSERT_TRUE(renamed.add(std::move(moved).value()).ok());
      }
      push("incompatible_update", header, encode(renamed));
      break;
    }
    case 3: {
      const int64_t floats = static_cast<int64_t>(kMaxUpdateBytes / 4) + 1;
      ASSERT_TRUE(model.add_zeros("padding", DType::kFloat32, {floats}).ok());
      push("oversized", header, encode(model));
      break;
    }
    case 4: {
      std::vector<v1::BundleChunk> chunks = encode(model);
      chunks.pop_back();  // truncated: the last data chunk never comes
      push("corrupt_bundle", header, chunks);
      break;
    }
    case 5: {
      std::vector<v1::BundleChunk> chunks = encode(model);
      std::swap(chunks[1], chunks[2]);  // out of order
      push("corrupt_bundle", header, chunks);
      break;
    }
    case 6: {
      v1::ResultHeader deep = header;  // metrics nested 100000 deep: refused before parsing
      deep.set_metrics_json(std::string(100000, '[') + std::string(100000, ']'));
      push("bad_header/deep_metrics", deep, encode(model));
      break;
    }
    default: {
      // A session that left: its token, replayed, is worthless. (Here, during the last round's fit
      // phase, so that the short-lived session is never selected for a task.)
      v1::JoinResponse old;
      EXPECT_TRUE(mallory.join(Mallory::join_request("mallory-old"), &old).ok());
      EXPECT_TRUE(mallory.leave(old.session_token()).ok());
      seen->push_back({"unknown_session", mallory.heartbeat(old.session_token()), {}});
      v1::ResultHeader negative = header;
      negative.set_num_examples(-5);
      push("bad_header", negative, encode(model));
      break;
    }
  }
}

TEST_F(HostileInputs, EveryBadInputIsRefusedCountedAndTheRunIsUnharmed) {
  // Reference: the two honest clients alone.
  {
    std::unique_ptr<Process> coordinator = start_coordinator("clean", 2);
    const std::string port = test_support::wait_for_file(state("clean", "port"), 120s);
    ASSERT_FALSE(port.empty()) << coordinator->log();
    std::unique_ptr<Process> clients = start_clients("clean", port);
    ASSERT_EQ(coordinator->wait(300s), 0) << coordinator->log() << "\n--- clients:\n"
                                          << clients->log();
    EXPECT_EQ(clients->wait(60s), 0) << clients->log();
  }

  // The same run with mallory: round 1 waits for 3 clients, so mallory is in every round.
  std::unique_ptr<Process> coordinator = start_coordinator("attacked", 3);
  const std::string port = test_support::wait_for_file(state("attacked", "port"), 120s);
  ASSERT_FALSE(port.empty()) << coordinator->log();
  std::unique_ptr<Process> clients = start_clients("attacked", port);
  ASSERT_TRUE(
      test_support::wait_for_text(coordinator->log_path(), "joined hosting 2 clients", 120s))
      << coordinator->log();

  Mallory mallory("127.0.0.1:" + port);
  std::vector<Outcome> seen = attack_from_outside(mallory);
  v1::JoinResponse joined;
  ASSERT_TRUE(mallory.join(Mallory::join_request("mallory"), &joined).ok());
  int fit_tasks = 0;
  for (auto until = std::chrono::steady_clock::now() + 300s;
       std::chrono::steady_clock::now() < until;) {
    v1::TaskHeader task;
    TensorBundle model;
    grpc::Status pulled = mallory.pull(joined.session_token(), &task, &model);
    if (!pulled.ok()) break;  // the coordinator has gone (run over)
    if (task.kind() == v1::TASK_KIND_SHUTDOWN) break;
    if (task.kind() != v1::TASK_KIND_FIT) continue;
    attack(mallory, joined.session_token(), fit_tasks++, task, std::move(model), &seen);
  }
  ASSERT_EQ(coordinator->wait(300s), 0) << coordinator->log();
  EXPECT_EQ(clients->wait(60s), 0) << clients->log();
  EXPECT_EQ(fit_tasks, kRounds);

  // Every attack got a clear refusal.
  std::map<std::string, uint64_t> expected;
  for (const Outcome& o : seen) {
    SCOPED_TRACE(o.attack);
    if (!o.status.ok()) {
      if (o.attack != "garbage") {
        EXPECT_FALSE(o.status.error_message().empty());
      }
    } else {
      EXPECT_FALSE(o.response.accepted()) << o.response.reason();
      EXPECT_FALSE(o.response.reason().empty());
    }
    // "kind/variant": counted under kind.
    if (o.attack != "garbage") ++expected[o.attack.substr(0, o.attack.find('/'))];
  }
  auto status_of = [&seen](const std::string& attack) {
    for (const Outcome& o : seen) {
      if (o.attack == attack) return o;
    }
    return Outcome{};
  };
  EXPECT_EQ(status_of("protocol_version").status.error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status_of("already_connected").status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(status_of("unknown_session").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status_of("malformed_stream").status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status_of("wrong_client").status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // gRPC's own answer to a request it cannot parse (UNIMPLEMENTED, no message): the handler never
  // runs, so it is not counted either.
  EXPECT_EQ(status_of("garbage").status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_NE(status_of("digest_mismatch").response.reason().find("digest mismatch"),
            std::string::npos);
  EXPECT_TRUE(status_of("duplicate").response.duplicate());
  EXPECT_NE(status_of("non_finite").response.reason().find("non-finite"), std::string::npos);
  EXPECT_NE(status_of("incompatible_update").response.reason().find("missing"), std::string::npos)
      << status_of("incompatible_update").response.reason();
  EXPECT_NE(status_of("bad_header").response.reason().find("num_examples"), std::string::npos);
  EXPECT_NE(status_of("bad_header/deep_metrics").response.reason().find("nested deeper"),
            std::string::npos)
      << status_of("bad_header/deep_metrics").response.reason();

  // Counted under its kind: summary.json sums the rounds' "refused".
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(state("attacked", "summary.json")));
  ASSERT_TRUE(summary.contains("refused")) << summary.dump(2);
  uint64_t total = 0;
  for (const auto& [kind, n] : expected) {
    EXPECT_EQ(summary["refused"].value(kind, uint64_t{0}), n) << kind << ": " << summary.dump(2);
    total += n;
  }
  EXPECT_EQ(summary["refused"]["total"].get<uint64_t>(), total) << summary.dump(2);

  // The run is unharmed: every round has the two honest updates and mallory's failure with the
  // reason, and the final model is the clean run's, bit for bit.
  const std::vector<nlohmann::json> lines =
      test_support::metrics_lines(state("attacked", "metrics.jsonl"));
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
  for (const nlohmann::json& line : lines) {
    SCOPED_TRACE(line.dump());
    EXPECT_EQ(line["fit"]["selected"], 3);
    EXPECT_EQ(line["fit"]["updates"], 2);
    ASSERT_EQ(line["fit"]["failures"].size(), 1u);
    EXPECT_EQ(line["fit"]["failures"][0]["client_id"], "mallory");
    EXPECT_NE(line["fit"]["failures"][0]["reason"].get<std::string>().find("refused"),
              std::string::npos);
  }
  test_support::expect_same_final_model(dir_ + "/clean-state", dir_ + "/attacked-state");
}

}  // namespace
}  // namespace fedtail

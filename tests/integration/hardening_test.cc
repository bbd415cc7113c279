// One authenticated client must not be able to stall, flood or take over a federation. A real
// fedtail-coordinator and a real fedtail-client process (two virtual clients, FedAvg, a
// Fashion-MNIST slice) over loopback, and "mallory" (tests/support/mallory.h), a session hosting
// two clients of its own, selected in every round, that
//   before round 1: joins with an id holding a newline and a terminal escape, a Join padded to
//     64 KiB, a Join of more virtual clients than federation.max_virtual_clients_per_session, a
//     Join past federation.max_clients, and opens more parked polls than a session may hold;
//   round 1: opens an upload for each of its tasks, sends the header and then nothing (the stall
//     that held upload slots forever: now cancelled after upload_idle_timeout_s, the task then
//     waited for until the round's deadline like any unanswered one);
//   round 2: claims 10^12 examples for a real update (which would make it the global model), and
//     reports a client error of 1 MiB (which would go into the log and metrics.jsonl whole);
//   round 3: stalls one upload again and drips the other one byte-sized chunk at a time;
//   round 4: sends the header of a 1 GiB update (its first tensor grown to 2^28 floats, the rest
//     of the model as asked) and nothing else, which the decoder allocated before reading any data;
//     and a real update with one tensor too many. Both are refused on their header, as not the
//     update the task expects (incompatible_update), before any tensor is allocated;
//   after: leaves with a 3 KiB reason.
// Every round must finish with the two honest updates folded exactly once, mallory's tasks failed
// with a reason that names the problem, and the final model must be the clean run's, bit for bit.
// A separate test: off loopback, a coordinator without client authentication refuses to start.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <future>
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

using namespace std::chrono_literals;
using test_support::Mallory;
using test_support::Process;

constexpr int kRounds = 4;
constexpr int kMalloryExamples = 100;  // what mallory's clients declare at Join
constexpr int kMaxVirtualClients = 8;
constexpr int kMaxClients = 5;  // 2 honest + 2 mallory + 1 spare

nlohmann::json run_config(int min_available_clients) {
  return {{"seed", 23},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", kRounds},
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 2}, {"fraction_evaluate", 0.0}}},
          {"federation",
           {{"min_available_clients", min_available_clients},
            // A stalled task is waited for until this deadline (the client may retry); without the
            // upload watch, the stalls hold the upload slots past it and the round ends without
            // the honest updates.
            {"round_timeout_s", 30},
            {"poll_timeout_ms", 5000},  // the flood's polls stay parked together
            {"heartbeat_interval_ms", 500},
            {"client_timeout_s", 60},
            {"max_concurrent_uploads", 2},
            {"upload_idle_timeout_s", 2},
            {"upload_min_bytes_per_s", 4096},
            {"max_clients", kMaxClients},
            {"max_virtual_clients_per_session", kMaxVirtualClients},
            {"server_eval", false}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 60},
            {"imbalance_factor", 10},
            {"partition", "iid"},
            {"clients", 2}}},
          {"model", {{"arch", "cnn"}}},
          // A few seconds of training: mallory's stalls start before the honest uploads.
          {"local", {{"epochs", 2}, {"batch_size", 16}}}};
}

// A PushResult that sends `header` and then, every `drip` (0: never), the next of `chunks` (a
// valid bundle cut small), until the coordinator ends the call or `give_up` passes. Returns the
// status and how long the call lasted.
struct Stall {
  grpc::Status status;
  std::chrono::milliseconds lasted{0};
};
Stall stall_upload(v1::Federation::Stub* stub, const v1::ResultHeader& header,
                   const std::vector<v1::BundleChunk>& chunks, std::chrono::milliseconds drip,
                   std::chrono::seconds give_up) {
  const auto start = std::chrono::steady_clock::now();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + give_up);
  v1::PushResultResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::ResultChunk>> writer =
      stub->PushResult(&context, &response);
  v1::ResultChunk first;
  *first.mutable_header() = header;
  if (writer->Write(first) && drip.count() > 0) {
    for (const v1::BundleChunk& chunk : chunks) {
      if (std::chrono::steady_clock::now() - start >= give_up) break;
      std::this_thread::sleep_for(drip);
      v1::ResultChunk message;
      *message.mutable_bundle() = chunk;
      if (!writer->Write(message)) break;  // the coordinator ended the call
    }
  }
  // No WritesDone: the stream stays open until the coordinator ends it (or the deadline).
  Stall stall;
  stall.status = writer->Finish();
  stall.lasted = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  return stall;
}

// `header_chunk` (chunk 0 of a real update) rewritten to declare `payload_bytes`: its first
// tensor flattened and grown by the difference (float32), the digest recomputed so that only the
// size is wrong. The data chunks of such a bundle are never sent.
v1::BundleChunk grown_header(v1::BundleChunk header_chunk, uint64_t payload_bytes) {
  v1::BundleHeader* header = header_chunk.mutable_header();
  v1::TensorSpec* first = header->mutable_tensors(0);
  uint64_t first_bytes = 4;
  for (int64_t d : first->shape()) first_bytes *= static_cast<uint64_t>(d);
  const uint64_t grown = payload_bytes - (header->payload_bytes() - first_bytes);
  first->clear_shape();
  first->add_shape(static_cast<int64_t>(grown / 4));
  header->set_payload_bytes(payload_bytes);
  header->set_num_chunks(payload_bytes / kDefaultChunkBytes);
  const PayloadDigest digest = header_digest(*header);
  header->set_header_digest(std::string(reinterpret_cast<const char*>(digest.data()), digest.size()));
  return header_chunk;
}

class Hardening : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("hardening");
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

v1::JoinRequest virtual_join(const std::string& worker, int first, int count) {
  v1::JoinRequest request = Mallory::join_request(worker);
  for (int k = 0; k < count; ++k) {
    v1::VirtualClient* v = request.add_virtual_clients();
    v->set_client_id("mallory-" + std::to_string(first + k));
    v->set_num_examples(kMalloryExamples);
  }
  return request;
}

// `n` concurrent PullTasks of one session: the statuses.
std::vector<grpc::Status> flood_polls(Mallory& mallory, const std::string& token, int n) {
  std::vector<std::future<grpc::Status>> polls;
  for (int k = 0; k < n; ++k) {
    polls.push_back(std::async(std::launch::async, [&mallory, &token] {
      v1::TaskHeader header;
      TensorBundle bundle;
      return mallory.pull(token, &header, &bundle, /*poll_timeout_ms=*/5000);
    }));
  }
  std::vector<grpc::Status> statuses;
  for (auto& p : polls) statuses.push_back(p.get());
  return statuses;
}

TEST_F(Hardening, NoClientCanStallFloodOrOverclaimAndEveryHonestUpdateIsFoldedOnce) {
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

  std::unique_ptr<Process> coordinator = start_coordinator("attacked", 4);
  const std::string port = test_support::wait_for_file(state("attacked", "port"), 120s);
  ASSERT_FALSE(port.empty()) << coordinator->log();
  Mallory mallory("127.0.0.1:" + port);

  // ---- Before round 1 (the run waits for 4 clients; the honest ones are not there yet).
  v1::JoinResponse joined;
  v1::JoinRequest escape = Mallory::join_request("evil\n[INFO] forged line \x1b[31mred");
  const grpc::Status bad_id = mallory.join(escape, &joined);
  EXPECT_EQ(bad_id.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad_id.error_message().find("may hold only"), std::string::npos)
      << bad_id.error_message();
  EXPECT_EQ(bad_id.error_message().find('\x1b'), std::string::npos);

  v1::JoinRequest padded = Mallory::join_request("mallory-padded");
  padded.set_model_family(std::string(64 << 10, 'x'));
  const grpc::Status too_big = mallory.join(padded, &joined);
  EXPECT_EQ(too_big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << too_big.error_message();

  const grpc::Status too_many_virtual =
      mallory.join(virtual_join("mallory-crowd", 100, kMaxVirtualClients + 1), &joined);
  EXPECT_EQ(too_many_virtual.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(too_many_virtual.error_message().find("max_virtual_clients_per_session"),
            std::string::npos)
      << too_many_virtual.error_message();

  // Mallory's real session: two clients that declare kMalloryExamples each.
  ASSERT_TRUE(mallory.join(virtual_join("mallory", 0, 2), &joined).ok());
  const std::string token = joined.session_token();
  // The federation holds at most kMaxClients: 2 (mallory) + 2 (honest, still to come) + 1.
  v1::JoinResponse spare;
  EXPECT_TRUE(mallory.join(virtual_join("mallory-spare", 10, 1), &spare).ok());
  const grpc::Status full = mallory.join(virtual_join("mallory-more", 20, 3), &joined);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << full.error_message();
  EXPECT_NE(full.error_message().find("max_clients"), std::string::npos) << full.error_message();
  EXPECT_TRUE(mallory.leave(spare.session_token()).ok());  // room for the honest clients

  // Six concurrent polls of one session: four park (and answer WAIT), the rest are refused.
  int refused_polls = 0, waited = 0;
  for (const grpc::Status& s : flood_polls(mallory, token, 6)) {
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++refused_polls;
    if (s.ok()) ++waited;
  }
  EXPECT_EQ(refused_polls, 2);
  EXPECT_EQ(waited, 4);

  std::unique_ptr<Process> clients = start_clients("attacked", port);

  // ---- The rounds: one attack per task, each round's stalls held in threads.
  std::map<int, int> tasks_per_round;
  std::vector<std::future<Stall>> stalls_round1, stalls_round3;
  std::vector<v1::PushResultResponse> answers_round2, answers_round4;
  for (auto until = std::chrono::steady_clock::now() + 300s;
       std::chrono::steady_clock::now() < until;) {
    v1::TaskHeader task;
    TensorBundle model;
    grpc::Status pulled = mallory.pull(token, &task, &model);
    if (!pulled.ok() || task.kind() == v1::TASK_KIND_SHUTDOWN) break;
    if (task.kind() != v1::TASK_KIND_FIT) continue;
    const int round = static_cast<int>(task.round());
    const int k = tasks_per_round[round]++;
    v1::ResultHeader header;
    header.set_session_token(token);
    header.set_task_id(task.task_id());
    header.set_client_id(task.client_id());
    header.set_ok(true);
    header.set_num_examples(kMalloryExamples);
    header.set_metrics_json(R"({"loss": 1.0})");
    if (round == 1 || (round == 3 && k == 0)) {
      (round == 1 ? stalls_round1 : stalls_round3)
          .push_back(std::async(std::launch::async, [&mallory, header] {
            return stall_upload(mallory.stub(), header, {}, 0ms, 120s);
          }));
    } else if (round == 3) {
      // The real update in 64-byte chunks, one every 500 ms: never idle, but ~130 bytes/s.
      std::vector<v1::BundleChunk> drops = test_support::encode_chunks(model, 64);
      stalls_round3.push_back(std::async(std::launch::async, [&mallory, header, drops] {
        return stall_upload(mallory.stub(), header, drops, 500ms, 120s);
      }));
    } else if (round == 4) {
      std::vector<v1::BundleChunk> chunks = test_support::encode_chunks(model);
      if (k == 0) {
        chunks = {grown_header(chunks.front(), uint64_t{1} << 30)};
      } else {
        ASSERT_TRUE(model.add_zeros("mallory.extra", DType::kFloat32, {16}).ok());
        chunks = test_support::encode_chunks(model);
      }
      v1::PushResultResponse response;
      EXPECT_TRUE(mallory.push(Mallory::result(header, chunks), &response).ok());
      answers_round4.push_back(response);
    } else if (k == 0) {
      v1::ResultHeader overclaim = header;
      overclaim.set_num_examples(1'000'000'000'000);
      v1::PushResultResponse response;
      EXPECT_TRUE(
          mallory.push(Mallory::result(overclaim, test_support::encode_chunks(model)), &response)
              .ok());
      answers_round2.push_back(response);
    } else {
      v1::ResultHeader failed = header;
      failed.set_ok(false);
      failed.set_error(std::string(1 << 20, 'E') + "\n\x1b[2J");
      v1::PushResultResponse response;
      EXPECT_TRUE(mallory.push(Mallory::result(failed, {}), &response).ok());
      answers_round2.push_back(response);
    }
  }
  // A long goodbye, with a fresh session (mallory's own has been answered SHUTDOWN).
  v1::JoinResponse leaver;
  if (mallory.join(Mallory::join_request("mallory-leaver"), &leaver).ok()) {
    grpc::ClientContext context;
    v1::LeaveRequest leave;
    leave.set_session_token(leaver.session_token());
    leave.set_reason(std::string(3 << 10, 'L'));
    v1::LeaveResponse left;
    EXPECT_TRUE(mallory.stub()->Leave(&context, leave, &left).ok());
  }
  ASSERT_EQ(coordinator->wait(300s), 0) << coordinator->log();
  EXPECT_EQ(clients->wait(60s), 0) << clients->log();
  EXPECT_EQ(tasks_per_round, (std::map<int, int>{{1, 2}, {2, 2}, {3, 2}, {4, 2}}));

  // Each stalled upload was ended by the coordinator within seconds (the idle timeout is 2 s; the
  // second of a round waited for the first's slot).
  for (auto* stalls : {&stalls_round1, &stalls_round3}) {
    for (std::future<Stall>& f : *stalls) {
      const Stall stall = f.get();
      EXPECT_FALSE(stall.status.ok());
      EXPECT_LT(stall.lasted, 20s) << stall.status.error_message();
    }
  }
  ASSERT_EQ(answers_round2.size(), 2u);
  EXPECT_FALSE(answers_round2[0].accepted());
  EXPECT_NE(answers_round2[0].reason().find("at most what client"), std::string::npos)
      << answers_round2[0].reason();
  ASSERT_EQ(answers_round4.size(), 2u);
  for (const v1::PushResultResponse& answer : answers_round4) {
    EXPECT_FALSE(answer.accepted());
    EXPECT_NE(answer.reason().find("not the expected update"), std::string::npos)
        << answer.reason();
  }
  EXPECT_NE(answers_round4[0].reason().find("!= expected"), std::string::npos)
      << answers_round4[0].reason();
  EXPECT_NE(answers_round4[1].reason().find("\"mallory.extra\": not expected"), std::string::npos)
      << answers_round4[1].reason();

  // Every round: the two honest updates, mallory's two tasks failed with the reason.
  const std::vector<nlohmann::json> lines =
      test_support::metrics_lines(state("attacked", "metrics.jsonl"));
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRounds));
  for (const nlohmann::json& line : lines) {
    SCOPED_TRACE(line.dump().substr(0, 4000));
    EXPECT_EQ(line["fit"]["selected"], 4);
    EXPECT_EQ(line["fit"]["updates"], 2);
    ASSERT_EQ(line["fit"]["failures"].size(), 2u);
    for (const nlohmann::json& failure : line["fit"]["failures"]) {
      EXPECT_EQ(failure["client_id"].get<std::string>().rfind("mallory-", 0), 0u);
      const std::string reason = failure["reason"].get<std::string>();
      EXPECT_LT(reason.size(), 1200u);  // the 1 MiB error, cut
      EXPECT_EQ(reason.find('\x1b'), std::string::npos);
      EXPECT_EQ(reason.find('\n'), std::string::npos);
    }
  }
  const auto reasons = [&](int round) {
    std::string all;
    for (const nlohmann::json& f : lines[round - 1]["fit"]["failures"]) {
      all += f["reason"].get<std::string>() + " | ";
    }
    return all;
  };
  EXPECT_NE(reasons(1).find("upload stalled"), std::string::npos) << reasons(1);
  EXPECT_NE(reasons(2).find("num_examples"), std::string::npos) << reasons(2);
  EXPECT_NE(reasons(2).find("more bytes cut"), std::string::npos) << reasons(2);
  EXPECT_NE(reasons(3).find("upload stalled"), std::string::npos) << reasons(3);
  EXPECT_NE(reasons(3).find("upload too slow"), std::string::npos) << reasons(3);
  EXPECT_NE(reasons(4).find("not the expected update"), std::string::npos) << reasons(4);

  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(state("attacked", "summary.json")));
  EXPECT_EQ(summary["refused"].value("stalled_upload", 0), 4) << summary["refused"].dump();
  EXPECT_EQ(summary["refused"].value("resource_limit", 0), 4) << summary["refused"].dump();
  EXPECT_EQ(summary["refused"].value("incompatible_update", 0), 2) << summary["refused"].dump();

  // The log holds neither the forged line nor the escape, nor the whole goodbye.
  const std::string log = coordinator->log();
  EXPECT_EQ(log.find("forged line"), std::string::npos);
  EXPECT_EQ(log.find('\x1b'), std::string::npos);
  EXPECT_EQ(log.find(std::string(1100, 'L')), std::string::npos);

  // Nothing of mallory reached the model: it is the clean run's, bit for bit.
  test_support::expect_same_final_model(dir_ + "/clean-state", dir_ + "/attacked-state");
}

TEST_F(Hardening, OffLoopbackWithoutClientAuthenticationTheCoordinatorRefusesToStart) {
  test_support::write_file(dir_ + "/run.json", run_config(2).dump(2));
  const test_support::CliRun refused = test_support::run_cli(
      test_support::binary_path("fedtail-coordinator"),
      "--config " + dir_ + "/run.json --listen 0.0.0.0:0 --insecure --state-dir " + dir_ +
          "/state --rounds 1");
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("--allow-unauthenticated-clients"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("--token-secret-file"), std::string::npos) << refused.err;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/state/port"));
}

}  // namespace
}  // namespace fedtail

// The round engine with an in-test strategy and fake in-process clients that call the engine's
// service-side API directly (no gRPC).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <future>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <thread>

#include "common/wire/bundle_codec.h"
#include "coordinator/round_engine.h"
#include "coordinator_test_strategy.h"

namespace fedtail::coordinator {
namespace {

using testing::StrategyLog;
using testing::TestStrategy;
using namespace std::chrono_literals;

// Blocks until the engine answers a poll.
PollAnswer pull_blocking(RoundEngine& engine, const SessionView& session,
                         std::chrono::milliseconds wait = 200ms) {
  auto promise = std::make_shared<std::promise<PollAnswer>>();
  std::future<PollAnswer> future = promise->get_future();
  RoundEngine::PullStart start =
      engine.pull(session, wait, [promise](PollAnswer a) { promise->set_value(std::move(a)); });
  if (start.answer) return *start.answer;
  return future.get();
}

// Pulls until a task (or SHUTDOWN) comes, for at most `limit`.
PollAnswer pull_task(RoundEngine& engine, const SessionView& session,
                     std::chrono::milliseconds limit = 5000ms) {
  const auto until = SteadyClock::now() + limit;
  for (;;) {
    PollAnswer answer = pull_blocking(engine, session);
    if (answer.kind != PollAnswer::Kind::kWait || SteadyClock::now() > until) return answer;
  }
}

TensorBundle w_bundle(std::vector<float> values) {
  TensorBundle b;
  EXPECT_TRUE(
      b.add(NamedTensor::from_values("w", DType::kFloat32, {int64_t(values.size())}, values)).ok());
  return b;
}

std::vector<float> w_of(const TensorBundle& b) {
  const NamedTensor* w = b.find("w");
  return std::vector<float>(w->data<float>(), w->data<float>() + w->numel());
}

struct PushOutcome {
  Status status;
  v1::PushResultResponse response;
};

PushOutcome push(RoundEngine& engine, const SessionView& session, const Task& task,
                 const TensorBundle& bundle, int64_t examples, nlohmann::json metrics = {},
                 bool ok = true, const std::string& error = "") {
  v1::ResultHeader header;
  header.set_session_token(session.token);
  header.set_task_id(task.id);
  header.set_client_id(task.client_id);
  header.set_ok(ok);
  header.set_error(error);
  header.set_num_examples(examples);
  header.set_metrics_json(metrics.is_null() ? "" : metrics.dump());
  RoundEngine::PushStart start = engine.begin_push(session, header);
  PushOutcome outcome;
  if (!start.status.ok()) {
    outcome.status = start.status;
    return outcome;
  }
  if (start.response) {
    outcome.response = *start.response;
    return outcome;
  }
  for (const v1::BundleChunk& chunk : encode_all(bundle, /*chunk_bytes=*/8)) {
    if (!start.upload->add(chunk).ok()) break;
  }
  outcome.response = engine.complete_push(std::move(start.upload));
  return outcome;
}

// A fake client: polls in a thread and answers fit tasks with w + delta (weight `examples`) and
// evaluate tasks with {"correct": 1, "examples": 2}, unless `answer` says to stay silent.
class FakeClient {
 public:
  FakeClient(RoundEngine* engine, SessionView session, int64_t examples,
             std::function<bool(const Task&)> answer = nullptr, float delta = 1.0f)
      : engine_(engine),
        session_(std::move(session)),
        examples_(examples),
        answer_(std::move(answer)),
        delta_(delta),
        thread_([this] { loop(); }) {}
  ~FakeClient() {
    stop_ = true;
    thread_.join();
  }
  bool shut_down() const { return shut_down_.load(); }
  int fits() const { return fits_.load(); }

 private:
  void loop() {
    while (!stop_) {
      PollAnswer a = pull_blocking(*engine_, session_, 100ms);
      if (a.kind == PollAnswer::Kind::kShutdown) {
        shut_down_ = true;
        return;
      }
      if (a.kind != PollAnswer::Kind::kTask) continue;
      if (answer_ && !answer_(*a.task)) continue;
      if (a.task->kind == TaskKind::kFit) {
        std::vector<float> w = w_of(*a.task->bundle);
        for (float& x : w) x += delta_;
        push(*engine_, session_, *a.task, w_bundle(w), examples_, {{"loss", 0.25}});
        ++fits_;
      } else {
        push(*engine_, session_, *a.task, TensorBundle(), 2, {{"correct", 1}, {"examples", 2}});
      }
    }
  }

  RoundEngine* engine_;
  SessionView session_;
  int64_t examples_;
  std::function<bool(const Task&)> answer_;
  float delta_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> shut_down_{false};
  std::atomic<int> fits_{0};
  std::thread thread_;
};

class RoundEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_config_.seed = 11;
    run_config_.eval.every = 1;
    options_.rounds = 2;
    options_.strategy_name = "test";
    options_.federation.min_available_clients = 1;
    options_.federation.round_timeout_s = 10;
    options_.federation.poll_timeout_ms = 200;
    options_.federation.client_timeout_s = 5;
    options_.federation.max_concurrent_uploads = 2;
    log_ = std::make_shared<StrategyLog>();
    strategy_ = std::make_unique<TestStrategy>(log_);
  }

  void make_engine() {
    EngineConfig config;
    config.options = options_;
    config.run_config = &run_config_;
    config.run_id = "test-run";
    config.first_round = first_round_;
    config.resumed = resumed_;
    config.on_round_end = [this](int round, const nlohmann::json& line,
                                 const strategies::ServerStrategy& strategy) {
      std::lock_guard<std::mutex> lock(lines_mu_);
      lines_.push_back(line);
      Result<TensorBundle> state = strategy.save_state();
      if (!state.ok()) return state.status();
      states_[round] = std::make_shared<TensorBundle>(std::move(state).value());
      return Status::OK();
    };
    engine_ = std::make_unique<RoundEngine>(std::move(config), strategy_.get(), &registry_);
  }

  SessionView join(const std::string& id, int64_t examples = 100) {
    Admission a = registry_.admit(id, {{id, examples, "test"}});
    EXPECT_TRUE(a.status.ok()) << a.status.to_string();
    if (engine_) engine_->clients_joined(a);
    return *registry_.authenticate(a.session_token);
  }

  std::vector<nlohmann::json> lines() {
    std::lock_guard<std::mutex> lock(lines_mu_);
    return lines_;
  }

  RunConfig run_config_;
  CoordinatorOptions options_;
  std::shared_ptr<StrategyLog> log_;
  std::unique_ptr<TestStrategy> strategy_;
  ClientRegistry registry_{std::chrono::milliseconds(5000)};
  int first_round_ = 1;
  bool resumed_ = false;
  std::unique_ptr<RoundEngine> engine_;
  std::mutex lines_mu_;
  std::vector<nlohmann::json> lines_;
  std::map<int, std::shared_ptr<TensorBundle>> states_;
};

TEST_F(RoundEngineTest, RunsEveryRoundWithCooperativeClientsAndShutsThemDown) {
  options_.federation.min_available_clients = 3;
  make_engine();
  ASSERT_TRUE(engine_->start().ok());
  std::vector<std::unique_ptr<FakeClient>> clients;
  for (int k = 0; k < 3; ++k) {
    clients.push_back(std::make_unique<FakeClient>(
        engine_.get(), join("client-" + std::to_string(k)), 10 * (k + 1)));
  }
  ASSERT_TRUE(engine_->wait().ok());
  // The initial model, as the engine initialised it (Rng "init" of the run seed).
  TestStrategy fresh(std::make_shared<StrategyLog>());
  Rng init = Rng::derive(run_config_.seed, "init");
  ASSERT_TRUE(fresh.initialize({}, init).ok());
  const std::vector<float> initial = w_of(*fresh.global_bundle());
  EXPECT_TRUE(engine_->wait_sessions_shut_down(3000ms));
  clients.clear();  // joins the threads

  // Every client trained in both rounds: each round adds exactly 1 to every weight.
  std::vector<float> final_w = w_of(*strategy_->global_bundle());
  for (int i = 0; i < testing::kWidth; ++i) EXPECT_FLOAT_EQ(final_w[i], initial[i] + 2);
  std::vector<nlohmann::json> got = lines();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0]["round"], 1);
  EXPECT_EQ(got[1]["round"], 2);
  EXPECT_EQ(got[1]["fit"]["selected"], 3);
  EXPECT_EQ(got[1]["fit"]["updates"], 3);
  EXPECT_TRUE(got[1]["fit"]["failures"].empty());
  EXPECT_EQ(got[1]["fit"]["metrics"]["examples"], 60);
  EXPECT_EQ(got[1]["evaluate"]["reports"], 3);
  EXPECT_DOUBLE_EQ(got[1]["evaluate"]["metrics"]["personalized"]["mean"].get<double>(), 0.5);
  EXPECT_EQ(got[1]["run_id"], "test-run");
  // Where the round's time went: the phases fit within the round.
  const nlohmann::json& timing = got[1]["timing"];
  for (const char* key : {"fit_s", "fit_compute_s", "fit_upload_s", "aggregate_s", "evaluate_s",
                          "evaluate_compute_s", "evaluate_upload_s"}) {
    ASSERT_TRUE(timing.contains(key) && timing[key].is_number()) << key << ": " << timing.dump();
    EXPECT_GE(timing[key].get<double>(), 0.0) << key;
  }
  EXPECT_LE(timing["fit_s"].get<double>() + timing["evaluate_s"].get<double>(),
            got[1]["seconds"].get<double>());
  EXPECT_LE(timing["aggregate_s"].get<double>(), timing["fit_s"].get<double>());
}

TEST_F(RoundEngineTest, DeadlineListsUnansweredClientsAsFailures) {
  options_.rounds = 1;
  options_.federation.min_available_clients = 3;
  options_.federation.round_timeout_s = 0.5;
  make_engine();
  strategy_->set_evaluate_clients(false);
  ASSERT_TRUE(engine_->start().ok());
  std::shared_ptr<const Task> silent_task;
  std::mutex silent_mu;
  FakeClient a(engine_.get(), join("client-0"), 10);
  FakeClient b(engine_.get(), join("client-1"), 10);
  FakeClient silent(engine_.get(), join("client-2"), 10, [&](const Task& t) {
    std::lock_guard<std::mutex> lock(silent_mu);
    silent_task = std::make_shared<Task>(t);
    return false;  // takes the task and never answers
  });
  const auto started = SteadyClock::now();
  ASSERT_TRUE(engine_->wait().ok());
  EXPECT_GE(SteadyClock::now() - started, 400ms);

  std::vector<nlohmann::json> got = lines();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0]["fit"]["updates"], 2);
  ASSERT_EQ(got[0]["fit"]["failures"].size(), 1u);
  EXPECT_EQ(got[0]["fit"]["failures"][0]["client_id"], "client-2");
  EXPECT_NE(got[0]["fit"]["failures"][0]["reason"].get<std::string>().find("deadline exceeded"),
            std::string::npos);
  // The strategy got the same failure list.
  ASSERT_EQ(log_->failures.size(), 1u);
  ASSERT_EQ(log_->failures[0].size(), 1u);
  EXPECT_EQ(log_->failures[0][0].client_id, "client-2");

  // A result after the round: refused as late, not folded.
  std::lock_guard<std::mutex> lock(silent_mu);
  ASSERT_TRUE(silent_task);
  std::optional<SessionView> session;
  for (const std::string& token : registry_.live_session_tokens()) {
    std::optional<SessionView> s = registry_.authenticate(token);
    if (s && s->serves("client-2")) session = s;
  }
  ASSERT_TRUE(session.has_value());
  PushOutcome late = push(*engine_, *session, *silent_task, w_bundle({1, 2, 3, 4}), 10);
  ASSERT_TRUE(late.status.ok());
  EXPECT_FALSE(late.response.accepted());
  EXPECT_NE(late.response.reason().find("late"), std::string::npos) << late.response.reason();
  EXPECT_EQ(log_->added.size(), 2u);
}

// The engine's service API, driven step by step from the test thread.
class RoundEngineStepTest : public RoundEngineTest {
 protected:
  void SetUp() override {
    RoundEngineTest::SetUp();
    options_.rounds = 1;
    options_.federation.min_available_clients = 2;
    options_.federation.round_timeout_s = 5;
  }
  void start_with_two() {
    make_engine();
    strategy_->set_evaluate_clients(false);
    a_ = join("client-a");
    b_ = join("client-b");
    ASSERT_TRUE(engine_->start().ok());
    PollAnswer ta = pull_task(*engine_, a_);
    PollAnswer tb = pull_task(*engine_, b_);
    ASSERT_EQ(ta.kind, PollAnswer::Kind::kTask);
    ASSERT_EQ(tb.kind, PollAnswer::Kind::kTask);
    task_a_ = ta.task;
    task_b_ = tb.task;
    EXPECT_EQ(task_a_->client_id, "client-a");
    EXPECT_EQ(task_a_->kind, TaskKind::kFit);
    EXPECT_EQ(task_a_->round, 1);
    EXPECT_EQ(nlohmann::json::parse(task_a_->config_json)["round"], 1);
  }
  SessionView a_, b_;
  std::shared_ptr<const Task> task_a_, task_b_;
};

TEST_F(RoundEngineStepTest, DuplicatePushIsAcknowledgedOnceAndFoldedOnce) {
  start_with_two();
  PushOutcome first = push(*engine_, a_, *task_a_, w_bundle({1, 1, 1, 1}), 5);
  ASSERT_TRUE(first.status.ok());
  EXPECT_TRUE(first.response.accepted());
  EXPECT_FALSE(first.response.duplicate());
  PushOutcome second = push(*engine_, a_, *task_a_, w_bundle({9, 9, 9, 9}), 5);
  ASSERT_TRUE(second.status.ok());
  EXPECT_TRUE(second.response.accepted());
  EXPECT_TRUE(second.response.duplicate());
  {
    std::lock_guard<std::mutex> lock(log_->mu);
    EXPECT_EQ(log_->added, std::vector<std::string>{"client-a"});
  }
  ASSERT_TRUE(push(*engine_, b_, *task_b_, w_bundle({3, 3, 3, 3}), 15).response.accepted());
  ASSERT_TRUE(engine_->wait().ok());
  // (5·1 + 15·3) / 20 = 2.5: the duplicate's 9s were not folded.
  for (float w : w_of(*strategy_->global_bundle())) EXPECT_FLOAT_EQ(w, 2.5f);
  // After the round, a duplicate still gets its first outcome.
  PushOutcome after = push(*engine_, a_, *task_a_, w_bundle({1, 1, 1, 1}), 5);
  EXPECT_TRUE(after.response.duplicate());
  EXPECT_TRUE(after.response.accepted());
}

TEST_F(RoundEngineStepTest, InvalidUpdatesBecomeFailuresWithReasons) {
  start_with_two();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  PushOutcome bad = push(*engine_, a_, *task_a_, w_bundle({1, nan, 1, 1}), 5);
  ASSERT_TRUE(bad.status.ok());
  EXPECT_FALSE(bad.response.accepted());
  EXPECT_NE(bad.response.reason().find("non-finite"), std::string::npos) << bad.response.reason();
  PushOutcome shape = push(*engine_, b_, *task_b_, w_bundle({1, 2}), 5);
  EXPECT_FALSE(shape.response.accepted());
  EXPECT_NE(shape.response.reason().find("shape"), std::string::npos) << shape.response.reason();
  // Both answered (badly): the round ends at once, not at the deadline.
  ASSERT_TRUE(engine_->wait().ok());
  std::vector<nlohmann::json> got = lines();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0]["fit"]["updates"], 0);
  ASSERT_EQ(got[0]["fit"]["failures"].size(), 2u);
  EXPECT_EQ(got[0]["fit"]["failures"][0]["client_id"], "client-a");
  EXPECT_NE(got[0]["fit"]["failures"][0]["reason"].get<std::string>().find("update refused"),
            std::string::npos);
  EXPECT_TRUE(log_->added.empty());
}

TEST_F(RoundEngineStepTest, RefusesOversizedCorruptAndMisaddressedResults) {
  options_.federation.max_update_bytes = 8;  // 2 floats
  start_with_two();
  PushOutcome big = push(*engine_, a_, *task_a_, w_bundle({1, 1, 1, 1}), 5);
  EXPECT_FALSE(big.response.accepted());
  EXPECT_NE(big.response.reason().find("update refused"), std::string::npos);
  // Client b pushing client a's task: an error, and a's outcome is unchanged.
  PushOutcome wrong = push(*engine_, b_, *task_a_, w_bundle({1, 1}), 5);
  EXPECT_FALSE(wrong.status.ok());
  // num_examples must be > 0 for a fit.
  PushOutcome zero = push(*engine_, b_, *task_b_, w_bundle({1, 1}), 0);
  EXPECT_FALSE(zero.response.accepted());
  EXPECT_NE(zero.response.reason().find("num_examples"), std::string::npos);
  ASSERT_TRUE(engine_->wait().ok());
  EXPECT_EQ(lines()[0]["fit"]["failures"].size(), 2u);
}

TEST_F(RoundEngineStepTest, AnUpdateMayClaimNoMoreExamplesThanItsClientDeclared) {
  start_with_two();  // each declared 100 at Join
  PushOutcome over = push(*engine_, a_, *task_a_, w_bundle({1, 1, 1, 1}), 101);
  EXPECT_FALSE(over.response.accepted());
  EXPECT_NE(over.response.reason().find("num_examples must be in [1, 100]"), std::string::npos)
      << over.response.reason();
  EXPECT_NE(over.response.reason().find("declared at Join"), std::string::npos);
  ASSERT_TRUE(push(*engine_, b_, *task_b_, w_bundle({3, 3, 3, 3}), 100).response.accepted());
  ASSERT_TRUE(engine_->wait().ok());
  EXPECT_EQ(lines()[0]["fit"]["updates"], 1);
  EXPECT_EQ(lines()[0]["refused"]["bad_header"], 1);
}

TEST_F(RoundEngineStepTest, ClientReportedFailureIsRecordedWithItsReason) {
  start_with_two();
  PushOutcome failed =
      push(*engine_, a_, *task_a_, TensorBundle(), 0, {}, /*ok=*/false, "CUDA out of memory");
  EXPECT_TRUE(failed.response.accepted());
  ASSERT_TRUE(push(*engine_, b_, *task_b_, w_bundle({3, 3, 3, 3}), 15).response.accepted());
  ASSERT_TRUE(engine_->wait().ok());
  ASSERT_EQ(lines()[0]["fit"]["failures"].size(), 1u);
  EXPECT_EQ(lines()[0]["fit"]["failures"][0]["reason"], "client error: CUDA out of memory");
}

TEST_F(RoundEngineStepTest, HeartbeatSaysCancelOnceTheTaskIsAnswered) {
  start_with_two();
  EXPECT_FALSE(engine_->heartbeat(a_, task_a_->id));
  EXPECT_TRUE(engine_->heartbeat(b_, task_a_->id));  // not b's task
  EXPECT_TRUE(engine_->heartbeat(a_, "no-such-task"));
  ASSERT_TRUE(push(*engine_, a_, *task_a_, w_bundle({1, 1, 1, 1}), 5).response.accepted());
  EXPECT_TRUE(engine_->heartbeat(a_, task_a_->id));
  ASSERT_TRUE(push(*engine_, b_, *task_b_, w_bundle({1, 1, 1, 1}), 5).response.accepted());
  ASSERT_TRUE(engine_->wait().ok());
}

TEST_F(RoundEngineStepTest, ALeavingClientFailsAtOnceNotAtTheDeadline) {
  options_.federation.round_timeout_s = 30;
  start_with_two();
  ASSERT_TRUE(push(*engine_, a_, *task_a_, w_bundle({1, 1, 1, 1}), 5).response.accepted());
  const auto started = SteadyClock::now();
  std::optional<RemovedSession> removed = registry_.leave(b_.token);
  ASSERT_TRUE(removed.has_value());
  engine_->clients_gone(*removed, "client left: bye");
  ASSERT_TRUE(engine_->wait().ok());
  EXPECT_LT(SteadyClock::now() - started, 5s);
  ASSERT_EQ(lines()[0]["fit"]["failures"].size(), 1u);
  EXPECT_EQ(lines()[0]["fit"]["failures"][0]["reason"], "client left: bye");
}

TEST_F(RoundEngineStepTest, ARejoiningClientGetsItsTaskAgain) {
  start_with_two();
  // client-b's process dies holding its task: the transport marks the session, a new process
  // joins under the same id at once and is offered the same task.
  registry_.mark_disconnected(b_.token);
  SessionView reborn = join("client-b");
  PollAnswer again = pull_task(*engine_, reborn);
  ASSERT_EQ(again.kind, PollAnswer::Kind::kTask);
  EXPECT_EQ(again.task->id, task_b_->id);
  // The old session's token is gone.
  EXPECT_FALSE(registry_.authenticate(b_.token).has_value());
  ASSERT_TRUE(push(*engine_, a_, *task_a_, w_bundle({1, 1, 1, 1}), 5).response.accepted());
  ASSERT_TRUE(push(*engine_, reborn, *again.task, w_bundle({1, 1, 1, 1}), 5).response.accepted());
  ASSERT_TRUE(engine_->wait().ok());
  EXPECT_TRUE(lines()[0]["fit"]["failures"].empty());
}

TEST_F(RoundEngineStepTest, AFailedDeliveryIsQueuedAgain) {
  start_with_two();
  engine_->delivery_failed(task_a_->id);
  PollAnswer again = pull_task(*engine_, a_);
  ASSERT_EQ(again.kind, PollAnswer::Kind::kTask);
  EXPECT_EQ(again.task->id, task_a_->id);
  ASSERT_TRUE(push(*engine_, a_, *task_a_, w_bundle({1, 1, 1, 1}), 5).response.accepted());
  ASSERT_TRUE(push(*engine_, b_, *task_b_, w_bundle({1, 1, 1, 1}), 5).response.accepted());
  ASSERT_TRUE(engine_->wait().ok());
}

TEST_F(RoundEngineTest, TooFewClientsWaitsWithoutSpinning) {
  options_.federation.min_available_clients = 2;
  options_.rounds = 1;
  make_engine();
  strategy_->set_evaluate_clients(false);
  SessionView first = join("client-0");
  ASSERT_TRUE(engine_->start().ok());
  std::this_thread::sleep_for(400ms);
  // Asleep on its condition variable: at most a wake-up or two (log timer, join), no round.
  EXPECT_LE(engine_->TEST_wakeups(), 3u);
  EXPECT_TRUE(log_->selected.empty());
  EXPECT_EQ(pull_blocking(*engine_, first, 50ms).kind, PollAnswer::Kind::kWait);
  FakeClient a(engine_.get(), first, 10);
  FakeClient b(engine_.get(), join("client-1"), 10);
  ASSERT_TRUE(engine_->wait().ok());
  ASSERT_EQ(log_->selected.size(), 1u);
  EXPECT_EQ(log_->selected[0], (std::vector<std::string>{"client-0", "client-1"}));
}

TEST_F(RoundEngineTest, StrategyWantingMoreClientsWaitsForThem) {
  options_.federation.min_available_clients = 1;
  options_.rounds = 1;
  strategy_ = std::make_unique<TestStrategy>(log_, 1.0, /*min_clients=*/2);
  make_engine();
  strategy_->set_evaluate_clients(false);
  FakeClient a(engine_.get(), join("client-0"), 10);
  ASSERT_TRUE(engine_->start().ok());
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(lines().empty());
  FakeClient b(engine_.get(), join("client-1"), 10);
  ASSERT_TRUE(engine_->wait().ok());
  EXPECT_EQ(lines()[0]["fit"]["updates"], 2);
}

TEST_F(RoundEngineTest, StopEndsTheRunWithoutShutdown) {
  options_.federation.min_available_clients = 5;
  make_engine();
  SessionView s = join("client-0");
  ASSERT_TRUE(engine_->start().ok());
  std::this_thread::sleep_for(100ms);
  engine_->request_stop();
  Status status = engine_->wait();
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_TRUE(engine_->done());
  EXPECT_TRUE(lines().empty());
  // Clients are not told to shut down: a resumed coordinator will want them.
  EXPECT_EQ(pull_blocking(*engine_, s, 50ms).kind, PollAnswer::Kind::kWait);
}

// Runs `rounds` rounds of the test strategy (fraction 0.5 of 4 clients: selection uses the
// engine's Rng) from `first_round`; returns the final global weights.
class ResumeTest : public RoundEngineTest {
 protected:
  std::vector<float> run(int first_round, std::shared_ptr<TensorBundle> state) {
    log_ = std::make_shared<StrategyLog>();
    strategy_ = std::make_unique<TestStrategy>(log_, /*fraction=*/0.5);
    if (state) {
      EXPECT_TRUE(strategy_->load_state(state->clone()).ok());
      resumed_ = true;
    }
    first_round_ = first_round;
    options_.rounds = 3;
    options_.federation.min_available_clients = 4;
    make_engine();
    std::vector<std::unique_ptr<FakeClient>> clients;
    for (int k = 0; k < 4; ++k) {
      // Distinct updates and weights: the result depends on which clients were selected.
      clients.push_back(std::make_unique<FakeClient>(
          engine_.get(), join("client-" + std::to_string(k)), 7 + 3 * k, nullptr,
          /*delta=*/0.1f * static_cast<float>(k + 1)));
    }
    EXPECT_TRUE(engine_->start().ok());
    EXPECT_TRUE(engine_->wait().ok());
    clients.clear();
    for (const std::string& token : registry_.live_session_tokens()) (void)registry_.leave(token);
    return w_of(*strategy_->global_bundle());
  }
};

TEST_F(ResumeTest, ResumingFromACheckpointContinuesBitExactly) {
  // Uninterrupted: rounds 1..3.
  std::vector<float> straight = run(1, nullptr);
  std::vector<std::vector<std::string>> straight_selected = log_->selected;
  std::shared_ptr<TensorBundle> after_round2 = states_.at(2);
  std::vector<nlohmann::json> straight_lines = lines();
  ASSERT_EQ(straight_lines.size(), 3u);
  // Resumed: round 3 only, from round 2's saved state (no initialize: a fresh strategy object).
  lines_.clear();
  std::vector<float> resumed = run(3, after_round2);
  ASSERT_EQ(resumed.size(), straight.size());
  for (size_t i = 0; i < straight.size(); ++i) {
    EXPECT_EQ(std::memcmp(&resumed[i], &straight[i], sizeof(float)), 0) << i;
  }
  ASSERT_EQ(log_->selected.size(), 1u);
  EXPECT_EQ(log_->selected[0], straight_selected[2]);
  EXPECT_EQ(lines()[0]["fit"], straight_lines[2]["fit"]);
}

TEST(UploadGate, BoundsConcurrentSlotsAndHandsThemOverInOrder) {
  UploadGate gate(2);
  uint64_t ticket = 0;
  EXPECT_TRUE(gate.acquire(
      "s1", [] {}, &ticket));
  EXPECT_TRUE(gate.acquire(
      "s2", [] {}, &ticket));
  std::vector<int> order;
  uint64_t t3 = 0, t4 = 0, t5 = 0;
  EXPECT_FALSE(gate.acquire(
      "s3", [&] { order.push_back(3); }, &t3));
  EXPECT_FALSE(gate.acquire(
      "s4", [&] { order.push_back(4); }, &t4));
  EXPECT_FALSE(gate.acquire(
      "s5", [&] { order.push_back(5); }, &t5));
  EXPECT_EQ(gate.in_use(), 2);
  EXPECT_EQ(gate.queued(), 3);
  EXPECT_TRUE(gate.cancel(t4));
  EXPECT_FALSE(gate.cancel(t4));
  gate.release("s1");
  gate.release("s2");
  EXPECT_EQ(order, (std::vector<int>{3, 5}));
  EXPECT_EQ(gate.in_use(), 2);  // handed over, never above the bound
  gate.release("s3");
  gate.release("s5");
  EXPECT_EQ(gate.in_use(), 0);
  EXPECT_FALSE(gate.cancel(t3));
}

TEST(UploadGate, OneOwnerHoldsAtMostOneSlot) {
  UploadGate gate(3);
  uint64_t ticket = 0;
  std::vector<std::string> order;
  EXPECT_TRUE(gate.acquire(
      "mallory", [] {}, &ticket));
  // Mallory's second and third uploads wait although two slots are free ...
  EXPECT_FALSE(gate.acquire(
      "mallory", [&] { order.push_back("mallory-2"); }, &ticket));
  EXPECT_FALSE(gate.acquire(
      "mallory", [&] { order.push_back("mallory-3"); }, &ticket));
  EXPECT_EQ(gate.in_use(), 1);
  // ... and do not hold up anybody else.
  EXPECT_TRUE(gate.acquire(
      "alice", [] {}, &ticket));
  EXPECT_TRUE(gate.acquire(
      "bob", [] {}, &ticket));
  EXPECT_FALSE(gate.acquire(
      "carol", [&] { order.push_back("carol"); }, &ticket));
  // Alice's slot goes to carol, the oldest waiter that may run; mallory's to its next upload.
  gate.release("alice");
  EXPECT_EQ(order, (std::vector<std::string>{"carol"}));
  gate.release("mallory");
  EXPECT_EQ(order, (std::vector<std::string>{"carol", "mallory-2"}));
  gate.release("bob");  // mallory-3 still waits for mallory's slot: bob's slot is freed
  EXPECT_EQ(gate.in_use(), 2);
  EXPECT_EQ(gate.queued(), 1);
  gate.release("mallory");
  EXPECT_EQ(order, (std::vector<std::string>{"carol", "mallory-2", "mallory-3"}));
  EXPECT_EQ(gate.in_use(), 2);
}

TEST(PollWaiters, TimesOutWithWaitAndHandsTasksToTheRightSession) {
  PollWaiters waiters;
  std::promise<PollAnswer> timed_out;
  waiters.park("s1", {"a"}, SteadyClock::now() + 50ms,
               [&](PollAnswer answer) { timed_out.set_value(std::move(answer)); });
  uint64_t second = waiters.park("s2", {"b", "c"}, SteadyClock::now() + 10s, [](PollAnswer) {});
  auto future = timed_out.get_future();
  ASSERT_EQ(future.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(future.get().kind, PollAnswer::Kind::kWait);
  EXPECT_FALSE(waiters.take_for_session("s1").has_value());
  std::optional<PollWaiters::Waiter> taken = waiters.take_for_session("s2");
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->session_token, "s2");
  EXPECT_EQ(taken->id, second);
  EXPECT_FALSE(waiters.cancel(second));
  EXPECT_EQ(waiters.size(), 0u);
}

TEST(UploadWatch, StopsIdleSlowAndClosedUploadsOnceAndNeverAfterRemove) {
  UploadWatch::Limits limits;
  limits.idle = 200ms;
  limits.min_bytes_per_s = 1000;
  limits.period = 1h;  // sweeps by hand only
  std::set<std::string> closed;
  UploadWatch watch(limits, [&](const std::string& task) { return closed.count(task) > 0; });
  std::map<std::string, std::vector<UploadWatch::Reason>> stops;
  auto stopper = [&](const std::string& name) {
    return [&stops, name](UploadWatch::Reason reason, const std::string& message) {
      EXPECT_FALSE(message.empty());
      stops[name].push_back(reason);
    };
  };
  std::shared_ptr<UploadWatch::Entry> idle = watch.add("t-idle", stopper("idle"));
  std::shared_ptr<UploadWatch::Entry> slow = watch.add("t-slow", stopper("slow"));
  std::shared_ptr<UploadWatch::Entry> fast = watch.add("t-fast", stopper("fast"));
  std::shared_ptr<UploadWatch::Entry> queued = watch.add("t-queued", stopper("queued"));
  std::shared_ptr<UploadWatch::Entry> gone = watch.add("t-gone", stopper("gone"));
  idle->reading();
  slow->reading();
  fast->reading();
  EXPECT_EQ(watch.sweep(UploadWatch::Clock::now()), 0);
  std::this_thread::sleep_for(250ms);
  slow->progress(10);       // 10 bytes in 250 ms: far below 1000 bytes/s
  fast->progress(1 << 20);  // 1 MiB
  watch.remove(gone);
  closed.insert("t-gone");
  // "idle" sent nothing for longer than 200 ms; "slow" has run 250 ms below the floor; "fast" is
  // fine; "queued" waits for a slot (no idle clock); "gone" was removed.
  EXPECT_EQ(watch.sweep(UploadWatch::Clock::now()), 2);
  EXPECT_EQ(stops["idle"], std::vector<UploadWatch::Reason>{UploadWatch::Reason::kIdle});
  EXPECT_EQ(stops["slow"], std::vector<UploadWatch::Reason>{UploadWatch::Reason::kTooSlow});
  EXPECT_EQ(stops.count("fast") + stops.count("queued") + stops.count("gone"), 0u);
  // The phase of "queued" closes: it is stopped although it never read. Each at most once.
  closed.insert("t-queued");
  EXPECT_EQ(watch.sweep(UploadWatch::Clock::now()), 1);
  EXPECT_EQ(stops["queued"], std::vector<UploadWatch::Reason>{UploadWatch::Reason::kPhaseClosed});
  EXPECT_EQ(watch.sweep(UploadWatch::Clock::now() + 1s), 1);  // "fast" went quiet since
  EXPECT_EQ(stops["fast"].size(), 1u);
  EXPECT_EQ(watch.sweep(UploadWatch::Clock::now() + 10s), 0);
  for (auto* e : {&idle, &slow, &fast, &queued}) watch.remove(*e);
  EXPECT_EQ(watch.size(), 0u);
}

TEST(PollWaiters, OneSessionParksAtMostItsShare) {
  PollWaiters waiters(/*max_per_session=*/2);
  const auto later = SteadyClock::now() + 10s;
  EXPECT_NE(waiters.park("flood", {"a"}, later, [](PollAnswer) {}), 0u);
  const uint64_t second = waiters.park("flood", {"a"}, later, [](PollAnswer) {});
  EXPECT_NE(second, 0u);
  bool called = false;
  EXPECT_EQ(waiters.park("flood", {"a"}, later, [&](PollAnswer) { called = true; }), 0u);
  EXPECT_NE(waiters.park("honest", {"b"}, later, [](PollAnswer) {}), 0u);
  EXPECT_EQ(waiters.size(), 3u);
  // A cancelled poll frees its place.
  EXPECT_TRUE(waiters.cancel(second));
  EXPECT_NE(waiters.park("flood", {"a"}, later, [](PollAnswer) {}), 0u);
  EXPECT_FALSE(called);
  // The earliest-parked poll of a session is taken first.
  std::optional<PollWaiters::Waiter> taken = waiters.take_for_session("flood");
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->id, 1u);
  for (PollWaiters::Waiter& w : waiters.take_all())
    w.done(PollAnswer{PollAnswer::Kind::kWait, nullptr});
  taken->done(PollAnswer{PollAnswer::Kind::kWait, nullptr});
}

TEST(PollWaiters, DestructionAnswersShutdown) {
  std::atomic<int> shutdowns{0};
  {
    PollWaiters waiters;
    waiters.park("s", {"a"}, SteadyClock::now() + 10s, [&](PollAnswer a) {
      if (a.kind == PollAnswer::Kind::kShutdown) ++shutdowns;
    });
  }
  EXPECT_EQ(shutdowns.load(), 1);
}

}  // namespace
}  // namespace fedtail::coordinator

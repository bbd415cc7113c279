// RefusalCounters and the "refused" objects of metrics lines and summary.json.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "coordinator/refusals.h"
#include "coordinator/summary.h"

namespace fedtail::coordinator {
namespace {

TEST(RefusalsTest, SnapshotListsEveryKindAndTheTotal) {
  RefusalCounters counters;
  nlohmann::json zero = counters.snapshot();
  EXPECT_EQ(zero.size(), kRefusalKinds.size() + 1);
  for (const char* kind : kRefusalKinds) EXPECT_EQ(zero[kind], 0u) << kind;
  EXPECT_EQ(zero["total"], 0u);

  counters.add(Refusal::kDigestMismatch);
  counters.add(Refusal::kDigestMismatch);
  counters.add(Refusal::kUnknownSession);
  nlohmann::json two = counters.snapshot();
  EXPECT_EQ(two["digest_mismatch"], 2u);
  EXPECT_EQ(two["unknown_session"], 1u);
  EXPECT_EQ(two["total"], 3u);
  EXPECT_EQ(counters.count(Refusal::kDigestMismatch), 2u);
  EXPECT_EQ(describe_refusals(two), "unknown_session 1, digest_mismatch 2");
  EXPECT_EQ(describe_refusals(zero), "none");
}

TEST(RefusalsTest, DeltaIsWhatHappenedBetweenTwoSnapshots) {
  RefusalCounters counters;
  counters.add(Refusal::kLate);
  nlohmann::json first = counters.snapshot();
  counters.add(Refusal::kLate);
  counters.add(Refusal::kNonFinite);
  nlohmann::json delta = refusal_delta(counters.snapshot(), first);
  EXPECT_EQ(delta["late"], 1u);
  EXPECT_EQ(delta["non_finite"], 1u);
  EXPECT_EQ(delta["total"], 2u);
  // Against nothing (the first line of a process): everything so far.
  EXPECT_EQ(refusal_delta(counters.snapshot(), nullptr)["total"], 3u);
}

TEST(RefusalsTest, CountsFromManyThreadsAreExact) {
  RefusalCounters counters;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&counters] {
      for (int i = 0; i < 10000; ++i) counters.add(Refusal::kDuplicate);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(counters.snapshot()["duplicate"], 40000u);
}

TEST(RefusalsTest, BundleErrorsAreClassifiedByWhatWentWrong) {
  EXPECT_EQ(classify_bundle_error(Status::ResourceExhausted("payload of 9 GB over the limit")),
            Refusal::kOversized);
  EXPECT_EQ(classify_bundle_error(Status::Corruption("payload digest mismatch: computed x")),
            Refusal::kDigestMismatch);
  EXPECT_EQ(classify_bundle_error(Status::Corruption("tensor \"w\": non-finite value nan")),
            Refusal::kNonFinite);
  EXPECT_EQ(classify_bundle_error(Status::Corruption("truncated: 3 of 4 data chunks")),
            Refusal::kCorruptBundle);
}

TEST(RefusalsTest, SummarySumsTheLinesRefusals) {
  RefusalCounters counters;
  counters.add(Refusal::kJoinToken);
  nlohmann::json line1 = {{"round", 1}, {"refused", refusal_delta(counters.snapshot(), nullptr)}};
  nlohmann::json after1 = counters.snapshot();
  counters.add(Refusal::kJoinToken);
  counters.add(Refusal::kOversized);
  nlohmann::json line2 = {{"round", 2}, {"refused", refusal_delta(counters.snapshot(), after1)}};
  nlohmann::json old_line = {{"round", 3}};  // written before "refused" existed

  SummaryInput input;
  input.rounds_planned = 3;
  input.rounds_completed = 3;
  nlohmann::json summary = make_summary(input, {line1, line2, old_line});
  EXPECT_EQ(summary["refused"]["join_token"], 2u);
  EXPECT_EQ(summary["refused"]["oversized"], 1u);
  EXPECT_EQ(summary["refused"]["total"], 3u);
  EXPECT_EQ(summary["refused"]["late"], 0u);
  EXPECT_EQ(make_summary(input, {})["refused"]["total"], 0u);
}

}  // namespace
}  // namespace fedtail::coordinator

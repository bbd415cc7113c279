#include <gtest/gtest.h>

#include <set>

#include "coordinator/client_registry.h"

namespace fedtail::coordinator {
namespace {

// A clock the test moves by hand.
struct FakeClock {
  SteadyClock::time_point now = SteadyClock::time_point() + std::chrono::hours(1);
  ClockFn fn() {
    return [this] { return now; };
  }
  void advance(std::chrono::milliseconds d) { now += d; }
};

ClientRecord client(const std::string& id, int64_t examples = 10) { return {id, examples, "cnn"}; }

class ClientRegistryTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  ClientRegistry registry_{std::chrono::milliseconds(1000), clock_.fn()};
};

TEST_F(ClientRegistryTest, AdmitsAndAuthenticatesWithARandomToken) {
  Admission a = registry_.admit("client-1", {client("client-1", 7)});
  ASSERT_TRUE(a.status.ok()) << a.status.to_string();
  EXPECT_EQ(a.session_token.size(), 64u);
  Admission b = registry_.admit("client-2", {client("client-2")});
  ASSERT_TRUE(b.status.ok());
  EXPECT_NE(a.session_token, b.session_token);

  std::optional<SessionView> view = registry_.authenticate(a.session_token);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->client_ids, std::vector<std::string>{"client-1"});
  EXPECT_TRUE(view->serves("client-1"));
  EXPECT_FALSE(view->serves("client-2"));
  EXPECT_FALSE(registry_.authenticate("not-a-token").has_value());

  std::vector<strategies::ClientInfo> available = registry_.available_clients();
  ASSERT_EQ(available.size(), 2u);
  EXPECT_EQ(available[0].id, "client-1");
  EXPECT_EQ(available[0].num_examples, 7);
  EXPECT_EQ(available[0].model_family, "cnn");
  EXPECT_EQ(available[1].id, "client-2");
}

TEST_F(ClientRegistryTest, RefusesAClientIdOfALiveSession) {
  ASSERT_TRUE(registry_.admit("client-1", {client("client-1")}).status.ok());
  clock_.advance(std::chrono::milliseconds(500));
  Admission again = registry_.admit("client-1", {client("client-1")});
  EXPECT_FALSE(again.status.ok());
  EXPECT_TRUE(again.already_connected);
  EXPECT_NE(again.status.message().find("client-1"), std::string::npos);
  EXPECT_NE(again.status.message().find("already connected"), std::string::npos);
  EXPECT_EQ(registry_.session_count(), 1);
}

TEST_F(ClientRegistryTest, ASilentSessionIsTakenOverAtOnce) {
  Admission old = registry_.admit("client-1", {client("client-1")});
  clock_.advance(std::chrono::milliseconds(1500));  // past the 1 s timeout, not yet expired
  Admission fresh = registry_.admit("client-1", {client("client-1")});
  ASSERT_TRUE(fresh.status.ok()) << fresh.status.to_string();
  EXPECT_EQ(fresh.taken_over, std::vector<std::string>{"client-1"});
  // The old token is dead; the new one works.
  EXPECT_FALSE(registry_.authenticate(old.session_token).has_value());
  EXPECT_TRUE(registry_.authenticate(fresh.session_token).has_value());
  EXPECT_EQ(registry_.session_count(), 1);
}

TEST_F(ClientRegistryTest, ADisconnectedSessionIsTakenOverWithoutWaiting) {
  Admission old = registry_.admit("client-1", {client("client-1")});
  registry_.mark_disconnected(old.session_token);
  EXPECT_EQ(registry_.available_count(), 0);  // not offered to strategies meanwhile
  Admission fresh = registry_.admit("client-1", {client("client-1")});
  ASSERT_TRUE(fresh.status.ok()) << fresh.status.to_string();
  EXPECT_EQ(fresh.taken_over.size(), 1u);
  EXPECT_EQ(registry_.available_count(), 1);
}

TEST_F(ClientRegistryTest, CallingAgainClearsTheDisconnectedMark) {
  Admission a = registry_.admit("client-1", {client("client-1")});
  registry_.mark_disconnected(a.session_token);
  EXPECT_TRUE(registry_.touch(a.session_token));
  EXPECT_EQ(registry_.available_count(), 1);
  EXPECT_TRUE(registry_.admit("client-1", {client("client-1")}).already_connected);
}

TEST_F(ClientRegistryTest, VirtualClientsMoveIndividuallyOnTakeover) {
  Admission worker = registry_.admit("worker-0", {client("client-0"), client("client-1")});
  ASSERT_TRUE(worker.status.ok());
  registry_.mark_disconnected(worker.session_token);
  // A restarted worker announcing one of them takes that one over; the other stays put.
  Admission fresh = registry_.admit("client-1", {client("client-1")});
  ASSERT_TRUE(fresh.status.ok());
  std::optional<SessionView> old = registry_.authenticate(worker.session_token);
  ASSERT_TRUE(old.has_value());
  EXPECT_EQ(old->client_ids, std::vector<std::string>{"client-0"});
}

TEST_F(ClientRegistryTest, RejectsEmptyAndRepeatedIds) {
  EXPECT_EQ(registry_.admit("w", {}).status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_.admit("w", {client("")}).status.code(), StatusCode::kInvalidArgument);
  Admission repeated = registry_.admit("w", {client("a"), client("a")});
  EXPECT_EQ(repeated.status.code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(repeated.already_connected);
  EXPECT_EQ(registry_.session_count(), 0);
}

TEST_F(ClientRegistryTest, ExpiresSilentSessionsAndKeepsActiveOnes) {
  Admission quiet = registry_.admit("quiet", {client("client-1")});
  Admission busy = registry_.admit("busy", {client("client-2")});
  clock_.advance(std::chrono::milliseconds(600));
  EXPECT_TRUE(registry_.touch(busy.session_token));
  clock_.advance(std::chrono::milliseconds(600));
  ASSERT_TRUE(registry_.next_expiry().has_value());
  std::vector<RemovedSession> removed = registry_.expire();
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0].name, "quiet");
  EXPECT_EQ(removed[0].client_ids, std::vector<std::string>{"client-1"});
  EXPECT_EQ(registry_.session_count(), 1);
  EXPECT_TRUE(registry_.expire().empty());
  // The freed id can join again.
  EXPECT_TRUE(registry_.admit("quiet", {client("client-1")}).status.ok());
}

TEST_F(ClientRegistryTest, NextExpiryFollowsTheOldestContact) {
  EXPECT_FALSE(registry_.next_expiry().has_value());
  const SteadyClock::time_point start = clock_.now;
  registry_.admit("a", {client("a")});
  clock_.advance(std::chrono::milliseconds(300));
  registry_.admit("b", {client("b")});
  ASSERT_TRUE(registry_.next_expiry().has_value());
  EXPECT_GT(*registry_.next_expiry(), start + std::chrono::milliseconds(1000));
  EXPECT_LT(*registry_.next_expiry(), start + std::chrono::milliseconds(1100));
}

TEST_F(ClientRegistryTest, ExampleCountsAreDeclaredOnceAndCapJoins) {
  Admission a = registry_.admit("worker", {client("a", 0), client("b", 0)});
  ASSERT_TRUE(a.status.ok());
  EXPECT_EQ(registry_.authenticate(a.session_token)->declared_examples("a"), 0);
  ASSERT_TRUE(registry_.declare(a.session_token, {client("a", 40), client("b", 60)}, 1000).ok());
  std::optional<SessionView> view = registry_.authenticate(a.session_token);
  EXPECT_EQ(view->declared_examples("a"), 40);
  EXPECT_EQ(view->declared_examples("b"), 60);
  EXPECT_EQ(view->declared_examples("c"), 0);
  // The same count again is fine; another is refused, and so is a client of another session or a
  // count over the cap. Nothing changes on error.
  EXPECT_TRUE(registry_.declare(a.session_token, {client("a", 40)}, 1000).ok());
  Status changed = registry_.declare(a.session_token, {client("b", 60), client("a", 4000)}, 10000);
  EXPECT_NE(changed.message().find("final"), std::string::npos) << changed.to_string();
  EXPECT_FALSE(registry_.declare(a.session_token, {client("z", 1)}, 1000).ok());
  Admission c = registry_.admit("c", {client("c", 0)});
  EXPECT_FALSE(registry_.declare(c.session_token, {client("c", 1001)}, 1000).ok());
  EXPECT_EQ(registry_.declare("no-such-token", {}, 1000).code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_.authenticate(a.session_token)->declared_examples("a"), 40);

  // max_clients counts every registered client; a takeover does not add any.
  EXPECT_EQ(registry_.client_count(), 3);
  Admission full = registry_.admit("d", {client("d"), client("e")}, /*max_clients=*/4);
  EXPECT_EQ(full.status.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(full.status.message().find("max_clients"), std::string::npos);
  EXPECT_TRUE(registry_.admit("d", {client("d")}, /*max_clients=*/4).status.ok());
}

TEST_F(ClientRegistryTest, LeaveRemovesTheSessionAndFreesItsIds) {
  Admission a = registry_.admit("w", {client("x"), client("y")});
  std::optional<RemovedSession> removed = registry_.leave(a.session_token);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->client_ids, (std::vector<std::string>{"x", "y"}));
  EXPECT_FALSE(registry_.leave(a.session_token).has_value());
  EXPECT_FALSE(registry_.authenticate(a.session_token).has_value());
  EXPECT_TRUE(registry_.admit("x", {client("x")}).status.ok());
}

TEST(RandomToken, IsHexOfTheRequestedLengthAndDiffers) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    std::string token = random_token(16);
    EXPECT_EQ(token.size(), 32u);
    EXPECT_EQ(token.find_first_not_of("0123456789abcdef"), std::string::npos);
    seen.insert(token);
  }
  EXPECT_EQ(seen.size(), 100u);
}

}  // namespace
}  // namespace fedtail::coordinator

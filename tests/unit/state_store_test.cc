#include "client/state_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

namespace fedtail::client {
namespace {

constexpr int kFit = 2;
constexpr int kEvaluate = 3;

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(FEDTAIL_TEST_TMP) + "/state_store_test/" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

strategies::ClientState make_state(float head_value, int step) {
  strategies::ClientState state;
  EXPECT_TRUE(state.tensors
                  .add(NamedTensor::from_values<float>("heads.local.weight", DType::kFloat32,
                                                       {2, 2}, {head_value, 2, 3, 4}))
                  .ok());
  EXPECT_TRUE(
      state.tensors.add(NamedTensor::from_values<int64_t>("counts", DType::kInt64, {3}, {1, 2, 3}))
          .ok());
  state.values = {{"step", step}, {"gap", {0.5, 0.25}}};
  return state;
}

float head(const strategies::ClientState& state) {
  const NamedTensor* t = state.tensors.find("heads.local.weight");
  return t ? t->data<float>()[0] : -1.0f;
}

TEST(StateStoreTest, FileRoundTripKeepsEverything) {
  const std::string dir = fresh_dir("round_trip");
  std::filesystem::create_directories(dir);
  StateRecord record;
  record.run_id = "run-1";
  record.client_id = "client-3";
  record.round = 7;
  record.kind = kFit;
  record.current = make_state(1.5f, 7);
  record.previous = make_state(0.5f, 6);
  const std::string path = dir + "/client-3.state";
  ASSERT_TRUE(write_state_file(path, record).ok());

  Result<StateRecord> read = read_state_file(path);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(read->run_id, "run-1");
  EXPECT_EQ(read->client_id, "client-3");
  EXPECT_EQ(read->round, 7);
  EXPECT_EQ(read->kind, kFit);
  EXPECT_TRUE(read->current.tensors.bitwise_equal(record.current.tensors));
  EXPECT_TRUE(read->previous.tensors.bitwise_equal(record.previous.tensors));
  EXPECT_EQ(read->current.values, record.current.values);
  EXPECT_EQ(read->previous.values, record.previous.values);
  EXPECT_EQ(read->current.tensors.names(),
            (std::vector<std::string>{"heads.local.weight", "counts"}));
}

TEST(StateStoreTest, StateSurvivesARestart) {
  const std::string dir = fresh_dir("restart");
  {
    StateStore store(dir);
    Result<strategies::ClientState> first = store.load("client-3", "run-1", 1, kFit);
    ASSERT_TRUE(first.ok());
    EXPECT_TRUE(state_is_empty(*first));
    ASSERT_TRUE(store.save("client-3", "run-1", 1, kFit, *first, make_state(1.0f, 1)).ok());
    ASSERT_TRUE(
        store.save("client-3", "run-1", 2, kFit, make_state(1.0f, 1), make_state(2.0f, 2)).ok());
  }
  EXPECT_TRUE(std::filesystem::exists(dir + "/client-3.state"));
  struct stat st {};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  StateStore restarted(dir);  // a new process on the same directory
  Result<strategies::ClientState> next = restarted.load("client-3", "run-1", 3, kFit);
  ASSERT_TRUE(next.ok()) << next.status().to_string();
  EXPECT_FLOAT_EQ(head(*next), 2.0f);
  EXPECT_EQ(next->values["step"], 2);
  // Another client of the same directory has no state yet.
  Result<strategies::ClientState> other = restarted.load("client-4", "run-1", 3, kFit);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(state_is_empty(*other));
}

TEST(StateStoreTest, RepeatedTaskStartsFromTheStateBeforeIt) {
  const std::string dir = fresh_dir("repeat");
  StateStore store(dir);
  ASSERT_TRUE(
      store.save("client-1", "run-1", 4, kFit, make_state(3.0f, 3), make_state(4.0f, 4)).ok());
  // The coordinator resumed and re-runs round 4's fit: start from the state before it.
  Result<strategies::ClientState> again = store.load("client-1", "run-1", 4, kFit);
  ASSERT_TRUE(again.ok());
  EXPECT_FLOAT_EQ(head(*again), 3.0f);
  // Round 4's evaluation, and round 5, start from the state after it.
  EXPECT_FLOAT_EQ(head(*store.load("client-1", "run-1", 4, kEvaluate)), 4.0f);
  EXPECT_FLOAT_EQ(head(*store.load("client-1", "run-1", 5, kFit)), 4.0f);
}

TEST(StateStoreTest, StateOfAnotherRunIsIgnored) {
  const std::string dir = fresh_dir("other_run");
  StateStore store(dir);
  ASSERT_TRUE(
      store.save("client-1", "run-old", 9, kFit, make_state(8.0f, 8), make_state(9.0f, 9)).ok());
  Result<strategies::ClientState> loaded = store.load("client-1", "run-new", 1, kFit);
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(state_is_empty(*loaded));
}

TEST(StateStoreTest, EmptyStatesWriteNoFile) {
  const std::string dir = fresh_dir("empty");
  StateStore store(dir);
  Result<strategies::ClientState> loaded = store.load("client-0", "run-1", 1, kFit);
  ASSERT_TRUE(loaded.ok());
  ASSERT_TRUE(store.save("client-0", "run-1", 1, kFit, *loaded, strategies::ClientState{}).ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/client-0.state"));
  // Once there is something to keep, it is written.
  ASSERT_TRUE(
      store.save("client-0", "run-1", 2, kFit, strategies::ClientState{}, make_state(1, 1)).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/client-0.state"));
}

TEST(StateStoreTest, CorruptFileGivesAClearErrorAndCanBeMovedAside) {
  const std::string dir = fresh_dir("corrupt");
  StateStore store(dir);
  ASSERT_TRUE(store.save("client-2", "run-1", 1, kFit, make_state(0, 0), make_state(1, 1)).ok());
  const std::string path = dir + "/client-2.state";
  {
    // Flip a byte in the middle of the file (inside the payload).
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    f.seekp(size - 20);
    char c = 0;
    f.seekg(size - 20);
    f.get(c);
    f.seekp(size - 20);
    f.put(static_cast<char>(c ^ 0x5A));
  }
  StateStore restarted(dir);
  Result<strategies::ClientState> loaded = restarted.load("client-2", "run-1", 2, kFit);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kCorruption);
  EXPECT_NE(loaded.status().message().find(path), std::string::npos) << loaded.status().message();

  Result<std::string> aside = restarted.quarantine("client-2");
  ASSERT_TRUE(aside.ok()) << aside.status().to_string();
  EXPECT_EQ(*aside, path + ".corrupt");
  EXPECT_TRUE(std::filesystem::exists(*aside));
  Result<strategies::ClientState> after = restarted.load("client-2", "run-1", 2, kFit);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(state_is_empty(*after));
}

TEST(StateStoreTest, NotAStateFileIsCorruption) {
  const std::string dir = fresh_dir("garbage");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/client-9.state") << "this is not a bundle file";
  StateStore store(dir);
  Result<strategies::ClientState> loaded = store.load("client-9", "run-1", 1, kFit);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kCorruption);
  EXPECT_NE(loaded.status().message().find("client-9.state"), std::string::npos);
}

TEST(StateStoreTest, FileOfAnotherClientIsRefused) {
  const std::string dir = fresh_dir("swapped");
  StateStore store(dir);
  ASSERT_TRUE(store.save("client-1", "run-1", 1, kFit, make_state(0, 0), make_state(1, 1)).ok());
  std::filesystem::rename(dir + "/client-1.state", dir + "/client-5.state");
  Result<strategies::ClientState> loaded = store.load("client-5", "run-1", 2, kFit);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("holds the state of client \"client-1\""),
            std::string::npos);
}

TEST(StateStoreTest, InMemoryModeKeepsStateWithoutFiles) {
  StateStore store("");
  EXPECT_TRUE(store.in_memory());
  ASSERT_TRUE(store.save("client-1", "run-1", 1, kFit, make_state(0, 0), make_state(1, 1)).ok());
  EXPECT_FLOAT_EQ(head(*store.load("client-1", "run-1", 2, kFit)), 1.0f);
  EXPECT_FLOAT_EQ(head(*store.load("client-1", "run-1", 1, kFit)), 0.0f);
}

}  // namespace
}  // namespace fedtail::client

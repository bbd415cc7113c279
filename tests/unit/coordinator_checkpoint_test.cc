#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "common/base/temp_file.h"
#include "common/wire/bundle_file.h"
#include "coordinator/checkpoint.h"
#include "coordinator/summary.h"

namespace fedtail::coordinator {
namespace {

std::string scratch_dir(const std::string& name) {
  std::filesystem::path dir = std::filesystem::path(FEDTAIL_TEST_TMP) / "checkpoint_test" / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

TensorBundle state_bundle() {
  TensorBundle b;
  EXPECT_TRUE(b.add(NamedTensor::from_values("w", DType::kFloat32, {3},
                                             std::vector<float>{1.5f, -2.0f, 0.25f}))
                  .ok());
  EXPECT_TRUE(
      b.add(NamedTensor::from_values("n", DType::kInt64, {}, std::vector<int64_t>{42})).ok());
  b.mutable_metadata()["strategy"] = "fedavg";
  b.mutable_metadata()["format"] = 1;
  return b;
}

CheckpointInfo info(int round) {
  CheckpointInfo i;
  i.round = round;
  i.run_id = "run-1";
  i.config_sha256 = config_digest({{"rounds", 5}});
  i.metrics_lines = round;
  i.wall_seconds = 12.5;
  i.strategy = "fedavg";
  return i;
}

TEST(Checkpoint, RoundTripsTheStateBundleExactly) {
  const std::string path = scratch_dir("roundtrip") + "/checkpoint.bundle";
  ASSERT_TRUE(write_checkpoint(path, info(3), state_bundle()).ok());
  Result<Checkpoint> loaded = read_checkpoint(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->info.round, 3);
  EXPECT_EQ(loaded->info.run_id, "run-1");
  EXPECT_EQ(loaded->info.config_sha256, info(3).config_sha256);
  EXPECT_EQ(loaded->info.metrics_lines, 3);
  EXPECT_DOUBLE_EQ(loaded->info.wall_seconds, 12.5);
  EXPECT_EQ(loaded->info.strategy, "fedavg");
  // The strategy gets back exactly what save_state returned: tensors and metadata.
  EXPECT_TRUE(loaded->state.bitwise_equal(state_bundle()));
}

TEST(Checkpoint, OverwritingKeepsTheNewestAndLeavesNoTemporaryFile) {
  const std::string dir = scratch_dir("overwrite");
  const std::string path = dir + "/checkpoint.bundle";
  ASSERT_TRUE(write_checkpoint(path, info(1), state_bundle()).ok());
  ASSERT_TRUE(write_checkpoint(path, info(2), state_bundle()).ok());
  EXPECT_EQ(read_checkpoint(path)->info.round, 2);
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    files.push_back(entry.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"checkpoint.bundle", kCheckpointKeyFile}));
}

mode_t permissions(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST(CheckpointMac, KeyIsCreatedOnceWithMode0600) {
  const std::string dir = scratch_dir("key");
  ASSERT_TRUE(write_checkpoint(dir + "/checkpoint.bundle", info(1), state_bundle()).ok());
  const std::string key_path = dir + "/" + kCheckpointKeyFile;
  EXPECT_EQ(permissions(key_path), 0600u);
  EXPECT_EQ(std::filesystem::file_size(key_path), kCheckpointKeyBytes);
  Result<std::string> key = read_checkpoint_key(dir);
  ASSERT_TRUE(key.ok()) << key.status().to_string();
  // Later writes reuse the key.
  ASSERT_TRUE(write_checkpoint(dir + "/checkpoint.bundle", info(2), state_bundle()).ok());
  EXPECT_EQ(*read_checkpoint_key(dir), *key);
  // Two directories, two keys.
  const std::string other = scratch_dir("key-other");
  Result<std::string> other_key = load_or_create_checkpoint_key(other);
  ASSERT_TRUE(other_key.ok()) << other_key.status().to_string();
  EXPECT_NE(*other_key, *key);
}

TEST(CheckpointMac, ModifiedCheckpointIsRefusedNamingTheFile) {
  const std::string dir = scratch_dir("tampered");
  const std::string path = dir + "/checkpoint.bundle";
  ASSERT_TRUE(write_checkpoint(path, info(3), state_bundle()).ok());
  // Re-encoded with valid file digests: a changed tensor byte, then a changed record.
  Result<TensorBundle> raw = read_bundle_file(path);
  ASSERT_TRUE(raw.ok());
  raw->find("w")->mutable_bytes()[0] ^= 0x80;
  ASSERT_TRUE(write_bundle_file(path, *raw).ok());
  Result<Checkpoint> read = read_checkpoint(path);
  EXPECT_EQ(read.status().code(), StatusCode::kCorruption);
  EXPECT_NE(read.status().message().find(
                path + ": MAC mismatch: the file was modified or written with another key"),
            std::string::npos)
      << read.status().to_string();

  ASSERT_TRUE(write_checkpoint(path, info(3), state_bundle()).ok());
  raw = read_bundle_file(path);
  ASSERT_TRUE(raw.ok());
  raw->mutable_metadata()[kCheckpointKey]["round"] = 2;
  ASSERT_TRUE(write_bundle_file(path, *raw).ok());
  read = read_checkpoint(path);
  EXPECT_NE(read.status().message().find("MAC mismatch"), std::string::npos)
      << read.status().to_string();

  // The MAC removed: refused as well.
  raw->mutable_metadata().erase(kCheckpointMacKey);
  ASSERT_TRUE(write_bundle_file(path, *raw).ok());
  read = read_checkpoint(path);
  EXPECT_EQ(read.status().code(), StatusCode::kCorruption);
  EXPECT_NE(read.status().message().find(path + ": no MAC"), std::string::npos)
      << read.status().to_string();
}

TEST(CheckpointMac, CheckpointUnderAnotherKeyOrWithoutKeyIsRefused) {
  const std::string dir = scratch_dir("other-key");
  const std::string path = dir + "/checkpoint.bundle";
  ASSERT_TRUE(write_checkpoint(path, info(1), state_bundle()).ok());
  // The checkpoint moved next to another key.
  const std::string elsewhere = scratch_dir("other-key-2");
  ASSERT_TRUE(load_or_create_checkpoint_key(elsewhere).ok());
  std::filesystem::copy_file(path, elsewhere + "/checkpoint.bundle");
  Result<Checkpoint> read = read_checkpoint(elsewhere + "/checkpoint.bundle");
  EXPECT_NE(read.status().message().find("MAC mismatch"), std::string::npos)
      << read.status().to_string();
  // The key removed: the MAC cannot be checked, and the error says which file is missing.
  std::filesystem::remove(dir + "/" + kCheckpointKeyFile);
  read = read_checkpoint(path);
  EXPECT_FALSE(read.ok());
  EXPECT_NE(read.status().message().find(kCheckpointKeyFile), std::string::npos)
      << read.status().to_string();
}

TEST(CheckpointMac, KeyReadableByOthersIsRefused) {
  const std::string dir = scratch_dir("open-key");
  ASSERT_TRUE(load_or_create_checkpoint_key(dir).ok());
  const std::string key_path = dir + "/" + kCheckpointKeyFile;
  ASSERT_EQ(::chmod(key_path.c_str(), 0644), 0);
  Result<std::string> key = read_checkpoint_key(dir);
  EXPECT_EQ(key.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(key.status().message().find(key_path), std::string::npos);
  EXPECT_NE(key.status().message().find("0644"), std::string::npos) << key.status().to_string();
}

TEST(StateDirectory, CreatedWithMode0700AndAnOpenOneIsTightened) {
  const std::string base = scratch_dir("state-dir");
  const std::string fresh = base + "/a/b/state";
  ASSERT_TRUE(prepare_state_directory(fresh).ok());
  EXPECT_EQ(permissions(fresh), 0700u);
  // Again: nothing to do.
  ASSERT_TRUE(prepare_state_directory(fresh + "/").ok());
  EXPECT_EQ(permissions(fresh), 0700u);
  // An existing directory that group/others can enter is ours: chmod'ed to 0700.
  const std::string open = base + "/open";
  std::filesystem::create_directories(open);
  ASSERT_EQ(::chmod(open.c_str(), 0777), 0);
  ASSERT_TRUE(prepare_state_directory(open).ok());
  EXPECT_EQ(permissions(open), 0700u);
  // A file in the way is an error naming it.
  const std::string file = base + "/file";
  std::ofstream(file) << "x";
  Status status = prepare_state_directory(file);
  EXPECT_EQ(status.code(), StatusCode::kIOError);
  EXPECT_NE(status.message().find(file), std::string::npos) << status.to_string();
}

TEST(TempFiles, WritersNeverFollowASymlinkPlantedAtTheOldFixedTemporaryName) {
  const std::string dir = scratch_dir("symlink");
  const std::string victim = dir + "/victim";
  std::ofstream(victim) << "precious";
  // The names the writers used before: "<target>.tmp".
  for (const char* name : {"checkpoint.bundle", "summary.json", "model.bundle"}) {
    ASSERT_EQ(::symlink(victim.c_str(), (dir + "/" + name + ".tmp").c_str()), 0) << name;
  }
  ASSERT_TRUE(write_checkpoint(dir + "/checkpoint.bundle", info(1), state_bundle()).ok());
  ASSERT_TRUE(write_file_atomic(dir + "/summary.json", "{}\n").ok());
  ASSERT_TRUE(write_bundle_file(dir + "/model.bundle", state_bundle()).ok());
  std::ifstream in(victim);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "precious");
  EXPECT_TRUE(read_checkpoint(dir + "/checkpoint.bundle").ok());
  EXPECT_EQ(permissions(dir + "/summary.json"), 0600u);
  EXPECT_EQ(permissions(dir + "/model.bundle"), 0600u);
}

TEST(TempFiles, NamesAreUniqueAndCreatedExclusivelyWithMode0600) {
  const std::string dir = scratch_dir("temp-names");
  const std::string target = dir + "/target";
  std::set<std::string> names;
  for (int i = 0; i < 50; ++i) {
    Result<TempFile> temp = create_temp_file(target);
    ASSERT_TRUE(temp.ok()) << temp.status().to_string();
    EXPECT_EQ(temp->path.rfind(target + ".tmp." + std::to_string(::getpid()) + ".", 0), 0u)
        << temp->path;
    EXPECT_EQ(permissions(temp->path), 0600u);
    ::close(temp->fd);
    EXPECT_TRUE(names.insert(temp->path).second) << temp->path;
  }
}

TEST(Checkpoint, ReservedKeyMissingFileAndForeignBundleAreErrors) {
  const std::string dir = scratch_dir("errors");
  TensorBundle reserved = state_bundle();
  reserved.mutable_metadata()[kCheckpointKey] = 1;
  EXPECT_EQ(write_checkpoint(dir + "/c.bundle", info(1), std::move(reserved)).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(read_checkpoint(dir + "/none.bundle").status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(write_bundle_file(dir + "/plain.bundle", state_bundle()).ok());
  Result<Checkpoint> foreign = read_checkpoint(dir + "/plain.bundle");
  EXPECT_EQ(foreign.status().code(), StatusCode::kCorruption);
  EXPECT_NE(foreign.status().message().find("plain.bundle"), std::string::npos);
}

TEST(CheckpointInfo, MalformedRecordsAreCorruption) {
  nlohmann::json good = info(2).to_json();
  EXPECT_TRUE(CheckpointInfo::from_json(good).ok());
  for (const char* key : {"round", "run_id", "config_sha256", "metrics_lines", "wall_seconds"}) {
    nlohmann::json bad = good;
    bad.erase(key);
    Result<CheckpointInfo> parsed = CheckpointInfo::from_json(bad);
    EXPECT_EQ(parsed.status().code(), StatusCode::kCorruption) << key;
    EXPECT_NE(parsed.status().message().find(key), std::string::npos);
  }
  nlohmann::json zero = good;
  zero["round"] = 0;
  EXPECT_FALSE(CheckpointInfo::from_json(zero).ok());
}

TEST(ConfigDigest, IgnoresKeyOrderButNotValues) {
  nlohmann::json a = nlohmann::json::parse(R"({"rounds": 3, "seed": 1})");
  nlohmann::json b = nlohmann::json::parse(R"({"seed": 1, "rounds": 3})");
  nlohmann::json c = nlohmann::json::parse(R"({"seed": 1, "rounds": 4})");
  EXPECT_EQ(config_digest(a), config_digest(b));
  EXPECT_NE(config_digest(a), config_digest(c));
  EXPECT_EQ(config_digest(a).size(), 64u);
}

TEST(MetricsLines, AppendReadAndTruncateToTheRecordedCount) {
  const std::string path = scratch_dir("metrics") + "/metrics.jsonl";
  for (int round = 1; round <= 4; ++round) {
    ASSERT_TRUE(append_metrics_line(path, {{"round", round}, {"loss", 1.0 / round}}).ok());
  }
  Result<std::vector<nlohmann::json>> lines = read_metrics_lines(path);
  ASSERT_TRUE(lines.ok());
  ASSERT_EQ(lines->size(), 4u);
  EXPECT_EQ((*lines)[3]["round"], 4);
  // A crash after round 4's line but before its checkpoint: the checkpoint records 3 lines.
  ASSERT_TRUE(truncate_metrics_lines(path, 3).ok());
  lines = read_metrics_lines(path);
  ASSERT_EQ(lines->size(), 3u);
  EXPECT_EQ((*lines)[2]["round"], 3);
  ASSERT_TRUE(append_metrics_line(path, {{"round", 4}}).ok());
  EXPECT_EQ(read_metrics_lines(path)->size(), 4u);
  // Exactly the recorded count is a no-op; fewer lines than recorded is corruption.
  EXPECT_TRUE(truncate_metrics_lines(path, 4).ok());
  EXPECT_EQ(truncate_metrics_lines(path, 9).code(), StatusCode::kCorruption);
  EXPECT_TRUE(truncate_metrics_lines(path + ".absent", 0).ok());
  EXPECT_EQ(truncate_metrics_lines(path + ".absent", 1).code(), StatusCode::kCorruption);
}

TEST(MetricsLines, APartialLastLineIsCutAndAGarbledLineReported) {
  const std::string path = scratch_dir("partial") + "/metrics.jsonl";
  {
    std::ofstream out(path);
    out << "{\"round\": 1}\n{\"round\": 2}\n{\"rou";
  }
  ASSERT_TRUE(truncate_metrics_lines(path, 2).ok());
  EXPECT_EQ(read_metrics_lines(path)->size(), 2u);
  {
    std::ofstream out(path, std::ios::app);
    out << "not json\n";
  }
  Result<std::vector<nlohmann::json>> garbled = read_metrics_lines(path);
  EXPECT_EQ(garbled.status().code(), StatusCode::kCorruption);
  EXPECT_NE(garbled.status().message().find(":3"), std::string::npos);
}

TEST(Summary, TakesFinalAccuraciesFromTheLastEvaluatedRound) {
  std::vector<nlohmann::json> lines = {
      {{"round", 1},
       {"server_eval",
        {{"generic", {{"overall", 0.5}, {"many", 0.7}, {"medium", 0.4}, {"few", 0.1}}}}},
       {"evaluate", {{"metrics", {{"personalized", {{"mean", 0.6}, {"weighted", 0.65}}}}}}}},
      {{"round", 2},
       {"server_eval",
        {{"generic", {{"overall", 0.8}, {"many", 0.9}, {"medium", 0.7}, {"few", nullptr}}}}},
       {"evaluate",
        {{"metrics",
          {{"personalized", {{"mean", 0.85}, {"weighted", 0.87}}}, {"masked", false}}}}}},
      {{"round", 3}, {"fit", {{"updates", 3}}}}};
  SummaryInput input{"fedavg", "run-9", 3, 3, 42.0, false};
  nlohmann::json s = make_summary(input, lines);
  EXPECT_EQ(s["strategy"], "fedavg");
  EXPECT_EQ(s["rounds_completed"], 3);
  EXPECT_DOUBLE_EQ(s["wall_seconds"].get<double>(), 42.0);
  EXPECT_EQ(s["final"]["round"], 2);
  EXPECT_DOUBLE_EQ(s["final"]["generic_accuracy"].get<double>(), 0.8);
  EXPECT_DOUBLE_EQ(s["final"]["generic_by_group"]["many"].get<double>(), 0.9);
  EXPECT_DOUBLE_EQ(s["final"]["generic_by_group"]["medium"].get<double>(), 0.7);
  EXPECT_TRUE(s["final"]["generic_by_group"]["few"].is_null());
  EXPECT_DOUBLE_EQ(s["final"]["personalized_accuracy"].get<double>(), 0.85);
  EXPECT_DOUBLE_EQ(s["final"]["personalized_weighted"].get<double>(), 0.87);
  EXPECT_EQ(s["final"]["personalized_masked"], false);
  EXPECT_EQ(s["last_round"]["round"], 3);
}

TEST(Summary, AbsentEvaluationsAreNull) {
  nlohmann::json s = make_summary({"fedsa", "r", 2, 2, 1.0, false}, {{{"round", 1}}});
  EXPECT_TRUE(s["final"]["generic_accuracy"].is_null());
  EXPECT_TRUE(s["final"]["personalized_accuracy"].is_null());
  EXPECT_TRUE(s["final"]["generic_by_group"]["many"].is_null());
  nlohmann::json empty = make_summary({"fedsa", "r", 2, 0, 1.0, false}, {});
  EXPECT_TRUE(empty["last_round"].is_null());
}

}  // namespace
}  // namespace fedtail::coordinator

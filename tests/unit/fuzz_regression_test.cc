// Replays tests/fuzz/corpus/<target>/* (the seeds, and every input that once crashed a fuzzer,
// named crash-*) through the fuzz targets, so that fixed bugs stay fixed in the normal suite,
// without clang or libFuzzer. tools/fuzz.sh runs the fuzzers themselves.
//
// The targets are compiled into this test (they belong to no fedtail library).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/run_config.h"
#include "tests/fuzz/fuzz_targets.cc"

namespace fedtail::fuzz {
namespace {

namespace fs = std::filesystem;

const fs::path& corpus_root() {
  static const fs::path root = fs::path(FEDTAIL_SOURCE_DIR) / "tests" / "fuzz" / "corpus";
  return root;
}

// The files of one target's corpus, sorted by name.
std::vector<fs::path> corpus_files(const std::string& target) {
  std::vector<fs::path> files;
  const fs::path dir = corpus_root() / target;
  if (!fs::is_directory(dir)) return files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

size_t count_prefixed(const std::vector<fs::path>& files, const std::string& prefix) {
  return static_cast<size_t>(std::count_if(files.begin(), files.end(), [&](const fs::path& p) {
    return p.filename().string().rfind(prefix, 0) == 0;
  }));
}

struct Target {
  const char* name;
  int (*run)(const uint8_t*, size_t);
  size_t min_seeds;  // seed-* files the corpus must hold
};

class FuzzCorpusTest : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzCorpusTest, ReplaysEveryCorpusFileWithoutCrashing) {
  const Target& target = GetParam();
  const std::vector<fs::path> files = corpus_files(target.name);
  ASSERT_GE(count_prefixed(files, "seed-"), target.min_seeds)
      << "corpus " << (corpus_root() / target.name) << " lost its seeds";
  for (const fs::path& path : files) {
    SCOPED_TRACE(path.string());
    const std::string bytes = read_bytes(path);
    ASSERT_FALSE(bytes.empty()) << "unreadable or empty corpus file";
    // A bug aborts the process (invariant, sanitizer in the fuzz build) or throws.
    EXPECT_EQ(target.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Targets, FuzzCorpusTest,
    ::testing::Values(Target{"bundle_stream", &fuzz_bundle_stream, /*min_seeds=*/5},
                      Target{"bundle_file", &fuzz_bundle_file, /*min_seeds=*/3},
                      Target{"run_config", &fuzz_run_config, /*min_seeds=*/9}),
    [](const ::testing::TestParamInfo<Target>& info) { return std::string(info.param.name); });

// The seeds are valid: the encoded bundles decode (so the fuzzers start past the digest checks).
TEST(FuzzCorpusTest, BundleSeedsDecode) {
  for (const fs::path& path : corpus_files("bundle_file")) {
    if (path.filename().string().rfind("seed-", 0) != 0) continue;
    SCOPED_TRACE(path.string());
    Result<TensorBundle> bundle = read_bundle_file(path.string(), fuzz_decode_limits());
    EXPECT_TRUE(bundle.ok()) << bundle.status().to_string();
  }
}

// The fuzz build cannot link parse_run_config (its headers pull in LibTorch), so the run_config
// corpus goes through the coordinator's exact entry point here: no exception may escape.
TEST(FuzzCorpusTest, RunConfigCorpusThroughLoadRunConfig) {
  const std::vector<std::string> extra_keys = {"rounds", "strategy", "federation"};
  size_t accepted = 0;
  for (const fs::path& path : corpus_files("run_config")) {
    SCOPED_TRACE(path.string());
    EXPECT_NO_THROW({
      Result<RunConfig> config = load_run_config(path.string(), extra_keys);
      if (config.ok()) ++accepted;
    });
  }
  EXPECT_GE(accepted, 1u) << "no config of the corpus parses: the replay proves nothing";
}

// ---- The bugs the crash-* inputs found, with the behaviour their fixes give ----

Result<RunConfig> load_crash(const std::string& name) {
  const fs::path path = corpus_root() / "run_config" / name;
  EXPECT_TRUE(fs::exists(path)) << path;
  return load_run_config(path.string(), {"rounds", "strategy", "federation"});
}

TEST(FuzzRegressionTest, NumberBeyondDoubleIsInvalidJsonNotAnException) {
  // "3333e3333..." threw nlohmann's out_of_range.406, which load_json_file did not catch.
  Result<RunConfig> config = load_crash("crash-number-overflow-exception");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("not valid JSON"), std::string::npos);
}

TEST(FuzzRegressionTest, HugeIntegralFloatIsOutOfRangeNotUndefined) {
  // {"seed": 666...6 (33 digits)}: the double was cast to int64 unchecked (UBSan).
  Result<RunConfig> config = load_crash("crash-float-to-int64-overflow");
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("config.seed: integer out of range"), std::string::npos)
      << config.status().message();
}

TEST(FuzzRegressionTest, SeedTakesTheWholeUint64Range) {
  // {"seed": 9999999999999999999} wrapped to a negative int64: "must be >= 0 (got -8446...)".
  Result<RunConfig> config = load_crash("crash-uint64-wraps-negative");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->seed, 9999999999999999999ull);

  const nlohmann::json object = nlohmann::json::parse(R"({"n": 9999999999999999999})");
  JsonReader r(object, "f");  // borrows `object`
  int64_t n = 0;
  r.read("n", &n);
  EXPECT_EQ(r.status().message(), "f.n: integer out of range");
}

TEST(FuzzRegressionTest, IntArrayElementOutOfRangeIsAnError) {
  // [1, 5000000000] was read as {1, 705032704}.
  const std::string text = read_bytes(corpus_root() / "run_config" / "crash-vector-int-wraps");
  const nlohmann::json object = nlohmann::json::parse(text);
  JsonReader r(object, "f");  // borrows `object`
  std::vector<int> values = {7};
  r.read("x", &values);
  EXPECT_EQ(r.status().message(), "f.x[1]: integer out of range");
  EXPECT_EQ(values, std::vector<int>{7});
}

TEST(FuzzRegressionTest, TruncatedValueInMessageStaysValidUtf8) {
  // The 40-byte excerpt of a bad value was cut inside a two-byte character.
  Result<RunConfig> config = load_crash("crash-message-splits-utf8");
  ASSERT_FALSE(config.ok());
  EXPECT_NO_THROW((void)nlohmann::json(config.status().message()).dump());
  EXPECT_NE(config.status().message().find("...)"), std::string::npos);
}

TEST(FuzzRegressionTest, DeepNestingIsRejectedBeforeItOverflowsTheStack) {
  // {"strategy": [[[...30000 levels...]]]} parsed, then overflowed the stack when copied.
  Result<RunConfig> config = load_crash("crash-deep-nesting-stack-overflow");
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("nested deeper than 256 levels"), std::string::npos)
      << config.status().message();
}

}  // namespace
}  // namespace fedtail::fuzz

#include "common/wire/bundle_file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fedtail {
namespace {

namespace fs = std::filesystem;

// A fresh scratch directory per test.
std::string test_dir() {
  const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  const fs::path dir = fs::path(FEDTAIL_TEST_TMP) / "bundle_file_test" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

TensorBundle make_bundle(int64_t floats, float fill) {
  TensorBundle b;
  Result<NamedTensor*> w = b.add_zeros("fc.weight", DType::kFloat32, {floats});
  EXPECT_TRUE(w.ok());
  for (int64_t i = 0; i < floats; ++i) (*w)->data<float>()[i] = fill + static_cast<float>(i % 97);
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {}, {5}))
          .ok());
  b.mutable_metadata()["round"] = 7;
  return b;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST(BundleFileTest, RoundTripsAndLeavesNoTemporaryFile) {
  const std::string path = test_dir() + "/model.bundle";
  // Large enough for several 4 MiB file chunks.
  TensorBundle original = make_bundle(/*floats=*/(int64_t{9} << 20) / 4, /*fill=*/0.5f);
  ASSERT_TRUE(write_bundle_file(path, original).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  Result<TensorBundle> back = read_bundle_file(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_TRUE(back->bitwise_equal(original));
  EXPECT_EQ(back->metadata()["round"], 7);
}

TEST(BundleFileTest, OverwritesAnExistingFile) {
  const std::string path = test_dir() + "/model.bundle";
  ASSERT_TRUE(write_bundle_file(path, make_bundle(10, 1.0f)).ok());
  TensorBundle second = make_bundle(20, 2.0f);
  ASSERT_TRUE(write_bundle_file(path, second).ok());
  Result<TensorBundle> back = read_bundle_file(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_TRUE(back->bitwise_equal(second));
}

TEST(BundleFileTest, EmptyBundleRoundTrips) {
  const std::string path = test_dir() + "/empty.bundle";
  TensorBundle empty;
  ASSERT_TRUE(write_bundle_file(path, empty).ok());
  Result<TensorBundle> back = read_bundle_file(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_TRUE(back->empty());
}

TEST(BundleFileTest, MissingDirectoryIsAnIOErrorNamingThePath) {
  const std::string path = test_dir() + "/no/such/dir/model.bundle";
  Status s = write_bundle_file(path, make_bundle(4, 0.0f));
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("No such file or directory"), std::string::npos) << s.message();
}

TEST(BundleFileTest, ReadOnlyDirectoryLeavesTheExistingFileUntouched) {
  if (geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  const std::string dir = test_dir();
  const std::string path = dir + "/model.bundle";
  TensorBundle old = make_bundle(8, 1.0f);
  ASSERT_TRUE(write_bundle_file(path, old).ok());
  ASSERT_EQ(chmod(dir.c_str(), 0555), 0);
  Status s = write_bundle_file(path, make_bundle(8, 2.0f));
  chmod(dir.c_str(), 0755);
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_NE(s.message().find("Permission denied"), std::string::npos) << s.message();
  Result<TensorBundle> back = read_bundle_file(path);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->bitwise_equal(old));
}

// Emulates a full disk: with RLIMIT_FSIZE lowered (and SIGXFSZ ignored) write() fails with EFBIG
// part-way through the file, as it would with ENOSPC.
TEST(BundleFileTest, FailedWriteLeavesTheExistingFileUntouched) {
  const std::string path = test_dir() + "/model.bundle";
  TensorBundle old = make_bundle(1000, 1.0f);
  ASSERT_TRUE(write_bundle_file(path, old).ok());
  const std::string old_bytes = read_all(path);

  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit low = saved;
  low.rlim_cur = 64 << 10;
  auto previous_handler = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &low), 0);
  Status s = write_bundle_file(path, make_bundle(/*floats=*/1 << 20, 2.0f));  // 4 MB
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, previous_handler);

  EXPECT_EQ(s.code(), StatusCode::kIOError) << s.to_string();
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("File too large"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(read_all(path), old_bytes);
  Result<TensorBundle> back = read_bundle_file(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_TRUE(back->bitwise_equal(old));
}

TEST(BundleFileTest, TruncatedFileIsCorruption) {
  const std::string path = test_dir() + "/model.bundle";
  ASSERT_TRUE(write_bundle_file(path, make_bundle(5000, 1.0f)).ok());
  const std::string full = read_all(path);
  // Cut inside the magic, right after the prefix, inside the header, inside the payload, and
  // one byte short.
  for (size_t keep : {size_t{5}, size_t{12}, size_t{30}, full.size() / 2, full.size() - 1}) {
    write_raw(path, full.substr(0, keep));
    Result<TensorBundle> r = read_bundle_file(path);
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << keep << ": " << r.status().to_string();
    EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  }
}

TEST(BundleFileTest, TrailingBytesAreCorruption) {
  const std::string path = test_dir() + "/model.bundle";
  ASSERT_TRUE(write_bundle_file(path, make_bundle(100, 1.0f)).ok());
  write_raw(path, read_all(path) + std::string("\x05\0\0\0hello", 9));
  Result<TensorBundle> r = read_bundle_file(path);
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("trailing bytes"), std::string::npos) << r.status().message();
}

TEST(BundleFileTest, FlippedPayloadByteIsCorruption) {
  const std::string path = test_dir() + "/model.bundle";
  ASSERT_TRUE(write_bundle_file(path, make_bundle(5000, 1.0f)).ok());
  std::string bytes = read_all(path);
  bytes[bytes.size() - 100] ^= 0x40;
  write_raw(path, bytes);
  Result<TensorBundle> r = read_bundle_file(path);
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("payload digest mismatch"), std::string::npos)
      << r.status().message();
}

TEST(BundleFileTest, BadMagicOrVersionIsCorruption) {
  const std::string path = test_dir() + "/model.bundle";
  ASSERT_TRUE(write_bundle_file(path, make_bundle(10, 1.0f)).ok());
  const std::string good = read_all(path);
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  write_raw(path, bad_magic);
  EXPECT_NE(read_bundle_file(path).status().message().find("bad magic"), std::string::npos);
  std::string bad_version = good;
  bad_version[8] = 9;
  write_raw(path, bad_version);
  Result<TensorBundle> r = read_bundle_file(path);
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("version 9"), std::string::npos) << r.status().message();
}

TEST(BundleFileTest, MissingFileIsNotFound) {
  const std::string path = test_dir() + "/absent.bundle";
  Result<TensorBundle> r = read_bundle_file(path);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(path), std::string::npos);
}

TEST(BundleFileTest, ReaderAppliesDecodeLimits) {
  const std::string path = test_dir() + "/model.bundle";
  ASSERT_TRUE(write_bundle_file(path, make_bundle(1000, 1.0f)).ok());
  DecodeLimits limits;
  limits.max_payload_bytes = 100;
  EXPECT_EQ(read_bundle_file(path, limits).status().code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace fedtail

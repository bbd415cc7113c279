// tune_malloc (common/base/malloc_tuning.h). CTest runs every test in a process of its own, so each
// starts from glibc's defaults.
#include "common/base/malloc_tuning.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace fedtail {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// Minor page faults of `passes` allocations of `bytes`, each written whole and freed, on a thread
// other than main (where glibc maps anything over 64 MiB anew unless tuned).
int64_t faults_on_a_thread(size_t bytes, int passes) {
  int64_t faults = -1;
  std::thread t([&] {
    struct rusage before {};
    getrusage(RUSAGE_THREAD, &before);
    for (int i = 0; i < passes; ++i) {
      char* p = static_cast<char*>(std::malloc(bytes));
      ASSERT_NE(p, nullptr);
      std::memset(p, i, bytes);
      asm volatile("" : : "r"(p) : "memory");  // keep the writes
      std::free(p);
    }
    struct rusage after {};
    getrusage(RUSAGE_THREAD, &after);
    faults = after.ru_minflt - before.ru_minflt;
  });
  t.join();
  return faults;
}

int64_t pages(size_t bytes) { return static_cast<int64_t>(bytes / 4096); }

TEST(MallocTuningTest, DefaultKeepsAnEighthOfMemoryWithinBounds) {
  unsetenv("FEDTAIL_MALLOC_KEEP_MB");
  const MallocTuning t = tune_malloc();
  if (!t.applied) GTEST_SKIP() << "not applied here: " << t.note;
  EXPECT_GE(t.keep_bytes, 64 * kMiB);
  EXPECT_LE(t.keep_bytes, 1024 * kMiB);
  EXPECT_EQ(malloc_tuning().keep_bytes, t.keep_bytes);
}

TEST(MallocTuningTest, LargeBuffersOnAThreadAreReusedWithoutFaults) {
  unsetenv("FEDTAIL_MALLOC_KEEP_MB");
  const MallocTuning t = tune_malloc();
  if (!t.applied) GTEST_SKIP() << "not applied here: " << t.note;
  const size_t bytes = 65 * kMiB;  // a ResNet-8 activation of 1000 CIFAR images
  const int64_t faults = faults_on_a_thread(bytes, 10);
  // The first pass maps the memory; the other nine reuse it.
  EXPECT_LT(faults, 2 * pages(bytes)) << "faults over 10 passes of " << bytes << " bytes";
}

// The control: with glibc's defaults the same loop faults on every pass, so the test above
// measures what it claims to.
TEST(MallocTuningTest, ZeroLeavesGlibcDefaultsWhichFaultEveryPass) {
  setenv("FEDTAIL_MALLOC_KEEP_MB", "0", 1);
  const MallocTuning t = tune_malloc();
  unsetenv("FEDTAIL_MALLOC_KEEP_MB");
  EXPECT_FALSE(t.applied);
  EXPECT_EQ(t.note, "FEDTAIL_MALLOC_KEEP_MB=0");
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's allocator";
#endif
  const size_t bytes = 65 * kMiB;
  EXPECT_GE(faults_on_a_thread(bytes, 10), 9 * pages(bytes));
}

TEST(MallocTuningTest, EnvironmentSetsTheAmountKept) {
  setenv("FEDTAIL_MALLOC_KEEP_MB", "256", 1);
  const MallocTuning t = tune_malloc();
  unsetenv("FEDTAIL_MALLOC_KEEP_MB");
  if (!t.applied) GTEST_SKIP() << "not applied here: " << t.note;
  EXPECT_EQ(t.keep_bytes, 256 * kMiB);
}

TEST(MallocTuningTest, ANonNumberFallsBackToTheDefault) {
  setenv("FEDTAIL_MALLOC_KEEP_MB", "lots", 1);
  const MallocTuning with_junk = tune_malloc();
  setenv("FEDTAIL_MALLOC_KEEP_MB", "4096", 1);  // over glibc's int thresholds
  const MallocTuning too_big = tune_malloc();
  unsetenv("FEDTAIL_MALLOC_KEEP_MB");
  const MallocTuning plain = tune_malloc();
  EXPECT_EQ(with_junk.keep_bytes, plain.keep_bytes);
  EXPECT_EQ(too_big.keep_bytes, plain.keep_bytes);
}

}  // namespace
}  // namespace fedtail

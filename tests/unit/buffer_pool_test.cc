#include "common/base/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "common/wire/tensor_bundle.h"

namespace fedtail {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// Each test starts from an empty cache with a known limit and restores the default after.
class BufferPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_limit_ = buffer_cache_limit();
    trim_buffer_cache();
    set_buffer_cache_limit(64 * kMiB);
  }
  void TearDown() override {
    trim_buffer_cache();
    set_buffer_cache_limit(saved_limit_);
  }
  uint64_t saved_limit_ = 0;
};

TEST_F(BufferPoolTest, LargeBuffersAreHugePageAlignedAndSmallOnesCacheLineAligned) {
  void* large = acquire_pooled_buffer(4 * kMiB);
  void* small = acquire_pooled_buffer(4096);
  ASSERT_NE(large, nullptr);
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(large) % kLargeBufferBytes, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small) % 64, 0u);
  std::memset(large, 1, 4 * kMiB);  // the whole size is usable
  release_pooled_buffer(large, 4 * kMiB);
  release_pooled_buffer(small, 4096);
  EXPECT_EQ(buffer_cache_stats().cached_buffers, 1u);  // only the large one is kept
  EXPECT_EQ(buffer_cache_stats().cached_bytes, 4 * kMiB);
}

TEST_F(BufferPoolTest, AReleasedBufferIsReusedForTheSameSizeOnly) {
  void* first = acquire_pooled_buffer(4 * kMiB);
  static_cast<uint8_t*>(first)[100] = 42;
  release_pooled_buffer(first, 4 * kMiB);
  const BufferCacheStats before = buffer_cache_stats();

  void* other_size = acquire_pooled_buffer(6 * kMiB);
  EXPECT_NE(other_size, first);
  void* same_size = acquire_pooled_buffer(4 * kMiB);
  EXPECT_EQ(same_size, first);
  EXPECT_EQ(static_cast<uint8_t*>(same_size)[100], 42);  // uninitialised: the old contents

  const BufferCacheStats after = buffer_cache_stats();
  EXPECT_EQ(after.hits - before.hits, 1u);
  EXPECT_EQ(after.misses - before.misses, 1u);
  EXPECT_EQ(after.cached_bytes, 0u);
  release_pooled_buffer(other_size, 6 * kMiB);
  release_pooled_buffer(same_size, 4 * kMiB);
}

TEST_F(BufferPoolTest, TheLimitEvictsTheLeastRecentlyReleased) {
  set_buffer_cache_limit(10 * kMiB);
  void* a = acquire_pooled_buffer(4 * kMiB);
  void* b = acquire_pooled_buffer(4 * kMiB);
  void* c = acquire_pooled_buffer(4 * kMiB);
  release_pooled_buffer(a, 4 * kMiB);
  release_pooled_buffer(b, 4 * kMiB);
  release_pooled_buffer(c, 4 * kMiB);  // 12 MiB > 10: `a` goes
  EXPECT_EQ(buffer_cache_stats().cached_bytes, 8 * kMiB);
  void* again = acquire_pooled_buffer(4 * kMiB);
  EXPECT_EQ(again, c);  // most recently released first
  void* again2 = acquire_pooled_buffer(4 * kMiB);
  EXPECT_EQ(again2, b);
  EXPECT_EQ(buffer_cache_stats().cached_bytes, 0u);

  // A buffer larger than the limit is freed, not cached.
  void* big = acquire_pooled_buffer(12 * kMiB);
  release_pooled_buffer(big, 12 * kMiB);
  EXPECT_EQ(buffer_cache_stats().cached_bytes, 0u);
  release_pooled_buffer(again, 4 * kMiB);
  release_pooled_buffer(again2, 4 * kMiB);

  // Lowering the limit evicts at once; 0 turns caching off.
  set_buffer_cache_limit(4 * kMiB);
  EXPECT_EQ(buffer_cache_stats().cached_bytes, 4 * kMiB);
  set_buffer_cache_limit(0);
  EXPECT_EQ(buffer_cache_stats().cached_bytes, 0u);
  void* d = acquire_pooled_buffer(4 * kMiB);
  release_pooled_buffer(d, 4 * kMiB);
  EXPECT_EQ(buffer_cache_stats().cached_buffers, 0u);
}

TEST_F(BufferPoolTest, TrimFreesEverything) {
  void* a = acquire_pooled_buffer(2 * kMiB);
  void* b = acquire_pooled_buffer(3 * kMiB);
  release_pooled_buffer(a, 2 * kMiB);
  release_pooled_buffer(b, 3 * kMiB);
  EXPECT_EQ(buffer_cache_stats().cached_buffers, 2u);
  trim_buffer_cache();
  EXPECT_EQ(buffer_cache_stats().cached_buffers, 0u);
  EXPECT_EQ(buffer_cache_stats().cached_bytes, 0u);
}

TEST_F(BufferPoolTest, TensorsOfTheSameShapeReuseAFreedTensorsBuffer) {
  const uint8_t* first = nullptr;
  {
    Result<NamedTensor> t = NamedTensor::uninitialized("w", DType::kFloat32, {1 << 20});
    ASSERT_TRUE(t.ok());
    first = t->bytes();
  }
  Result<NamedTensor> again = NamedTensor::zeros("v", DType::kFloat32, {1 << 20});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->bytes(), first);
  // zeros() still zeroes a recycled buffer.
  for (int64_t i = 0; i < again->numel(); i += 4099) EXPECT_EQ(again->data<float>()[i], 0.0f);

  // A buffer released through its AlignedBuffer goes back too.
  const uint8_t* raw = again->bytes();
  { AlignedBuffer buffer = std::move(*again).release_buffer(); }
  Result<NamedTensor> third = NamedTensor::uninitialized("u", DType::kFloat32, {1 << 20});
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->bytes(), raw);
}

}  // namespace
}  // namespace fedtail

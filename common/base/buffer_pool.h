// Tensor buffers, and a process-wide cache that recycles the large ones.
//
// Why: a freshly allocated buffer is faulted in page by page on its first write, and the kernel
// zeroes every page. On the development VM that first write runs at about 1.5 GB/s against 23 GB/s
// for memory already mapped, so a coordinator that decodes every upload into new tensors, or a
// client that decodes every round's global model, spends most of a transfer in page faults. A
// federation moves bundles of the same shapes round after round: a buffer freed after one upload
// has exactly the size the next one needs.
//
// Contract:
// - acquire_pooled_buffer(bytes) returns `bytes` bytes (a multiple of 64, > 0) of uninitialised
//   memory, 64-byte aligned; buffers of kLargeBufferBytes or more are 2 MiB aligned and marked
//   for transparent huge pages. nullptr when memory is exhausted.
// - release_pooled_buffer(p, bytes) takes it back. A large buffer is kept in the cache when the
//   cache has room (evicting the least recently released ones), else freed; a small one is freed.
// - A cached buffer is handed out again only for a request of exactly its size, most recently
//   released first. Its contents are whatever its last owner left.
// - The cache holds at most buffer_cache_limit() bytes. Default: $FEDTAIL_BUFFER_CACHE_MB when
//   set (0 turns caching off), else an eighth of physical memory, at most 4 GiB; 0 under
//   AddressSanitizer, so that a use after free is still caught. Cached buffers count in the
//   process's resident memory until reused or evicted.
// - Every buffer from acquire_pooled_buffer may also be freed with std::free (it then bypasses
//   the cache).
//
// Thread-safe: all functions may be called from any thread.
#ifndef FEDTAIL_COMMON_BASE_BUFFER_POOL_H_
#define FEDTAIL_COMMON_BASE_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>

namespace fedtail {

// Buffers of this size or more are huge-page aligned and cached (2 MiB).
constexpr size_t kLargeBufferBytes = size_t{2} << 20;

void* acquire_pooled_buffer(size_t bytes);
void release_pooled_buffer(void* p, size_t bytes);

// The cache's limit in bytes; setting a lower one evicts down to it at once.
uint64_t buffer_cache_limit();
void set_buffer_cache_limit(uint64_t bytes);

// Frees every cached buffer (e.g. before a long idle period).
void trim_buffer_cache();

struct BufferCacheStats {
  uint64_t cached_bytes = 0;    // held in the cache now
  uint64_t cached_buffers = 0;  // how many buffers that is
  uint64_t hits = 0;            // large acquisitions served from the cache, since start
  uint64_t misses = 0;          // large acquisitions that allocated, since start
};
BufferCacheStats buffer_cache_stats();

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_BUFFER_POOL_H_

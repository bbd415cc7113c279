#include "common/base/malloc_tuning.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "common/base/sanitizers.h"

namespace fedtail {
namespace {

constexpr uint64_t kMinDefaultKeep = uint64_t{64} << 20;
constexpr uint64_t kMaxDefaultKeep = uint64_t{1} << 30;
// glibc takes the thresholds as int: keep them below 2 GiB.
constexpr uint64_t kMaxKeep = (uint64_t{2} << 30) - (uint64_t{1} << 20);

MallocTuning g_tuning;

uint64_t default_keep() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return kMinDefaultKeep;
  const uint64_t eighth = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) / 8;
  return std::clamp(eighth, kMinDefaultKeep, kMaxDefaultKeep);
}

}  // namespace

MallocTuning tune_malloc() {
  MallocTuning t;
  uint64_t keep = default_keep();
  if (const char* env = std::getenv("FEDTAIL_MALLOC_KEEP_MB")) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long mb = std::strtoull(env, &end, 10);
    if (errno != 0 || end == env || *end != '\0' || mb > (kMaxKeep >> 20)) {
      // Logging is not set up yet this early in main().
      std::fprintf(stderr,
                   "warning: FEDTAIL_MALLOC_KEEP_MB=\"%s\" is not a number of MB in [0, 2047]; "
                   "using the default\n",
                   env);
    } else if (mb == 0) {
      t.note = "FEDTAIL_MALLOC_KEEP_MB=0";
      g_tuning = t;
      return t;
    } else {
      keep = mb << 20;
    }
  }
#if defined(FEDTAIL_SANITIZER_ALLOCATOR)
  t.note = "a sanitizer's allocator replaces malloc";
#elif !defined(__GLIBC__)
  t.note = "not glibc";
#else
  const int value = static_cast<int>(keep);
  const bool arenas = mallopt(M_ARENA_MAX, 1) == 1;
  const bool mmap_threshold = mallopt(M_MMAP_THRESHOLD, value) == 1;
  const bool trim_threshold = mallopt(M_TRIM_THRESHOLD, value) == 1;
  t.applied = arenas && mmap_threshold && trim_threshold;
  t.keep_bytes = keep;
  if (!arenas) t.note += "M_ARENA_MAX refused; ";
  if (!mmap_threshold) t.note += "M_MMAP_THRESHOLD refused; ";
  if (!trim_threshold) t.note += "M_TRIM_THRESHOLD refused; ";
#endif
  g_tuning = t;
  return t;
}

const MallocTuning& malloc_tuning() { return g_tuning; }

}  // namespace fedtail

// glibc malloc settings that keep freed memory mapped, so that a process allocating tensors of the
// same sizes round after round (evaluation batches, activations, decoded bundles) reuses memory
// instead of faulting in fresh pages.
//
// Why: glibc serves an allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with
// a fresh mmap and unmaps it on free; a thread other than main allocates from an arena of at most
// 64 MiB, so anything larger is always mapped anew. The kernel then zeroes and maps every page on
// first touch: on the development VM about 1.5 GB/s against 23 GB/s for memory already mapped. A
// ResNet-8 forward pass over 1000 CIFAR images allocates 65 MB activations one after another, on a
// task thread: most of an evaluation's time went into page faults.
//
// What tune_malloc() does (glibc only; nothing under AddressSanitizer, whose allocator replaces
// malloc):
// - M_ARENA_MAX 1: every thread allocates from the main heap, which can grow past 64 MiB;
// - M_MMAP_THRESHOLD = keep: allocations below `keep` bytes come from the heap, not a fresh mmap;
// - M_TRIM_THRESHOLD = keep: the heap returns its free top to the kernel only beyond `keep` bytes.
// The memory kept is bounded so: a process holds its high-water mark of live memory plus at most
// `keep` bytes of free heap top (free chunks between live ones are kept, as with glibc's
// defaults). Allocations of `keep` bytes or more are still mapped and unmapped one by one.
//
// `keep` is $FEDTAIL_MALLOC_KEEP_MB when set (0: leave glibc's defaults), else an eighth of
// physical memory, at least 64 MiB and at most 1 GiB.
//
// Call it once, first thing in main(), before any thread starts (an arena a thread already owns
// is kept). Not thread-safe.
#ifndef FEDTAIL_COMMON_BASE_MALLOC_TUNING_H_
#define FEDTAIL_COMMON_BASE_MALLOC_TUNING_H_

#include <cstdint>
#include <string>

namespace fedtail {

struct MallocTuning {
  bool applied = false;     // the settings are in effect
  uint64_t keep_bytes = 0;  // mmap and trim threshold, when applied
  std::string note;         // why not applied ("FEDTAIL_MALLOC_KEEP_MB=0", "AddressSanitizer", ...)
};

// Applies the settings above and returns what it did. Never fails: a setting glibc refuses is
// left at its default and named in `note`.
MallocTuning tune_malloc();

// What the last tune_malloc() call did (default-constructed before any call).
const MallocTuning& malloc_tuning();

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_MALLOC_TUNING_H_

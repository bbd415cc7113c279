// FEDTAIL_SANITIZER_ALLOCATOR is defined (as 1) in builds whose malloc a sanitizer replaces
// (AddressSanitizer with GCC or clang; MemorySanitizer and ThreadSanitizer with clang). Code that
// caches freed memory or tunes malloc turns itself off there, so that the sanitizer still sees
// every allocation and free.
#ifndef FEDTAIL_COMMON_BASE_SANITIZERS_H_
#define FEDTAIL_COMMON_BASE_SANITIZERS_H_

#if defined(__SANITIZE_ADDRESS__)
#define FEDTAIL_SANITIZER_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) || \
    __has_feature(thread_sanitizer)
#define FEDTAIL_SANITIZER_ALLOCATOR 1
#endif
#endif

#endif  // FEDTAIL_COMMON_BASE_SANITIZERS_H_

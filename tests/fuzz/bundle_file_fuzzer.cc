// libFuzzer entry point of the bundle_file target (see tests/fuzz/fuzz_targets.h). Run by
// tools/fuzz.sh.
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fedtail::fuzz::fuzz_bundle_file(data, size);
}

#!/usr/bin/env bash
# Builds fedtail with AddressSanitizer + UndefinedBehaviorSanitizer (-DFEDTAIL_SANITIZE=ON, its own
# build directory) and runs the unit and integration tests under it. Integration tests start the
# sanitized binaries of that build, so the coordinator and clients are checked too.
#   tools/test-sanitizers.sh [extra ctest arguments, e.g. -R Hostile]
# Environment: FEDTAIL_SANITIZE_BUILD_DIR (default build-asan).
# Any ASan report, leak or undefined behaviour aborts the process at once, which fails its test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FEDTAIL_SANITIZE_BUILD_DIR:-$root/build-asan}
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
FEDTAIL_CMAKE_ARGS="-DFEDTAIL_SANITIZE=ON ${FEDTAIL_CMAKE_ARGS:-}" "$root/tools/setup.sh" "$build"
if ! grep -q '^FEDTAIL_SANITIZE:BOOL=ON' "$build/CMakeCache.txt"; then
  echo "test-sanitizers: $build was configured without FEDTAIL_SANITIZE; remove it or pick another FEDTAIL_SANITIZE_BUILD_DIR" >&2
  exit 1
fi
supp="$root/tools/sanitizers"
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" -L 'unit|integration' "$@"

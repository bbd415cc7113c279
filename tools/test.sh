#!/usr/bin/env bash
# Installs and builds what is missing (tools/setup.sh), then runs the whole test suite through CTest.
#   tools/test.sh [extra ctest arguments, e.g. -L unit or -R Partition]
# Tests labelled gpu skip themselves on machines without CUDA.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FEDTAIL_BUILD_DIR:-$root/build}
"$root/tools/setup.sh" "$build"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" "$@"

#!/usr/bin/env bash
# Installs and builds what is missing (tools/setup.sh), then runs the whole test suite through CTest.
#   tools/test.sh [extra ctest arguments, e.g. -L unit or -R Partition]
# Tests labelled gpu skip themselves on machines without CUDA.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FEDTAIL_BUILD_DIR:-$root/build}
"$root/tools/setup.sh" "$build"
# libgomp spin-waits by default, which costs 10-50x when threads outnumber free cores (several
# processes on a small machine); it reads this only at load time, so it is set here.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" "$@"

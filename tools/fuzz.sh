#!/usr/bin/env bash
# Builds fedtail's libFuzzer targets (tests/fuzz, a standalone clang + ASan + UBSan build in
# build-fuzz/) and runs each for a fixed time.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      default: 60 seconds, every target
#   tools/fuzz.sh --help
#
# Targets: bundle_stream, bundle_file, run_config (see tests/fuzz/fuzz_targets.h). Each runs on
# build-fuzz/corpus/<target>/, a working copy refreshed from tests/fuzz/corpus/<target>/ (new
# coverage inputs accumulate there, never in the repository). Crash inputs go to
# build-fuzz/artifacts/<target>/ and libFuzzer's output to build-fuzz/logs/<target>.log.
# Prints per target: seconds, executions, exec/s, crashes. Exit status: 0 when no target crashed,
# 1 when one did (its artifact named), 2 on a usage or setup error.
# Environment: FEDTAIL_FUZZ_ARGS adds libFuzzer flags (e.g. "-max_len=65536 -use_value_profile=1").
# Installs the Debian packages it needs when missing (as tools/setup.sh does; needs root then).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-fuzz"
all_targets=(bundle_stream bundle_file run_config)

# The comment block above, as usage text.
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }

seconds=60
targets=()
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    -*) echo "fuzz: unknown option $arg" >&2; usage >&2; exit 2 ;;
  esac
done
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
if [ "$seconds" -lt 1 ]; then echo "fuzz: SECONDS_PER_TARGET must be >= 1" >&2; exit 2; fi
known() { local k; for k in "${all_targets[@]}"; do [ "$k" = "$1" ] && return 0; done; return 1; }
for t in "$@"; do
  known "$t" || {
    echo "fuzz: unknown target \"$t\" (targets: ${all_targets[*]})" >&2
    exit 2
  }
  targets+=("$t")
done
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

# ---- Toolchain: only what is missing ----
packages=(clang libclang-rt-14-dev cmake ninja-build pkg-config protobuf-compiler libprotobuf-dev
          libssl-dev nlohmann-json3-dev libxxhash-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fuzz: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "fuzz: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# ---- Build ----
if [ ! -f "$build/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S "$root/tests/fuzz" -B "$build" -G Ninja >&2
fi
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/%/_fuzzer}" >&2

# ---- Run ----
# The value of libFuzzer's final "stat::<name>:" line in log $1, or "?".
stat() { sed -n "s/^stat::$2: *//p" "$1" | tail -n 1 | grep . || echo "?"; }

mkdir -p "$build/logs"
failed=()
results=()
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  artifacts="$build/artifacts/$t"
  log="$build/logs/$t.log"
  mkdir -p "$corpus" "$artifacts"
  cp -r "$root/tests/fuzz/corpus/$t/." "$corpus/"
  echo "fuzz: $t for ${seconds}s (log $log)" >&2
  status=0
  # shellcheck disable=SC2086  # FEDTAIL_FUZZ_ARGS is a list of flags
  nice -n 10 "$build/${t}_fuzzer" "$corpus" -max_total_time="$seconds" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" ${FEDTAIL_FUZZ_ARGS:-} \
    >"$log" 2>&1 || status=$?
  # libFuzzer names each input that failed: crash-, leak-, timeout-, oom-, slow-unit- files.
  found=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log" | grep -v '/slow-unit-' || true)
  crashes=$(printf '%s' "$found" | grep -c . || true)
  results+=("$(printf '%-14s %8s %12s %10s %8s' "$t" "$seconds" "$(stat "$log" number_of_executed_units)" \
    "$(stat "$log" average_exec_per_sec)" "$crashes")")
  if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    grep -m 3 -E "ERROR: |SUMMARY: |invariant violated" "$log" >&2 || true
    while IFS= read -r a; do [ -n "$a" ] && failed+=("$t: $a"); done <<<"$found"
    [ -n "$found" ] || failed+=("$t: exit status $status, no artifact (see $log)")
  fi
done

printf '%-14s %8s %12s %10s %8s\n' target seconds executions exec/s crashes
printf '%s\n' "${results[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED; replay an input with build-fuzz/<target>_fuzzer FILE" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "fuzz: no crashes" >&2

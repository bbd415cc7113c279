#!/usr/bin/env bash
# Installs what fedtail needs from Debian's packages (only what is missing) and builds it (Release, Ninja).
# Idempotent: a second run installs nothing and rebuilds only what changed.
#   tools/setup.sh [BUILD_DIR]        default BUILD_DIR: build
# Environment: FEDTAIL_CMAKE_ARGS adds CMake options (e.g. -DFEDTAIL_SANITIZE=ON).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-build}
case "$build" in /*) ;; *) build="$root/$build" ;; esac

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-pthread
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libssl-dev nlohmann-json3-dev libcli11-dev libspdlog-dev zlib1g-dev libstb-dev libxxhash-dev
  libcpp-httplib-dev
  libgtest-dev libbenchmark-dev
  dataset-fashion-mnist gnuplot-nox iproute2
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# LibTorch's CPU GEMMs use OpenBLAS; Debian's alternatives may point at the reference BLAS
# (about 25x slower). Prefer the pthread OpenBLAS when it is installed and not already chosen.
if [ "$(id -u)" -eq 0 ]; then
  for lib in libblas.so.3 liblapack.so.3; do
    alt=$(update-alternatives --list "$lib-x86_64-linux-gnu" 2>/dev/null | grep openblas-pthread | head -n 1 || true)
    if [ -n "$alt" ]; then update-alternatives --set "$lib-x86_64-linux-gnu" "$alt" >/dev/null 2>&1 || true; fi
  done
fi

if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${FEDTAIL_CMAKE_ARGS:-} >&2
fi
cmake --build "$build" -j"$(nproc)" >&2

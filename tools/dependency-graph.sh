#!/usr/bin/env bash
# Draws the CMake dependency graph of fedtail's libraries and binaries (cmake --graphviz: link edges
# only, no external libraries, no tests) to docs/dependency-graph.png and .dot. Configures a scratch
# build folder without the precompiled header (whose reuse would add an edge from every LibTorch
# target to fedtail_data). Needs Graphviz's dot (Debian: graphviz).
#
#   bash tools/dependency-graph.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v dot > /dev/null; then
  echo "dependency-graph: Graphviz's dot is missing (apt-get install graphviz)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/build"
cat > "$work/build/CMakeGraphVizOptions.cmake" <<'OPTS'
set(GRAPHVIZ_GRAPH_NAME "fedtail")
set(GRAPHVIZ_EXTERNAL_LIBS FALSE)
set(GRAPHVIZ_GENERATE_PER_TARGET FALSE)
set(GRAPHVIZ_GENERATE_DEPENDERS FALSE)
set(GRAPHVIZ_IGNORE_TARGETS "^fedtail_plugin_api$" "^fedtail::")
OPTS
cmake -S . -B "$work/build" -DFEDTAIL_PCH=OFF -DFEDTAIL_BUILD_TESTS=OFF \
  --graphviz="$work/fedtail.dot" > "$work/cmake.log" 2>&1 || {
  cat "$work/cmake.log" >&2
  exit 1
}
cp "$work/fedtail.dot" docs/dependency-graph.dot
dot -Tpng -Gdpi=110 -Grankdir=BT docs/dependency-graph.dot -o docs/dependency-graph.png
echo "docs/dependency-graph.png, docs/dependency-graph.dot"

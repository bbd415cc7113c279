#!/usr/bin/env bash
# The main job: installs and builds what is missing (tools/setup.sh), then runs the Fed-LT
# comparison of simulations/configs/demo.json with fedtail-sim (Fashion-MNIST-LT, imbalance factor
# 100, Dirichlet α 0.5, 20 clients; FedAvg, FedProx, FedLoGe, ...) and prints its table. Results,
# curves (PNG) and logs land in sim-out/demo (replaced on each run).
#   tools/demo.sh [extra fedtail-sim flags, e.g. --rounds 5 --device cuda]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FEDTAIL_BUILD_DIR:-$root/build}
"$root/tools/setup.sh" "$build"
# libgomp spin-waits by default, which costs 10-50x when threads outnumber free cores (several
# processes on a small machine); it reads this only at load time, so it is set here.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
cd "$root"
exec "$build/bin/fedtail-sim" simulations/configs/demo.json --out sim-out/demo --overwrite "$@"

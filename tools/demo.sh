#!/usr/bin/env bash
# The main job: installs and builds what is missing (tools/setup.sh), then trains a ResNet-8 on
# Fashion-MNIST-LT (imbalance factor 100) and prints its accuracy overall and by class group.
#   tools/demo.sh [extra fedtail-train flags, e.g. --epochs 1 --device cuda]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FEDTAIL_BUILD_DIR:-$root/build}
"$root/tools/setup.sh" "$build"
# libgomp spin-waits by default, which costs 10-50x when threads outnumber free cores (several
# processes on a small machine); it reads this only at load time, so it is set here.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$build/bin/fedtail-train" --config "$root/simulations/configs/local-fmnist-lt.json" "$@"

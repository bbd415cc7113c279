#!/usr/bin/env bash
# Robust aggregation under attack: real processes over loopback. A fedtail-coordinator, one
# fedtail-client process hosting the honest clients and one process per attacker (fedtail-client
# --attack, red-team mode: sign_flip, scale:100, noise:1, overclaim:1e12), run once per aggregation
# rule; the table gives each run's generic accuracy after the last round (server-side, balanced
# test set), the coordinator's peak resident memory and what the rule held in memory per round.
#
#   tools/attack-bench.sh [--rounds N] [--out DIR] [--build DIR]
#
# Rows: clean (honest clients only, FedAvg), attacked FedAvg, then each strategy.robust option on
# the attacked federation. Needs a build (tools/setup.sh) and Debian's dataset-fashion-mnist.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FEDTAIL_BUILD_DIR:-$root/build}
rounds=8
out=$root/attack-out
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "attack-bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
bin=$build/bin
for b in fedtail-coordinator fedtail-client; do
  [ -x "$bin/$b" ] || { echo "attack-bench: $bin/$b is not built (run tools/setup.sh)" >&2; exit 1; }
done
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$out"

honest=12
attacks=(sign_flip scale:100 noise:1 overclaim:1e12)
clients=$((honest + ${#attacks[@]}))

# run_config NAME ROBUST_JSON MIN_CLIENTS
run_config() {
  cat > "$out/$1.json" <<EOF
{"seed": 7, "threads": 1, "device": "cpu", "rounds": $rounds,
 "strategy": {"name": "fedavg", "min_fit_clients": 2, "fraction_evaluate": 0.0, "robust": $2},
 "federation": {"min_available_clients": $3, "round_timeout_s": 300, "poll_timeout_ms": 2000,
                "heartbeat_interval_ms": 1000, "client_timeout_s": 60, "server_eval": true},
 "data": {"dataset": "fashion-mnist", "max_examples_per_class": 320, "partition": "iid",
          "clients": $clients},
 "model": {"arch": "cnn"},
 "local": {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9}}
EOF
}

# peak RSS (kB) of PID, sampled until it exits; printed at the end.
watch_rss() {
  local pid=$1 peak=0 v
  while kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
    sleep 0.2
  done
  echo "$peak"
}

# run NAME ROBUST_JSON ATTACKED(0|1)
run() {
  local name=$1 robust=$2 attacked=$3 min=$honest
  [ "$attacked" = 1 ] && min=$clients
  run_config "$name" "$robust" "$min"
  rm -rf "$out/$name-state"
  "$bin/fedtail-coordinator" --config "$out/$name.json" --listen 127.0.0.1:0 \
    --state-dir "$out/$name-state" --threads 1 > "$out/$name-coordinator.log" 2>&1 &
  local coordinator=$!
  watch_rss "$coordinator" > "$out/$name.rss" &
  local watcher=$!
  local port=""
  for _ in $(seq 600); do
    [ -s "$out/$name-state/port" ] && port=$(cat "$out/$name-state/port") && break
    sleep 0.2
  done
  [ -n "$port" ] || { echo "attack-bench: $name: the coordinator did not start" >&2; exit 1; }
  local pids=()
  "$bin/fedtail-client" --coordinator "127.0.0.1:$port" --clients "0-$((honest - 1))" \
    --state-dir :memory: --threads 1 --retry-timeout 60 > "$out/$name-honest.log" 2>&1 &
  pids+=($!)
  if [ "$attacked" = 1 ]; then
    local k=$honest
    for a in "${attacks[@]}"; do
      "$bin/fedtail-client" --coordinator "127.0.0.1:$port" --clients "$k-$k" --attack "$a" \
        --state-dir :memory: --threads 1 --retry-timeout 60 > "$out/$name-attacker-$k.log" 2>&1 &
      pids+=($!)
      k=$((k + 1))
    done
  fi
  wait "$coordinator" || { echo "attack-bench: $name: the coordinator failed (see $out/$name-coordinator.log)" >&2; exit 1; }
  for p in "${pids[@]}"; do wait "$p" || true; done
  wait "$watcher"
  local summary=$out/$name-state/summary.json acc held
  acc=$(grep -o '"generic_accuracy": *[0-9.eE+-]*' "$summary" | head -1 | sed 's/.*: *//' || true)
  held=$(grep -o '"buffered_bytes": *[0-9]*' "$out/$name-state/metrics.jsonl" | tail -1 |
    sed 's/.*: *//' || true)
  printf '| %s | %s | %s | %s |\n' "$name" "${acc:-n/a}" \
    "$(awk -v kb="$(cat "$out/$name.rss")" 'BEGIN { printf "%.1f", kb / 1024 }')" \
    "${held:+$((held / 1024)) KiB}" | tee -a "$out/table.md"
}

printf '| run | generic accuracy after %s rounds | coordinator peak RSS (MiB) | updates held per round |\n|---|---|---|---|\n' \
  "$rounds" | tee "$out/table.md"
run clean '{}' 0
run fedavg-attacked '{}' 1
run clip-5 '{"clip_norm": 5}' 1
run median '{"method": "median"}' 1
run trimmed-mean-0.2 '{"method": "trimmed_mean", "trim_fraction": 0.2}' 1
run krum-f3 '{"method": "krum", "byzantine": 3}' 1
run multi-krum-f3 '{"method": "multi_krum", "byzantine": 3}' 1
run bulyan-f3 '{"method": "bulyan", "byzantine": 3}' 1
echo "attack-bench: the table is in $out/table.md; logs and state beside it" >&2

#!/usr/bin/env bash
# local-cluster.sh: a one-node Slurm cluster on this machine, for trying and testing
# tools/slurm/fedtail-sim.sbatch without a real cluster. Everything lives in DIR: a munge key and
# munged (own socket, pid, log and seed files), a generated slurm.conf (this machine as the one
# node, with the CPUs and memory `slurmd -C` finds; no cgroups, no accounting database), and the
# state, spool and log directories of slurmctld and slurmd. Nothing under /etc or /run is used.
#
#   tools/slurm/local-cluster.sh start DIR   # starts munged, slurmctld, slurmd; waits for "idle"
#   export SLURM_CONF=DIR/slurm.conf          # then sbatch, srun, squeue, sinfo use this cluster
#   tools/slurm/local-cluster.sh stop DIR    # cancels its jobs, stops the daemons (by pid file)
#   tools/slurm/local-cluster.sh status DIR  # sinfo and squeue of the cluster
#
# Needs root (slurmd launches jobs as their user) and Debian's slurm-wlm and munge packages
# (apt-get install slurm-wlm munge); the daemons of those packages need not run (and are left
# alone if they do). The ports are the first free ones from 6917 (slurmctld) and 6918 (slurmd),
# so that a real Slurm on the default 6817/6818 keeps working. `start` prints the SLURM_CONF line
# on stdout; its progress goes to stderr. Exit status 0 on success; 1 with a message otherwise
# (a failed `start` stops what it started and names the log to read).
set -euo pipefail

die() {
  echo "local-cluster.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 start|stop|status DIR" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
action=$1
dir=$(realpath -m -- "$2")
conf=$dir/slurm.conf
socket=$dir/munge/munge.socket

# True when nothing listens on TCP port $1 here.
port_free() {
  [[ -z $(ss -Htln "sport = :$1" 2>/dev/null) ]]
}

# The first free port from $1 that is not $2.
free_port_from() {
  local port=$1
  while ! port_free "$port" || [[ $port == "${2:-}" ]]; do
    port=$((port + 2))
    ((port < 7917)) || die "no free port between $1 and 7917"
  done
  echo "$port"
}

# Sends SIGTERM to the process of pid file $1 (if it runs), waits up to 10 s, then SIGKILL.
stop_pid_file() {
  local file=$1 pid
  [[ -f $file ]] || return 0
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop_cluster() {
  if [[ -f $conf && -f $dir/run/slurmctld.pid ]]; then
    # Jobs first: their steps are children of slurmstepd, which outlives slurmd otherwise.
    local jobs
    jobs=$(SLURM_CONF=$conf timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086  # one word per job id
      SLURM_CONF=$conf timeout 10 scancel $jobs 2>/dev/null || true
      for _ in $(seq 50); do
        [[ -z $(SLURM_CONF=$conf timeout 5 squeue -h -o %i 2>/dev/null || true) ]] && break
        sleep 0.2
      done
    fi
  fi
  stop_pid_file "$dir/run/slurmd.pid"
  stop_pid_file "$dir/run/slurmctld.pid"
  # slurmstepd processes left by a job that would not end: those of this cluster's spool only.
  local pid
  for pid in $(pgrep -x slurmstepd 2>/dev/null || true); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  stop_pid_file "$dir/munge/munged.pid"
  rm -f "$socket" "$socket.lock"
}

start_cluster() {
  [[ $(id -u) -eq 0 ]] || die "start: needs root (slurmd launches jobs as their user)"
  local tool
  for tool in munged mungekey slurmctld slurmd sbatch srun sinfo squeue scancel ss; do
    command -v "$tool" >/dev/null || die "start: $tool not found (apt-get install slurm-wlm munge)"
  done
  if [[ -f $dir/run/slurmctld.pid ]] && kill -0 "$(<"$dir/run/slurmctld.pid")" 2>/dev/null; then
    die "start: a cluster already runs in $dir (stop it first)"
  fi
  # The munge socket path must fit a sockaddr_un (108 bytes).
  ((${#socket} < 100)) || die "start: $dir is too long a path for munge's socket (${#socket} bytes)"
  mkdir -p "$dir"/{munge,state,spool,log,run,tmp}
  chmod 0700 "$dir/munge" "$dir/state" "$dir/spool"

  echo "local-cluster.sh: starting munged" >&2
  [[ -f $dir/munge/munge.key ]] || mungekey --create --keyfile="$dir/munge/munge.key"
  chmod 0400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" ||
    die "start: munged failed (see $dir/log/munged.log)"

  local host node_line ctld_port slurmd_port
  host=$(hostname -s)
  # "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=N"
  node_line=$(slurmd -C | grep '^NodeName=') || die "start: slurmd -C did not describe this node"
  ctld_port=$(free_port_from 6917)
  slurmd_port=$(free_port_from 6918 "$ctld_port")
  cat >"$conf" <<EOF
# Generated by tools/slurm/local-cluster.sh: a one-node cluster in $dir.
ClusterName=fedtail-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS=$dir/tmp
# No cgroups: processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
$node_line NodeAddr=127.0.0.1 NodeHostname=$host State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # An empty plugstack.conf beside slurm.conf: the system's /etc/slurm one is not read.
  : >"$dir/plugstack.conf"
  export SLURM_CONF=$conf

  echo "local-cluster.sh: starting slurmctld (port $ctld_port) and slurmd (port $slurmd_port)" >&2
  slurmctld -c -f "$conf" || {
    stop_cluster
    die "start: slurmctld failed (see $dir/log/slurmctld.log)"
  }
  slurmd -f "$conf" -N "$host" || {
    stop_cluster
    die "start: slurmd failed (see $dir/log/slurmd.log)"
  }
  local state=""
  for _ in $(seq 150); do
    state=$(sinfo -h -N -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.2
  done
  if [[ $state != idle ]]; then
    stop_cluster
    die "start: the node is \"${state:-unknown}\" after 30 s, not idle (see $dir/log/slurmctld.log and slurmd.log)"
  fi
  echo "local-cluster.sh: node $host is idle; run: export SLURM_CONF=$conf" >&2
  echo "export SLURM_CONF=$conf"
}

case $action in
  start) start_cluster ;;
  stop) stop_cluster ;;
  status)
    [[ -f $conf ]] || die "status: no cluster in $dir"
    SLURM_CONF=$conf sinfo
    SLURM_CONF=$conf squeue
    ;;
  *) usage ;;
esac

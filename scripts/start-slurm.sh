#!/usr/bin/env bash
# A single-node SLURM on this machine, for CI and the SLURM test (tests/test_slurm.py).
#
#   sudo scripts/start-slurm.sh              # install (Debian/Ubuntu apt) if needed, configure, start
#   sudo scripts/start-slurm.sh --no-install # fail (exit 3) instead of installing missing packages
#   sudo scripts/stop-slurm.sh               # stop what this started (by pid file)
#
# Needs root and no systemd: munged (as user munge), slurmctld and slurmd (-N $SLURM_NODE) are started
# directly and write pid files under /run. Idempotent: daemons already up with the same configuration
# are left running. Settings (environment):
#   SLURM_CPUS       CPUs the node advertises (default: nproc); more than the real count is allowed
#   SLURM_FAKE_GPUS  GPUs the node advertises (default 1): gres "gpu" backed by /dev/null, so that jobs
#                    asking --gpus=1 are schedulable on a machine without GPUs
#   SLURM_NODE       node name (default localhost)
#
# Facts this configuration encodes (slurm 22.05, Debian 12):
#   * no slurmdbd: `sacct` has no job history, so Snakemake's SLURM executor must query job states
#     with `squeue` (--slurm-status-command squeue) and finished jobs must stay visible to squeue
#     long enough: MinJobAge=300 s (the plugin wants >= 3x its status-check interval).
#   * DefMemPerCPU: without it a job that gives no --mem gets the whole node's memory.
#   * a gres gpu line without File= makes slurmd drop the GPU and the node goes INVAL/drained.
set -euo pipefail

INSTALL=1
[ "${1:-}" = "--no-install" ] && INSTALL=0
NODE=${SLURM_NODE:-localhost}
# GNU nproc honours OMP_NUM_THREADS (a test run with OMP_NUM_THREADS=1 would advertise 1 CPU): count without it
CPUS=${SLURM_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
GPUS=${SLURM_FAKE_GPUS:-1}
ETC=/etc/slurm
LOGDIR=/var/log/slurm
SPOOL=/var/spool
export DEBIAN_FRONTEND=noninteractive

die() { echo "start-slurm: $*" >&2; exit "${2:-1}"; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "must run as root" 3

# -- packages ----------------------------------------------------------------------------------------
need=()
for pkg in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "not installed: ${need[*]}" 3
  command -v apt-get >/dev/null || die "no apt-get to install ${need[*]}" 3
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# -- munge -------------------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! running /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
fi
for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n </dev/null | unmunge >/dev/null || die "munge does not work"

# -- configuration -------------------------------------------------------------------------------------
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$ETC" "$LOGDIR" "$SPOOL/slurmctld" "$SPOOL/slurmd"
gres_node=""
[ "$GPUS" -gt 0 ] && gres_node="Gres=gpu:$GPUS"
conf=$(cat <<EOF
# Written by scripts/start-slurm.sh: one node that is controller and compute node.
ClusterName=ichbench-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=300
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb $gres_node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ "$GPUS" -gt 1 ]; then   # one device file per GPU: File=/dev/null counts once
  for i in $(seq 0 $((GPUS - 1))); do [ -e "/dev/fakegpu$i" ] || mknod "/dev/fakegpu$i" c 1 3; done
  gres="NodeName=$NODE Name=gpu File=/dev/fakegpu[0-$((GPUS - 1))]"
elif [ "$GPUS" = 1 ]; then
  gres="NodeName=$NODE Name=gpu Count=1 File=/dev/null"
else
  gres=""
fi
changed=0
write_if_changed() {  # file content
  if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then printf '%s\n' "$2" > "$1"; changed=1; fi
}
write_if_changed "$ETC/slurm.conf" "$conf"
write_if_changed "$ETC/gres.conf" "$gres"

# -- daemons -------------------------------------------------------------------------------------------
stop_pid() {
  running "$1" || return 0
  local pid; pid=$(cat "$1")
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}
if [ "$changed" = 1 ]; then
  stop_pid /run/slurmd.pid
  stop_pid /run/slurmctld.pid
fi
running /run/slurmctld.pid || slurmctld
running /run/slurmd.pid || slurmd -N "$NODE"

# -- wait until the node takes jobs ------------------------------------------------------------------
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*|completing*) break ;;
    drain*|down*|inval*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.2
done
case "$state" in
  idle*|mixed*|allocated*|completing*) ;;
  *) sinfo -N -l >&2 || true
     scontrol show node "$NODE" >&2 || true
     tail -n 30 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 || true
     die "node $NODE is not usable (state: ${state:-unknown})" ;;
esac
echo "SLURM up: $(sinfo -h -o '%P %a %D %T cpus=%c mem=%m gres=%G')"

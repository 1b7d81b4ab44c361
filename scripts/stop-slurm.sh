#!/usr/bin/env bash
# Stop the daemons scripts/start-slurm.sh started, each by its pid file (never by process name).
#   sudo scripts/stop-slurm.sh            # slurmd, slurmctld, munged
#   sudo scripts/stop-slurm.sh --keep-munge
set -u

stop_pid() {  # pidfile
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$1"
}

stop_pid /run/slurmd.pid
stop_pid /run/slurmctld.pid
[ "${1:-}" = "--keep-munge" ] || stop_pid /run/munge/munged.pid
echo "SLURM stopped"

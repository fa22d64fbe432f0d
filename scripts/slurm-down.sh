#!/bin/sh
# Stops the daemons scripts/slurm-up.sh started — slurmd, slurmctld, munged — by the PIDs in
# their pidfiles (never by name): SIGTERM, up to 5 s each, then SIGKILL.
for p in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid; do
  [ -f "$p" ] || continue
  pid=$(cat "$p")
  if ! kill -TERM "$pid" 2>/dev/null; then rm -f "$p"; continue; fi
  n=0; while kill -0 "$pid" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
  if kill -0 "$pid" 2>/dev/null; then echo "slurm: SIGKILL $pid ($p)" >&2; kill -KILL "$pid"; fi
  echo "slurm: stopped $p ($pid)" >&2
  rm -f "$p"
done

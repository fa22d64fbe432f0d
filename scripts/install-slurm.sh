#!/usr/bin/env bash
# Installs Debian's Slurm (22.05 on Debian 12: slurmctld, slurmd, the client commands) and munge,
# for the tests that run sweeps as real Slurm job arrays (tests/shards.rs, `.ci/run`). Idempotent:
# does nothing when slurmctld, slurmd and sbatch are already there. Needs root (apt-get).
# Then: scripts/slurm-up.sh starts a one-node cluster; scripts/slurm-down.sh stops it.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
  && command -v munged >/dev/null; then
  echo "slurm: installed ($(sbatch --version))" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm: not installed, and installing it needs root (apt-get install slurm-wlm munge)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A clean machine may have no package lists yet.
apt-get update -qq >&2 || echo "slurm: apt-get update failed; trying the lists there are" >&2
apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2
echo "slurm: installed ($(sbatch --version))" >&2

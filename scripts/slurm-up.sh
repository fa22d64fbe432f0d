#!/bin/sh
# Starts a one-node Slurm cluster on this machine for tests: munged, slurmctld and slurmd as
# root, without systemd, the node named after `hostname -s`, NGPU fake GPUs (default 4) as GRES so
# that `--gres=gpu:1` array tasks run side by side with distinct CUDA_VISIBLE_DEVICES, and NCPU
# advertised CPUs (default 8, more than a small machine has: config_overrides), so four tasks run
# at once. No accounting (`sacct` is off; `scontrol show job` keeps a job's record MinJobAge=300 s).
# The controller starts with a clean state (no jobs of an earlier cluster). Daemons already
# running are stopped first (scripts/slurm-down.sh). Returns once `sinfo` says the node is idle.
# Needs root and scripts/install-slurm.sh.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
H=$(hostname -s)
NGPU=${NGPU:-4}
NCPU=${NCPU:-8}
MEM=${MEM:-$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')}

"$here/slurm-down.sh" >/dev/null 2>&1 || true

# munge: Debian's package makes the key; /run/munge must exist and belong to munge.
[ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; }
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
su -s /bin/sh munge -c /usr/sbin/munged
munge -n | unmunge >/dev/null

# Fake GPUs: slurmd only stat()s them, but they must be distinct character devices (plain files
# never set CUDA_VISIBLE_DEVICES; one file for all makes slurmd exit).
mkdir -p /var/lib/fakegpu
i=0; while [ $i -lt "$NGPU" ]; do [ -c /var/lib/fakegpu/nvidia$i ] || mknod /var/lib/fakegpu/nvidia$i c 195 $i; i=$((i+1)); done

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=icet-test
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
SlurmdParameters=config_overrides
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MinJobAge=300
KillWait=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$H CPUs=$NCPU Boards=1 SocketsPerBoard=1 CoresPerSocket=$NCPU ThreadsPerCore=1 RealMemory=$MEM Gres=gpu:$NGPU State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=$H Name=gpu File=/var/lib/fakegpu/nvidia[0-$((NGPU-1))]" > /etc/slurm/gres.conf

/usr/sbin/slurmctld -c
/usr/sbin/slurmd
i=0
until [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; do
  i=$((i+1))
  if [ $i -gt 120 ]; then
    echo "slurm: the node did not become idle" >&2; sinfo >&2 || true
    tail -20 /var/log/slurm/slurmd.log /var/log/slurm/slurmctld.log >&2
    exit 1
  fi
  sleep 0.25
done
sinfo -o "%P %N %T %c %m %G" >&2

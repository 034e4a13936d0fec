#!/usr/bin/env bash
# Horovod Elastic host discovery inside a SLURM allocation: the nodes the job holds now,
# each with its tasks per node as slots; Horovod calls this every second. In the batch
# script (horovodrun, not srun, starts the workers, over ssh between the nodes):
#   #SBATCH --no-kill   # without it, SLURM ends the whole job when one of its nodes fails
#   horovodrun -np 4 --min-np 2 --max-np 8 \
#       --host-discovery-script slurm/discover-hosts.sh hvd-dqn train --elastic ...
# What SLURM gives: the job's node list as slurmctld has it now (`scontrol show job`),
# not SLURM_JOB_NODELIST, which is fixed when the job starts. That list loses a node that
# failed under --no-kill or was released (`scontrol update JobId=... NumNodes=...`);
# Horovod also drops a failed host by itself. It never gains one: SLURM does not add
# nodes to a running job, so --max-np beyond the allocation is never reached.
# Outside slurmctld's reach (scontrol fails) it falls back to SLURM_JOB_NODELIST.
# Slots: SLOTS, else SLURM_NTASKS_PER_NODE, else 1.
set -euo pipefail
nodes=${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set: run this inside a SLURM job}
if live=$(scontrol show job "${SLURM_JOB_ID:?SLURM_JOB_ID is not set}" 2>/dev/null); then
  live=$(sed -n 's/^ *NodeList=\([^ ]*\).*/\1/p' <<<"$live")
  [ -z "$live" ] || [ "$live" = "(null)" ] || nodes=$live
fi
slots=${SLOTS:-${SLURM_NTASKS_PER_NODE:-1}}
slots=${slots%%(*}  # "4(x2)" -> 4
scontrol show hostnames "$nodes" | sed "s/\$/:$slots/"

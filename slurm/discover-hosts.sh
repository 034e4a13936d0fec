#!/usr/bin/env bash
# Horovod Elastic host discovery inside a SLURM allocation: the allocation's nodes, each
# with its tasks per node as slots; Horovod calls this every second. In the batch script
# (horovodrun, not srun, starts the workers, over ssh between the nodes):
#   horovodrun -np 4 --min-np 2 --max-np 8 \
#       --host-discovery-script slurm/discover-hosts.sh hvd-dqn train --elastic ...
# A node that fails is dropped by Horovod (and its rank's work since the last commit
# redone); nodes added to the job's node list (scontrol update) are picked up.
# Slots: SLOTS, else SLURM_NTASKS_PER_NODE, else 1.
set -euo pipefail
nodes=${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set: run this inside a SLURM job}
slots=${SLOTS:-${SLURM_NTASKS_PER_NODE:-1}}
slots=${slots%%(*}  # "4(x2)" -> 4
scontrol show hostnames "$nodes" | sed "s/\$/:$slots/"

#!/usr/bin/env bash
# AWS Batch multi-node parallel job: every node runs this script with the arguments of
# `hvd-dqn train`; AWS Batch sets the AWS_BATCH_JOB_* variables below on each node.
#
#   every node   starts an ssh server (mpirun reaches the nodes through it);
#   child node   reports "ADDRESS slots=SLOTS" into the main node's host file over ssh,
#                then waits while the main node's ssh server answers, and exits 0;
#   main node    waits until every child node has reported, puts itself first in the
#                host file, then runs `mpirun -np TOTAL --hostfile FILE hvd-dqn train
#                --run-dir RUN_DIR "$@"` and exits with the ranks' code (75: stopped with
#                a checkpoint; Batch retries the job and the same command continues
#                RUN_DIR). mpirun, not horovodrun: horovodrun turns every failure of
#                its mpirun, 75 included, into 1.
# Addresses, one way for every node: the source address of its route towards another
# node (`ip route get`): a child's towards the main node, the main node's towards the
# first child that reported (localhost for a job of one node).
# Stopping (Batch sends SIGTERM to every node's first process, this script, when the job
# is terminated, and to the child nodes once the main node has exited): the main node passes it to mpirun as
# SIGUSR1, which Open MPI forwards to every rank (a SIGTERM to mpirun would SIGKILL them
# 1 s later), waits for their checkpoint, and exits 75; a child node sends SIGTERM to
# its own ranks (the processes named hvd-dqn; a repeated stop signal is one stop for a
# rank), stays until they have exited, and exits 0, so that its container does not end
# under a rank still writing its part of the checkpoint.
#
# From AWS Batch: AWS_BATCH_JOB_NODE_INDEX, AWS_BATCH_JOB_MAIN_NODE_INDEX,
#   AWS_BATCH_JOB_NUM_NODES, AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS (child nodes).
# Settings: RUN_DIR (default /runs/${AWS_BATCH_JOB_ID%%#*}: put /runs on shared storage
#   such as EFS), SLOTS (ranks per node, default: the node's CPUs or GPUs), SSH_PORT
#   (default 22; the image uses 2222), SSHD_CONFIG (the ssh server's config file),
#   HOSTFILE (default /tmp/hvd-dqn-hostfile), NODE_WAIT (seconds the main node waits for
#   the others, default 600).
set -uo pipefail
NODE=${AWS_BATCH_JOB_NODE_INDEX:?AWS_BATCH_JOB_NODE_INDEX is not set: run this on AWS Batch multi-node}
MAIN=${AWS_BATCH_JOB_MAIN_NODE_INDEX:?AWS_BATCH_JOB_MAIN_NODE_INDEX is not set}
NODES=${AWS_BATCH_JOB_NUM_NODES:?AWS_BATCH_JOB_NUM_NODES is not set}
JOB=${AWS_BATCH_JOB_ID:-hvd-dqn}
RUN_DIR=${RUN_DIR:-/runs/${JOB%%#*}}
SSH_PORT=${SSH_PORT:-22}
SSHD_CONFIG=${SSHD_CONFIG:-/etc/ssh/sshd_config}
HOSTFILE=${HOSTFILE:-/tmp/hvd-dqn-hostfile}
NODE_WAIT=${NODE_WAIT:-600}
if [ -z "${SLOTS:-}" ]; then
  SLOTS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${SLOTS:-0}" -gt 0 ] || SLOTS=$(nproc)
fi
say() { echo "hvd-dqn batch node $NODE/$NODES: $*"; }

# The main node's host file, empty before any child node can reach this node's sshd.
[ "$NODE" != "$MAIN" ] || : >"$HOSTFILE"
sshd_pid=
# shellcheck disable=SC2317  # called by the trap
stop_sshd() { [ -z "$sshd_pid" ] || kill "$sshd_pid" 2>/dev/null; }
trap stop_sshd EXIT
"$(command -v sshd || echo /usr/sbin/sshd)" -D -f "$SSHD_CONFIG" -p "$SSH_PORT" &
sshd_pid=$!

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$SSH_PORT" 2>/dev/null; }
address_towards() { ip -4 route get "$1" | sed -n 's/.* src \([0-9.]*\).*/\1/p'; }

if [ "$NODE" != "$MAIN" ]; then
  # shellcheck disable=SC2317  # called by the trap
  stop_ranks() {
    say "SIGTERM: stopping this node's ranks"
    pkill -TERM -x hvd-dqn
    while pgrep -x hvd-dqn >/dev/null; do sleep 1; done
    exit 0
  }
  trap stop_ranks TERM INT
  main=${AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS:?AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS is not set}
  me=$(address_towards "$main")
  say "reporting $me slots=$SLOTS to the main node $main"
  deadline=$((SECONDS + NODE_WAIT))
  until ssh -p "$SSH_PORT" "$main" "echo '$me slots=$SLOTS' >>'$HOSTFILE'"; do
    [ "$SECONDS" -lt "$deadline" ] || { say "main node $main unreachable for ${NODE_WAIT}s"; exit 1; }
    sleep 2
  done
  # The ranks here are started by the main node's mpirun through sshd; stay until the
  # main node is gone (AWS Batch ends the job with the main node anyway).
  while answers "$main"; do sleep 5; done
  say "main node gone; exiting"
  exit 0
fi

say "main node; waiting for $((NODES - 1)) more"
deadline=$((SECONDS + NODE_WAIT))
while [ "$(wc -l <"$HOSTFILE")" -lt "$((NODES - 1))" ]; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "only $(wc -l <"$HOSTFILE") of $((NODES - 1)) child nodes reported within ${NODE_WAIT}s"
    exit 1
  fi
  sleep 1
done
me=localhost
[ "$NODES" -eq 1 ] || me=$(address_towards "$(head -n 1 "$HOSTFILE" | cut -d' ' -f1)")
{ echo "$me slots=$SLOTS"; cat "$HOSTFILE"; } >"$HOSTFILE.new" && mv "$HOSTFILE.new" "$HOSTFILE"
total=$(awk -F'slots=' '{n += $2} END {print n}' "$HOSTFILE")
say "hosts: $(tr '\n' ' ' <"$HOSTFILE"); $total ranks"
# What the ranks on other nodes need from this environment (horovodrun passes it all).
exports=()
for name in $(compgen -e); do
  case $name in
    PATH | LD_LIBRARY_PATH | PYTHON* | TF_* | HOROVOD_* | NCCL_* | CUDA_*) exports+=(-x "$name") ;;
  esac
done
# In the background, so that Batch's SIGTERM (to this script, the container's first
# process) runs the trap while the ranks train.
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  mpirun -np "$total" --hostfile "$HOSTFILE" -bind-to none -map-by slot \
  -mca plm_rsh_args "-p $SSH_PORT" "${exports[@]}" \
  hvd-dqn train --run-dir "$RUN_DIR" "$@" &
run=$!
trap 'say "SIGTERM: stopping the ranks (SIGUSR1 through mpirun)"; kill -USR1 "$run" 2>/dev/null' TERM INT
while :; do
  wait "$run"
  code=$?
  kill -0 "$run" 2>/dev/null || break
done
say "training exited with $code"
exit "$code"

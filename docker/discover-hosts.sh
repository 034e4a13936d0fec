#!/usr/bin/env bash
# Horovod Elastic host discovery from a host file that you (or your autoscaler) edit while
# the job runs:
#   horovodrun -np 8 --min-np 4 --max-np 16 \
#       --host-discovery-script "docker/discover-hosts.sh /shared/hosts" \
#       hvd-dqn train --elastic ...
# FILE lists one host per line as `host:slots`, `host slots=N` (an mpirun host file) or
# `host` (HOROVOD_SLOTS or 1 slot); blank lines and # comments are skipped. Horovod runs
# this every second and adds or removes workers as the list changes. Prints `host:slots`
# lines, as Horovod expects; exits 1 when the file cannot be read.
set -euo pipefail
file=${1:?usage: discover-hosts.sh HOSTFILE}
[ -r "$file" ] || { echo "discover-hosts.sh: cannot read $file" >&2; exit 1; }
awk -v default="${HOROVOD_SLOTS:-1}" '
  { sub(/#.*/, "") }
  NF == 0 { next }
  $1 ~ /:/ { print $1; next }
  $2 ~ /^slots=/ { split($2, s, "="); print $1 ":" s[2]; next }
  { print $1 ":" default }
' "$file"

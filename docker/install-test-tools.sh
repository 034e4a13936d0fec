#!/usr/bin/env bash
# What `make test` needs beyond the Python stack, from Debian's packages, idempotently:
#   slurm-wlm and munge  the real one-node SLURM of tests/test_slurm.py
#   the shell linter     lints the shell scripts (slurm/, docker/, .ci/) with shellcheck
# Not part of docker/install.sh: the images do not carry a scheduler.
set -euo pipefail
missing=()
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "[install] not root: install ${missing[*]} yourself (the SLURM tests are skipped without them)" >&2
  exit 0
fi
echo "[install] installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null

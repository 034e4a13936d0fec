#!/usr/bin/env bash
# What `make test` and `make image` need beyond the Python stack, from Debian's packages,
# idempotently:
#   slurm-wlm and munge          the real one-node SLURM of tests/test_slurm.py
#   openssh-server, iproute2     the two hosts (network namespaces) of tests/test_hosts.py
#   podman, runc, uidmap,        build and run the image (docker/image.sh); debootstrap
#   debootstrap                  makes its base where no registry is reachable
#   the shell linter             lints the shell scripts (slurm/, docker/, .ci/)
# Not part of docker/install.sh: the images do not carry a scheduler.
set -euo pipefail
missing=()
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
command -v shellcheck >/dev/null || missing+=(shellcheck)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ip >/dev/null || missing+=(iproute2)
command -v podman >/dev/null || missing+=(podman uidmap)
[ -x /usr/sbin/runc ] || missing+=(runc)
[ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "[install] not root: install ${missing[*]} yourself (the SLURM, two-host and image steps need them)" >&2
  exit 0
fi
echo "[install] installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# For the images, as root: the unprivileged user `hvd` (uid 1000) with an ssh server and
# client, so that mpirun/horovodrun in one container reaches the others (multi-node,
# AWS Batch, Kubernetes MPIJob).
#   server  /home/hvd/.sshd/sshd_config, port $SSH_PORT (default 2222: a non-root user
#           cannot bind 22), its own host key, keys from ~/.ssh/authorized_keys;
#   client  /etc/ssh/ssh_config.d/hvd_dqn.conf: that port, no host-key prompts;
#   keys    ~/.ssh/id_ed25519, shared by every container of the image and its own
#           authorized key. A mount over /home/hvd/.ssh (the MPI operator's
#           sshAuthMountPath, your own keys) replaces them; the server and client
#           settings stay.
set -euo pipefail
port=${SSH_PORT:-2222}
home=/home/hvd
useradd --create-home --uid 1000 --shell /bin/bash hvd
mkdir -m 700 "$home/.ssh" "$home/.sshd"
ssh-keygen -q -t ed25519 -N '' -f "$home/.ssh/id_ed25519"
cp "$home/.ssh/id_ed25519.pub" "$home/.ssh/authorized_keys"
ssh-keygen -q -t ed25519 -N '' -f "$home/.sshd/host_ed25519_key"
cat >"$home/.sshd/sshd_config" <<CONF
Port $port
HostKey $home/.sshd/host_ed25519_key
PidFile $home/.sshd/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
PasswordAuthentication no
PermitUserEnvironment no
# Mounted keys (Kubernetes secrets) are owned by root.
StrictModes no
CONF
cat >/etc/ssh/ssh_config.d/hvd_dqn.conf <<CONF
Host *
  Port $port
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
CONF
chmod 600 "$home/.ssh"/* "$home/.sshd"/*
chown -R hvd:hvd "$home/.ssh" "$home/.sshd"

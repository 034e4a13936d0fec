#!/usr/bin/env bash
# Build and check the CPU image with podman (or docker where a daemon runs).
#
#   docker/image.sh build    build $IMAGE from docker/Dockerfile
#   docker/image.sh test     run `hvd-dqn doctor`, log in to the image's ssh server, and
#                            a short 2-rank training inside $IMAGE; check the run
#                            directory it wrote to a mounted volume
#   docker/image.sh base     make $BASE_IMAGE from a debootstrapped Debian bookworm
#
# Environment:
#   ENGINE      podman or docker (default: docker if its daemon answers, else podman)
#   IMAGE       the image to build and test (default hvd-dqn:cpu)
#   BASE_IMAGE  the Dockerfile's base (default python:3.11-slim-bookworm, pulled). Set
#               BASE_IMAGE=local to build without a registry: a Debian bookworm root
#               filesystem made by debootstrap is imported as localhost/bookworm-py.
#   PODMAN_ROOT where podman keeps its images when this script configures it
#               (default .podman in the checkout; see podman_config below)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-hvd-dqn:cpu}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
LOCAL_BASE=localhost/bookworm-py:latest

say() { printf '[image] %s\n' "$*"; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

# Podman as root on a machine without systemd (CI, most batch nodes): the cgroupfs
# manager, runc, the host's network and explicit ulimits (without them runc fails with
# "setrlimit RLIMIT_NOFILE: Operation not permitted"); images under $PODMAN_ROOT.
# A podman the user configured (CONTAINERS_CONF set) is left alone.
podman_config() {
  [ -z "${CONTAINERS_CONF:-}" ] || return 0
  local dir=${PODMAN_ROOT:-$ROOT/.podman}
  mkdir -p "$dir"
  cat >"$dir/containers.conf" <<EOF
[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
  cat >"$dir/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
EOF
  export CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf
}

pick_engine() {
  if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
      ENGINE=docker
    elif command -v podman >/dev/null; then
      ENGINE=podman
    else
      die "neither podman nor a running docker daemon found (apt-get install podman runc)"
    fi
  fi
  if [ "$ENGINE" = podman ]; then
    podman_config
  fi
}

# A Debian bookworm base with Python 3.11, made here from Debian's packages: debootstrap
# (about 70 s), the host's apt sources and extra CA certificates (pip inside the build
# goes through the same TLS proxy the host trusts), then imported as an image.
build_base() {
  [ "$ENGINE" = podman ] || die "BASE_IMAGE=local needs podman (docker: docker import the same tarball)"
  if podman image exists "$LOCAL_BASE"; then
    say "$LOCAL_BASE exists"
    return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
  local tmp mirror
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp'" RETURN
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  say "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-dev,python3-pip,ca-certificates \
    bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$tmp/rootfs/etc/apt/sources.list.d/"
  fi
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$tmp/rootfs/usr/local/share/ca-certificates/"
    chroot "$tmp/rootfs" update-ca-certificates >/dev/null
  fi
  rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"*
  tar --numeric-owner -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
  podman import --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$LOCAL_BASE" >/dev/null
  say "imported $LOCAL_BASE"
}

build() {
  local base=$BASE_IMAGE
  if [ "$base" = local ]; then
    build_base
    base=$LOCAL_BASE
  fi
  say "building $IMAGE on $base with $ENGINE"
  local net=()
  [ "$ENGINE" = podman ] && net=(--network host --format docker)
  "$ENGINE" build "${net[@]}" --build-arg "BASE_IMAGE=$base" \
    -f "$ROOT/docker/Dockerfile" -t "$IMAGE" "$ROOT"
}

# The image as a user runs it: doctor, a replay too large for `--memory` refused, then
# `horovodrun -np 2 hvd-dqn train` writing its run directory to a volume; the run must be
# complete with its export.
test_image() {
  "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: run docker/image.sh build"
  local vol
  vol=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$vol'" EXIT
  chown 1000:1000 "$vol" 2>/dev/null || chmod 777 "$vol"
  say "hvd-dqn doctor in $IMAGE"
  "$ENGINE" run --rm "$IMAGE" hvd-dqn doctor
  say "the image's ssh server (multi-node): user hvd logs in with the image's key"
  local who
  # shellcheck disable=SC2016  # expanded inside the container
  who=$("$ENGINE" run --rm --network none "$IMAGE" \
    bash -c '/usr/sbin/sshd -f "$SSHD_CONFIG" && ssh 127.0.0.1 id -un')
  [ "$who" = hvd ] || die "ssh into the image's own server gave '$who', not hvd"
  say "a replay larger than the container's --memory is refused: exit 2, nothing written"
  local out rc=0
  out=$("$ENGINE" run --rm --memory 1g -v "$vol:/runs" "$IMAGE" hvd-dqn train \
    --config minatar --set replay.capacity=4000000 --total-steps 1000 --run-dir /runs/too-big 2>&1) || rc=$?
  [ "$rc" = 2 ] || die "a 1.5 GiB replay under --memory 1g exited $rc, not 2: $out"
  grep -q "the cgroup limit" <<<"$out" || die "the refusal does not name the cgroup limit: $out"
  [ ! -e "$vol/too-big" ] || die "the refused run left $vol/too-big behind"
  say "ok: $out"
  say "horovodrun -np 2 hvd-dqn train in $IMAGE"
  "$ENGINE" run --rm -v "$vol:/runs" "$IMAGE" \
    horovodrun -np 2 hvd-dqn train --run-dir /runs/cartpole --no-progress \
    --total-steps 3000 --set run.eval_episodes=2
  local want
  for want in config.yaml metrics.jsonl checkpoints model/saved_model.pb summary.json; do
    [ -e "$vol/cartpole/$want" ] || die "the run directory on the volume has no $want"
  done
  python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["env_steps"] < 3000)' \
    "$vol/cartpole/summary.json" || die "summary.json on the volume records fewer than 3000 env steps"
  say "ok: the run directory on the volume is complete"
}

pick_engine
case "${1:-}" in
  build) build ;;
  test) test_image ;;
  base) build_base ;;
  *) echo "usage: docker/image.sh build|test|base" >&2; exit 2 ;;
esac

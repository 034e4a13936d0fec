#!/usr/bin/env bash
# Set up the hvd_dqn stack from nothing, idempotently. The Dockerfiles call this same
# script, so CI exercises the container recipe's steps.
#
#   1. Open MPI (and a compiler, CMake) from Debian's packages, if missing;
#   2. a virtualenv ($VENV, default .venv) with $PYTHON;
#   3. TensorFlow pinned in $CONSTRAINTS ($TF_PACKAGE: tensorflow-cpu here,
#      `tensorflow[and-cuda]` on GPU machines); reinstalled when the installed one is
#      another version or another build (the CPU package when CUDA was asked, or the
#      reverse, or `tensorflow` without the NVIDIA libraries `[and-cuda]` brings);
#   4. Horovod 0.28.1 compiled from its sdist against that TensorFlow with TF, MPI and
#      Gloo on (NCCL too when HOROVOD_GPU_OPERATIONS=NCCL is set); skipped when the
#      installed Horovod already imports against the installed TensorFlow, has what was
#      asked (NCCL when asked) and TensorFlow was not just reinstalled. The wheel it
#      compiles is kept in $WHEELS/<TensorFlow package>-<version>-py<X.Y>[-nccl]/, installed from
#      there next time (the image build gets the one `make test` compiled, so CI compiles
#      Horovod once); a kept wheel that does not import is removed and Horovod compiled;
#   5. the package, editable, with $EXTRAS;
#   6. `horovodrun --check-build` must show TensorFlow, MPI and Gloo, and NCCL when
#      asked.
#
# Environment: VENV, PYTHON, CONSTRAINTS, TF_PACKAGE, EXTRAS (empty: none), WHEELS
# (default docker/wheels, inside the image's build context; WHEELS= keeps none),
# HOROVOD_GPU_OPERATIONS, and UNTIL=horovod to stop after step 4 (the image builds
# Horovod in a layer of its own, before the source is copied in).
# `source docker/install.sh` only defines the decisions below (tests drive them).

# The decisions, as functions of their inputs (no side effects) -----------------------

# The distribution name a pip requirement names, normalised: "tensorflow[and-cuda]" and
# "Tensorflow_CPU==2.18.1" are "tensorflow" and "tensorflow-cpu".
dist_name() { local n=${1%%\[*}; n=${n%%[=<>!~;]*}; n=${n,,}; echo "${n//_/-}"; }

# Why TensorFlow must be (re)installed, on stdout (status 0), or status 1 when the
# installed one is what was asked. $1 the requirement asked (TF_PACKAGE), $2 the pinned
# version, $3 `pip list --format=freeze` of the virtualenv.
tf_reinstall_reason() {
  local want=$1 version=$2 freeze=$3 name line ver other installed=""
  want=$(dist_name "$want")
  case $want in
    tensorflow-cpu) other=tensorflow ;;
    *) other=tensorflow-cpu ;;
  esac
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    name=$(dist_name "$line")
    ver=${line#*==}
    [ "$name" = "$want" ] && installed=$ver
    if [ "$name" = "$other" ]; then
      echo "$other $ver is installed, but $1 was asked"
      return 0
    fi
  done <<<"$freeze"
  if [ -z "$installed" ]; then
    echo "$want is not installed"
  elif [ "$installed" != "$version" ]; then
    echo "$want $installed is installed, $version is pinned"
  elif [[ $1 == *and-cuda* ]] && ! grep -qi '^nvidia[-_]cudnn[-_]cu' <<<"$freeze"; then
    echo "$want is installed without the NVIDIA libraries of [and-cuda]"
  else
    return 1
  fi
}

# Why Horovod must be (re)built, on stdout (status 0), or status 1 when it need not be.
# $1 the pinned version; $2 what the installed one reports: "VERSION mpi gloo [nccl]",
# or empty when it is missing or does not import against this TensorFlow; $3 the GPU
# operations asked (HOROVOD_GPU_OPERATIONS); $4 non-empty when TensorFlow was just
# (re)installed.
horovod_rebuild_reason() {
  local want=$1 built=$2 gpu_ops=$3 tf_changed=$4
  if [ -n "$tf_changed" ]; then
    echo "TensorFlow was reinstalled"
  elif [ -z "$built" ]; then
    echo "no horovod that imports against this TensorFlow"
  elif [ "${built%% *}" != "$want" ]; then
    echo "horovod ${built%% *} is installed, $want is pinned"
  elif [[ " $built " != *" mpi "* || " $built " != *" gloo "* ]]; then
    echo "horovod was built without MPI or Gloo ($built)"
  elif [ "$gpu_ops" = NCCL ] && [[ " $built " != *" nccl "* ]]; then
    echo "HOROVOD_GPU_OPERATIONS=NCCL was asked, but horovod was built without NCCL"
  else
    return 1
  fi
}

# What the Horovod of the Python $1 has: "VERSION mpi gloo [nccl]"; nothing if it is
# missing or does not import against its TensorFlow (HorovodVersionMismatchError after
# a TensorFlow change).
horovod_built() {
  "$1" - <<'PYEOF' 2>/dev/null || true
import horovod, horovod.tensorflow as hvd
print(horovod.__version__, *[n for n, on in
      (("mpi", hvd.mpi_built()), ("gloo", hvd.gloo_built()), ("nccl", hvd.nccl_built())) if on])
PYEOF
}

# What `horovodrun --check-build` ($1) does not show as built among $2...
check_build_missing() {
  local out=$1 want
  shift
  for want in "$@"; do
    grep -qE "\[X\] $want\b" <<<"$out" || echo "$want"
  done
}

# Sourced: stop here, with only the functions above defined.
# shellcheck disable=SC2317  # reached when run, not when sourced
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
CONSTRAINTS=${CONSTRAINTS:-$ROOT/docker/constraints.txt}
TF_PACKAGE=${TF_PACKAGE:-tensorflow-cpu}
EXTRAS=${EXTRAS-test}
UNTIL=${UNTIL:-}
WHEELS=${WHEELS-$ROOT/docker/wheels}

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

[ -f "$CONSTRAINTS" ] || die "constraints file $CONSTRAINTS not found"
pin() { sed -n "s/^$1==//p" "$CONSTRAINTS"; }
HVD_VERSION=$(pin horovod)
[ -n "$HVD_VERSION" ] || die "$CONSTRAINTS pins no horovod version"

# 1. System packages ------------------------------------------------------------
missing=()
command -v mpirun >/dev/null || missing+=(openmpi-bin libopenmpi-dev)
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# 2. Virtualenv -------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS")

# 3. TensorFlow ---------------------------------------------------------------------
TF_VERSION=$(pin tensorflow-cpu)
tf_changed=
if reason=$(tf_reinstall_reason "$TF_PACKAGE" "$TF_VERSION" "$("$PY" -m pip list --format=freeze 2>/dev/null)"); then
  say "installing $TF_PACKAGE $TF_VERSION ($reason)"
  # The CPU and CUDA builds are two distributions of one `tensorflow` package: remove
  # both, or the one left behind keeps (or later deletes) files of the other.
  "$PY" -m pip uninstall -q -y tensorflow tensorflow-cpu 2>/dev/null || true
  "${PIP[@]}" "$TF_PACKAGE"
  tf_changed=1
fi

# 4. Horovod, compiled against the TensorFlow above -----------------------------------
# Why the installed Horovod will not do ($1: TensorFlow was just reinstalled), or status 1.
horovod_lacks() {
  horovod_rebuild_reason "$HVD_VERSION" "$(horovod_built "$PY")" "${HOROVOD_GPU_OPERATIONS:-}" "$1"
}
# A kept wheel is only reused for the TensorFlow (and NCCL choice) it was compiled against.
kept=""
if [ -n "$WHEELS" ]; then
  py_tag=$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}.{sys.version_info[1]}")')
  kept=$WHEELS/$(dist_name "$TF_PACKAGE")-$TF_VERSION-$py_tag${HOROVOD_GPU_OPERATIONS:+-${HOROVOD_GPU_OPERATIONS,,}}
fi
install_kept_wheel() {
  local wheel
  wheel=$(compgen -G "$kept/horovod-$HVD_VERSION-*.whl" | head -1) || return 1
  say "installing horovod $HVD_VERSION from the kept wheel $wheel"
  if "${PIP[@]}" --force-reinstall --no-deps "$wheel" && "${PIP[@]}" "$wheel" &&
    ! horovod_lacks "" >/dev/null; then
    return 0
  fi
  say "the kept wheel does not import against TensorFlow $TF_VERSION here; removing it"
  rm -f "$wheel"
  return 1
}
compile_horovod() {
  local out
  out=$(mktemp -d)
  "${PIP[@]}" "cmake<4" packaging
  # The build must see the TensorFlow installed above: no build isolation, no cached
  # wheel (a wheel cached against another TensorFlow fails with a version mismatch).
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} \
    "$PY" -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-build-isolation \
    --no-deps -w "$out" "horovod==$HVD_VERSION"
  "${PIP[@]}" --force-reinstall --no-deps "$out"/horovod-*.whl
  "${PIP[@]}" "$out"/horovod-*.whl  # its runtime dependencies
  if reason=$(horovod_lacks ""); then
    die "horovod $HVD_VERSION built, but $reason"
  fi
  if [ -n "$kept" ]; then
    mkdir -p "$kept"
    mv "$out"/horovod-*.whl "$kept"/
    say "kept the wheel in $kept"
  fi
  rm -rf "$out"
}
if ! reason=$(horovod_lacks "$tf_changed"); then
  say "horovod $HVD_VERSION already built against this TensorFlow; skipping the build"
elif [ -z "$kept" ] || ! install_kept_wheel; then
  say "building horovod $HVD_VERSION from source, about 5 minutes on 2 cores ($reason)"
  compile_horovod
fi

[ "$UNTIL" != horovod ] || exit 0

# 5. The package ---------------------------------------------------------------------
# mpi4py is compiled against the system Open MPI (a binary wheel may carry another MPI).
say "installing hvd_dqn${EXTRAS:+[$EXTRAS]}"
PIP_NO_BINARY=mpi4py "${PIP[@]}" -e "${ROOT}${EXTRAS:+[$EXTRAS]}"

# 6. Check the build ------------------------------------------------------------------
wants=(TensorFlow MPI Gloo)
[ "${HOROVOD_GPU_OPERATIONS:-}" != NCCL ] || wants+=(NCCL)
check=$("$VENV/bin/horovodrun" --check-build)
absent=$(check_build_missing "$check" "${wants[@]}" | paste -sd' ')
if [ -n "$absent" ]; then
  echo "$check" >&2
  die "horovodrun --check-build does not show $absent; rebuild with: rm -rf $VENV && $0"
fi
say "ok: $("$PY" -c 'import tensorflow as tf, horovod; print(f"TensorFlow {tf.__version__}, Horovod {horovod.__version__}")'), ${wants[*]:1} built"

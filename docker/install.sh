#!/usr/bin/env bash
# Set up the hvd_dqn stack from nothing, idempotently. The Dockerfiles call this same
# script, so CI exercises the container recipe's steps.
#
#   1. Open MPI (and a compiler, CMake) from Debian's packages, if missing;
#   2. a virtualenv ($VENV, default .venv) with $PYTHON;
#   3. TensorFlow pinned in $CONSTRAINTS ($TF_PACKAGE: tensorflow-cpu here,
#      `tensorflow[and-cuda]` on GPU machines);
#   4. Horovod 0.28.1 compiled from its sdist against that TensorFlow with TF, MPI and
#      Gloo on (NCCL too when HOROVOD_GPU_OPERATIONS=NCCL is set); skipped when the
#      installed Horovod already imports against the installed TensorFlow. The wheel it
#      compiles is kept in $WHEELS/tf-<TensorFlow version>[-nccl]/ and installed from
#      there next time (the image build gets the one `make test` compiled, so CI compiles
#      Horovod once); a kept wheel that does not import is removed and Horovod compiled;
#   5. the package, editable, with $EXTRAS;
#   6. `horovodrun --check-build` must show TensorFlow, MPI and Gloo.
#
# Environment: VENV, PYTHON, CONSTRAINTS, TF_PACKAGE, EXTRAS (empty: none), WHEELS
# (default docker/wheels, inside the image's build context; WHEELS= keeps none),
# HOROVOD_GPU_OPERATIONS, and UNTIL=horovod to stop after step 4 (the image builds
# Horovod in a layer of its own, before the source is copied in).
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
if ! "$PY" -c "import tensorflow as tf, sys; sys.exit(tf.__version__ != '$TF_VERSION')" 2>/dev/null; then
  say "installing $TF_PACKAGE $TF_VERSION"
  "${PIP[@]}" "$TF_PACKAGE"
fi

# 4. Horovod, compiled against the TensorFlow above -----------------------------------
horovod_ok() {
  "$PY" - <<PYEOF 2>/dev/null
import sys
import horovod, horovod.tensorflow as hvd  # raises HorovodVersionMismatchError on a TF change
sys.exit(not (horovod.__version__ == "$HVD_VERSION" and hvd.mpi_built() and hvd.gloo_built()))
PYEOF
}
# A wheel is only reused for the TensorFlow (and NCCL choice) it was compiled against.
kept=""
if [ -n "$WHEELS" ]; then
  kept=$WHEELS/tf-$TF_VERSION${HOROVOD_GPU_OPERATIONS:+-$(tr '[:upper:]' '[:lower:]' <<<"$HOROVOD_GPU_OPERATIONS")}
fi
install_kept_wheel() {
  local wheel
  wheel=$(compgen -G "$kept/horovod-$HVD_VERSION-*.whl" | head -1) || return 1
  say "installing horovod $HVD_VERSION from the kept wheel $wheel"
  "${PIP[@]}" --force-reinstall --no-deps "$wheel" && "${PIP[@]}" "$wheel" && horovod_ok && return 0
  say "the kept wheel does not import against TensorFlow $TF_VERSION here; removing it"
  rm -f "$wheel"
  return 1
}
compile_horovod() {
  say "building horovod $HVD_VERSION from source (about 5 minutes on 2 cores)"
  "${PIP[@]}" "cmake<4" packaging
  local out
  out=$(mktemp -d)
  # The build must see the TensorFlow installed above: no build isolation, no cached
  # wheel (a wheel cached against another TensorFlow fails with a version mismatch).
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} \
    "$PY" -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-build-isolation \
    --no-deps -w "$out" "horovod==$HVD_VERSION"
  "${PIP[@]}" --force-reinstall --no-deps "$out"/horovod-*.whl
  "${PIP[@]}" "$out"/horovod-*.whl  # its runtime dependencies
  horovod_ok || die "horovod $HVD_VERSION built but does not import against TensorFlow $TF_VERSION"
  if [ -n "$kept" ]; then
    mkdir -p "$kept" && mv "$out"/horovod-*.whl "$kept"/ && say "kept the wheel in $kept"
  fi
  rm -rf "$out"
}
if horovod_ok; then
  say "horovod $HVD_VERSION already built against this TensorFlow; skipping the build"
elif [ -z "$kept" ] || ! install_kept_wheel; then
  compile_horovod
fi

[ "$UNTIL" != horovod ] || exit 0

# 5. The package ---------------------------------------------------------------------
# mpi4py is compiled against the system Open MPI (a binary wheel may carry another MPI).
say "installing hvd_dqn${EXTRAS:+[$EXTRAS]}"
PIP_NO_BINARY=mpi4py "${PIP[@]}" -e "${ROOT}${EXTRAS:+[$EXTRAS]}"

# 6. Check the build ------------------------------------------------------------------
check=$("$VENV/bin/horovodrun" --check-build)
for want in TensorFlow MPI Gloo; do
  grep -qE "\[X\] $want" <<<"$check" || {
    echo "$check" >&2
    die "horovodrun --check-build does not show $want; rebuild with: rm -rf $VENV && $0"
  }
done
say "ok: $("$PY" -c 'import tensorflow as tf, horovod; print(f"TensorFlow {tf.__version__}, Horovod {horovod.__version__}")'), MPI and Gloo built"

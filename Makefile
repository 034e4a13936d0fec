# Two commands do all set-up on a fresh machine:
#   make train   set up what is missing, then train on the default (CartPole-v1, 2 ranks)
#   make test    set up what is missing (SLURM, sshd, podman, shellcheck too), then lint,
#                type-check and run the tests (each phase's 15 slowest listed after it)
#   make test-fast  lint, type check and every test that starts no daemon and no
#                multi-process run of over ~10 s (`-m "not cluster and not slow"`: 2 at
#                once, then the `timed` ones alone), about 3 minutes: the inner loop
#   make image   build the CPU image (podman, or docker with a daemon); make image-test
#                runs doctor and a 2-rank training inside it
# The first set-up compiles Horovod from source (about 5-8 minutes on 2 cores).

VENV ?= .venv
NP ?= 2
ARGS ?=
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := $(VENV)/.test-tools
SHELL_SCRIPTS := slurm/train.sbatch docker/*.sh .ci/run
DOCKERFILES := docker/Dockerfile docker/Dockerfile.gpu
# BASE_IMAGE=local builds the base with debootstrap (no registry needed; CI does this).
BASE_IMAGE ?= python:3.11-slim-bookworm
COMPAT_VENV := .venv-compat
# TensorFlow's C++ start-up lines: horovodrun itself imports TensorFlow (the ranks set
# this default themselves).
TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_CPP_MIN_LOG_LEVEL

.PHONY: setup train test test-fast lint typecheck compat doctor image image-test clean

$(STAMP): docker/install.sh docker/constraints.txt pyproject.toml
	VENV=$(VENV) bash docker/install.sh
	touch $@

setup: $(STAMP)

train: setup
	$(BIN)/horovodrun -np $(NP) $(BIN)/hvd-dqn train $(ARGS)

doctor: setup
	$(BIN)/horovodrun -np $(NP) $(BIN)/hvd-dqn doctor

# From Debian's packages: SLURM and munge (the SLURM tests), openssh-server and iproute2
# (the two-host tests), podman, runc and debootstrap (the image), shellcheck.
$(TOOLS): docker/install-test-tools.sh $(STAMP)
	bash docker/install-test-tools.sh
	touch $@

lint: setup $(TOOLS)
	$(BIN)/ruff check hvd_dqn tests
	$(BIN)/ruff format --check hvd_dqn tests
	shellcheck $(SHELL_SCRIPTS)
	$(BIN)/hadolint $(DOCKERFILES)

typecheck: setup
	$(BIN)/mypy hvd_dqn

# Two phases: the tests that are neither `cluster` (SLURM, hosts, elastic) nor `timed`, 2 at
# once (pytest-xdist; most of a test is process start-up and waiting; an xdist_group runs on
# one worker), then the `cluster` and `timed` ones one at a time. A phase that PYTEST_ARGS
# leaves empty is not a failure (pytest's exit 5).
# JUNIT=1 writes each phase's results to .pytest-<phase>.xml (.ci/run sums them by file).
junit = $(if $(JUNIT),--junitxml=.pytest-$(1).xml)
test: lint typecheck
	$(BIN)/pytest -q -ra -n 2 --dist loadgroup -m "not cluster and not timed" --durations=15 \
		$(call junit,parallel) $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/pytest -q -ra -m "cluster or timed" --durations=15 \
		$(call junit,serial) $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: lint typecheck
	$(BIN)/pytest -q -ra -n 2 --dist loadgroup -m "not cluster and not slow and not timed" \
		--durations=10
	$(BIN)/pytest -q -ra -m "timed and not cluster and not slow" --durations=5

# The older stack: TensorFlow 2.15.1 (Keras 2) in its own venv, and the tests marked
# `compat` there: what differs on Keras 2 (collectives, the learner, a checkpoint's round
# trip, one end-to-end run).
$(COMPAT_VENV)/.installed: docker/install.sh docker/constraints-compat.txt pyproject.toml
	VENV=$(COMPAT_VENV) CONSTRAINTS=docker/constraints-compat.txt bash docker/install.sh
	touch $@

compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/pytest -q -ra -m compat --durations=10

image:
	bash docker/install-test-tools.sh
	BASE_IMAGE=$(BASE_IMAGE) bash docker/image.sh build

image-test: image
	bash docker/image.sh test

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .pytest_cache .mypy_cache .ruff_cache .podman

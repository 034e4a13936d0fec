# Two commands do all set-up on a fresh machine:
#   make train   set up what is missing, then train on the default (CartPole-v1, 2 ranks)
#   make test    set up what is missing (SLURM and shellcheck too), then lint, type-check
#                and run the tests
# The first set-up compiles Horovod from source (about 5-8 minutes on 2 cores).

VENV ?= .venv
NP ?= 2
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := $(VENV)/.test-tools
SHELL_SCRIPTS := slurm/train.sbatch docker/install.sh docker/install-test-tools.sh .ci/run
COMPAT_VENV := .venv-compat

.PHONY: setup train test lint typecheck compat doctor clean

$(STAMP): docker/install.sh docker/constraints.txt pyproject.toml
	VENV=$(VENV) bash docker/install.sh
	touch $@

setup: $(STAMP)

train: setup
	$(BIN)/horovodrun -np $(NP) $(BIN)/hvd-dqn train $(ARGS)

doctor: setup
	$(BIN)/horovodrun -np $(NP) $(BIN)/hvd-dqn doctor

# SLURM, munge and shellcheck from Debian's packages (for the SLURM tests and the linter).
$(TOOLS): docker/install-test-tools.sh $(STAMP)
	bash docker/install-test-tools.sh
	touch $@

lint: setup $(TOOLS)
	$(BIN)/ruff check hvd_dqn tests
	$(BIN)/ruff format --check hvd_dqn tests
	shellcheck $(SHELL_SCRIPTS)

typecheck: setup
	$(BIN)/mypy hvd_dqn

test: lint typecheck
	$(BIN)/pytest -q -ra

# The older stack: TensorFlow 2.15.1 (Keras 2) in its own venv, distributed tests there.
$(COMPAT_VENV)/.installed: docker/install.sh docker/constraints-compat.txt pyproject.toml
	VENV=$(COMPAT_VENV) CONSTRAINTS=docker/constraints-compat.txt bash docker/install.sh
	touch $@

compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/pytest -q -ra -m "distributed and not slow and not slurm"

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .pytest_cache .mypy_cache .ruff_cache

# lra: set-up, tests and the CPU demo. `make install` is idempotent; the other targets call it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# one stamp per TORCH_SPEC: a new spec (e.g. a CUDA build) reinstalls torch on an existing .venv
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH_SPEC)' | sha256sum | cut -c1-16)

.PHONY: install test test-fast test-slurm demo lint format clean

install: $(STAMP)

# torch goes in first, pinned: an unpinned torch pulls GBs of CUDA wheels on a CPU machine. The
# spec is unquoted, so its words reach pip as separate arguments (a version, --index-url URL).
$(TORCH_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip uninstall -q -y torch
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	rm -f $(VENV)/.torch-*
	printf '%s\n' '$(TORCH_SPEC)' > $@

$(STAMP): pyproject.toml $(TORCH_STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# pytest-xdist workers for make test and test-fast (0: one process, as pytest alone runs)
TEST_WORKERS ?= 2
test: install
	WANDB_MODE=offline $(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slurm" tests

# the SLURM tests (tests/slurm) on a one-node cluster that tests/slurm/up.sh installs (as root,
# with apt-get) and starts here; every daemon it started is stopped afterwards, pass or fail.
# Where the cluster cannot start, the tests are skipped and say why.
SLURM_DIR ?= /tmp/lra-slurm
test-slurm: install
	@LRA_SLURM_DIR=$(SLURM_DIR) bash tests/slurm/up.sh \
		|| echo "test-slurm: the cluster did not start (see above); its tests will be skipped"
	@status=0; SLURM_CONF=$(SLURM_DIR)/slurm.conf LRA_SLURM_DIR=$(SLURM_DIR) WANDB_MODE=offline \
		$(BIN)/python -m pytest -q -rs tests/slurm || status=$$?; \
		LRA_SLURM_DIR=$(SLURM_DIR) bash tests/slurm/down.sh; exit $$status

# the inner loop: everything but the end-to-end runs through real processes (marked slow)
test-fast: install
	WANDB_MODE=offline $(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

demo: install
	WANDB_MODE=offline $(BIN)/python -m lra.train experiment=demo

lint: install
	$(BIN)/ruff format --check lra tests
	$(BIN)/ruff check lra tests

format: install
	$(BIN)/ruff format lra tests
	$(BIN)/ruff check --fix lra tests

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

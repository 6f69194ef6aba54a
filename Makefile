# neox-pipeline. `make demo` runs the pipeline on embedded defaults; `make test` runs the test suite.
# Both create or refresh .venv from requirements/lock.txt first (a no-op when nothing changed).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov (the Terraform security scan the tests run) has a venv of its own: its pins clash with the main lock's.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
TORCH_PIN := $(shell grep -E '^torch==' requirements/lock.txt)
UV_PIN := $(shell grep -E '^uv==' requirements/lock.txt)
DEEPSPEED_PIN := $(shell grep -E '^deepspeed==' requirements/lock.txt)

# The locks install through uv (pinned in the lock, installed by pip): ~50 s for what took pip ~190 s. torch and
# DeepSpeed stay with pip, which reads the machine's pip settings (where a CUDA torch comes from). Bytecode is
# compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would compile its imports.
UV := $(BIN)/uv pip install --quiet --compile-bytecode

# On a machine without CUDA, build DeepSpeed's CPU communication op now instead of JIT-compiling it
# (~48 s, ~5 GB peak) in the first training run. With CUDA, DeepSpeed builds its ops on demand, and the `gpu`
# extra (liger-kernel, pinned in pyproject.toml) comes too: the GPU configs train with its kernels. With
# --no-deps: its triton is the one the CUDA torch brought (pip check then sees that it is there).
ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
DS_BUILD_ENV := DS_ACCELERATOR=cpu DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1
GPU_EXTRA :=
else
DS_BUILD_ENV := DS_BUILD_OPS=0
GPU_EXTRA := $(shell grep -oE 'liger-kernel==[0-9.]+' pyproject.toml)
ifeq ($(GPU_EXTRA),)
$(error no liger-kernel==VERSION in pyproject.toml's gpu extra)
endif
endif

# Two test files at a time, each whole on one worker (its module fixtures run once), longest first (tests/conftest.py):
# a test waits on process starts and I/O for about a third of its time, which the other file's test fills.
# A crashed worker fails the run at once: pytest-xdist 3.8.0 replacing one under loadfile can hang with both
# workers idle (pytest-xdist issue 1378; seen here once, ~16 minutes in), which CI would see only at its time limit.
TEST_WORKERS := -n 2 --dist loadfile --no-loadscope-reorder --max-worker-restart=0

.PHONY: setup demo test format bench clean-venv

setup: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(TORCH_PIN)'
	$(BIN)/pip show deepspeed 2>/dev/null | grep -qx 'Version: $(subst deepspeed==,,$(DEEPSPEED_PIN))' \
	  || $(DS_BUILD_ENV) $(BIN)/pip install --quiet --no-build-isolation --no-cache-dir '$(DEEPSPEED_PIN)'
	$(BIN)/pip install --quiet '$(UV_PIN)'
	$(UV) --python $(BIN)/python -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(if $(GPU_EXTRA),$(BIN)/pip install --quiet --no-deps '$(GPU_EXTRA)')
	$(BIN)/pip check
	touch $(STAMP)

$(CHECKOV_STAMP): requirements/checkov-lock.txt $(STAMP)
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(UV) --python $(CHECKOV_VENV)/bin/python -r requirements/checkov-lock.txt
	$(CHECKOV_VENV)/bin/pip check
	touch $(CHECKOV_STAMP)

demo: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m flows.pretrain configs/pipeline/local.yaml

test: setup $(CHECKOV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(TEST_WORKERS)

# Apply the formatter and the lint rules' safe fixes (what `make test` checks).
format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every CPU benchmark (bench/gpu_checks.py and bench/gpu/ need a GPU machine: see bench/gpu/run.sh).
bench: setup
	@for b in $(filter-out bench/gpu_checks.py,$(wildcard bench/*.py)); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV) $(CHECKOV_VENV)

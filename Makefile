# attn-course: the front door. `make` sets everything up and does the main job; `make test` runs the suite.
# Each part of the project adds its own targets in mk/<part>.mk, appending to the variables below.
SHELL := /bin/bash
.DEFAULT_GOAL := all

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# pip, minus the per-package noise this machine's pip.conf adds (empty extra-index folders); keeps pip's exit code
PIP    = set -o pipefail; $(PY) -m pip install --quiet $(1) 2>&1 | { grep -v 'is ignored: it is neither a file' || true; }

# The CPU pins come from pyproject.toml's `cpu` extra (one source of truth). GPU users override, e.g.
#   make TORCH_SPEC="torch==2.11.0" TRITON_SPEC="triton==3.6.0"
# or TORCH_SPEC=none TRITON_SPEC=none to keep the torch/triton already installed in $(VENV).
TORCH_SPEC  ?= $(shell sed -n 's/.*"\(torch==[^"]*\)".*/\1/p' pyproject.toml | head -1)
TRITON_SPEC ?= $(shell sed -n 's/.*"\(triton==[^"]*\)".*/\1/p' pyproject.toml | head -1)
EXTRAS      ?= book,grade,dev

# Filled in by mk/*.mk: Debian packages the project needs, what `make` builds, and the test files.
APT_PACKAGES :=
# command:package pairs: the Debian package is installed only when the command is not already on PATH (npm
# often comes with a Node.js installed some other way, which Debian's npm package would clash with)
APT_COMMANDS :=
MAIN_JOBS    :=
PYTEST_ARGS  ?=

-include mk/*.mk

.PHONY: all setup system-deps test lint clean help

## all: set up .venv, then build everything the course ships (the book, the release, ...)
all: setup $(MAIN_JOBS)
	@echo "make: done. Built: $(if $(MAIN_JOBS),$(MAIN_JOBS),the environment in $(VENV))."
	@$(PY) -m attn_course

## setup: create .venv and install the project (editable) with everything it needs
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (torch: $(TORCH_SPEC), triton: $(TRITON_SPEC))"
	@$(call PIP,--upgrade pip)
	@$(call PIP,$(if $(filter none,$(TORCH_SPEC)),,"$(TORCH_SPEC)") $(if $(filter none,$(TRITON_SPEC)),,"$(TRITON_SPEC)") -e ".[$(EXTRAS)]")
	@touch $@

## system-deps: install the Debian packages the project needs (when running as root), else say what is missing
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	for cp in $(APT_COMMANDS); do command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "warning: missing Debian packages:$$missing (run 'sudo apt-get install$$missing');" \
	       "the parts that need them will fail with a message naming them"; \
	fi

# The kernel tests (Triton's interpreter: CPU-bound, independent cases) run on PYTEST_JOBS workers, the rest
# (book build, sandboxed grading, which time themselves against limits) serially; both always run, and the
# target fails if either does.
PYTEST_JOBS  ?= 2
KERNEL_TESTS := $(sort $(wildcard tests/test_kernels*.py)) tests/test_attention.py

## test: run the whole test suite (CPU; GPU tests run too when a GPU is present): the kernel tests on PYTEST_JOBS (2) workers, then the rest
test: setup
	@status=0; \
	$(BIN)/pytest -n $(PYTEST_JOBS) $(PYTEST_ARGS) $(KERNEL_TESTS) || status=1; \
	$(BIN)/pytest $(PYTEST_ARGS) $(addprefix --ignore=,$(KERNEL_TESTS)) || status=1; \
	exit $$status

## lint: ruff over the package, kernels, tests and benchmarks
lint: setup
	$(BIN)/ruff check attn_course kernels tests benchmarks autograder book

## clean: remove generated output (not .venv)
clean:
	rm -rf build book/_build .pytest_cache .hypothesis

## help: list the targets
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /  make /'

# print-VAR: show a make variable (used by tests/test_packaging.py)
print-%:
	@echo '$($*)'

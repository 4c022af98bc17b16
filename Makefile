# Every target creates what it needs from nothing: a .venv with the project and its dev tools, and for the
# tests node_modules/ with Azurite (the Azure Storage emulator the azurerm state backend is tested against;
# pinned in package.json and package-lock.json; needs node and npm).
#
# PY is the interpreter .venv is built from: the first of python3, python3.13, python3.12, python3.11
# that is 3.11 or newer (override: make PY=/path/to/python3.12 test). .venv is rebuilt when it was made
# from another interpreter (or is broken), and reinstalled when pyproject.toml changes.
MIN_PYTHON := 3.11
ifeq ($(origin PY),undefined)
PY := $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Identity of an interpreter: the real path of the base Python a venv was made from, and its version.
IDENTITY := import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)), sys.version.split()[0])
PREFIX ?= $(HOME)/.local
INSTALL_VENV := $(PREFIX)/share/connref/venv
VENV_ARGS ?=
AZURITE := node_modules/.bin/azurite-blob

.PHONY: demo test test-fast test-minimums bench soak lint typecheck python venv-interpreter venv install uninstall clean

python:
	@if [ -z "$(PY)" ]; then \
	  echo "connref needs Python $(MIN_PYTHON) or newer, and none of python3, python3.13, python3.12, python3.11 is."; \
	  echo "Install one (python.org, your package manager, or pyenv) and run: make PY=/path/to/python3.12 $(MAKECMDGOALS)"; \
	  exit 1; \
	fi
	@if ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
	  echo "connref needs Python $(MIN_PYTHON) or newer; PY=$(PY) is $$($(PY) --version 2>&1 || echo 'not runnable')."; \
	  echo "Run: make PY=/path/to/python3.12 $(MAKECMDGOALS)"; \
	  exit 1; \
	fi

# .venv made from PY: rebuilt when it was made from another interpreter, or no longer runs.
venv-interpreter: python
	@want="$$($(PY) -c '$(IDENTITY)')"; \
	have="$$($(BIN)/python -c '$(IDENTITY)' 2>/dev/null)"; \
	if [ "$$want" != "$$have" ]; then \
	  if [ -e $(VENV) ]; then echo "Rebuilding $(VENV): it was made from '$${have:-an interpreter that no longer runs}', PY is '$$want'."; fi; \
	  rm -rf $(VENV) && $(PY) -m venv $(VENV_ARGS) $(VENV) || exit 1; \
	fi

# ... with the project and its dev tools installed (again when pyproject.toml changes).
venv: venv-interpreter
	@if [ ! -f $(STAMP) ] || [ pyproject.toml -nt $(STAMP) ]; then \
	  $(BIN)/python -m pip install --quiet --upgrade pip && \
	  $(BIN)/python -m pip install --quiet -e '.[dev]' && \
	  touch $(STAMP); \
	fi

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(AZURITE)

demo: venv
	$(BIN)/python examples/quickstart/demo.py

test: venv $(AZURITE)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# The fast tier: the pure tests of tests/unit/ (no emulator, no process, no socket), seconds, for every change.
test-fast: venv
	HYPOTHESIS_PROFILE=fast $(BIN)/pytest tests/unit -p no:cacheprovider

# Not part of `make test`: a few minutes of load against the emulator; prints the table in docs/performance.md.
bench: venv
	$(BIN)/python benchmarks/bench.py

# Not part of `make test` (which runs a few seeded runs of the same soak): many seeded runs of apply with
# random faults on every write and read-back, and kills between a write and its state record
# (tests/e2e/test_fault_soak_e2e.py). SOAK_RUNS, SOAK_KILLS and SOAK_SEED choose how many and which.
SOAK_RUNS ?= 40
SOAK_KILLS ?= 8
SOAK_SEED ?= 16
soak: venv
	SOAK_RUNS=$(SOAK_RUNS) SOAK_KILLS=$(SOAK_KILLS) SOAK_SEED=$(SOAK_SEED) \
	  $(BIN)/pytest tests/e2e/test_fault_soak_e2e.py -p no:cacheprovider -q -rA

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# The suite against the oldest versions pyproject.toml allows: a fresh .venv-minimums with every runtime
# dependency pinned to its lower bound (constraints written by .ci/lower_bounds.py).
test-minimums: python $(AZURITE)
	rm -rf .venv-minimums
	$(PY) -m venv .venv-minimums
	$(PY) .ci/lower_bounds.py > .venv-minimums/constraints.txt
	.venv-minimums/bin/python -m pip install --quiet --upgrade pip
	.venv-minimums/bin/python -m pip install --quiet --constraint .venv-minimums/constraints.txt -e '.[dev]'
	.venv-minimums/bin/python .ci/lower_bounds.py --check
	.venv-minimums/bin/pytest -p no:cacheprovider

# connref on PATH without the repository's .venv: its own venv under PREFIX/share, linked from PREFIX/bin.
# (pipx install . does the same.)
install: python
	rm -rf $(INSTALL_VENV)
	$(PY) -m venv $(INSTALL_VENV)
	$(INSTALL_VENV)/bin/python -m pip install --quiet .
	mkdir -p $(PREFIX)/bin
	ln -sf $(INSTALL_VENV)/bin/connref $(PREFIX)/bin/connref
	@echo "Installed $(PREFIX)/bin/connref ($$($(PREFIX)/bin/connref --version))."
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "$(PREFIX)/bin is not on PATH: add it, e.g. export PATH=\"$(PREFIX)/bin:\$$PATH\"";; esac

uninstall:
	rm -rf $(PREFIX)/share/connref
	rm -f $(PREFIX)/bin/connref

clean:
	rm -rf $(VENV) .venv-minimums node_modules .pytest_cache .mypy_cache .ruff_cache build *.egg-info

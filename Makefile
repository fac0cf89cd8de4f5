# Everything runs from a virtualenv that this Makefile builds from pyproject.toml;
# nothing is installed globally. Only Python 3.11+ and make are assumed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: serve test lint clean bench soak fuzz

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "kallichore needs Python 3.11 or newer (found $(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per extra, so `make serve` installs only what the server needs.
$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-base
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	@touch $@

serve: $(VENV)/.stamp-base
	$(BIN)/kcserver $(ARGS)

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.stamp-test
	$(BIN)/ruff check kallichore tests
	$(BIN)/ruff format --check kallichore tests
	$(BIN)/mypy

# `make fuzz`: the long runs of the fuzzers whose short, seeded runs are in
# `make test`: schemathesis over every operation of kallichore.json, then the
# connection-level protocol fuzzer for FUZZ_SECONDS (default 600, shared by the
# TCP and Unix-socket listeners).
FUZZ_SECONDS ?= 600
fuzz: $(VENV)/.stamp-test
	KC_SCHEMA_EXAMPLES=300 KC_SCHEMA_STEPS=100 $(BIN)/python -m pytest -p no:cacheprovider \
		-o faulthandler_timeout=0 \
		-s tests/integration/test_schema_fuzz.py $(ARGS)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m pytest -p no:cacheprovider -s \
		-o faulthandler_timeout=0 \
		tests/integration/test_connection_fuzz.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# `make bench`: its own virtualenv (kallichore plus the peers it is compared
# with: jupyter_client, Jupyter Kernel Gateway, ipykernel), then bench/run.py.
# ARGS="--quick" for a short smoke run; see docs/benchmarks.md.
BENCH_VENV := bench/.venv

$(BENCH_VENV)/.stamp: pyproject.toml bench/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "the benchmark needs Python 3.11 or newer (found $(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . -r bench/requirements.txt
	@touch $@

bench: $(BENCH_VENV)/.stamp
	$(BENCH_VENV)/bin/python bench/run.py $(ARGS)

# `make soak`: sessions churning against one real server for SOAK_SECONDS
# (default 600) with seed SOAK_SEED; see bench/soak.py and docs/reliability.md.
SOAK_SECONDS ?= 600
SOAK_SEED ?= 1

soak: $(VENV)/.stamp-test
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_SEED=$(SOAK_SEED) $(BIN)/python bench/soak.py

# Quick start: `make demo` renders a full evidence pack from a synthetic organisation,
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/accessproof demo --out $(DEMO_OUT)

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -n 2 -q

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/bench_pack.py

clean:
	rm -rf $(VENV) $(DEMO_OUT)

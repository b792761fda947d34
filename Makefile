# The two commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck unit integration e2e bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[sklearn,dev]'
	touch $(STAMP)

install: $(STAMP)

## Start modelplane on 127.0.0.1:8000 with the iris demo deployed.
run: install
	$(BIN)/modelplane serve --demo

## Lint, types, import rules, then every test tier.
test: install lint typecheck
	$(BIN)/pytest

lint: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit
integration: install
	$(BIN)/pytest tests/integration
e2e: install
	$(BIN)/pytest tests/e2e

bench: install
	$(BIN)/python bench/serving.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache

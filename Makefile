# The README's two commands are `make demo` and `make test`; each creates .venv from the lock.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo test lint format bench clean

venv:
	@scripts/bootstrap-env

demo: venv
	$(PY) scripts/demo.py

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf .demo .pytest_cache .ruff_cache

# Local real stacks (no Docker): see docs/deployment.md.
.PHONY: stack-quick stack-prod stack-stop
stack-quick: venv
	deploy/local-stack quick start

stack-prod: venv
	deploy/local-stack prod start

stack-stop:
	deploy/local-stack quick stop; deploy/local-stack prod stop

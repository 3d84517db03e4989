# The two commands: `make up` runs the mesh, `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: up test proto lint check-proto clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

up: $(VENV)/.installed
	$(VENV)/bin/paymesh up

test: $(VENV)/.installed check-proto lint
	$(PY) -m pytest

check-proto: $(VENV)/.installed
	PYTHON=$(PY) scripts/proto.sh check

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

proto: $(VENV)/.installed
	PYTHON=$(PY) scripts/proto.sh generate

clean:
	rm -rf $(VENV) .paymesh .pytest_cache .ruff_cache

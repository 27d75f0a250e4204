# heapd: `make demo` and `make test` are the whole quick start.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint protos bench clean

$(STAMP): pyproject.toml setup.py shm/_heapcore.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m client.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy shm plm scheduler register worker client runtime

protos: $(STAMP)
	$(PY) -m protos.generate

bench: $(STAMP)
	$(PY) -m client.cli bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

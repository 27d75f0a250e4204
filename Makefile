# heapd: `make demo` and `make test` are the whole quick start.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FILES := $(VENV)/.files
PACKAGES := client plm scheduler register worker shm runtime protos

.PHONY: demo test lint protos bench clean FORCE

# The development install is editable in setuptools' "strict" mode: a tree of links to the
# sources under build/, in the installed layout (`client/` as `heapd`, `shm/` as `heapd.shm`, ...),
# instead of an import hook that mypy cannot follow. Editing a file needs nothing; adding or
# removing one reinstalls (the list of files is a prerequisite, rewritten only when it changes).
$(FILES): FORCE
	@mkdir -p $(VENV)
	@find $(PACKAGES) -name '*.py' -o -name '*.c' -o -name '*.pyi' -o -name py.typed | sort > $@.new
	@cmp -s $@.new $@ && rm $@.new || mv $@.new $@

$(STAMP): pyproject.toml setup.py $(FILES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m heapd.runtime.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p heapd

protos: $(STAMP)
	$(PY) protos/generate.py

bench: $(STAMP)
	$(PY) -m heapd bench

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache

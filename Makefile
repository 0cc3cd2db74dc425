# The two front doors: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch lies here on the build machines; pip finds it without downloading.
WHEELS := $(wildcard /opt/wheels)
PIPFLAGS := $(if $(WHEELS),--find-links $(WHEELS),)
SHELF_HOME ?= ./shelf-home

.PHONY: demo test bench lint typecheck clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PIP) install -q $(PIPFLAGS) -e '.[models,ann,serve]'
	$(PY) -m shelf.models.retrieval.kernels  # compile the request kernels into numba's cache once
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -q $(PIPFLAGS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	SHELF_DEV=1 $(VENV)/bin/shelf --home $(SHELF_HOME) demo

test: $(VENV)/.dev-installed
	$(PY) -m pytest -n 2 --timeout 600 $(PYTEST_ARGS)

bench: $(VENV)/.dev-installed
	$(PY) -m bench $(BENCH_ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src tests bench

typecheck: $(VENV)/.dev-installed
	$(VENV)/bin/mypy src/shelf

clean:
	rm -rf $(VENV) $(SHELF_HOME) .pytest_cache

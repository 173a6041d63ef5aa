# `make demo` and `make test` do all the set-up on a fresh machine: they create .venv and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint unit integration clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: any other torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[local,dev,frameworks]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) scripts/demo.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy airflow_ray_train

unit: install
	$(PY) -m pytest tests/unit -q

.PHONY: bench
# Benchmarks (issue 6): writes bench/REPORT.md, bench/results.json and PNG plots. BENCH_RUNS=5 rounds by default.
bench: install
	$(PY) bench/run.py

test: lint
	$(PY) -m pytest tests -q -rs

clean:
	rm -rf $(VENV) .demo

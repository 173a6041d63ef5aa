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
# Benchmarks: writes bench/REPORT.md, bench/results.json and PNG plots. BENCH_RUNS=5 rounds by default.
# Peers run in their own venvs (made here, under /tmp; BENCH_PEERS= skips them). The provider as it was at
# BENCH_BEFORE_REF (empty skips it) is measured beside this checkout in the same rounds (overhead's (c) and the
# scale section). py-spy samples the triggerer in the scale section. Each Ray job has a supervisor process
# (~80 MiB): BENCH_SCALE_MAX_JOBS caps the Ray jobs of one scale run, more deferred tasks share them.
BENCH_PEERS ?= astro,google
BENCH_BEFORE_REF ?= fc5b946
BENCH_SCALE_MAX_JOBS ?= 50
bench: install
	@for peer in $$(echo "$(BENCH_PEERS)" | tr , ' '); do $(PY) bench/peers.py setup $$peer || exit 1; done
	@$(VENV)/bin/py-spy --version >/dev/null 2>&1 || $(PY) -m pip install -q py-spy
	rm -rf .bench_before
	@if [ -n "$(BENCH_BEFORE_REF)" ]; then \
		mkdir -p .bench_before && git archive $(BENCH_BEFORE_REF) airflow_ray_train | tar -x -C .bench_before; \
	fi
	BENCH_PEERS=$(BENCH_PEERS) BENCH_SCALE_MAX_JOBS=$(BENCH_SCALE_MAX_JOBS) BENCH_BEFORE_SRC=$(if $(BENCH_BEFORE_REF),$(CURDIR)/.bench_before,) $(PY) bench/run.py

test: lint
	$(PY) -m pytest tests -q -rs

clean:
	rm -rf $(VENV) .demo

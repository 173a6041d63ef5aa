# `make demo` and `make test` do all the set-up on a fresh machine: they create .venv and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint docs unit integration e2e clean dist

$(STAMP): pyproject.toml runtime/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: any other torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The runtime (its own distribution, runtime/) and the provider, which depends on it, in one resolve.
	$(PY) -m pip install -q -e ./runtime -e ".[local,dev,frameworks,mlflow]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) scripts/demo.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy airflow_ray_train runtime/airflow_ray_train_runtime

# The two distributions (docs/distributions.md): airflow-ray-train and airflow-ray-train-runtime, wheels and
# sdists into dist/, checked with twine. tests/unit/test_dist.py builds and inspects them in `make test`.
dist: install
	$(PY) scripts/dist.py --outdir dist

# The docs site (mkdocs.yml, docs/): strict, so a broken link or a page missing from the nav fails.
docs: install
	$(VENV)/bin/mkdocs build --strict -d build/site

# The test tiers, one folder each (docs/development.md): unit needs nothing running; integration starts a real
# Ray head and MLflow server and uses a real Airflow metadata DB; e2e runs `airflow standalone` beside them.
unit: install
	$(PY) -m pytest tests/unit -q

integration: install
	$(PY) -m pytest tests/integration -q -rs

e2e: install
	$(PY) -m pytest tests/e2e -q -rs

.PHONY: bench
# Benchmarks: writes bench/REPORT.md, bench/results.json and PNG plots. BENCH_RUNS=5 rounds by default.
# Peers run in their own venvs (made here, under /tmp; BENCH_PEERS= skips them). The provider as it was at
# BENCH_BEFORE_REF (empty skips it) is measured beside this checkout in the same rounds (overhead's (c), the
# scale, noticing and noticing_niced sections). py-spy samples the triggerer in the scale section. Each Ray job
# has a supervisor process (~80 MiB): BENCH_SCALE_MAX_JOBS caps the Ray jobs of one scale run, more deferred
# tasks share them.
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

.PHONY: gpu-kit gpu-dryrun
# The GPU check (gpu/, see docs/gpu.md): `gpu-kit` fetches the wheels the GPU machine lacks into .whl/
# (git-ignored) and checks they fit in one call; `gpu-dryrun` runs the check on the CPU with this venv.
gpu-kit: install
	$(PY) gpu/kit.py

gpu-dryrun: install
	$(PY) gpu/check.py --out build/gpu-dryrun --run-timeout 400 --deadline 1200

.PHONY: compat compat-ci
# The version matrix (scripts/compat.py, docs/versions.md): each older Airflow and each Ray cluster
# in a venv of its own, made once and cached under ~/.cache/airflow-ray-train/compat, a real head from each Ray,
# the same tests. Results in build/compat/. COMPAT_CELLS="airflow-3.1 ray-2.52" runs some cells only.
COMPAT_CELLS ?=
compat: install
	$(PY) scripts/compat.py run $(COMPAT_CELLS)

# CI's share of the matrix: one older Airflow and one older Ray, with shorter test lists.
compat-ci: install
	$(PY) scripts/compat.py run --ci --parallel

test: lint docs
	@# A Docker engine installed here but not running (a machine restarted) is started for the compose stack.
	@if [ "$$(id -u)" = 0 ] && command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then \
		bash scripts/docker-engine.sh; fi
	$(PY) -m pytest tests -q -rs --durations=40
	$(PY) scripts/compat.py run --ci --parallel

.PHONY: compose-test
# The docker-compose stack for real (tests/compose/; part of `make test` too). Needs a Docker engine and Compose
# v2: as root on Debian 12, scripts/docker-engine.sh installs and starts both. Without them it skips (fails
# under CI=true).
compose-test: install
	ART_COMPOSE_FULL=1 $(PY) -m pytest tests/compose -q -rs

clean:
	rm -rf $(VENV) .demo

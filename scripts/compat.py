"""`make compat`: the version matrix, run here. Each cell is an Airflow beside the provider and a Ray cluster
(a real head started from that Ray's own `ray` CLI, with that Ray's Python first on its PATH), and runs the same
integration tests (sync, deferrable, retry-attach, bad input) against them.

Every Airflow and every Ray lives in a venv of its own, made by this script and cached under
``$ART_COMPAT_CACHE`` (default ``~/.cache/airflow-ray-train/compat/<name>``); the project's ``.venv`` is the
newest of both. A test session is pointed at another head and another Airflow through the environment the test
fixtures read (``ART_TEST_RAY_ADDRESS``, ``ART_TEST_RAY_TOKEN``, see tests/conftest.py) and by running pytest
with the Airflow venv's interpreter: the tests are the same files in every cell.

Usage:
  python scripts/compat.py venvs [CELL ...]     make (or reuse) the venvs the cells need
  python scripts/compat.py run [--ci] [--parallel] [CELL ...]
                                                 run cells (default: all; --ci: the CI cells; --parallel:
                                                 side by side), write build/compat/results.json, print a table
  python scripts/compat.py list                  the cells, their venvs and tests
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ART_COMPAT_CACHE") or Path.home() / ".cache" / "airflow-ray-train" / "compat")
RESULTS = REPO / "build" / "compat"
HEAD_START_TIMEOUT_S = 300


def find_python(version: str) -> str:
    """An interpreter of ``version`` that runs: ``$ART_COMPAT_PY<digits>``, pyenv's, or ``pythonX.Y`` on PATH
    (a pyenv shim on PATH may name a version that is not selected, so each is tried)."""
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python"), reverse=True)
    candidates = [os.environ.get(f"ART_COMPAT_PY{version.replace('.', '')}"), *map(str, pyenv)]
    candidates += [shutil.which(f"python{version}"), sys.executable]
    for candidate in filter(None, candidates):
        check = [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        found = subprocess.run(check, capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip() == version:
            return candidate
    raise SystemExit(f"no Python {version} found; set ART_COMPAT_PY{version.replace('.', '')} to one")


#: The CPU build of torch lies on this machine's disk for CPython 3.11 only; any other torch is a CUDA
#: download of several GB, so the Python 3.12 cluster runs the torch-free checks only.
CPU_TORCH = "torch==2.13.0"
#: What the tests need beside Airflow (the provider itself is installed without dependencies at each run).
TEST_REQUIREMENTS = (
    "httpx>=0.27",
    "aiohttp>=3.9",
    "websockets>=14",
    "pathspec>=0.12",
    "psutil",
    "pytest>=8",
    "pytest-timeout>=2.3",
)


@dataclass(frozen=True)
class Venv:
    """A cached virtual environment: made once from ``requirements`` (``first`` installed before them), then
    reused while its stamp file lists the same requirements."""

    name: str
    python: str  # its version, e.g. "3.11"
    requirements: tuple[str, ...]
    first: tuple[str, ...] = ()
    #: Only releases uploaded before this ISO date, for ``requirements`` (``first`` is already installed).
    uploaded_before: str | None = None

    @property
    def path(self) -> Path:
        return CACHE / self.name

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def stamp(self) -> Path:
        return self.path / ".compat-stamp"

    def wanted(self) -> str:
        wanted = {"python": self.python, "first": self.first, "requirements": self.requirements}
        if self.uploaded_before:
            wanted["uploaded_before"] = self.uploaded_before
        return json.dumps(wanted)

    def ready(self) -> bool:
        return self.stamp.exists() and self.stamp.read_text() == self.wanted()

    def ensure(self) -> float:
        """Make the venv unless it is cached; returns the seconds it took (0 when cached)."""
        if self.ready():
            return 0.0
        started = time.monotonic()
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([find_python(self.python), "-m", "venv", str(self.path)], check=True)
        pip = [str(self.bin / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        if self.first:
            subprocess.run([*pip, *self.first], check=True)
        # The first packages again, pinned, so the resolver keeps them (torch: the CPU build).
        dated = ["--uploaded-prior-to", self.uploaded_before] if self.uploaded_before else []
        subprocess.run([*pip, *dated, *self.requirements, *self.first], check=True)
        self.stamp.write_text(self.wanted())
        return time.monotonic() - started


#: An older Airflow is installed as its own constraints file would have it (those files live on GitHub, which
#: this machine cannot reach): only releases uploaded before this date (pip's --uploaded-prior-to), two weeks
#: after that Airflow's release. With today's newest dependencies Airflow 3.2.2 fails to start a task (FastAPI
#: 0.165 and pydantic 2.14: "TITerminalStatePayload needs a discriminator field"; with an older FastAPI, the
#: execution API's lifespan has no svcs_registry) and 3.0.6 answers HTTP 422. Airflow 3.1.8 runs with today's.
AIRFLOW_UPLOADED_BEFORE = {"3.0.6": "2025-09-12T00:00:00Z", "3.2.2": "2026-06-12T00:00:00Z"}


def airflow_venv(version: str) -> Venv:
    """Airflow ``version`` and what the tests need; torch for the example DAG's evaluation task. No Ray: the
    cell's head comes from a Ray venv."""
    requirements = (f"apache-airflow=={version}", *TEST_REQUIREMENTS)
    return Venv(f"airflow-{version}", "3.11", requirements, (CPU_TORCH,), AIRFLOW_UPLOADED_BEFORE.get(version))


def ray_venv(version: str, python: str = "3.11") -> Venv:
    """A Ray cluster's Python: ``ray[default,train]`` and, on 3.11, the CPU torch, Lightning and MLflow's client."""
    if python == "3.11":
        return Venv(
            f"ray-{version}-py3.11",
            "3.11",
            # mlflow-skinny: the runtime's MLflow tracking, which the Lightning pipeline test turns on.
            (f"ray[default,train]=={version}", "pytorch-lightning>=2.1", "matplotlib>=3.7", "mlflow-skinny==3.17.2"),
            (CPU_TORCH,),
        )
    return Venv(f"ray-{version}-py{python}", python, (f"ray[default,train]=={version}", "matplotlib>=3.7"))


#: The paths every cell runs: sync, deferrable, retry-attach, bad input, and what each Airflow lacks.
AIRFLOW_TESTS = (
    "tests/integration/test_operator_dag.py::test_example_dag_trains_on_ray_and_evaluates_the_checkpoint",
    "tests/integration/test_deferrable.py::test_deferrable_dag_returns_the_same_xcom_as_the_sync_path",
    "tests/integration/test_deferrable.py::test_trigger_on_kill_stops_the_job_and_its_workers",
    "tests/integration/test_faults.py::test_next_try_attaches_to_the_job_of_a_killed_task_then_collects_it_and_trains_once",
    "tests/integration/test_bad_input.py",
    "tests/integration/test_taskflow.py::test_decorated_function_sweeps_on_ray_and_the_best_is_picked",
    "tests/integration/test_job_identity.py::test_a_deleted_and_recreated_dag_run_trains_anew",
    "tests/unit/test_compat.py",
    "tests/unit/test_provider.py",
    "tests/integration/test_provider_cli.py",
    "tests/unit/test_trigger.py",
)
#: What a cluster cell adds: the Jobs API replies the hooks parse, and the Lightning loop.
RAY_TESTS = (
    "tests/integration/test_hook.py",
    "tests/integration/test_operator_dag.py",
    "tests/integration/test_deferrable.py::test_deferrable_dag_returns_the_same_xcom_as_the_sync_path",
    "tests/integration/test_deferrable.py::test_trigger_on_kill_stops_the_job_and_its_workers",
    "tests/integration/test_faults.py::test_next_try_attaches_to_the_job_of_a_killed_task_then_collects_it_and_trains_once",
    "tests/integration/test_bad_input.py",
    "tests/integration/test_lightning_pipeline.py",
)
#: A cluster without torch (CPython 3.12 here): the Jobs API, and the runtime failing at once with the reason.
TORCHLESS_TESTS = (
    "tests/integration/test_hook.py",
    "tests/integration/test_cluster_support.py",
    # Without torch the driver stops at the cluster check, before it looks for train_func.
    "--deselect",
    "tests/integration/test_hook.py::test_driver_writes_a_failed_manifest_when_train_func_is_not_on_the_cluster",
)
#: CI's cells are a subset: one test per path.
#: CI's share (about 5 min a cell on 2 cores, side by side): the example DAG sync and deferred, the trigger's
#: kill, the Jobs API replies, the provider's registration; the fault and bad-input runs, which exercise no
#: API that differs between versions, are left to `make compat`.
CI_AIRFLOW_TESTS = AIRFLOW_TESTS[:3] + AIRFLOW_TESTS[7:]
CI_RAY_TESTS = RAY_TESTS[:4]


@dataclass(frozen=True)
class Cell:
    """One Airflow beside the provider and one Ray cluster; ``None``: the project's ``.venv`` (the newest)."""

    name: str
    airflow: Venv | None
    ray: Venv | None
    tests: tuple[str, ...]
    ci_tests: tuple[str, ...] = ()

    @property
    def venvs(self) -> list[Venv]:
        return [venv for venv in (self.airflow, self.ray) if venv is not None]


PROJECT_BIN = REPO / ".venv" / "bin"
CELLS = {
    cell.name: cell
    for cell in (
        Cell("airflow-3.2", airflow_venv("3.2.2"), None, AIRFLOW_TESTS),
        Cell("airflow-3.1", airflow_venv("3.1.8"), None, AIRFLOW_TESTS, CI_AIRFLOW_TESTS),
        Cell("airflow-3.0", airflow_venv("3.0.6"), None, AIRFLOW_TESTS),
        Cell("ray-2.56", None, ray_venv("2.56.1"), RAY_TESTS),
        Cell("ray-2.52", None, ray_venv("2.52.1"), RAY_TESTS, CI_RAY_TESTS),
        Cell("ray-2.60-py3.12", None, ray_venv("2.60.0", "3.12"), TORCHLESS_TESTS),
    )
}


def bin_dir(venv: Venv | None) -> Path:
    return venv.bin if venv is not None else PROJECT_BIN


def probe(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def junit_counts(path: Path) -> dict[str, int]:
    """passed/failed/skipped from pytest's JUnit XML (errors count as failed)."""
    import xml.etree.ElementTree as ET

    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not path.exists():
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        counts[outcome] += 1
    return counts


def run_cell(cell: Cell, *, ci: bool) -> dict[str, object]:
    """Make the cell's venvs, start a head from its Ray, run its tests with its Airflow; the outcome."""
    from airflow_ray_train.local_cluster import start_ray_head

    RESULTS.mkdir(parents=True, exist_ok=True)
    setup_s = sum(venv.ensure() for venv in cell.venvs)
    airflow_python, ray_bin = bin_dir(cell.airflow) / "python", bin_dir(cell.ray)
    if cell.airflow is not None:
        # The runtime and the provider from this tree, without touching the venv's pins (the provider's entry
        # point registers it).
        install = [str(airflow_python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO / "runtime")]
        install += ["-e", str(REPO)]
        installed = subprocess.run(install, capture_output=True, text=True, check=False)
        if installed.returncode != 0:
            raise SystemExit(f"{' '.join(install)} failed:\n{installed.stdout}{installed.stderr}")
    versions = {
        "airflow": probe(airflow_python, "import airflow; print(airflow.__version__)"),
        "ray": probe(ray_bin / "python", "import ray; print(ray.__version__)"),
        "cluster_python": probe(ray_bin / "python", "import platform; print(platform.python_version())"),
    }
    tests = cell.ci_tests if ci and cell.ci_tests else cell.tests
    log_path, junit = RESULTS / f"{cell.name}.log", RESULTS / f"{cell.name}.xml"
    junit.unlink(missing_ok=True)
    (RESULTS / f"{cell.name}.ray_head.log").unlink(missing_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="art_compat_")
    started = time.monotonic()
    head = start_ray_head(
        temp_dir=temp_dir,
        token=secrets.token_hex(16),
        num_cpus=4,
        ray_cli=str(ray_bin / "ray"),
        log_file=str(RESULTS / f"{cell.name}.ray_head.log"),
        timeout=HEAD_START_TIMEOUT_S,
        # On a loaded machine the dashboard's modules take longer than Ray's 30 s to start.
        extra_env={"RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": str(HEAD_START_TIMEOUT_S)},
    )
    try:
        env = {**os.environ, "ART_TEST_RAY_ADDRESS": head.dashboard_url, "ART_TEST_RAY_TOKEN": head.token}
        with open(log_path, "w") as log:
            pytest = subprocess.run(
                [
                    str(airflow_python),
                    "-m",
                    "pytest",
                    *tests,
                    "-q",
                    "-rs",
                    "-p",
                    "no:cacheprovider",
                    f"--junitxml={junit}",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {
        "cell": cell.name,
        **versions,
        **junit_counts(junit),
        "exit_code": pytest.returncode,
        "tests": list(tests),
        "test_s": round(time.monotonic() - started),
        "setup_s": round(setup_s),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "where": "CI" if os.environ.get("CI") else "here",
        "log": str(log_path.relative_to(REPO)),
    }


def table(outcomes: list[dict[str, object]]) -> str:
    lines = [
        "| Cell | Airflow | Ray | Cluster Python | Passed | Failed | Skipped | Tests (s) | Venvs made (s) | Date "
        "| Where |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o['cell']} | {o['airflow']} | {o['ray']} | {o['cluster_python']} | {o['passed']} | {o['failed']} "
            f"| {o['skipped']} | {o['test_s']} | {o['setup_s']} | {o['date']} | {o['where']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["venvs", "run", "list"])
    parser.add_argument("cells", nargs="*", help=f"cells (default: all): {', '.join(CELLS)}")
    parser.add_argument("--ci", action="store_true", help="only the CI cells, with their shorter test lists")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="run the cells side by side (each has its own head, temp dir and ports); their venvs are made first",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.cells if name not in CELLS]
    if unknown:
        parser.error(f"unknown cells {unknown}; known: {', '.join(CELLS)}")
    cells = [CELLS[name] for name in args.cells] or [c for c in CELLS.values() if c.ci_tests or not args.ci]
    if args.command == "list":
        for cell in cells:
            print(f"{cell.name}: venvs {[v.name for v in cell.venvs]}; tests {list(cell.tests)}")
        return 0
    if args.command == "venvs":
        for venv in {v.name: v for cell in cells for v in cell.venvs}.values():
            print(f"{venv.name}: {'cached' if venv.ready() else 'making'} at {venv.path}", flush=True)
            venv.ensure()
        return 0
    outcomes = []
    if args.parallel and len(cells) > 1:
        # Venvs first, one at a time (pip's cache is shared), then the cells at once: most of a cell's time is
        # waiting on its head and its jobs, so two cells take little longer than the slower one.
        for venv in {v.name: v for cell in cells for v in cell.venvs}.values():
            venv.ensure()
        print(f"== {', '.join(cell.name for cell in cells)} side by side", flush=True)
        with ThreadPoolExecutor(max_workers=len(cells)) as pool:
            outcomes = list(pool.map(lambda cell: run_cell(cell, ci=args.ci), cells))
        print(table(outcomes), flush=True)
    else:
        for cell in cells:
            print(f"== {cell.name}", flush=True)
            outcomes.append(run_cell(cell, ci=args.ci))
            print(table(outcomes[-1:]), flush=True)
    # Cells run one invocation at a time add up: each keeps its latest outcome.
    results_file = RESULTS / ("results-ci.json" if args.ci else "results.json")
    kept = json.loads(results_file.read_text()) if results_file.exists() else []
    ran = {o["cell"] for o in outcomes}
    merged = [o for o in kept if o["cell"] not in ran] + outcomes
    results_file.write_text(json.dumps(merged, indent=2))
    print(table(merged))
    return 0 if all(o["exit_code"] == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

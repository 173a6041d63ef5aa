"""Shipping a TaskFlow training function without its DAG file: what the generated module holds, that it
runs where Airflow is not installed, and that names are resolved by scope: the closure of a ``@dag``
function, constants and imports wherever they sit in the DAG file, and nothing the function only shadows.
What cannot travel fails in Airflow, naming the name."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airflow_ray_train.function_shipping import function_package
from airflow_ray_train.packaging import CodeLookupError, code_package

DAG_FILE = textwrap.dedent(
    """
    from __future__ import annotations

    import json
    import math as m
    from datetime import datetime

    from airflow.sdk import DAG, task

    SCALE = 3
    UNUSED = object()


    def helper(x):
        return m.sqrt(x) * SCALE


    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.ray_train(scaling_config={"num_workers": 2})
        def train(config):
            import os.path

            return json.dumps({"value": helper(config["x"]), "sep": os.path.sep})

        @task.ray_train()
        def uses_airflow(config):
            return DAG
    """
)


HELPERS = textwrap.dedent(
    """
    FACTOR = 10


    def double(x):
        return 2 * x
    """
)

DAG_FUNCTION = textwrap.dedent(
    """
    from __future__ import annotations

    import json
    import threading
    from datetime import datetime

    from airflow.sdk import dag, task

    OFFSET = 0.5


    @dag(schedule=None, start_date=datetime(2026, 1, 1))
    def pipeline():
        slope = 2.0
        names = ("a", "b")

        def target(x):
            return slope * x + OFFSET

        @task.ray_train(scaling_config={"num_workers": 1})
        def train(config: dict) -> str:
            return json.dumps({"y": target(config["x"]), "names": list(names)})

        train({"x": 1.0})


    @dag(schedule=None, start_date=datetime(2026, 1, 1))
    def holds_a_lock():
        lock = threading.Lock()

        @task.ray_train()
        def train(config):
            with lock:
                return config

        train({})


    @dag(schedule=None, start_date=datetime(2026, 1, 1))
    def uses_an_upstream_result():
        @task
        def rows():
            return [1, 2]

        upstream = rows()

        @task.ray_train()
        def train(config):
            return upstream

        train({})


    scale = 1.0


    def rescale(x):
        return x * scale


    @dag(schedule=None, start_date=datetime(2026, 1, 1))
    def conflicting():
        scale = 5.0

        @task.ray_train()
        def train(config):
            return rescale(config["x"]) * scale

        train({})


    pipeline_dag = pipeline()
    conflicting_dag = conflicting()
    lock_dag = holds_a_lock()
    upstream_dag = uses_an_upstream_result()
    """
)

SCOPED_DAG = textwrap.dedent(
    """
    from __future__ import annotations

    from datetime import datetime

    from airflow.sdk import DAG, task

    try:
        import json as jsonlib
    except ImportError:
        jsonlib = None

    from helpers_mod import *

    records = print("the top-level statement ran") or []

    with DAG("scoped", schedule=None, start_date=datetime(2026, 1, 1)) as scoped_dag:
        EPOCHS = 3

        @task.ray_train()
        def train(config):
            task = "a local named like an Airflow symbol"
            records = [double(config["x"]) * FACTOR for _ in range(EPOCHS)]
            return jsonlib.dumps({"records": records, "task": task})

        @task.ray_train()
        def imports_relatively(config):
            from .sibling import thing

            return thing

        train({"x": 1})
        imports_relatively({})
    """
)


VALUES_DAG = textwrap.dedent(
    """
    from __future__ import annotations

    import dataclasses
    from datetime import date, datetime
    from pathlib import PurePosixPath

    from airflow.sdk import DAG, task

    START = date(2026, 1, 2)
    ROOT = PurePosixPath("/data/runs")


    @dataclasses.dataclass
    class Settings:
        epochs: int = 2

        def describe(self):
            return f"{self.epochs} epochs from {START}"


    DEFAULTS = Settings()

    with DAG("values", schedule=None, start_date=datetime(2026, 1, 1)) as values_dag:

        @task.ray_train()
        def train(config):
            return f"{Settings(config['epochs']).describe()} under {ROOT / 'x'}"

        @task.ray_train()
        def uses_an_instance(config):
            return DEFAULTS.epochs

        train({"epochs": 3})
        uses_an_instance({})
    """
)


def _load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> Any:
    (tmp_path / "helpers_mod.py").write_text(HELPERS)
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in (name, "helpers_mod"):
        sys.modules.pop(module, None)
    return __import__(name)


def _callable(dag: Any, task_id: str = "train") -> Any:
    return dag.get_task(task_id).python_callable


def _run_shipped(tmp_path: Path, func: Any, call: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Ship ``func`` as the decorator does (its module plus the local packages it imports), unpack it, and call
    it in a Python that cannot import Airflow. Returns the generated source and the run."""
    package, train_func, imported = function_package(func)
    ship = tmp_path / "shipped"
    packages = [package, *(p for p in map(code_package, imported) if p is not None)]
    for shipped in packages:
        shipped.archive().extractall(ship)
    module_name, _, function_name = train_func.partition(":")
    code = (
        "import sys, importlib.abc\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] == 'airflow': raise ImportError(n)\n"
        "sys.meta_path.insert(0, B())\n"
        f"sys.path[:0] = [{str(ship)!r}]\n"
        f"import {module_name} as m\n"
        f"print(m.{function_name}({call}))\n"
    )
    # Run from a folder that holds none of the test's modules: only what was shipped can be imported.
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ship, env={"PATH": ""}
    )
    return (ship / f"{module_name}.py").read_text(), run


@pytest.fixture
def dag_module(tmp_path, monkeypatch):
    return _load(tmp_path, monkeypatch, "my_dag_file", DAG_FILE)


def test_the_function_travels_with_what_it_uses_and_without_airflow(dag_module, tmp_path):
    source, run = _run_shipped(tmp_path, dag_module.train.function, "{'x': 4.0}")
    assert run.returncode == 0, run.stderr
    assert '"value": 6.0' in run.stdout
    assert "def helper" in source and "SCALE = 3" in source and "import math as m" in source
    assert "airflow" not in source.split('"""', 2)[2]  # the docstring names the DAG file; the code does not
    assert "UNUSED" not in source and "@task" not in source and "with DAG" not in source
    _, train_func, imported = function_package(dag_module.train.function)
    assert train_func.endswith(":train") and imported == ["json", "math", "os"]


def test_same_code_same_package(dag_module):
    first = function_package(dag_module.train.function)
    assert function_package(dag_module.train.function)[0].uri == first[0].uri


def test_a_function_that_needs_airflow_is_refused_with_the_reason(dag_module):
    with pytest.raises(CodeLookupError, match=r"uses 'DAG' \(airflow\.[\w.]+\), which comes from Airflow"):
        function_package(dag_module.uses_airflow.function)


def test_a_function_inside_a_dag_function_travels_with_its_closure(tmp_path, monkeypatch):
    module = _load(tmp_path, monkeypatch, "dag_function_file", DAG_FUNCTION)
    source, run = _run_shipped(tmp_path, _callable(module.pipeline_dag), "{'x': 1.0}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == '{"y": 2.5, "names": ["a", "b"]}'
    assert "slope = 2.0" in source and "def target" in source and "OFFSET = 0.5" in source
    assert "airflow" not in source.split('"""', 2)[2] and "threading" not in source


def test_a_closure_value_that_cannot_travel_is_named_before_submitting(tmp_path, monkeypatch):
    module = _load(tmp_path, monkeypatch, "dag_function_file", DAG_FUNCTION)
    with pytest.raises(CodeLookupError, match="'lock'") as raised:
        function_package(_callable(module.lock_dag))
    assert "Fix:" in str(raised.value)
    with pytest.raises(CodeLookupError, match=r"'upstream'.*Airflow") as raised:
        function_package(_callable(module.upstream_dag))
    assert "Fix:" in str(raised.value)


def test_names_are_resolved_by_scope_not_by_spelling(tmp_path, monkeypatch, capfd):
    module = _load(tmp_path, monkeypatch, "scoped_dag_file", SCOPED_DAG)
    capfd.readouterr()
    source, run = _run_shipped(tmp_path, _callable(module.scoped_dag), "{'x': 1}")
    assert run.returncode == 0, run.stderr
    # A constant under `with DAG`, an import under `try:` and names from a star import all travel; the local
    # `records` does not drag the top-level statement of the same name along, and the local `task` is fine.
    assert run.stdout.strip() == '{"records": [20, 20, 20], "task": "a local named like an Airflow symbol"}'
    assert "the top-level statement ran" not in source and "the top-level statement ran" not in run.stdout
    assert "EPOCHS = 3" in source and "from helpers_mod import double" in source


def test_a_relative_import_fails_in_airflow_naming_it(tmp_path, monkeypatch):
    module = _load(tmp_path, monkeypatch, "scoped_dag_file", SCOPED_DAG)
    with pytest.raises(CodeLookupError, match=r"from \.sibling import thing.*Fix:"):
        function_package(_callable(module.scoped_dag, "imports_relatively"))


def test_classes_of_the_dag_file_travel_as_source_and_values_as_pickles(tmp_path, monkeypatch):
    module = _load(tmp_path, monkeypatch, "values_dag_file", VALUES_DAG)
    source, run = _run_shipped(tmp_path, _callable(module.values_dag), "{'epochs': 3}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "3 epochs from 2026-01-02 under /data/runs/x"
    assert "@dataclasses.dataclass\nclass Settings" in source and "DEFAULTS" not in source
    # An instance of a class that lives in the DAG file cannot be loaded on the cluster.
    with pytest.raises(CodeLookupError, match=r"uses 'DEFAULTS', a [\w.]+\.Settings, which needs the DAG file"):
        function_package(_callable(module.values_dag, "uses_an_instance"))


def test_one_name_meaning_two_things_is_refused_naming_both_users(tmp_path, monkeypatch):
    module = _load(tmp_path, monkeypatch, "dag_function_file", DAG_FUNCTION)
    with pytest.raises(CodeLookupError, match=r"'scale' \(5\.0\), and rescale, shipped with it, uses a different"):
        function_package(_callable(module.conflicting_dag))

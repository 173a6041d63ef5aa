"""Shipping a TaskFlow training function without its DAG file: what the generated module holds, and that
it runs where Airflow is not installed."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import zipfile

import pytest

from airflow_ray_train.packaging import CodeLookupError, function_package

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


@pytest.fixture
def dag_module(tmp_path, monkeypatch):
    (tmp_path / "my_dag_file.py").write_text(DAG_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_dag_file", None)
    import my_dag_file

    return my_dag_file


def _source(package) -> tuple[str, str]:
    archive = zipfile.ZipFile(io.BytesIO(package.data))
    [name] = archive.namelist()
    return name, archive.read(name).decode()


def test_the_function_travels_with_what_it_uses_and_without_airflow(dag_module, tmp_path):
    func = dag_module.train.function
    package, train_func, imported = function_package(func)
    name, source = _source(package)
    module_name, _, function_name = train_func.partition(":")
    assert name == f"{module_name}.py" and function_name == "train"
    assert "def helper" in source and "SCALE = 3" in source and "import math as m" in source
    assert "airflow" not in source.split('"""', 2)[2]  # the docstring names the DAG file; the code does not
    assert "UNUSED" not in source and "@task" not in source and "with DAG" not in source
    assert imported == ["json", "math", "os"]

    # It runs in a Python that cannot import Airflow at all.
    ship = tmp_path / "shipped"
    zipfile.ZipFile(io.BytesIO(package.data)).extractall(ship)
    code = (
        "import sys, importlib.abc\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] == 'airflow': raise ImportError(n)\n"
        "sys.meta_path.insert(0, B())\n"
        f"sys.path.insert(0, {str(ship)!r})\n"
        f"import {module_name} as m\n"
        "print(m.train({'x': 4.0}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"value": 6.0' in result.stdout


def test_same_code_same_package(dag_module):
    first = function_package(dag_module.train.function)
    assert function_package(dag_module.train.function)[0].uri == first[0].uri


def test_a_function_that_needs_airflow_is_refused_with_the_reason(dag_module):
    with pytest.raises(CodeLookupError, match="uses 'DAG', imported from Airflow"):
        function_package(dag_module.uses_airflow.function)

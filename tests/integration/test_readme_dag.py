"""The README's DAG to copy, exactly as the README prints it: its loop and its DAG, laid out in the dags folder
the way the README says, train on the real Ray head, and the evaluate task loads the checkpoint from XCom."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
from ray_train_helpers import run_dag, states, xcom

pytestmark = [pytest.mark.integration]

README = Path(__file__).resolve().parents[2] / "README.md"
#: A README code block that starts with the path it goes to in the dags folder.
DAGS_FILE_BLOCK = re.compile(r"```python\n# dags/(\S+)\n(.*?)```", re.DOTALL)


def test_the_readmes_dag_trains_on_ray_and_its_evaluate_task_loads_the_checkpoint(ray_conn, airflow_db):
    files = dict(DAGS_FILE_BLOCK.findall(README.read_text()))
    assert set(files) == {"my_models/toy.py", "retrain_toy.py"}
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags / "my_models").mkdir(exist_ok=True)
    (dags / "my_models" / "__init__.py").touch()
    for name, code in files.items():
        (dags / name).write_text(code)

    dag_run = run_dag("retrain_toy", module="retrain_toy")
    assert str(dag_run.state) == "success", states(dag_run)
    result = xcom(dag_run, "train")
    assert result["status"] == "SUCCEEDED" and result["metrics"]["epoch"] == 4
    assert xcom(dag_run, "evaluate") == result["metrics"]["loss"]
    with open(result["metrics_history_path"]) as history:
        losses = [float(row["loss"]) for row in csv.DictReader(history)]
    assert len(losses) == 5 and losses[-1] < losses[0]  # it learned

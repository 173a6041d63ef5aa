"""Code that cannot ship, through dag.test() against a real local Ray head: each fails with a message that
names the culprit and the fix, before anything is submitted where that is possible, and without a retry.
Run with ``-s`` to print the rows docs/errors.md's bad-input table shows."""

from __future__ import annotations

import os

import pytest
from ray_train_helpers import failure, jobs_of, run_dag, states

from airflow_ray_train.hooks.ray_train import RayTrainHook

pytestmark = [pytest.mark.integration]

DAG_ID = "test_ray_train_shipping_bad_input"
#: task_id -> (exception class, what the message must say, submitted to Ray?)
EXPECTED = {
    "closure_cannot_travel": (
        "RayTrainConfigError",
        ["uses 'lock', a _thread.lock", "cannot be pickled", "Fix:"],
        False,
    ),
    "closure_holds_airflow_object": ("RayTrainConfigError", ["uses 'upstream'", "an Airflow object", "Fix:"], False),
    "relative_import_in_function": ("RayTrainConfigError", ["`from .helpers import prepare`", "Fix:"], False),
    "package_broken_symlink": ("RayTrainConfigError", ["loop_link.py: it is a symlink to", "Fix: remove"], False),
    "package_too_big": ("RayTrainConfigError", ["over the 50.0 MiB", "weights.bin (60.0 MiB)", "Fix:"], False),
    "train_func_from_stdlib": ("RayTrainConfigError", ["'subprocess:run' is in Python's standard library"], False),
    "train_func_not_a_function": ("RayTrainJobSetupError", ["is the class ray.train.ScalingConfig"], True),
}


def test_code_that_cannot_ship_fails_clearly_and_is_not_retried(ray_conn, airflow_db, tmp_path, monkeypatch):
    for name in ("shipping_broken_pkg", "shipping_big_pkg"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "loop.py").write_text("def train_func(config):\n    pass\n")
    (tmp_path / "shipping_broken_pkg" / "loop_link.py").symlink_to(tmp_path / "moved_away.py")
    with open(tmp_path / "shipping_big_pkg" / "weights.bin", "wb") as weights:
        os.truncate(weights.fileno(), 60 * 1024 * 1024)  # sparse: the size counts, the disk is spared
    monkeypatch.syspath_prepend(str(tmp_path))

    dag_run = run_dag(DAG_ID, module="ray_train_shipping_dags")
    assert {task_id: state for task_id, state in states(dag_run).items() if task_id != "rows"} == {
        task_id: "failed" for task_id in EXPECTED
    }
    submitted = {job.metadata["airflow_task_id"] for job in jobs_of(RayTrainHook(), DAG_ID)}
    problems, rows = [], []
    for task_id, (error_type, says, is_submitted) in EXPECTED.items():
        error = failure(DAG_ID, task_id)
        shown = error["message"].split("\nLast lines of the job log:")[0].replace("\n", " ")
        rows.append(f"| `{task_id}` | `{error['type']}` | {shown} |")
        if error["type"] != error_type:
            problems.append((task_id, "type", error["type"]))
        problems += [(task_id, "message lacks", text) for text in says if text not in error["message"]]
        if (task_id in submitted) != is_submitted:
            problems.append((task_id, "submitted", task_id in submitted))
        if "AirflowFailException" not in error["mro"] or error["try_number"] != 1:
            problems.append((task_id, "retried", error["try_number"]))
    print("\n" + "\n".join(rows))
    assert not problems, problems

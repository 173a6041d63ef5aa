"""RayTrainOperator through dag.test() against a real local Ray head and a real Airflow metadata DB."""

from __future__ import annotations

import csv
import importlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration]


def _run(dag_id_module: str, dag_id: str):
    module = importlib.import_module(dag_id_module)
    dag = next(v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id and hasattr(v, "test"))
    return dag.test()


def _xcom(dag_run, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
        ).first()
        assert row is not None, f"no XCom {key!r} for {task_id}"
        value = XComModel.deserialize_value(row)
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def _states(dag_run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}


def test_example_dag_trains_on_ray_and_evaluates_the_checkpoint(ray_conn, airflow_db):
    from airflow_ray_train.hooks.ray_train import RayTrainHook

    dag_run = _run("example_ray_train_pytorch", "example_ray_train_pytorch")
    assert str(dag_run.state) == "success", _states(dag_run)

    result = _xcom(dag_run, "train")
    assert result["status"] == "SUCCEEDED" and result["error"] is None
    # The keys downstream tasks pull on their own hold the same values as return_value.
    assert _xcom(dag_run, "train", "checkpoint_path") == result["checkpoint_path"]
    assert _xcom(dag_run, "train", "metrics") == result["metrics"]
    assert _xcom(dag_run, "train", "best_checkpoint_path") == result["best_checkpoint_path"]
    assert _xcom(dag_run, "train", "job_id") == result["job_id"]
    assert result["dashboard_url"].startswith(ray_conn.dashboard_url)

    # A plain local path a downstream task can open, holding the model the last epoch saved.
    checkpoint = Path(result["checkpoint_path"])
    assert checkpoint.is_dir() and (checkpoint / "model.pt").is_file()
    assert result["metrics"]["epoch"] == 3
    assert len(result["best_checkpoints"]) == 2  # num_to_keep=2
    best_score = max(r["metrics"]["val_accuracy"] for r in result["best_checkpoints"])
    best = next(r for r in result["best_checkpoints"] if r["path"] == result["best_checkpoint_path"])
    assert best["metrics"]["val_accuracy"] == best_score

    # Every report is in the history (Ray's Result.metrics would keep only the last); the model learned.
    with open(result["metrics_history_path"]) as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in history] == [0, 1, 2, 3]
    assert float(history[-1]["loss"]) < float(history[0]["loss"])

    manifest = json.loads(Path(result["manifest_path"]).read_text())
    assert manifest["status"] == "SUCCEEDED" and manifest["checkpoint_path"] == result["checkpoint_path"]

    # The evaluation task loaded that checkpoint and scored it on held-out data, far above chance (0.25).
    evaluation = _xcom(dag_run, "evaluate")
    assert evaluation["checkpoint_path"] == result["checkpoint_path"]
    assert evaluation["test_accuracy"] >= 0.8

    hook = RayTrainHook()
    info = hook.get_job_info(result["job_id"])
    assert info["status"] == "SUCCEEDED"
    assert info["metadata"]["airflow_dag_id"] == "example_ray_train_pytorch"


def test_failing_train_func_reaches_airflow_and_keeps_manifest_and_checkpoint(ray_conn, airflow_db):
    from airflow_ray_train.hooks.ray_train import RayTrainHook

    results = Path(os.environ["ART_TEST_RESULTS_DIR"])
    dag_run = _run("ray_train_test_dags", "test_ray_train_failing")
    states = _states(dag_run)
    assert states["train_fails"] == "failed" and states["bad_scaling_key"] == "failed"

    failure = json.loads((results / "train_fails.failure.json").read_text())
    assert failure["type"] == "RayTrainJobError"
    assert "failing on purpose after epoch 0" in failure["message"]
    assert "FAILED" in failure["message"]
    manifest_line = next(line for line in failure["message"].splitlines() if line.startswith("Manifest: "))
    manifest = json.loads(Path(manifest_line.removeprefix("Manifest: ")).read_text())
    assert manifest["status"] == "FAILED"
    assert manifest["error"]["type"] == "RuntimeError"
    assert "fail_at_epoch" in manifest["error"]["traceback"]
    # The checkpoint reported before the failure is kept and loadable.
    assert manifest["checkpoint_path"] and (Path(manifest["checkpoint_path"]) / "model.pt").is_file()
    assert manifest["metrics"]["epoch"] == 0

    # Bad input fails before anything is submitted, naming the field and the fix, and is not retried.
    bad = json.loads((results / "bad_scaling_key.failure.json").read_text())
    assert bad["type"] == "RayTrainConfigError" and "AirflowFailException" in bad["mro"]
    assert "scaling_config.num_wokers" in bad["message"] and "did you mean 'num_workers'" in bad["message"]
    submitted = {(job.get("metadata") or {}).get("airflow_task_id") for job in RayTrainHook().list_jobs()}
    assert "bad_scaling_key" not in submitted

"""RayTrainOperator through dag.test() against a real local Ray head and a real Airflow metadata DB."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from ray_train_helpers import run_dag, states, xcom

pytestmark = [pytest.mark.integration]


def test_example_dag_trains_on_ray_and_evaluates_the_checkpoint(ray_conn, airflow_db):
    from airflow_ray_train.hooks.ray_train import RayTrainHook

    dag_run = run_dag("example_ray_train_pytorch", module="example_ray_train_pytorch")
    assert str(dag_run.state) == "success", states(dag_run)

    result = xcom(dag_run, "train")
    assert result["status"] == "SUCCEEDED" and result["error"] is None
    # The keys downstream tasks pull on their own hold the same values as return_value.
    assert xcom(dag_run, "train", "checkpoint_path") == result["checkpoint_path"]
    assert xcom(dag_run, "train", "metrics") == result["metrics"]
    assert xcom(dag_run, "train", "best_checkpoint_path") == result["best_checkpoint_path"]
    assert xcom(dag_run, "train", "job_id") == result["job_id"]
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
    evaluation = xcom(dag_run, "evaluate")
    assert evaluation["checkpoint_path"] == result["checkpoint_path"]
    assert evaluation["test_accuracy"] >= 0.8

    hook = RayTrainHook()
    info = hook.get_job_info(result["job_id"])
    assert info.status == "SUCCEEDED"
    assert info.metadata["airflow_dag_id"] == "example_ray_train_pytorch"


def test_failing_train_func_reaches_airflow_and_keeps_manifest_and_checkpoint(ray_conn, airflow_db):
    from airflow_ray_train.hooks.ray_train import RayTrainHook

    results = Path(os.environ["ART_TEST_RESULTS_DIR"])
    dag_run = run_dag("test_ray_train_failing", module="ray_train_test_dags")
    task_states = states(dag_run)
    assert task_states["train_fails"] == "failed" and task_states["bad_scaling_key"] == "failed"

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
    submitted = {job.metadata.get("airflow_task_id") for job in RayTrainHook().list_jobs()}
    assert "bad_scaling_key" not in submitted

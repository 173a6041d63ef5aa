"""DAGs the test suite runs through dag.test(): a train function that fails after its first checkpoint, and a
deferred plain PyTorch training that registers its model in MLflow."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG

from airflow_ray_train.operators.ray_train import RayTrainOperator


def record_failure(context: dict[str, Any]) -> None:
    """Keep the exception the task failed with, so a test can read what the user would see."""
    exc = context.get("exception")
    path = os.path.join(os.environ["ART_TEST_RESULTS_DIR"], f"{context['ti'].task_id}.failure.json")
    with open(path, "w") as handle:
        json.dump(
            {"type": type(exc).__name__, "message": str(exc), "mro": [c.__name__ for c in type(exc).__mro__]}, handle
        )


with DAG(dag_id="test_ray_train_failing", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    RayTrainOperator(
        task_id="train_fails",
        train_func="ray_train_examples.pytorch_classifier:train_func",
        train_loop_config={"epochs": 3, "fail_at_epoch": 0, "train_size": 256},
        scaling_config={"num_workers": 2},
        poll_interval=1.0,
        retries=0,
        on_failure_callback=record_failure,
    )
    RayTrainOperator(
        task_id="bad_scaling_key",
        train_func="ray_train_examples.pytorch_classifier:train_func",
        scaling_config={"num_wokers": 2},
        retries=0,
        on_failure_callback=record_failure,
    )


with DAG(
    dag_id="test_ray_train_register_deferred", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as register_deferred_dag:
    RayTrainOperator(
        task_id="train_and_register",
        train_func="ray_train_examples.pytorch_classifier:train_func",
        train_loop_config={"epochs": 2, "train_size": 500},
        scaling_config={"num_workers": 2},
        run_config={
            "checkpoint_config": {
                "num_to_keep": 1,
                "checkpoint_score_attribute": "val_accuracy",
                "checkpoint_score_order": "max",
            }
        },
        register_model="torch-deferred",
        deferrable=True,
        poll_interval=1.0,
        retries=0,
    )

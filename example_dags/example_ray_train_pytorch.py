"""Weekly retraining of a small PyTorch classifier on Ray Train, then an evaluation of its checkpoint.

``train`` runs on the Ray cluster (the embedded local one when no ``ray_train_default`` connection is
set); ``evaluate`` runs in Airflow and loads the checkpoint it gets from XCom.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_ray_train.operators.ray_train import RayTrainOperator

with DAG(
    dag_id="example_ray_train_pytorch",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["ray", "example"],
    doc_md=__doc__,
) as dag:
    train = RayTrainOperator(
        task_id="train",
        train_func="ray_train_examples.pytorch_classifier:train_func",
        train_loop_config={"lr": 3e-3, "epochs": 4, "hidden": 32, "batch_size": 64},
        scaling_config={"num_workers": 2, "use_gpu": False},
        run_config={
            "checkpoint_config": {
                "num_to_keep": 2,
                "checkpoint_score_attribute": "val_accuracy",
                "checkpoint_score_order": "max",
            }
        },
    )

    @task
    def evaluate(checkpoint_path: str, metrics: dict[str, Any]) -> dict[str, Any]:
        from ray_train_examples.pytorch_classifier import evaluate_checkpoint

        result = evaluate_checkpoint(checkpoint_path)
        result["train_val_accuracy"] = metrics.get("val_accuracy")
        print(f"evaluated {checkpoint_path}: test accuracy {result['test_accuracy']:.3f}")
        return result

    evaluate(train.output["checkpoint_path"], train.output["metrics"])

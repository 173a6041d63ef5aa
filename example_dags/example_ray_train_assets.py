"""Train -> model Asset -> deploy: two DAGs joined by the model they hand over.

``example_ray_train_asset_producer`` trains on Ray (deferrable: the wait runs in the triggerer and holds no
worker slot) and emits an event on the ``MODEL`` Asset whose extra carries the checkpoint URI and metrics.
``example_ray_train_asset_deploy`` is scheduled on that Asset: each new model triggers it, and it reads
what to deploy from the triggering event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, task

from airflow_ray_train.operators.ray_train import RayTrainOperator

MODEL = Asset(name="example_ray_train_classifier", uri="model://example_ray_train/classifier")

with DAG(
    dag_id="example_ray_train_asset_producer",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["ray", "example", "assets"],
    doc_md=__doc__,
):
    RayTrainOperator(
        task_id="train",
        train_func="ray_train_examples.pytorch_classifier:train_func",
        train_loop_config={"epochs": 2, "train_size": 1000},
        scaling_config={"num_workers": 2},
        model_asset=MODEL,
        deferrable=True,
    )

with DAG(
    dag_id="example_ray_train_asset_deploy",
    schedule=[MODEL],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["ray", "example", "assets"],
    doc_md=__doc__,
):

    @task
    def deploy(triggering_asset_events: Any = None, run_id: str | None = None) -> dict[str, Any]:
        from ray_train_examples.model_registry import promote, registry_root
        from ray_train_examples.pytorch_classifier import evaluate_checkpoint

        event = triggering_asset_events[MODEL][-1]
        checkpoint_path = event.extra["checkpoint_path"]
        scores = evaluate_checkpoint(checkpoint_path)
        record = promote(registry_root(), "classifier", checkpoint_path, {**event.extra["metrics"], **scores}, run_id)
        print(f"deployed {checkpoint_path} as {record['version']}: test accuracy {scores['test_accuracy']:.3f}")
        return {
            "deployed_path": record["path"],
            "from_checkpoint": checkpoint_path,
            "event_extra": event.extra,
            **scores,
        }

    deploy()

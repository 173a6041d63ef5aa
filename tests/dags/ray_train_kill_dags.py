"""A deferrable training run long enough to be acted on while deferred: the e2e test marks it failed in the
real Airflow and checks that its Ray job stops (``on_kill`` since Airflow 3.3, the cancelled trigger's check
of the task's state before)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_ray_train.operators.ray_train import RayTrainOperator

with DAG(
    dag_id="test_ray_train_killed_while_deferred", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as killed_dag:
    RayTrainOperator(
        task_id="train",
        train_func="ray_train_test_loops:slow_counter",
        train_loop_config={"epochs": 600, "sleep_s": 1.0},
        scaling_config={"num_workers": 1},
        deferrable=True,
        poll_interval=1.0,
        retries=0,
    )

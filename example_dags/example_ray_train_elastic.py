"""Elastic retraining on preemptible nodes: the classifier trains with between 2 and 4 workers, starts as soon
as 2 fit, goes on with the workers it can get when a node is preempted (from its latest checkpoint, within the
same task try), and grows back when nodes return. The result and the MLflow run say each size it ran with
(``usage["worker_groups"]``, the ``workers`` metric); ``usage`` counts the workers it actually held.

Preemptions are counted apart from failures: a node drained before it goes (a spot reclaim) fails the group with
Ray's ``PreemptionError``, which spends ``failure_config.max_preemption_failures``, not ``max_failures`` (kept for
real failures: a crashed node, an error in the loop); Airflow's ``retries`` come after both.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_ray_train.operators.ray_train import RayTrainOperator

with DAG(
    dag_id="example_ray_train_elastic",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["ray", "example"],
    doc_md=__doc__,
) as dag:
    train = RayTrainOperator(
        task_id="train",
        train_func="ray_train_examples.pytorch_classifier:train_func",
        train_loop_config={"lr": 3e-3, "epochs": 6, "hidden": 32, "batch_size": 64},
        # [min, max]: min is the fewest workers the run is worth running with (memory per worker, the global
        # batch); max is what the cluster holds when every node is up. Check the interval the group grows back.
        scaling_config={"num_workers": [2, 4], "use_gpu": False, "elastic_resize_monitor_interval_s": 60},
        run_config={
            "checkpoint_config": {"num_to_keep": 2},
            "failure_config": {"max_failures": 2, "max_preemption_failures": 10},
        },
        retries=1,
        retry_delay=timedelta(minutes=2),
    )

    @task
    def report(usage: dict[str, Any]) -> list[int]:
        sizes = [group["workers"] for group in usage.get("worker_groups") or []]
        print(f"trained with worker groups of {sizes}: {usage.get('cpu_s')} CPU-seconds")
        return sizes

    report(train.output["usage"])

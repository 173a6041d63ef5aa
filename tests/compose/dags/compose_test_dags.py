"""DAGs the docker-compose stack test runs besides the example DAGs (a second DAG bundle there, see
tests/compose/docker-compose.standin.yml): a training long enough to break the stack while it runs.

``slow_counter`` takes ``sleep_s`` per epoch, checkpoints every epoch and resumes from the latest checkpoint;
its ``total`` metric comes out right only if every resume carried the state on.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task
from ray_train_test_loops import STATE_FILE

from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP, LightningConfig


def read_checkpoint(checkpoint_path: str) -> dict[str, Any]:
    """In the Airflow container: open the checkpoint the Ray side wrote on the shared volume."""
    with open(os.path.join(checkpoint_path, STATE_FILE)) as handle:
        return dict(json.load(handle))


# The same training waited for in a worker and in the triggerer; ``register_model`` (a run conf param, empty:
# none) registers its best checkpoint, so a fault test can count the versions.
for dag_id, deferrable in (("compose_test_slow_train", False), ("compose_test_slow_train_deferred", True)):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        params={"epochs": 12, "sleep_s": 2.0, "register_model": ""},
    ):
        train = RayTrainOperator(
            task_id="train",
            train_func="ray_train_test_loops:slow_counter",
            train_loop_config={"epochs": "{{ params.epochs }}", "sleep_s": "{{ params.sleep_s }}"},
            scaling_config={"num_workers": 2},
            run_config={"failure_config": {"max_failures": 2}},
            register_model="{{ params.register_model }}",
            deferrable=deferrable,
            poll_interval=2.0,
            retries=2,
            retry_delay=timedelta(seconds=5),
        )

        task(read_checkpoint)(train.output["checkpoint_path"])


# The elastic training against the same training held to a fixed group: each Ray node of the stack has one CPU,
# so two workers need both nodes and stopping the worker node's container takes one away.
for dag_id, num_workers in (("compose_test_elastic_train", [1, 2]), ("compose_test_fixed_train", 2)):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        params={"epochs": 16, "sleep_s": 2.0, "sleep_alone_s": 2.0},
    ):
        scaling: dict[str, Any] = {"num_workers": num_workers}
        if isinstance(num_workers, list):
            scaling["elastic_resize_monitor_interval_s"] = 10
        train = RayTrainOperator(
            task_id="train",
            train_func="ray_train_test_loops:slow_counter",
            train_loop_config={
                "epochs": "{{ params.epochs }}",
                "sleep_s": "{{ params.sleep_s }}",
                "sleep_alone_s": "{{ params.sleep_alone_s }}",
            },
            scaling_config=scaling,
            # A lost node fails the worker group: elastic training restarts it with the workers that fit.
            run_config={"failure_config": {"max_failures": 4, "controller_failure_limit": 6}},
            poll_interval=2.0,
            retries=1,
            retry_delay=timedelta(seconds=5),
        )

        task(read_checkpoint)(train.output["checkpoint_path"])


# The declarative Lightning loop, elastic the same way: the example's digits classifier with slow steps, its data
# on the shared volume.
with DAG(
    dag_id="compose_test_elastic_lightning",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"max_epochs": 8},
    render_template_as_native_obj=True,  # max_epochs reaches Lightning as a number
):

    @task
    def prepare_data() -> str:
        from ray_train_examples.lightning_digits import prepare_digits

        return prepare_digits("/shared/compose_elastic_digits")

    digits = LightningConfig(
        module="ray_train_slow_lightning:SlowDigits",
        module_kwargs={"step_s": 0.4, "hidden": 32},
        datamodule="ray_train_examples.lightning_digits:DigitsDataModule",
        datamodule_kwargs={"data_path": "{{ ti.xcom_pull(task_ids='prepare_data') }}", "batch_size": 32},
        trainer_kwargs={"max_epochs": "{{ params.max_epochs }}"},
        monitor="val_accuracy",
        mode="max",
        seed=0,
        progress_every_n_steps=0,
    )
    prepare_data() >> RayTrainOperator(
        task_id="train",
        train_func=LIGHTNING_TRAIN_LOOP,
        train_loop_config=digits.train_loop_config(),
        scaling_config={"num_workers": [1, 2], "elastic_resize_monitor_interval_s": 10},
        run_config={
            "checkpoint_config": digits.checkpoint_config(),
            "failure_config": {"max_failures": 4, "controller_failure_limit": 6},
        },
        ship_modules=digits.code_modules(),
        poll_interval=2.0,
        retries=1,
        retry_delay=timedelta(seconds=5),
    )

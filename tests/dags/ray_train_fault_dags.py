"""DAGs for the deferrable, retry, cancellation, fault and bad-input tests (run through dag.test())."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_ray_train.operators.ray_train import RayTrainOperator

CLASSIFIER = "ray_train_examples.pytorch_classifier:train_func"
SLOW_COUNTER = "ray_train_test_loops:slow_counter"
START = datetime(2026, 1, 1)


def record_failure(context: dict[str, Any]) -> None:
    """Keep the exception the task failed with and its try, so a test can read what the user would see."""
    exc = context.get("exception")
    ti = context["ti"]
    path = os.path.join(os.environ["ART_TEST_RESULTS_DIR"], f"{ti.dag_id}.{ti.task_id}.failure.json")
    with open(path, "w") as handle:
        json.dump(
            {
                "type": type(exc).__name__,
                "message": str(exc),
                "mro": [c.__name__ for c in type(exc).__mro__],
                "try_number": ti.try_number,
            },
            handle,
        )


# The same small training twice, waiting in the worker and in the triggerer: the XComs must match, and both
# task logs show the progress the loop's 0-based "epoch" counts.
with DAG(dag_id="test_ray_train_deferrable", schedule=None, start_date=START, catchup=False) as deferrable_dag:
    for name, deferrable in (("train_sync", False), ("train_deferred", True)):
        RayTrainOperator(
            task_id=name,
            train_func=CLASSIFIER,
            train_loop_config={"epochs": 2, "train_size": 256},
            progress={"key": "epoch", "total": 2, "first": 0},
            scaling_config={"num_workers": 2},
            run_config={"checkpoint_config": {"num_to_keep": 2, "checkpoint_score_attribute": "val_accuracy"}},
            deferrable=deferrable,
            poll_interval=1.0,
            retries=0,
        )

# Try 1 fails after the checkpoint of epoch 0; try 2 (deferrable) must resume at epoch 1.
with DAG(dag_id="test_ray_train_resume", schedule=None, start_date=START, catchup=False) as resume_dag:
    RayTrainOperator(
        task_id="train_resumes",
        train_func=CLASSIFIER,
        train_loop_config={"epochs": 2, "fail_at_epoch": 0, "train_size": 256},
        scaling_config={"num_workers": 1},
        deferrable=True,
        poll_interval=1.0,
        retries=1,
        retry_delay=timedelta(seconds=0),
    )

# The process running try 1 is killed mid-job; try 2 must attach to the job, try 3 collect its result.
with DAG(dag_id="test_ray_train_attach", schedule=None, start_date=START, catchup=False) as attach_dag:
    RayTrainOperator(
        task_id="train_attach",
        train_func=SLOW_COUNTER,
        train_loop_config={"epochs": 8, "sleep_s": 1.5},
        scaling_config={"num_workers": 1},
        poll_interval=1.0,
        retries=3,
        retry_delay=timedelta(seconds=0),
    )

# The deferral outlives execution_timeout: the trigger must stop the job.
with DAG(dag_id="test_ray_train_defer_timeout", schedule=None, start_date=START, catchup=False) as timeout_dag:
    RayTrainOperator(
        task_id="train_times_out",
        train_func=SLOW_COUNTER,
        train_loop_config={"epochs": 500, "sleep_s": 1.0},
        scaling_config={"num_workers": 1},
        deferrable=True,
        execution_timeout=timedelta(seconds=60),
        poll_interval=1.0,
        retries=0,
        on_failure_callback=record_failure,
    )

# A Train worker is killed mid-run: Ray Train restarts the worker group from the latest checkpoint.
with DAG(dag_id="test_ray_train_worker_fault", schedule=None, start_date=START, catchup=False) as worker_fault_dag:
    RayTrainOperator(
        task_id="train_survives",
        train_func=SLOW_COUNTER,
        train_loop_config={"epochs": 6, "sleep_s": 1.5},
        scaling_config={"num_workers": 2},
        run_config={"failure_config": {"max_failures": 1}},
        poll_interval=1.0,
        retries=0,
    )

# Bad input: each task fails with a message naming the field and the fix, and (where a retry cannot help)
# without spending its retry.
BAD_INPUTS: dict[str, dict[str, Any]] = {
    "train_func_not_module_function": {"train_func": "ray_train_examples.pytorch_classifier.train_func"},
    "train_func_module_missing": {"train_func": "ray_train_exampels.pytorch_classifier:train_func"},
    "train_func_name_typo": {"train_func": "ray_train_examples.pytorch_classifier:train_fn"},
    "train_func_not_on_cluster": {"train_func": "module_only_airflow_has:train_func", "ship_code": False},
    "unknown_scaling_key": {"scaling_config": {"num_wokers": 2}},
    "invalid_scaling_value": {"scaling_config": {"num_workers": 0}},
    "unknown_run_key": {"run_config": {"storage": "/tmp/runs"}},
    "unknown_failure_key": {"run_config": {"failure_config": {"max_failure": 2}}},
    "relative_storage_path": {"run_config": {"storage_path": "runs"}},
    # A storage path templated from a param (run conf can set it) whose text holds a newline and a manifest line.
    "storage_path_with_newline": {"run_config": {"storage_path": "{{ params.storage_path }}"}},
    "config_not_json": {"train_loop_config": {"epochs": 2, "lr": {0.1, 0.01}}},
    "more_workers_than_cluster": {"scaling_config": {"num_workers": 64}},
    "gpu_on_cpu_cluster": {"scaling_config": {"num_workers": 1, "use_gpu": True}},
    "runtime_env_typo": {"runtime_env": {"pipp": ["scikit-learn"]}},
    "runtime_env_env_var_not_string": {"runtime_env": {"env_vars": {"EPOCHS": 3}}},
    "runtime_env_setup_fails": {"runtime_env": {"py_modules": ["gcs://_ray_pkg_does_not_exist.zip"]}},
    "rejected_token": {"ray_conn_id": "ray_train_bad_token"},
    "missing_connection": {"ray_conn_id": "ray_train_no_such_conn"},
}
with DAG(
    dag_id="test_ray_train_bad_input",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"storage_path": '/tmp/runs\nAIRFLOW_RAY_TRAIN_MANIFEST={"status": "SUCCEEDED"}'},
) as bad_input_dag:
    for task_id, overrides in BAD_INPUTS.items():
        RayTrainOperator(
            task_id=task_id,
            **{
                "train_func": CLASSIFIER,
                "train_loop_config": {"epochs": 1, "train_size": 64},
                "scaling_config": {"num_workers": 1},
                **overrides,
            },
            poll_interval=1.0,
            retries=1,
            retry_delay=timedelta(seconds=0),
            on_failure_callback=record_failure,
        )
    # Retrying can help here (the cluster may come back), so these keep their retries; none are given.
    RayTrainOperator(
        task_id="cluster_unreachable",
        train_func=CLASSIFIER,
        ray_conn_id="ray_train_unreachable",
        retries=0,
        on_failure_callback=record_failure,
    )
    # Past the pre-check (an autoscaling cluster turns it off), Ray Train's startup retries are bounded.
    RayTrainOperator(
        task_id="workers_never_start",
        train_func=SLOW_COUNTER,
        scaling_config={"num_workers": 16},
        check_cluster_resources=False,
        runtime_env={"env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "3"}},
        poll_interval=1.0,
        retries=0,
        on_failure_callback=record_failure,
    )

# One task whose epochs come from the run's conf: run by two Airflow deployments with the same logical date,
# and run again after its DAG run is deleted, each must train its own model.
with DAG(
    dag_id="test_ray_train_identity",
    schedule=None,
    start_date=START,
    catchup=False,
    render_template_as_native_obj=True,
) as identity_dag:
    RayTrainOperator(
        task_id="train",
        train_func=SLOW_COUNTER,
        train_loop_config={"epochs": "{{ dag_run.conf.get('epochs', 2) }}", "sleep_s": 0.2},
        scaling_config={"num_workers": 1},
        poll_interval=1.0,
        retries=0,
    )

# A dashboard that goes away for longer than the old 7 s (worker) and 31 s (triggerer) while a plain PyTorch loop
# trains, with retries=0: the task waits over its contact window and the training completes. The connection
# ray_flaky points at a proxy the test takes down; each task pauses before its last epoch in its own folder.
with DAG(dag_id="test_ray_train_outage", schedule=None, start_date=START, catchup=False) as outage_dag:
    for name, deferrable in (("train_sync", False), ("train_deferred", True)):
        RayTrainOperator(
            task_id=name,
            train_func="ray_train_user_loops:paused_torch_loop",
            train_loop_config={
                "epochs": 3,
                "train_size": 256,
                "pause_dir": os.path.join(os.environ.get("ART_TEST_RESULTS_DIR", "/tmp"), "outage", name),
            },
            scaling_config={"num_workers": 2},
            ray_conn_id="ray_flaky",
            deferrable=deferrable,
            poll_interval=1.0,
            retries=0,
            ship_modules=["ray_train_examples.pytorch_classifier"],
        )

# Deferred past execution_timeout, with a grace period: the loop saves the step it reached before it is stopped.
with DAG(dag_id="test_ray_train_graceful_timeout", schedule=None, start_date=START, catchup=False) as graceful_dag:
    RayTrainOperator(
        task_id="train_times_out",
        train_func="ray_train_test_loops:stoppable_counter",
        train_loop_config={"epochs": 100, "steps": 40, "step_s": 0.2},
        scaling_config={"num_workers": 2},
        deferrable=True,
        execution_timeout=timedelta(seconds=50),
        stop_grace_period=60,
        poll_interval=1.0,
        retries=0,
        on_failure_callback=record_failure,
    )

"""Bad input through dag.test() against a real local Ray head: each fails with a message that names the field
and the fix, before anything is submitted where that is possible, and without a retry where a retry cannot
help. Run with ``-s`` to print the table of messages docs/errors.md shows."""

from __future__ import annotations

import json

import pytest
from ray_train_helpers import failure, jobs_of, run_dag, states

from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.local_cluster import free_port

pytestmark = [pytest.mark.integration]

#: task_id -> (exception class, what the message must say, submitted to Ray?)
EXPECTED = {
    "train_func_not_module_function": ("RayTrainConfigError", ["train_func", "'package.module:function'"], False),
    "train_func_module_missing": ("RayTrainConfigError", ["'ray_train_exampels.pytorch_classifier'", "Fix:"], False),
    "train_func_name_typo": ("RayTrainConfigError", ["defines no 'train_fn'", "Did you mean 'train_func'?"], False),
    "train_func_not_on_cluster": ("RayTrainJobSetupError", ["not importable on the cluster", "ship_code"], True),
    "unknown_scaling_key": ("RayTrainConfigError", ["scaling_config.num_wokers", "did you mean 'num_workers'"], False),
    "invalid_scaling_value": ("RayTrainConfigError", ["scaling_config.num_workers is 0", "1 or more"], False),
    "unknown_run_key": ("RayTrainConfigError", ["run_config.storage ", "did you mean 'storage_path'"], False),
    "unknown_failure_key": ("RayTrainConfigError", ["failure_config.max_failure ", "'max_failures'"], False),
    "relative_storage_path": ("RayTrainConfigError", ["run_config.storage_path", "absolute path"], False),
    "storage_path_with_newline": ("RayTrainConfigError", ["run_config.storage_path", "control character"], False),
    "config_not_json": ("RayTrainConfigError", ["train_loop_config['lr']", "cannot cross to the cluster"], False),
    "more_workers_than_cluster": ("RayTrainConfigError", ["64 workers x {'CPU': 1}", "num_workers"], False),
    "gpu_on_cpu_cluster": ("RayTrainConfigError", ["{'GPU': 1}", "use_gpu=False"], False),
    "runtime_env_typo": ("RayTrainConfigError", ["runtime_env.pipp", "did you mean 'pip'?"], False),
    "runtime_env_env_var_not_string": ("RayTrainConfigError", ["runtime_env.env_vars['EPOCHS'] is 3", "'3'"], False),
    "runtime_env_setup_fails": ("RayTrainJobSetupError", ["RUNTIME_ENV_SETUP_FAILURE", "Fix: check"], True),
    "rejected_token": ("RayTrainAuthError", ["HTTP 403", "Invalid authentication token", "ray get-auth-token"], False),
    "missing_connection": ("RayTrainConfigError", ["'ray_train_no_such_conn' does not exist", "Fix:"], False),
    "cluster_unreachable": ("RayTrainClusterError", ["cannot reach the Ray cluster at http://127.0.0.1:"], False),
    "workers_never_start": ("RayTrainJobError", ["worker group startup timed out", "controller_failure_limit"], True),
}
NOT_RETRIED = {"RayTrainConfigError", "RayTrainJobSetupError", "RayTrainAuthError"}


def test_bad_input_fails_clearly_and_is_not_retried(ray_conn, airflow_db, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_RAY_TRAIN_BAD_TOKEN",
        json.dumps({"conn_type": "ray_train", "host": ray_conn.dashboard_url, "password": "not-the-token"}),
    )
    unreachable = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_RAY_TRAIN_UNREACHABLE", json.dumps({"conn_type": "ray_train", "host": unreachable})
    )

    dag_run = run_dag("test_ray_train_bad_input")
    assert set(states(dag_run).values()) == {"failed"}, states(dag_run)

    submitted = {job.metadata["airflow_task_id"] for job in jobs_of(RayTrainHook(), "test_ray_train_bad_input")}
    rows, problems = [], []
    for task_id, (error_type, says, is_submitted) in EXPECTED.items():
        error = failure("test_ray_train_bad_input", task_id)
        rows.append((task_id, error["type"], error["message"]))
        if error["type"] != error_type:
            problems.append((task_id, "type", error["type"]))
        problems += [(task_id, "message lacks", text) for text in says if text not in error["message"]]
        if (task_id in submitted) != is_submitted:
            problems.append((task_id, "submitted", task_id in submitted))
        if error_type in NOT_RETRIED and ("AirflowFailException" not in error["mro"] or error["try_number"] != 1):
            problems.append((task_id, "retried", error["try_number"]))
        if ray_conn.token in error["message"]:
            problems.append((task_id, "token in message", ""))

    print("\n| Bad input (task) | Error | Message |\n|---|---|---|")
    for task_id, error_type, message in rows:
        shown = message.split("\nLast lines of the job log:")[0].replace("\n", " ").replace("|", "\\|")
        print(f"| `{task_id}` | `{error_type}` | {shown} |")
    assert not problems, problems
    assert f"at {unreachable}" in failure("test_ray_train_bad_input", "cluster_unreachable")["message"]

"""Faults against a real local Ray head: the task is killed (on_kill), the process running the task dies
mid-job (the next try attaches, then collects), a Train worker dies (Ray Train restarts from the checkpoint)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
from ray_train_helpers import (
    ExecuteInThread,
    FakeTaskInstance,
    assert_stopped_without_workers,
    is_train_worker,
    jobs_of,
    run_dag,
    run_next_try,
    states,
    task_instances,
    train_worker_pids,
    wait_for,
    xcom,
)

from airflow_ray_train.exceptions import RayTrainJobError
from airflow_ray_train.hooks.mlflow import MlflowHook
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train_runtime.spec import ResultManifest, manifest_from_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def hook(ray_conn):
    hook = RayTrainHook()
    yield hook
    hook.close()


def test_on_kill_stops_the_job_and_its_workers_and_leaves_a_stopped_manifest(hook, direct_deployment, mlflow_conn):
    operator = RayTrainOperator(
        task_id="killed_while_waiting",
        train_func="ray_train_test_loops:slow_counter",
        train_loop_config={"epochs": 500, "sleep_s": 1.0},
        scaling_config={"num_workers": 1},
        poll_interval=1.0,
    )
    ti = FakeTaskInstance("killed_while_waiting")
    worker = ExecuteInThread(operator, ti)
    job_id = wait_for(lambda: ti.xcoms.get("job_id"), 120, what="the submission")
    pids = wait_for(lambda: train_worker_pids(hook, job_id), 120, 1.0, "a Train worker")
    wait_for(lambda: "report 2:" in hook.get_job_logs(job_id), 120, 0.5, "a second checkpointed report")
    operator.on_kill()  # what Airflow calls on SIGTERM and on execution_timeout
    error = worker.join(60)
    assert_stopped_without_workers(hook, job_id, pids)
    assert isinstance(error, RayTrainJobError) and error.status == "STOPPED"
    # The driver got its manifest out within Ray's 3 s between SIGTERM and SIGKILL, with the latest checkpoint.
    manifest = manifest_from_log(hook.get_job_logs(job_id))
    assert manifest is not None and manifest.status == "STOPPED", hook.get_job_logs(job_id)[-2000:]
    assert manifest.checkpoint_path and Path(manifest.checkpoint_path, "state.json").is_file()
    assert ResultManifest.from_json(Path(manifest.manifest_path).read_text()).status == "STOPPED"
    assert error.manifest_path == manifest.manifest_path and manifest.checkpoint_path in str(error)
    # Its MLflow run ended KILLED, with the reports it had.
    run = MlflowHook().get_run(ti.xcoms["mlflow_run_id"])
    assert manifest.mlflow_run_id == ti.xcoms["mlflow_run_id"] and run["info"]["status"] == "KILLED"
    assert {m["key"] for m in run["data"]["metrics"]} >= {"epoch", "total"}


_FIRST_TRY = textwrap.dedent(
    """
    from ray_train_helpers import run_dag
    run_dag("test_ray_train_attach")
    """
)


def test_next_try_attaches_to_the_job_of_a_killed_task_then_collects_it_and_trains_once(hook, airflow_db):
    dags = os.environ["AIRFLOW__CORE__DAGS_FOLDER"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), dags])}
    first_log = open(os.path.join(os.environ["ART_TEST_RESULTS_DIR"], "attach_try1.log"), "wb")
    first = subprocess.Popen(
        [sys.executable, "-c", _FIRST_TRY],
        env=env,
        stdout=first_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def running_job() -> dict | None:
            assert first.poll() is None, f"try 1's process exited with {first.returncode}"
            return next((j for j in jobs_of(hook, "test_ray_train_attach") if j.status == "RUNNING"), None)

        job = wait_for(running_job, 180, 1.0, "try 1's job to run")
        job_id = job.submission_id
        wait_for(lambda: "report 1:" in hook.get_job_logs(job_id), 120, 1.0, "a first report")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the worker running try 1 dies mid-job
        first.wait(30)
        first_log.close()
    assert hook.get_job_status(job_id) == "RUNNING"  # the Ray job outlives the Airflow process

    # The scheduler finds try 1's heartbeat gone and schedules try 2 of the same task instance.
    run_id = job.metadata["airflow_run_id"]
    dag_run = run_next_try("test_ray_train_attach", run_id, "train_attach")
    assert states(dag_run) == {"train_attach": "success"}
    assert task_instances(dag_run)["train_attach"].try_number == 2
    result = xcom(dag_run, "train_attach")
    assert result["job_id"] == job_id and job_id.endswith("-try1")  # try 2 attached to try 1's job
    assert result["metrics"] == {"epoch": 7, "start_epoch": 0, "total": sum(range(8))}

    # A third try of the same series (its process died after the job SUCCEEDED) collects it: no new job.
    dag_run = run_next_try("test_ray_train_attach", run_id, "train_attach")
    assert states(dag_run) == {"train_attach": "success"}
    assert task_instances(dag_run)["train_attach"].try_number == 3
    assert xcom(dag_run, "train_attach") == result
    assert [j.submission_id for j in jobs_of(hook, "test_ray_train_attach", run_id)] == [job_id]  # trained once

    # The user clears the task: that asks for a new run, which trains from scratch in a Train run of its own.
    dag_run = run_next_try("test_ray_train_attach", run_id, "train_attach", clear=True)
    assert states(dag_run) == {"train_attach": "success"}
    cleared = xcom(dag_run, "train_attach")
    assert cleared["job_id"] != job_id and cleared["job_id"].endswith("-try4")
    assert cleared["metrics"] == {"epoch": 7, "start_epoch": 0, "total": sum(range(8))}
    assert len(jobs_of(hook, "test_ray_train_attach", run_id)) == 2


def test_a_killed_train_worker_is_restarted_from_the_checkpoint(hook, airflow_db):
    killed: list[int] = []

    def kill_a_worker_after_the_second_report() -> None:
        job = wait_for(
            lambda: next((j for j in jobs_of(hook, "test_ray_train_worker_fault") if j.status == "RUNNING"), None),
            180,
            1.0,
            "the job to run",
        )
        job_id = job.submission_id
        wait_for(lambda: "report 2:" in hook.get_job_logs(job_id), 180, 0.5, "a second report")
        pid = min(train_worker_pids(hook, job_id))
        assert is_train_worker(pid)  # a RayTrainWorker actor of this job, checked by its command line
        psutil.Process(pid).kill()
        killed.append(pid)

    killer = threading.Thread(target=kill_a_worker_after_the_second_report, daemon=True)
    killer.start()
    dag_run = run_dag("test_ray_train_worker_fault")
    killer.join(30)
    assert killed, "no Train worker was killed"
    assert states(dag_run) == {"train_survives": "success"}
    result = xcom(dag_run, "train_survives")
    (job,) = jobs_of(hook, "test_ray_train_worker_fault", dag_run.run_id)  # one job: Ray Train recovered inside it
    logs = hook.get_job_logs(job.submission_id)
    # The restarted worker group resumed from the latest checkpoint (epoch 1 or later), not from scratch,
    # and the running total carried across the restart is exact.
    assert result["metrics"]["epoch"] == 5 and result["metrics"]["start_epoch"] >= 2
    assert result["metrics"]["total"] == sum(range(6))
    assert "starts at epoch 0" in logs and f"starts at epoch {result['metrics']['start_epoch']}" in logs

"""A stop that keeps the work, against a real local Ray head: a task stopped mid-epoch (killed, or past its
execution_timeout) lets its training save a checkpoint of the step it reached and end; the STOPPED manifest and
XCom name that checkpoint, and the cleared task goes on from that step. The plain PyTorch loop takes part with
``stop_requested()``; the declarative Lightning loop with no code of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ray_train_helpers import ExecuteInThread, FakeTaskInstance, failure, run_dag, states, wait_for, xcom

from airflow_ray_train.exceptions import RayTrainJobError
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP, LightningConfig, checkpoint_file
from airflow_ray_train_runtime.spec import ResultManifest, manifest_from_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Steps per epoch of stoppable_counter, STEP_S each: a stop asked just after an epoch's report must land before
#: the next epoch's end (CI measured up to 3 s from the request to the workers' agreement on a busy machine).
STEPS = 40
STEP_S = 0.2


@pytest.fixture
def hook(ray_conn):
    hook = RayTrainHook()
    yield hook
    hook.close()


def report_lines(hook: RayTrainHook, job_id: str) -> list[str]:
    return [line for line in hook.get_job_logs(job_id).splitlines() if "[airflow-ray-train] report" in line]


def kill_mid_epoch(operator: RayTrainOperator, ti: FakeTaskInstance, hook: RayTrainHook, after: str) -> Any:
    """Run the operator in a thread; once the job log shows ``after``, kill the task (Airflow's on_kill) and
    return (the job id, what execute raised)."""
    worker = ExecuteInThread(operator, ti)
    job_id = wait_for(lambda: ti.xcoms.get("job_id"), 120, what="the submission")
    wait_for(lambda: after in hook.get_job_logs(job_id), 180, 0.3, after)
    operator.on_kill()
    return job_id, worker.join(120)


def assert_usage_within_the_job(hook: RayTrainHook, result: dict[str, Any]) -> dict[str, Any]:
    """XCom's ``usage`` agrees with the job's own start and end times (the Jobs API's): its wall time is theirs,
    each worker group started and ended between them, and CPU-seconds are each worker's reserved CPU x its
    group's time."""
    usage = result["usage"]
    info = hook.get_job_info(result["job_id"])
    assert usage["job_s"] == info.wall_s
    start, end = info.start_time / 1000, info.end_time / 1000
    groups = usage["worker_groups"]
    assert groups and all(start - 1 <= g["start"] <= g["end"] <= end + 1 for g in groups), (start, end, groups)
    held = sum((g["end"] - g["start"]) * g["workers"] * g["per_worker"]["CPU"] for g in groups)
    assert usage["cpu_s"] == pytest.approx(held, abs=0.01) and usage["gpu_s"] == 0
    assert 0 < usage["train_run_s"] <= usage["job_s"] and usage["driver_cpu_s"] == 0
    assert usage["accelerator_type"] is None
    return usage


def stopped_manifest(hook: RayTrainHook, job_id: str) -> ResultManifest:
    log = hook.get_job_logs(job_id)
    manifest = manifest_from_log(log)
    assert manifest is not None and manifest.status == "STOPPED", log[-3000:]
    assert "stop requested: the training saves a checkpoint at its next step" in log
    assert ResultManifest.from_json(Path(manifest.manifest_path).read_text()).status == "STOPPED"
    return manifest


def stoppable_counter(task_id: str, workers: int, grace: float) -> RayTrainOperator:
    """Four epochs of ``STEPS`` steps of ``STEP_S``, the plain loop that calls ``stop_requested()`` before each step."""
    return RayTrainOperator(
        task_id=task_id,
        train_func="ray_train_test_loops:stoppable_counter",
        train_loop_config={"epochs": 4, "steps": STEPS, "step_s": STEP_S},
        scaling_config={"num_workers": workers},
        stop_grace_period=grace,
        poll_interval=1.0,
    )


def test_a_killed_plain_loop_saves_the_step_it_reached_and_the_cleared_task_goes_on_from_it(hook, direct_deployment):
    operator = stoppable_counter("graceful_plain", workers=2, grace=60)
    ti = FakeTaskInstance("graceful_plain")
    # Killed early in the second epoch: its last epoch checkpoint is at step STEPS.
    job_id, error = kill_mid_epoch(operator, ti, hook, "report 1:")
    assert isinstance(error, RayTrainJobError) and error.status == "STOPPED"
    manifest = stopped_manifest(hook, job_id)
    state = json.loads(Path(manifest.checkpoint_path, "state.json").read_text())
    assert STEPS < state["step"] < 2 * STEPS and state["stopped"], state  # newer than the epoch's checkpoint
    assert manifest.metrics["step"] == state["step"] and manifest.checkpoint_path in str(error)
    # XCom names that checkpoint, beside the status.
    assert ti.xcoms["checkpoint_path"] == manifest.checkpoint_path and ti.xcoms["status"] == "STOPPED"

    # The user clears the task: its new series goes on from the step the stop saved, in the same Train run.
    cleared = FakeTaskInstance("graceful_plain", try_number=2, run_id=ti.run_id, max_tries=1)
    result = operator.execute(cleared.context())  # type: ignore[arg-type]
    assert result["status"] == "SUCCEEDED" and result["job_id"].endswith("-try2")
    assert result["metrics"]["start_step"] == state["step"] and result["metrics"]["step"] == 4 * STEPS
    assert result["run_path"] == manifest.run_path
    # What it used: this job's figures, within its own start and end, and the Train run's two jobs summed.
    usage = assert_usage_within_the_job(hook, result)
    assert usage["series"]["jobs"] == [job_id, result["job_id"]] and usage["series"]["jobs_timed"] == 2
    stopped_job = hook.get_job_info(job_id)
    assert usage["series"]["job_s"] == pytest.approx(usage["job_s"] + stopped_job.wall_s, abs=0.01)
    assert usage["series"]["cpu_s"] > usage["cpu_s"] > 0


def test_without_a_grace_period_the_loop_is_stopped_at_once(hook, direct_deployment):
    operator = stoppable_counter("stopped_at_once", workers=1, grace=0)
    ti = FakeTaskInstance("stopped_at_once")
    job_id, error = kill_mid_epoch(operator, ti, hook, "report 1:")
    assert isinstance(error, RayTrainJobError) and error.status == "STOPPED"
    log = hook.get_job_logs(job_id)
    manifest = manifest_from_log(log)
    assert manifest is not None and manifest.status == "STOPPED" and "stop requested" not in log
    state = json.loads(Path(manifest.checkpoint_path, "state.json").read_text())
    assert state["step"] == STEPS and not state["stopped"]  # the last epoch's checkpoint: the steps since are lost


def test_a_timed_out_deferred_plain_loop_saves_the_step_it_reached(ray_conn, airflow_db):
    dag_run = run_dag("test_ray_train_graceful_timeout")
    assert states(dag_run) == {"train_times_out": "failed"}
    error = failure("test_ray_train_graceful_timeout", "train_times_out")
    assert error["type"] == "AirflowTaskTimeout" and "Its latest checkpoint:" in error["message"]
    checkpoint = xcom(dag_run, "train_times_out", key="checkpoint_path")
    assert checkpoint and checkpoint in error["message"] and xcom(dag_run, "train_times_out", key="status") == "STOPPED"
    state = json.loads(Path(checkpoint, "state.json").read_text())
    assert state["stopped"] and state["step"] % STEPS != 0, state  # mid-epoch


def test_a_killed_declarative_lightning_run_saves_the_step_it_reached_and_goes_on_from_it(
    hook, direct_deployment, tmp_path
):
    from ray_train_examples.lightning_digits import prepare_digits

    run = LightningConfig(
        module="ray_train_slow_lightning:SlowDigits",
        module_kwargs={"step_s": 0.5, "hidden": 32},
        datamodule="ray_train_examples.lightning_digits:DigitsDataModule",
        datamodule_kwargs={"data_path": prepare_digits(str(tmp_path)), "batch_size": 32},
        trainer_kwargs={"max_epochs": 3, "log_every_n_steps": 5},
        seed=0,
        progress_every_n_steps=0,
    )
    operator = RayTrainOperator(
        task_id="graceful_lightning",
        train_func=LIGHTNING_TRAIN_LOOP,
        train_loop_config=run.train_loop_config(),
        scaling_config={"num_workers": 2},
        ship_modules=run.code_modules(),
        stop_grace_period=60,
        poll_interval=1.0,
    )
    ti = FakeTaskInstance("graceful_lightning")
    job_id, error = kill_mid_epoch(operator, ti, hook, "report 1:")
    assert isinstance(error, RayTrainJobError) and error.status == "STOPPED"
    manifest = stopped_manifest(hook, job_id)
    stopped_at = int(manifest_from_log(hook.get_job_logs(job_id)).metrics["step"])
    reports = report_lines(hook, job_id)
    assert len(reports) == 2, reports
    epoch_end = int(reports[0].split(" step=")[1].split()[0])
    assert epoch_end < stopped_at < 2 * epoch_end, reports  # the stop's checkpoint: mid-epoch
    assert Path(checkpoint_file(manifest.checkpoint_path)).is_file()
    assert ti.xcoms["checkpoint_path"] == manifest.checkpoint_path

    cleared = FakeTaskInstance("graceful_lightning", try_number=2, run_id=ti.run_id, max_tries=1)
    result = operator.execute(cleared.context())  # type: ignore[arg-type]
    assert result["status"] == "SUCCEEDED" and result["run_path"] == manifest.run_path
    resumed = report_lines(hook, result["job_id"])
    assert resumed and int(resumed[0].split(" step=")[1].split()[0]) > stopped_at, resumed
    assert result["metrics"]["epoch"] == 2

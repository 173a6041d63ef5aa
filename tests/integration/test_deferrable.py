"""Deferrable mode against a real local Ray head: the trigger on real jobs, a deferrable DAG through
dag.test() with the sync path's XCom, a retry that resumes from the failed try's checkpoint, and the two
ways a deferred job is cancelled (on_kill, the deadline)."""

from __future__ import annotations

import asyncio
import re
import shlex
import threading
import uuid
from pathlib import Path

import pytest
from ray_train_helpers import (
    FakeTaskInstance,
    assert_stopped_without_workers,
    failure,
    jobs_of,
    mlflow_history,
    mlflow_tags,
    run_dag,
    states,
    task_instances,
    train_worker_pids,
    wait_for,
    xcom,
)

from airflow_ray_train.compat import TaskDeferred
from airflow_ray_train.hooks.mlflow import MlflowHook
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.triggers.ray_train import RayTrainJobTrigger

pytestmark = [pytest.mark.integration]


@pytest.fixture
def hook(ray_conn):
    hook = RayTrainHook()
    yield hook
    hook.close()


def _first_event(trigger: RayTrainJobTrigger) -> dict:
    async def first() -> dict:
        return (await anext(trigger.run())).payload

    return asyncio.run(asyncio.wait_for(first(), timeout=120))


@pytest.mark.parametrize(
    ("command", "event_status", "job_status"),
    [("echo trained; echo done", "success", "SUCCEEDED"), ("echo oops; exit 3", "failed", "FAILED")],
)
def test_trigger_follows_a_real_job_to_its_end(hook, command, event_status, job_status, capfd):
    job_id = hook.submit_job(
        entrypoint=f"bash -c {shlex.quote(command)}",
        submission_id=f"trig-{uuid.uuid4().hex[:8]}",
        metadata={"airflow_dag_id": "test_trigger_direct"},
    )
    event = _first_event(RayTrainJobTrigger(job_id=job_id, poll_interval=0.5))
    assert (event["status"], event["job_status"], event["job_id"]) == (event_status, job_status, job_id)
    assert event["log_offset"] == len(hook.get_job_logs(job_id))
    out = capfd.readouterr().out
    assert ("[ray] trained" if job_status == "SUCCEEDED" else "[ray] oops") in out


def test_deferrable_dag_returns_the_same_xcom_as_the_sync_path(ray_conn, airflow_db, capfd):
    dag_run = run_dag("test_ray_train_deferrable")
    assert states(dag_run) == {"train_sync": "success", "train_deferred": "success"}

    sync, deferred = xcom(dag_run, "train_sync"), xcom(dag_run, "train_deferred")
    assert set(deferred) == set(sync)
    for key in ("status", "error"):
        assert deferred[key] == sync[key]
    assert deferred["status"] == "SUCCEEDED" and deferred["metrics"]["epoch"] == sync["metrics"]["epoch"] == 1
    assert set(deferred["metrics"]) == set(sync["metrics"])
    assert len(deferred["best_checkpoints"]) == len(sync["best_checkpoints"]) == 2
    assert Path(deferred["checkpoint_path"], "model.pt").is_file()
    for key in ("checkpoint_path", "metrics", "best_checkpoint_path", "job_id", "dashboard_url"):
        assert xcom(dag_run, "train_deferred", key) == deferred[key]

    # It really deferred, and the job log reached the task log while the trigger waited (through the
    # trigger's logger, which Airflow 3 shows in the task log), each line once. A record may hold several lines:
    # it starts at a time stamp and ends with the logger's name.
    out = capfd.readouterr().out
    records = re.split(r"\n(?=\d{4}-\d\d-\d\dT)", out)
    reports = [line for r in records if "RayTrainJobTrigger" in r for line in r.splitlines() if "report 1:" in line]
    assert len(reports) == 1, reports
    # Both task logs end the run with the progress line of the last epoch ("epoch" is 0-based: first 0).
    progress: dict[str, list[str]] = {"sync": [], "deferred": []}
    for record in records:
        path = "deferred" if "RayTrainJobTrigger" in record else "sync"
        progress[path] += [line for line in record.splitlines() if line.startswith("[progress] ")]
    for path, lines in progress.items():
        assert any(line.startswith("[progress] epoch 2/2 (100%) · ") for line in lines), (path, progress)
    assert ray_conn.token not in out
    assert ray_conn.token not in str(sync) + str(deferred)
    # Both report what they used, against their job's own times, and say it in the task log's last line.
    hook = RayTrainHook()
    for result in (sync, deferred):
        info = hook.get_job_info(result["job_id"])
        assert result["usage"]["job_s"] == info.wall_s and result["usage"]["worker_groups"][0]["workers"] == 2
        assert xcom(dag_run, "train_deferred", "usage") == deferred["usage"]
    assert out.count("Usage: job ") >= 2


def test_a_failed_try_is_resumed_from_its_checkpoint_by_the_next(hook, airflow_db, mlflow_conn):
    dag_run = run_dag("test_ray_train_resume")
    assert states(dag_run) == {"train_resumes": "success"}
    assert task_instances(dag_run)["train_resumes"].try_number == 2
    result = xcom(dag_run, "train_resumes")
    # Try 1 reported epoch 0 with a checkpoint, then failed; try 2 started at epoch 1, not from scratch.
    assert result["metrics"]["epoch"] == 1 and result["metrics"]["start_epoch"] == 1
    jobs = jobs_of(hook, "test_ray_train_resume", dag_run.run_id)
    assert [job.status for job in jobs] == ["FAILED", "SUCCEEDED"]
    assert [job.submission_id.rsplit("-", 1)[1] for job in jobs] == ["try1", "try2"]
    assert result["job_id"] == jobs[1].submission_id
    assert "resuming from" in hook.get_job_logs(result["job_id"])
    # Both tries logged to one MLflow run: try 1's epoch 0, then try 2's epoch 1, which ended it FINISHED.
    mlflow = MlflowHook()
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run["info"]["status"] == "FINISHED"
    assert (
        mlflow_tags(run)["airflow.try_number"] == "2" and mlflow_tags(run)["ray.submission_id"] == jobs[1].submission_id
    )
    assert mlflow_history(mlflow, result["mlflow_run_id"], "epoch") == [(0, 0.0), (1, 1.0)]
    # What the Train run used over both tries, from their jobs' own times, also in the MLflow run.
    usage = result["usage"]
    assert usage["series"]["jobs"] == [job.submission_id for job in jobs] and usage["series"]["jobs_timed"] == 2
    assert usage["series"]["job_s"] == pytest.approx(sum(job.wall_s for job in jobs), abs=0.01)
    assert usage["series"]["cpu_s"] > usage["cpu_s"] > 0
    logged = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert logged["usage_cpu_s"] == pytest.approx(usage["cpu_s"])
    assert logged["usage_series_cpu_s"] == pytest.approx(usage["series"]["cpu_s"])


@pytest.mark.slow
def test_defer_timeout_stops_the_job_and_its_workers(hook, airflow_db):
    seen: set[int] = set()
    stop_watching = threading.Event()

    def watch_workers() -> None:
        while not stop_watching.is_set():
            for job in jobs_of(hook, "test_ray_train_defer_timeout"):
                if job.status == "RUNNING":
                    seen.update(train_worker_pids(hook, job.submission_id))
            stop_watching.wait(1.0)

    watcher = threading.Thread(target=watch_workers, daemon=True)
    watcher.start()
    try:
        dag_run = run_dag("test_ray_train_defer_timeout")
    finally:
        stop_watching.set()
        watcher.join()
    assert states(dag_run) == {"train_times_out": "failed"}
    error = failure("test_ray_train_defer_timeout", "train_times_out")
    assert error["type"] == "AirflowTaskTimeout"
    assert "execution_timeout (0:01:00)" in error["message"] and "has been stopped (now STOPPED)" in error["message"]
    (job,) = jobs_of(hook, "test_ray_train_defer_timeout", dag_run.run_id)
    assert_stopped_without_workers(hook, job.submission_id, seen)


@pytest.mark.slow
def test_trigger_on_kill_stops_the_job_and_its_workers(hook, ray_conn, direct_deployment):
    operator = RayTrainOperator(
        task_id="killed_while_deferred",
        train_func="ray_train_test_loops:slow_counter",
        train_loop_config={"epochs": 500, "sleep_s": 1.0},
        scaling_config={"num_workers": 1},
        deferrable=True,
        poll_interval=1.0,
    )
    ti = FakeTaskInstance("killed_while_deferred")
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(ti.context())  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, RayTrainJobTrigger) and trigger.job_id == ti.xcoms["job_id"]
    assert deferred.value.timeout is not None  # every deferral is bounded

    async def run_then_kill() -> set[int]:
        # What the triggerer does when a user kills the task: cancel run(), then await on_kill().
        watching = asyncio.ensure_future(anext(trigger.run()))
        pids = await asyncio.to_thread(
            wait_for, lambda: train_worker_pids(hook, trigger.job_id), 120, 1.0, "a Train worker"
        )
        watching.cancel()
        await trigger.on_kill()
        return pids

    pids = asyncio.run(run_then_kill())
    assert_stopped_without_workers(hook, trigger.job_id, pids)


def test_triggers_beyond_max_log_streams_follow_their_jobs_by_status_and_give_the_slots_back(hook, monkeypatch):
    """Three triggers in one loop, two stream slots (Ray's dashboard stalls past 100 open streams): each job's
    end still fires its event with its whole log, at most two streams are open at once, and none is left."""
    from airflow_ray_train.hooks.watch import STREAM_SLOTS

    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__MAX_LOG_STREAMS", "2")
    jobs = [
        hook.submit_job(
            entrypoint=f"bash -c {shlex.quote(f'for i in 1 2 3; do echo job{n} line $i; sleep 1; done')}",
            submission_id=f"slots-{n}-{uuid.uuid4().hex[:8]}",
            metadata={"airflow_dag_id": "test_trigger_slots"},
        )
        for n in range(3)
    ]
    cluster = hook.settings.address
    most = 0

    async def watch() -> list[dict]:
        nonlocal most

        async def count() -> None:
            nonlocal most
            while True:
                most = max(most, STREAM_SLOTS.count(cluster))
                await asyncio.sleep(0.05)

        counter = asyncio.create_task(count())
        try:
            return [
                event.payload
                for event in await asyncio.gather(
                    *(anext(RayTrainJobTrigger(job_id=job, poll_interval=0.5).run()) for job in jobs)
                )
            ]
        finally:
            counter.cancel()

    events = asyncio.run(asyncio.wait_for(watch(), timeout=120))
    assert [e["status"] for e in events] == ["success"] * 3
    for job, event in zip(jobs, events, strict=True):
        assert event["log_offset"] == len(hook.get_job_logs(job))
        assert event["log_tail"][-1].endswith("line 3")
    assert most == 2
    assert STREAM_SLOTS.count(cluster) == 0

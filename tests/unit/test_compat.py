"""The fallbacks for older Airflow 3 releases (``airflow_ray_train.compat``), each forced here on whatever Airflow
runs the tests; ``make compat`` runs this file and the trigger's tests on every supported Airflow, where the
fallbacks are the live path."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from stub_ray import StubRay
from test_trigger import JOB, first_event, job_api

from airflow_ray_train import compat
from airflow_ray_train.hooks.ray_train import AsyncRayTrainHook
from airflow_ray_train.triggers.ray_train import RayTrainJobTrigger


def test_the_sync_connection_lookup_is_awaited_in_a_thread_where_there_is_no_async_one():
    calls = []

    class OldHook:  # Airflow 3.0's BaseHook: get_connection only
        def get_connection(self, conn_id: str) -> str:
            calls.append(conn_id)
            return f"conn {conn_id}"

    assert asyncio.run(compat.aget_connection(OldHook(), "ray_x")) == "conn ray_x"
    assert calls == ["ray_x"]


def test_the_extra_is_read_in_a_thread_where_the_connection_cannot_read_it_async():
    old_connection = SimpleNamespace(extra_dejson={"verify": False, "python": "python3"})  # Airflow < 3.3
    assert asyncio.run(compat.aextra_dejson(old_connection)) == {"verify": False, "python": "python3"}


def test_a_secret_is_masked_from_async_code_on_every_release(monkeypatch):
    masked = []
    monkeypatch.setattr(compat, "mask_secret", masked.append)
    # Forced to the fallback (Airflow < 3.3 has no airflow.sdk.log.amask_secret).
    monkeypatch.delattr("airflow.sdk.log.amask_secret", raising=False)
    asyncio.run(compat.amask_secret("header-secret"))
    assert masked == ["header-secret"]


@pytest.mark.parametrize(
    ("map_index", "states", "expected"),
    [
        (-1, {"run1": {"train": "deferred"}}, True),
        (-1, {"run1": {"train": "failed"}}, False),  # a user marked it
        (-1, {"run1": {"train": None}}, False),  # a user cleared it
        (-1, {}, False),  # its DAG run was deleted
        (3, {"run1": {"train_3": "deferred", "train": "failed"}}, True),  # mapped: Airflow keys it task_mapindex
    ],
)
def test_whether_a_task_is_still_deferred_is_read_from_airflows_task_states(monkeypatch, map_index, states, expected):
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    asked = []

    def get_task_states(**query):
        asked.append(query)
        return states

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    ti = SimpleNamespace(dag_id="dag", run_id="run1", task_id="train", map_index=map_index)
    assert asyncio.run(compat.task_still_deferred(ti)) is expected
    assert asked == [{"dag_id": "dag", "task_ids": ["train"], "run_ids": ["run1"], "map_index": map_index}]
    assert asyncio.run(compat.task_still_deferred(None)) is None


@pytest.fixture
def old_triggerer(stub_ray, monkeypatch) -> StubRay:
    """A triggerer that cancels triggers without calling on_kill (Airflow < 3.3), on the stub Ray API."""
    monkeypatch.setattr(compat, "TRIGGER_ON_KILL", False)
    monkeypatch.setattr(
        RayTrainJobTrigger, "hook", lambda self: AsyncRayTrainHook(self.ray_conn_id, max_retries=2, retry_backoff=0.01)
    )
    stub_ray.respond = job_api(["RUNNING"], [""])
    return stub_ray


def _cancel_while_running(monkeypatch, still_deferred) -> None:
    async def task_still_deferred(task_instance):
        if isinstance(still_deferred, Exception):
            raise still_deferred
        return still_deferred

    monkeypatch.setattr(compat, "task_still_deferred", task_still_deferred)

    async def cancel_soon() -> None:
        trigger = RayTrainJobTrigger(job_id=JOB, ray_conn_id="ray_stub", poll_interval=0.01)
        trigger.task_instance = SimpleNamespace(dag_id="dag", run_id="run1", task_id="train", map_index=-1)
        task = asyncio.ensure_future(first_event(trigger))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())


def test_before_3_3_a_trigger_cancelled_because_its_task_was_killed_stops_the_job(old_triggerer, monkeypatch):
    _cancel_while_running(monkeypatch, still_deferred=False)
    assert f"/api/jobs/{JOB}/stop" in old_triggerer.paths("POST")
    assert old_triggerer.paths("GET")[-1] == f"/api/jobs/{JOB}"  # and waited for it to be STOPPED


@pytest.mark.parametrize("still_deferred", [True, None, RuntimeError("no supervisor")])
def test_before_3_3_a_trigger_cancelled_while_its_task_is_deferred_leaves_the_job(
    old_triggerer, monkeypatch, still_deferred
):
    """A triggerer stopping (or a cancel nobody can explain) must not stop an hours-long run."""
    _cancel_while_running(monkeypatch, still_deferred=still_deferred)
    assert not any(path.endswith("/stop") for path in old_triggerer.paths())

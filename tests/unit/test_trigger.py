"""RayTrainJobTrigger against a stub Ray Jobs API on loopback: every job state, errors as events, the
deadline, on_kill, serialisation. The real-cluster path is in tests/integration/test_deferrable.py."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from stub_ray import STUB_TOKEN, StubRay

from airflow_ray_train.hooks.log_follower import LogFollower
from airflow_ray_train.hooks.ray_train import AsyncRayTrainHook
from airflow_ray_train.local_cluster import free_port
from airflow_ray_train.triggers.ray_train import RayTrainJobTrigger
from airflow_ray_train_runtime.spec import MANIFEST_MARKER

TOKEN = STUB_TOKEN
JOB = "airflow-dag.task.run-abc-try1"


@pytest.fixture
def stub(stub_ray, monkeypatch) -> StubRay:
    # Fast retries: the trigger's own are patient (about half a minute).
    monkeypatch.setattr(
        RayTrainJobTrigger, "hook", lambda self: AsyncRayTrainHook(self.ray_conn_id, max_retries=2, retry_backoff=0.01)
    )
    return stub_ray


def job_api(statuses: list[str], logs: list[str], message: str = "") -> Callable[[str, str], tuple[int, dict]]:
    """A job that goes through ``statuses`` (the last one sticks) with a growing log; stop makes it STOPPED."""
    state = {"polls": 0, "log_polls": 0, "stopped": False}

    def respond(method: str, path: str) -> tuple[int, dict]:
        if path == f"/api/jobs/{JOB}/stop" and method == "POST":
            state["stopped"] = True
            return 200, {"stopped": True}
        if path == f"/api/jobs/{JOB}/logs":
            index = min(state["log_polls"], len(logs) - 1)
            state["log_polls"] += 1
            return 200, {"logs": logs[index]}
        if path == f"/api/jobs/{JOB}":
            index = min(state["polls"], len(statuses) - 1)
            state["polls"] += 1
            status = "STOPPED" if state["stopped"] else statuses[index]
            return 200, {"submission_id": JOB, "status": status, "message": message}
        return 404, {}

    return respond


async def first_event(trigger: RayTrainJobTrigger) -> dict:
    return (await anext(trigger.run())).payload


def run_trigger(**kwargs) -> dict:
    trigger = RayTrainJobTrigger(job_id=JOB, ray_conn_id="ray_stub", poll_interval=0.01, **kwargs)
    return asyncio.run(asyncio.wait_for(first_event(trigger), timeout=30))


def test_serialize_round_trips_and_holds_no_secret():
    trigger = RayTrainJobTrigger(
        job_id=JOB, ray_conn_id="ray_x", poll_interval=3.0, timeout_at=123.5, timeout_label="t"
    )
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain JSON
    assert classpath == "airflow_ray_train.triggers.ray_train.RayTrainJobTrigger"
    assert TOKEN not in repr(trigger)


def test_pending_then_running_then_succeeded_streams_whole_lines_and_fires_success(stub, capfd):
    logs = ["", "epoch 0\nepo", "epoch 0\nepoch 1\n" + MANIFEST_MARKER + "{}\n\x1b[32mdone\x1b[0m\n"]
    stub.respond = job_api(["PENDING", "RUNNING", "SUCCEEDED"], logs)
    event = run_trigger()
    assert event["status"] == "success" and event["job_status"] == "SUCCEEDED" and event["job_id"] == JOB
    assert event["log_offset"] == len(logs[-1])
    output = capfd.readouterr()
    text = output.out + output.err
    # The trigger's logger (the task log, in a triggerer): each line once, no manifest, no colour codes.
    shown = re.findall(r"\[ray\] (\S+(?: \d)?)", text)
    assert shown == ["epoch 0", "epoch 1", "done"], text
    # The operator needs no second download: the event carries the manifest and the log's last lines.
    assert event["manifest"] == MANIFEST_MARKER + "{}" and event["log_tail"] == ["epoch 0", "epoch 1", "done"]
    assert "PENDING" in text and "RUNNING" in text
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in stub.seen)
    assert TOKEN not in text


@pytest.mark.parametrize(("ray_status", "event_status"), [("FAILED", "failed"), ("STOPPED", "stopped")])
def test_failed_and_stopped_jobs_fire_their_own_event(stub, ray_status, event_status):
    stub.respond = job_api(["RUNNING", ray_status], ["boom\n"], message="Job failed due to an application error")
    event = run_trigger()
    assert event["status"] == event_status and event["job_status"] == ray_status
    assert event["message"] == "Job failed due to an application error"


def test_the_event_is_bounded_whatever_the_log_its_lines_the_message_and_the_manifest_are_cut(stub):
    """The event is stored in the metadata DB: LOG_TAIL_LINES lines of at most TAIL_LINE_CHARS, a cut message,
    and a manifest over EVENT_MANIFEST_CHARS left out (``manifest_in_event`` False; the task reads the log)."""
    from airflow_ray_train.triggers.ray_train import EVENT_MANIFEST_CHARS, LOG_TAIL_LINES, TAIL_LINE_CHARS

    huge_manifest = MANIFEST_MARKER + json.dumps({"metrics": "x" * EVENT_MANIFEST_CHARS})
    lines = [f"line {i} " + "y" * (3 * TAIL_LINE_CHARS) for i in range(2 * LOG_TAIL_LINES)]
    log = "\n".join([huge_manifest, *lines]) + "\n"
    stub.respond = job_api(["RUNNING", "FAILED"], [log], message="m" * (100 * TAIL_LINE_CHARS))
    event = run_trigger()
    assert event["status"] == "failed" and event["manifest"] is None and event["manifest_in_event"] is False
    assert len(event["log_tail"]) == LOG_TAIL_LINES and event["log_tail"][-1].startswith(
        f"line {2 * LOG_TAIL_LINES - 1} "
    )
    assert all(len(line) <= TAIL_LINE_CHARS + 40 for line in event["log_tail"]), max(map(len, event["log_tail"]))
    assert len(event["message"]) <= 4 * TAIL_LINE_CHARS + 40
    assert len(json.dumps(event)) < (LOG_TAIL_LINES + 6) * TAIL_LINE_CHARS


def test_a_job_that_is_gone_becomes_an_error_event(stub):
    stub.respond = lambda method, path: (404, {"detail": "not found"})
    event = run_trigger()
    assert event["status"] == "error" and "HTTP 404" in event["message"] and event["http_status"] == 404


def test_a_rejected_token_becomes_an_error_event_that_names_the_fix(stub):
    stub.respond = lambda method, path: (401, {"error": "Unauthorized"})
    event = run_trigger()
    assert event["status"] == "error" and event["error_type"] == "RayTrainAuthError"
    assert "ray get-auth-token" in event["message"] and TOKEN not in event["message"]


def test_a_cluster_unreachable_for_the_whole_contact_window_becomes_an_error_event_naming_the_address(monkeypatch):
    address = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DOWN", json.dumps({"conn_type": "ray_train", "host": address}))
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__CONTACT_WINDOW", "1.5")
    monkeypatch.setattr(
        RayTrainJobTrigger, "hook", lambda self: AsyncRayTrainHook(self.ray_conn_id, max_retries=1, retry_backoff=0.01)
    )
    trigger = RayTrainJobTrigger(job_id=JOB, ray_conn_id="ray_down", poll_interval=0.01)
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "error" and f"cannot reach the Ray cluster at {address}" in event["message"]
    assert event["error_type"] == "ContactLost" and "contact window (2 s" in event["message"]


def test_the_deadline_stops_the_job_and_fires_timeout(stub):
    stub.respond = job_api(["RUNNING"], ["training\n"])
    event = run_trigger(timeout_at=time.time() - 1, timeout_label="execution_timeout (0:00:05)")
    assert event["status"] == "timeout" and event["job_status"] == "STOPPED"
    assert "execution_timeout (0:00:05)" in event["message"]
    assert f"/api/jobs/{JOB}/stop" in stub.paths("POST")


def test_an_unknown_status_keeps_waiting(stub):
    stub.respond = job_api(["PENDING", "SOMETHING_NEW", "RUNNING", "SUCCEEDED"], ["x\n"])
    assert run_trigger()["status"] == "success"


def test_on_kill_stops_the_job_and_waits_for_it(stub):
    stub.respond = job_api(["RUNNING"], [""])
    trigger = RayTrainJobTrigger(job_id=JOB, ray_conn_id="ray_stub")
    asyncio.run(trigger.on_kill())
    calls = [(r.method, r.path) for r in stub.seen]
    assert ("POST", f"/api/jobs/{JOB}/stop") in calls
    assert calls[-1] == ("GET", f"/api/jobs/{JOB}")  # it waited until the job said STOPPED


def test_cancelling_the_trigger_does_not_stop_the_job(stub):
    """A triggerer restart cancels run() and calls cleanup(): the job must keep running."""
    stub.respond = job_api(["RUNNING"], [""])

    async def cancel_soon() -> None:
        trigger = RayTrainJobTrigger(job_id=JOB, ray_conn_id="ray_stub", poll_interval=0.01)
        task = asyncio.ensure_future(first_event(trigger))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.cleanup()

    asyncio.run(cancel_soon())
    assert all(not p.endswith("/stop") for p in stub.paths())


def test_the_log_follower_hands_on_whole_lines_once_from_the_stream_and_the_whole_log():
    follower = LogFollower()
    follower.begin()  # a stream opened
    assert follower.feed("a\nb") == ["a"] and follower.offset == 2  # "b" waits for its newline
    assert follower.catch_up("a\nbc\n") == ["bc"] and follower.offset == 5  # the whole log, read once
    follower.begin()  # a new stream sends the log from its start: what was shown is skipped
    assert follower.feed("a\nbc\nd\n") == ["d"]
    assert follower.feed("\x1b[32mok\x1b[0m\r\nlast") == ["ok"]
    assert follower.flush() == ["last"] and follower.offset == len("a\nbc\nd\n\x1b[32mok\x1b[0m\r\nlast")


def test_the_trigger_module_imports_no_ray():
    code = "import sys, airflow_ray_train.triggers.ray_train; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_log_follower_skips_what_was_shown_and_sees_the_manifest_only_at_a_line_start():
    follower = LogFollower(shown=4)
    assert follower.feed("abc\n") == []  # all of it was shown before this watcher started
    assert follower.feed("de\n") == ["de"]
    assert follower.feed(b"echo " + MANIFEST_MARKER.encode() + b" in a command\n") == [
        f"echo {MANIFEST_MARKER} in a command"
    ]
    assert follower.manifest_line is None
    half = len(MANIFEST_MARKER) // 2
    assert follower.feed("last line\n" + MANIFEST_MARKER[:half]) == ["last line"]  # the manifest line split
    assert follower.feed(MANIFEST_MARKER[half:] + '{"status": "SUCCEEDED"}\n') == []  # kept, not shown
    assert follower.manifest_line == MANIFEST_MARKER + '{"status": "SUCCEEDED"}'


def test_the_job_log_reaches_the_task_log_in_one_record_per_flush_and_all_of_it_before_the_event(
    stub, capfd, monkeypatch
):
    from airflow_ray_train.triggers import ray_train as trigger_module

    def records(text: str) -> list[str]:
        return re.findall(r"\[info\s*\] \[ray\] (\S+)", text)

    statuses = ["RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]
    logs = ["a\n", "a\nb\n", "a\nb\nc\n"]
    # No flush tick before the end: three polls' lines become one record, written before the event fires.
    monkeypatch.setattr(trigger_module, "LOG_FLUSH_INTERVAL", 3600.0)
    stub.respond = job_api(statuses, logs)
    assert run_trigger()["status"] == "success"
    text = "".join(capfd.readouterr())
    assert records(text) == ["a"] and re.findall(r"\[ray\] (\S+)", text) == ["a", "b", "c"], text

    # Ticks shorter than the polls: each poll's lines are logged at the next tick, not held to the end.
    monkeypatch.setattr(trigger_module, "LOG_FLUSH_INTERVAL", 0.05)
    stub.respond = job_api(statuses, logs)
    trigger = RayTrainJobTrigger(job_id=JOB, ray_conn_id="ray_stub", poll_interval=0.3)
    assert asyncio.run(asyncio.wait_for(first_event(trigger), timeout=30))["status"] == "success"
    text = "".join(capfd.readouterr())
    assert records(text) == ["a", "b", "c"], text


def test_without_a_log_stream_the_trigger_polls_the_whole_log(stub):
    """The stub speaks no websocket (like a proxy that refuses them): the trigger falls back to polling."""
    stub.respond = job_api(["RUNNING", "RUNNING", "SUCCEEDED"], ["a\n", "a\nb\n", "a\nb\nc\n"])
    event = run_trigger()
    assert event["status"] == "success" and event["log_offset"] == len("a\nb\nc\n")
    assert any(p.endswith("/logs/tail") for p in stub.paths())  # it tried the stream first
    assert sum(p.endswith("/logs") for p in stub.paths()) >= 3


def test_stream_slots_are_counted_per_cluster_and_given_back():
    from airflow_ray_train.hooks.watch import StreamSlots

    slots = StreamSlots()
    assert slots.take("http://a", 2) and slots.take("http://a", 2)
    assert not slots.take("http://a", 2)  # full: the third waits
    assert slots.take("http://b", 2)  # another cluster has its own
    slots.give("http://a")
    assert slots.count("http://a") == 1 and slots.take("http://a", 2)


def test_beyond_max_log_streams_a_trigger_polls_the_status_and_reads_the_log_once_at_the_end(stub, monkeypatch):
    """No free stream slot: no stream asked for, no whole-log download per poll (a long log, many jobs), the log
    once the job ended; the event is the same."""
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__MAX_LOG_STREAMS", "0")
    stub.respond = job_api(["RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"], ["a\nb\nc\n"])
    event = run_trigger()
    assert event["status"] == "success" and event["log_offset"] == len("a\nb\nc\n")
    assert event["log_tail"] == ["a", "b", "c"]
    assert not any(p.endswith("/logs/tail") for p in stub.paths())
    assert sum(p.endswith("/logs") for p in stub.paths()) == 1
    assert sum(p == f"/api/jobs/{JOB}" for p in stub.paths()) >= 4


def test_a_trigger_cancelled_while_its_stream_opens_gives_the_slot_back(stub):
    """A task killed or cleared cancels its trigger at any await: a slot kept then would be lost to the
    triggerer for good, and enough of them would leave every trigger without a stream."""
    from airflow_ray_train.hooks.watch import STREAM_SLOTS

    answer = job_api(["RUNNING"], [""])

    def slow_stream(method: str, path: str) -> tuple[int, dict]:
        if path.endswith("/logs/tail"):
            time.sleep(1.5)  # the websocket upgrade hangs (a dashboard busy with its exiting supervisors)
        return answer(method, path)

    stub.respond = slow_stream

    async def cancel_while_opening() -> None:
        task = asyncio.create_task(anext(RayTrainJobTrigger(job_id=JOB, ray_conn_id="ray_stub").run()))
        deadline = time.monotonic() + 5
        while STREAM_SLOTS.count(stub.address) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert STREAM_SLOTS.count(stub.address) == 1  # the slot is taken before the stream opens
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_while_opening())
    assert STREAM_SLOTS.count(stub.address) == 0

"""RayTrainHook against a real local Ray head: submit, status, logs, stop, code shipping, the driver."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from airflow_ray_train.hooks.log_follower import LogFollower
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.packaging import code_package
from airflow_ray_train_runtime.spec import MANIFEST_MARKER, JobStatus, TrainSpec, manifest_from_log

pytestmark = [pytest.mark.integration]


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hook(ray_conn):
    hook = RayTrainHook()
    yield hook
    hook.close()


def _python(code: str) -> str:
    return f"{sys.executable} -c {shlex.quote(code)}"


def test_submit_status_and_logs(hook):
    job_id = hook.submit_job(
        entrypoint=_python("print('hello from the driver')"),
        submission_id=_id("hello"),
        metadata={"airflow_task_id": "t"},
    )
    info = hook.wait_for_job(job_id, poll_interval=0.5, deadline=time.time() + 120)
    assert info.status == "SUCCEEDED"
    assert hook.get_job_status(job_id) == "SUCCEEDED"
    assert info.metadata == {"airflow_task_id": "t"}
    assert "hello from the driver" in hook.get_job_logs(job_id)
    assert hook.find_job(_id("never-submitted")) is None


def test_logs_stream_in_pieces_while_the_job_runs(hook):
    code = "import time\nfor i in range(4):\n    print(f'line {i}', flush=True)\n    time.sleep(1)"
    job_id = hook.submit_job(entrypoint=_python(code), submission_id=_id("stream"))
    pieces: list[list[str]] = []
    info = hook.wait_for_job(job_id, poll_interval=0.3, on_lines=pieces.append, deadline=time.time() + 120)
    assert info.status == "SUCCEEDED"
    streamed = [line for piece in pieces for line in piece]
    assert streamed == hook.get_job_logs(job_id).splitlines()  # every line once, in order
    assert all(f"line {i}" in streamed for i in range(4))
    assert sum(1 for piece in pieces if piece) >= 2, "the log arrived in one piece at the end, not as the job ran"


# The job prints its manifest line (as the runtime driver does last), then takes a while to exit.
_ENDING = (
    "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.5)\n"
    f"print({MANIFEST_MARKER!r} + '{{}}', flush=True)\ntime.sleep(2)"
)


def test_wait_follows_the_log_stream_and_notices_the_end_without_a_slow_poll(hook, monkeypatch):
    """poll_interval=120 s: the stream (the manifest line, then Ray closing it) is what ends the wait, and the
    whole log came over it: Ray closed it normally after the end, so the log is not read again (``GET /logs``)."""
    fetches: list[str] = []
    real_read_log = hook.read_log
    monkeypatch.setattr(hook, "read_log", lambda job_id, *a: fetches.append(job_id) or real_read_log(job_id, *a))
    job_id = hook.submit_job(entrypoint=_python(_ENDING), submission_id=_id("follow"))
    pieces: list[list[str]] = []
    follower = LogFollower()
    started = time.monotonic()
    info = hook.wait_for_job(
        job_id, follower=follower, poll_interval=120, on_lines=pieces.append, deadline=time.time() + 300
    )
    assert info.status == "SUCCEEDED"
    assert time.monotonic() - started < 60, "the wait sat out a 120 s poll instead of following the stream"
    assert fetches == []
    logs = hook.get_job_logs(job_id)
    assert [line for piece in pieces for line in piece] == [
        line for line in logs.splitlines() if not line.startswith(MANIFEST_MARKER)
    ]
    assert follower.manifest_line == MANIFEST_MARKER + "{}" and follower.offset == len(logs)


# The manifest, then 4 s: Ray's stream hands it on within 3 s, so the watcher sees the end before Ray closes the
# stream (Ray closes it only after a status check that follows its next read of the log file).
_ENDING_SLOWLY = _ENDING.replace("time.sleep(2)", "time.sleep(4)")


def test_closing_the_log_stream_at_the_end_does_not_wait_for_ray_to_answer(hook, monkeypatch):
    """The job ended and its stream is still open: Ray would answer the close only after its next read of the
    log file (1-2 s). Nothing is read after the close, so neither the worker's wait nor the trigger waits for
    that answer: the job's end reaches the task without the close's delay."""
    from websockets.sync.client import ClientConnection

    from airflow_ray_train.hooks.ray_train import AsyncRayTrainHook
    from airflow_ray_train.hooks.watch import STREAM_SLOTS

    closes: list[tuple[str, float]] = []
    real_sync_close, real_async_close = ClientConnection.close, AsyncRayTrainHook._close

    def timed_sync_close(self, *args, **kwargs):
        started = time.monotonic()
        try:
            return real_sync_close(self, *args, **kwargs)
        finally:
            closes.append(("sync", time.monotonic() - started))

    async def timed_async_close(self, stream):
        started = time.monotonic()
        try:
            return await real_async_close(self, stream)
        finally:
            closes.append(("async", time.monotonic() - started))

    monkeypatch.setattr(ClientConnection, "close", timed_sync_close)
    monkeypatch.setattr(AsyncRayTrainHook, "_close", timed_async_close)
    sync_job = hook.submit_job(entrypoint=_python(_ENDING_SLOWLY), submission_id=_id("close-sync"))
    assert hook.wait_for_job(sync_job, poll_interval=120, deadline=time.time() + 300).status == "SUCCEEDED"
    async_job = hook.submit_job(entrypoint=_python(_ENDING_SLOWLY), submission_id=_id("close-async"))

    async def wait_async() -> dict:
        async_hook = AsyncRayTrainHook()
        try:
            follower = LogFollower()
            return await async_hook.wait_for_job(async_job, follower=follower, on_lines=lambda lines: None)
        finally:
            await async_hook.aclose()

    assert asyncio.run(asyncio.wait_for(wait_async(), timeout=300)).status == "SUCCEEDED"
    assert [kind for kind, _ in closes] == ["sync", "async"], closes  # each followed its job on one stream
    # A close that waited for Ray's answer takes the whole close timeout (it was 0.2 s); one that does not wait
    # only sends the close frame and drops the connection (about a millisecond here).
    assert all(seconds < 0.1 for _, seconds in closes), closes
    assert STREAM_SLOTS.count(hook.settings.address) == 0


_PRINTS_FOR_SIX_SECONDS = (
    "import time\nfor i in range(12):\n    print(f'line {i}', flush=True)\n    time.sleep(0.5)\n"
    f"print({MANIFEST_MARKER!r} + '{{}}', flush=True)"
)


def test_a_dropped_log_stream_is_opened_again_and_nothing_is_shown_twice_or_lost(hook, monkeypatch):
    opened: list[object] = []
    real_open = hook.open_log_stream

    def open_then_drop_the_first(job_id, streams):
        stream = real_open(job_id, streams)
        opened.append(stream)
        if len(opened) == 1:  # the network (or an idle proxy) cuts the first stream 2 s in
            threading.Timer(2.0, lambda: stream.socket.shutdown(socket.SHUT_RDWR)).start()
        return stream

    fetches: list[str] = []
    real_read_log = hook.read_log
    monkeypatch.setattr(hook, "open_log_stream", open_then_drop_the_first)
    monkeypatch.setattr(hook, "read_log", lambda job_id, *a: fetches.append(job_id) or real_read_log(job_id, *a))
    job_id = hook.submit_job(entrypoint=_python(_PRINTS_FOR_SIX_SECONDS), submission_id=_id("dropped"))
    pieces: list[list[str]] = []
    info = hook.wait_for_job(job_id, poll_interval=120, on_lines=pieces.append, deadline=time.time() + 300)
    assert info.status == "SUCCEEDED"
    assert len(opened) >= 2 and all(stream is not None for stream in opened)  # opened again after the drop
    assert fetches == []  # the new stream replayed the log from its start: no whole-log read, not even at the end
    shown = [line for piece in pieces for line in piece]
    assert shown == [line for line in hook.get_job_logs(job_id).splitlines() if not line.startswith(MANIFEST_MARKER)]
    assert [line for line in shown if line.startswith("line ")] == [f"line {i}" for i in range(12)]


def test_the_trigger_follows_the_log_stream_of_a_real_job(ray_conn, capfd, monkeypatch):
    from airflow_ray_train.hooks.ray_train import AsyncRayTrainHook
    from airflow_ray_train.triggers.ray_train import RayTrainJobTrigger

    fetches: list[str] = []
    real_read_log = AsyncRayTrainHook.read_log

    async def counting_read_log(self, job_id, *args):
        fetches.append(job_id)
        return await real_read_log(self, job_id, *args)

    monkeypatch.setattr(AsyncRayTrainHook, "read_log", counting_read_log)
    hook = RayTrainHook()
    job_id = hook.submit_job(entrypoint=_python(_ENDING), submission_id=_id("trigger"))

    async def first_event():
        async for event in RayTrainJobTrigger(job_id=job_id, poll_interval=120).run():
            return event.payload

    started = time.monotonic()
    event = asyncio.run(first_event())
    assert event["status"] == "success", event
    assert time.monotonic() - started < 60, "the trigger sat out a 120 s poll instead of following the stream"
    assert fetches == []  # Ray closed the stream after the end: it carried the whole log
    logs = hook.get_job_logs(job_id)
    assert event["log_offset"] == len(logs)
    output = capfd.readouterr()
    assert all(f"[ray] line {i}" in output.out + output.err for i in range(3))
    hook.close()


def test_stop_leaves_the_job_stopped(hook):
    job_id = hook.submit_job(entrypoint=_python("import time; time.sleep(300)"), submission_id=_id("stop"))
    deadline = time.monotonic() + 60
    while hook.get_job_status(job_id) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert hook.get_job_status(job_id) == "RUNNING"
    assert hook.stop_job_and_wait(job_id) == "STOPPED"
    assert JobStatus.ended(hook.get_job_status(job_id))


def test_a_repeat_submit_uploads_nothing_and_changed_code_uploads_again(hook, tmp_path, monkeypatch):
    package = tmp_path / "shipped_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    first = RayTrainHook()
    env = first.build_runtime_env({"env_vars": {"A": "1"}}, packages=[code_package("shipped_pkg")])
    assert env["env_vars"] == {"A": "1"} and len(env["py_modules"]) == 2
    assert first.bytes_uploaded > 0

    again = RayTrainHook()
    assert again.build_runtime_env({"env_vars": {"A": "1"}}, packages=[code_package("shipped_pkg")]) == env
    assert again.bytes_uploaded == 0

    (package / "__init__.py").write_text("VALUE = 2\n")
    changed = RayTrainHook()
    env2 = changed.build_runtime_env(None, packages=[code_package("shipped_pkg")])
    assert env2["py_modules"][0] == env["py_modules"][0]  # the runtime did not change
    assert env2["py_modules"][1] != env["py_modules"][1]
    assert changed.bytes_uploaded == code_package("shipped_pkg").size  # only the changed package

    # The shipped code is what the job imports on the cluster.
    job_id = hook.submit_job(
        entrypoint=_python(
            "import shipped_pkg, airflow_ray_train_runtime.spec as s; print('VALUE', shipped_pkg.VALUE)"
        ),
        submission_id=_id("shipped"),
        runtime_env=env2,
    )
    assert hook.wait_for_job(job_id, poll_interval=0.5, deadline=time.time() + 120).status == "SUCCEEDED"
    assert "VALUE 2" in hook.get_job_logs(job_id)


def test_driver_writes_a_failed_manifest_when_train_func_is_not_on_the_cluster(hook):
    storage = Path(os.environ["AIRFLOW__RAY_TRAIN__DEFAULT_STORAGE_PATH"])
    spec = TrainSpec(
        train_func="not_shipped_anywhere.models:train_func",
        run_name=_id("missing-code"),
        submission_id=_id("missing-code-try1"),
        scaling_config={"num_workers": 1},
        run_config={"storage_path": str(storage)},
    )
    env = hook.build_runtime_env(None)
    job_id = hook.submit_job(
        entrypoint=hook.runtime_entrypoint(spec.to_arg()), submission_id=spec.submission_id, runtime_env=env
    )
    info = hook.wait_for_job(job_id, poll_interval=0.5, deadline=time.time() + 180)
    assert info.status == "FAILED" and info.driver_exit_code == 1
    manifest = manifest_from_log(hook.get_job_logs(job_id))
    assert manifest is not None and manifest.status == "FAILED"
    assert manifest.error is not None and manifest.error["type"] == "TrainFuncImportError"
    assert "not importable on the cluster" in manifest.error["message"]
    assert json.loads(Path(manifest.manifest_path).read_text())["status"] == "FAILED"
    assert manifest.manifest_path.startswith(str(storage / spec.run_name))

"""The watch loop's two drivers (``RayTrainHook.wait_for_job`` in a worker, ``AsyncRayTrainHook.wait_for_job`` in
the triggerer) and the bounded log reader, against a stub Jobs API in a process of its own (``log_server.py``): a
huge log, a line with no newline, a proxy that cuts every stream, the deadline."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airflow_ray_train.hooks.log_follower import MAX_LINE_CHARS, LogFollower
from airflow_ray_train.hooks.ray_train import AsyncRayTrainHook, RayTrainHook

HERE = Path(__file__).parent
MB = 2**20


def start_server(mode: str, size: int, status: str, stream: str) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "log_server.py"), mode, str(size), status, stream],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, f"http://127.0.0.1:{server.stdout.readline().strip()}"


@pytest.fixture
def server(request, monkeypatch) -> Iterator[str]:
    """``request.param``: (mode, size, status, stream) of ``log_server.py``; the ``ray_logs`` connection points
    at it."""
    process, address = start_server(*request.param)
    monkeypatch.setenv("AIRFLOW_CONN_RAY_LOGS", json.dumps({"conn_type": "ray_train", "host": address}))
    try:
        yield address
    finally:
        process.kill()
        process.wait()


#: Reads job ``j``'s whole log through a hook in a fresh process, then prints what it saw and its peak memory.
READER = """
import asyncio, json, resource, sys, time
from airflow_ray_train.hooks.log_follower import LogFollower
from airflow_ray_train.hooks.ray_train import AsyncRayTrainHook, RayTrainHook

seen = {"lines": 0, "longest": 0}
def on_lines(lines):
    seen["lines"] += len(lines)
    seen["longest"] = max([seen["longest"], *map(len, lines)])

follower = LogFollower()
start = time.monotonic()
if sys.argv[1] == "sync":
    reader = RayTrainHook("ray_logs").read_log("j", follower, on_lines)
else:
    async def read():
        hook = AsyncRayTrainHook("ray_logs", timeout=600)
        try:
            return await hook.read_log("j", follower, on_lines)
        finally:
            await hook.aclose()
    reader = asyncio.run(read())
print(json.dumps({
    **seen, "seconds": time.monotonic() - start, "done": reader.done, "bytes": reader.bytes_read,
    "offset": follower.offset, "manifest": follower.manifest_line,
    "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def read_in_a_fresh_process(address: str, driver: str) -> dict:
    env = {**os.environ, "AIRFLOW_CONN_RAY_LOGS": json.dumps({"conn_type": "ray_train", "host": address})}
    done = subprocess.run(
        [sys.executable, "-c", READER, driver], env=env, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_small_then_big(mode: str, size: int, driver: str) -> tuple[dict, dict]:
    """What a fresh process saw reading a 1 MiB log, then a ``size`` one, of ``mode``."""
    seen = []
    for served in (1 * MB, size):
        process, address = start_server(mode, served, "SUCCEEDED", "none")
        try:
            seen.append(read_in_a_fresh_process(address, driver))
        finally:
            process.kill()
            process.wait()
    return seen[0], seen[1]


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_500_mb_log_is_read_in_bounded_memory(driver):
    baseline, seen = read_small_then_big("lines", 500 * MB, driver)
    assert seen["done"] and seen["bytes"] > 500 * MB and seen["manifest"].endswith('{"submission_id": "j"}')
    assert seen["lines"] > 5_000_000 and seen["offset"] > 500 * MB  # every line went by, each once
    # The whole log was never held: the peak is the 1 MiB log's, give or take a few pieces.
    assert seen["peak_mib"] - baseline["peak_mib"] < 64, (seen, baseline)


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_100_mb_line_without_a_newline_is_cut_in_linear_time_and_bounded_memory(driver):
    baseline, seen = read_small_then_big("one-line", 100 * MB, driver)
    assert seen["lines"] == 1 and seen["longest"] == len(
        f"{'x' * MAX_LINE_CHARS} [... line cut at {MAX_LINE_CHARS} characters]"
    )
    assert seen["manifest"] is not None  # the line after the cut one is read as usual
    # Linear: 100 times the log in well under 100 times the time (the old follower took minutes for this).
    assert seen["seconds"] < max(30.0, 20 * baseline["seconds"]), (seen, baseline)
    assert seen["peak_mib"] - baseline["peak_mib"] < 64, (seen, baseline)


def watch_job(driver: str, *, poll_interval: float, deadline: float) -> object:
    """Job ``j`` watched by the sync or the async driver, until it ended or ``deadline`` passed."""
    if driver == "sync":
        return RayTrainHook("ray_logs").wait_for_job("j", poll_interval=poll_interval, deadline=deadline)

    async def watch() -> object:
        hook = AsyncRayTrainHook("ray_logs")
        try:
            return await hook.wait_for_job(
                "j", follower=LogFollower(), on_lines=lambda lines: None, poll_interval=poll_interval, deadline=deadline
            )
        finally:
            await hook.aclose()

    return asyncio.run(watch())


def requests_seen(address: str) -> list[list[str]]:
    return list(httpx.get(f"{address}/_seen").json())


@pytest.mark.parametrize("server", [("lines", 1000, "RUNNING", "close")], indirect=True)
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_proxy_that_closes_every_stream_at_once_costs_a_bounded_number_of_requests(server, driver):
    """Before, each stream that opened reset the backoff and each close started 15 s of polls every 0.2 s: about
    one log replay a second and hundreds of polls a minute. Now the reconnects back off (1, 2, 4, 8 s ...)
    while no new text flows, and each close costs one poll."""
    seconds = 12.0
    deadline = time.time() + seconds
    info = watch_job(driver, poll_interval=5.0, deadline=deadline)
    assert str(info.status) == "RUNNING"  # type: ignore[attr-defined]
    seen = requests_seen(server)
    streams = [path for _, path in seen if path.endswith("/logs/tail")]
    assert 3 <= len(streams) <= 6, seen  # 0, 1, 2, 4, 8 s ... after each close
    assert len(seen) <= 20, seen
    assert not any(path.endswith("/logs") for _, path in seen)  # no whole-log read while the job runs


@pytest.mark.parametrize("server", [("lines", 1000, "RUNNING", "none")], indirect=True)
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_each_driver_hands_the_job_back_within_a_second_of_its_deadline(server, driver):
    """``poll_interval`` 30 s: only a driver that cuts its pauses at the deadline returns in time."""
    start = time.time()
    deadline = start + 2.5
    info = watch_job(driver, poll_interval=30.0, deadline=deadline)
    returned = time.time()
    assert str(info.status) == "RUNNING"  # type: ignore[attr-defined]
    assert deadline - 0.05 <= returned <= deadline + 1.0, returned - deadline

"""``RayTrainJobTrigger``: waits for a Ray job in the triggerer, streaming its log, without holding a worker.

Fully async: the Ray Jobs REST API through ``AsyncRayTrainHook`` (aiohttp), never ``ray``, never a
blocking call in the event loop. It never raises: every failure becomes an event the operator turns into
the task's error. It stops the Ray job in ``on_kill`` (the task was killed, cleared or marked) and when its
own deadline passes, never in ``cleanup`` (that also runs when a triggerer restarts).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_ray_train.hooks.ray_train import TERMINAL_STATUSES, AsyncRayTrainHook, LogFollower
from airflow_ray_train.runtime.spec import MANIFEST_MARKER

#: What each terminal Ray job status becomes in the event's ``status``.
EVENT_STATUS = {"SUCCEEDED": "success", "FAILED": "failed", "STOPPED": "stopped"}
#: Ray job statuses that mean "not finished yet".
WAITING_STATUSES = frozenset({"PENDING", "RUNNING"})
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def complete_lines(logs: str, offset: int) -> tuple[list[str], int]:
    """The whole lines of ``logs`` after ``offset`` (ANSI colours and the manifest line dropped), and the
    offset just past the last of them, so a half-written line is read on the next poll."""
    end = logs.rfind("\n") + 1
    if end <= offset:
        return [], offset
    lines = [
        _ANSI_RE.sub("", line).rstrip("\r")
        for line in logs[offset:end].split("\n")[:-1]
        if not line.startswith(MANIFEST_MARKER)
    ]
    return lines, end


class RayTrainJobTrigger(BaseTrigger):
    """Watch a Ray job until it is terminal, logging its new log lines as they come.

    The log comes over the Jobs API's log stream (a websocket per job, idle between lines); the status is
    polled every ``poll_interval``, and every ``FINISHING_POLL_INTERVAL`` once the stream shows the job is
    ending (its result manifest went by, or Ray closed the stream), so the event fires within a fraction
    of a second of the job ending. Without the stream, the whole log is fetched with each status poll.

    Events (``status`` first, always with ``job_id``, ``job_status``, ``log_offset`` and ``message``;
    ``error`` events also carry ``error_type``, the exception's class name):
    ``success`` / ``failed`` / ``stopped`` for the Ray job statuses SUCCEEDED / FAILED / STOPPED;
    ``timeout`` when ``timeout_at`` passed first (the job has been stopped); ``error`` when the job could not
    be watched (cluster unreachable, token rejected, job gone).

    :param job_id: the Ray job's submission id.
    :param ray_conn_id: the ``ray_train`` connection.
    :param poll_interval: seconds between status polls while the job runs.
    :param log_offset: characters of the job log already shown in the task log.
    :param timeout_at: Unix time after which the job is stopped and a ``timeout`` event fires; None: no limit.
    :param timeout_label: how the deadline is described in the timeout message (e.g. ``execution_timeout``).
    """

    def __init__(
        self,
        *,
        job_id: str,
        ray_conn_id: str = AsyncRayTrainHook.default_conn_name,
        poll_interval: float = 5.0,
        log_offset: int = 0,
        timeout_at: float | None = None,
        timeout_label: str = "the deadline",
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.job_id = job_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.log_offset = log_offset
        self.timeout_at = timeout_at
        self.timeout_label = timeout_label
        self._pending = ""  # a line the stream delivered only in part

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "log_offset": self.log_offset,
                "timeout_at": self.timeout_at,
                "timeout_label": self.timeout_label,
            },
        )

    def hook(self) -> AsyncRayTrainHook:
        # More patient than a worker: a head that hiccups for half a minute must not fail an hours-long run.
        return AsyncRayTrainHook(self.ray_conn_id, max_retries=5, retry_backoff=1.0)

    def _event(self, status: str, job_status: str | None, message: str, **extra: str) -> TriggerEvent:
        payload = {
            "status": status,
            "job_id": self.job_id,
            "job_status": job_status,
            "log_offset": self.log_offset,
            "message": message,
            **extra,
        }
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]

    async def _show_new_logs(self, hook: AsyncRayTrainHook) -> None:
        """Fetch the whole log and log the lines after ``log_offset`` (polling, and the final read)."""
        self._pending = ""
        lines, self.log_offset = complete_lines(await hook.get_job_logs(self.job_id), self.log_offset)
        for line in lines:
            self.log.info("[ray] %s", line)

    def _show_streamed(self, text: str) -> None:
        """Log the whole lines of what the stream delivered; ``log_offset`` stays at a line start."""
        text = self._pending + text
        lines, end = complete_lines(text, 0)
        self._pending = text[end:]
        self.log_offset += end
        for line in lines:
            self.log.info("[ray] %s", line)

    async def _follow(
        self, stream: aiohttp.ClientWebSocketResponse, follower: LogFollower, wait: float
    ) -> aiohttp.ClientWebSocketResponse | None:
        """Read the log stream for up to ``wait`` seconds; back early when the job starts finishing.
        Returns the stream, or None once it closed."""
        was_finishing = follower.finishing
        until = time.monotonic() + wait
        while (left := until - time.monotonic()) > 0:
            try:
                message = await stream.receive(timeout=left)
            except TimeoutError:
                break
            if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                follower.closed()  # Ray closes the stream once the job ended (or the connection broke)
                await stream.close()
                return None
            self._show_streamed(follower.feed(message.data))
            if follower.finishing and not was_finishing:
                break
        return stream

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook()
        job_status: str | None = None
        follower = LogFollower(shown=self.log_offset)
        stream: aiohttp.ClientWebSocketResponse | None = None
        try:
            stream = await hook.open_log_stream(self.job_id)
            while True:
                info = await hook.get_job_info(self.job_id)
                if info.get("status") != job_status:
                    job_status = str(info.get("status"))
                    self.log.info("Ray job %s is %s", self.job_id, job_status)
                if job_status in TERMINAL_STATUSES:
                    await self._show_new_logs(hook)  # the stream lags the file by up to a second
                    message = str(info.get("message") or "")
                    yield self._event(EVENT_STATUS[job_status], job_status, message)
                    return
                if job_status not in WAITING_STATUSES:
                    self.log.warning("Ray job %s has a status this trigger does not know: %s", self.job_id, job_status)
                if self.timeout_at is not None and time.time() >= self.timeout_at:
                    self.log.warning(
                        "Ray job %s still %s after %s; stopping it", self.job_id, job_status, self.timeout_label
                    )
                    final = await hook.stop_job_and_wait(self.job_id)
                    await self._show_new_logs(hook)
                    yield self._event(
                        "timeout",
                        final,
                        f"Ray job {self.job_id} was still {job_status} when {self.timeout_label} passed; "
                        f"it has been stopped (now {final}).",
                    )
                    return
                wait = follower.next_poll(self.poll_interval)
                if self.timeout_at is not None:
                    wait = max(0.0, min(wait, self.timeout_at - time.time()))
                if stream is None:
                    await self._show_new_logs(hook)
                    await asyncio.sleep(wait)
                else:
                    stream = await self._follow(stream, follower, wait)
        except Exception as exc:  # noqa: BLE001 - a trigger never raises: the task gets the reason as an event
            yield self._event("error", job_status, f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
        finally:
            if stream is not None:
                await stream.close()
            await hook.aclose()

    async def on_kill(self) -> None:
        """The task was killed, cleared or marked by a user: stop the Ray job and its Train workers."""
        hook = self.hook()
        try:
            final = await hook.stop_job_and_wait(self.job_id, timeout=25.0)
            self.log.info("Stopped Ray job %s because its task was killed: %s", self.job_id, final)
        finally:
            await hook.aclose()

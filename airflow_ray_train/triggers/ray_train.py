"""``RayTrainJobTrigger``: waits for a Ray job in the triggerer, streaming its log, without holding a worker.

Fully async: the Ray Jobs REST API through ``AsyncRayTrainHook`` (httpx.AsyncClient), never ``ray``, never a
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

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_ray_train.hooks.ray_train import TERMINAL_STATUSES, AsyncRayTrainHook
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
    """Poll a Ray job until it is terminal, logging its new log lines as they come.

    Events (``status`` first, always with ``job_id``, ``job_status``, ``log_offset`` and ``message``;
    ``error`` events also carry ``error_type``, the exception's class name):
    ``success`` / ``failed`` / ``stopped`` for the Ray job statuses SUCCEEDED / FAILED / STOPPED;
    ``timeout`` when ``timeout_at`` passed first (the job has been stopped); ``error`` when the job could not
    be watched (cluster unreachable, token rejected, job gone).

    :param job_id: the Ray job's submission id.
    :param ray_conn_id: the ``ray_train`` connection.
    :param poll_interval: seconds between polls.
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
        lines, self.log_offset = complete_lines(await hook.get_job_logs(self.job_id), self.log_offset)
        for line in lines:
            self.log.info("[ray] %s", line)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook()
        job_status: str | None = None
        try:
            while True:
                info = await hook.get_job_info(self.job_id)
                if info.get("status") != job_status:
                    job_status = str(info.get("status"))
                    self.log.info("Ray job %s is %s", self.job_id, job_status)
                await self._show_new_logs(hook)
                if job_status in TERMINAL_STATUSES:
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
                await asyncio.sleep(self.poll_interval)
        except Exception as exc:  # noqa: BLE001 - a trigger never raises: the task gets the reason as an event
            yield self._event("error", job_status, f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
        finally:
            await hook.aclose()

    async def on_kill(self) -> None:
        """The task was killed, cleared or marked by a user: stop the Ray job and its Train workers."""
        hook = self.hook()
        try:
            final = await hook.stop_job_and_wait(self.job_id, timeout=25.0)
            self.log.info("Stopped Ray job %s because its task was killed: %s", self.job_id, final)
        finally:
            await hook.aclose()

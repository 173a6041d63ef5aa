"""``RayTrainJobTrigger``: waits for a Ray job in the triggerer, streaming its log, without holding a worker.

Fully async: the Ray Jobs REST API through ``AsyncRayTrainHook`` (aiohttp), never ``ray``, never a
blocking call in the event loop. It never raises: every failure becomes an event the operator turns into
the task's error. It stops the Ray job in ``on_kill`` (the task was killed, cleared or marked) and when its
own deadline passes, never in ``cleanup`` (that also runs when a triggerer restarts). Before Airflow 3.3 the
triggerer never calls ``on_kill``: a cancelled ``run`` asks Airflow whether its task is still deferred and
stops the job when it is not (see ``compat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_ray_train import compat
from airflow_ray_train.hooks.log_follower import LogFollower, as_record, cut_line
from airflow_ray_train.hooks.ray_train_async import AsyncRayTrainHook
from airflow_ray_train.hooks.watch import POLL_INTERVAL_S
from airflow_ray_train.progress import Progress
from airflow_ray_train_runtime.spec import JobStatus


class Event(enum.StrEnum):
    """The ``status`` of the trigger's event."""

    SUCCESS = "success"
    FAILED = "failed"
    STOPPED = "stopped"
    TIMEOUT = "timeout"  # the deadline passed first; the job has been stopped
    ERROR = "error"  # the job could not be watched (contact lost for the whole window, token rejected, job gone)


#: What each terminal Ray job status becomes in the event's ``status``.
EVENT_STATUS = {JobStatus.SUCCEEDED: Event.SUCCESS, JobStatus.FAILED: Event.FAILED, JobStatus.STOPPED: Event.STOPPED}
#: Log lines an event carries for the task's error message (the operator needs no second download), each cut at
#: ``TAIL_LINE_CHARS``: the event is stored in the metadata DB.
LOG_TAIL_LINES = 40
TAIL_LINE_CHARS = 1000
#: A manifest line longer than this does not go into the event (``manifest`` is None, ``manifest_in_event``
#: False): the task reads it from the log, else from ``manifest.json`` in storage.
EVENT_MANIFEST_CHARS = 64 * 2**10
#: New log lines reach the task log in one record per trigger at most this often, on a clock every trigger in
#: the triggerer shares: each record wakes Airflow's triggerer supervisor for a round of database queries, so
#: the records of many triggers should arrive together.
LOG_FLUSH_INTERVAL = 5.0


class RayTrainJobTrigger(BaseTrigger):
    """Watch a Ray job until it is terminal, logging its new log lines as they come: the async driver of the
    one watch loop (``hooks.watch``), so the log stream, the polls, the contact window and the deadline work as
    in a worker. New lines reach the task log every ``LOG_FLUSH_INTERVAL`` at most, in one record, and all of
    them before the event.

    Events (``status``, an ``Event``, always with ``job_id``, ``job_status``, ``log_offset`` (characters of the
    log gone by), ``message``, ``manifest`` (the manifest's log line, or None; None too when it is over
    ``EVENT_MANIFEST_CHARS``, then ``manifest_in_event`` is False) and ``log_tail`` (the job log's last lines, cut
    at ``TAIL_LINE_CHARS``): the event is stored in the metadata DB, so its size is bounded; ``error`` events also
    carry ``error_type``, the exception's class name): ``success`` / ``failed`` / ``stopped`` for the Ray job
    statuses SUCCEEDED / FAILED / STOPPED; ``timeout`` when ``timeout_at`` passed first (the job has been
    stopped); ``error`` when the job could not be watched (no answer over the contact window, token rejected,
    job gone).

    A restarted triggerer runs the trigger again from its arguments, which are fixed when the task defers: it
    shows the job's log again from its first line. (A trigger cannot store how far it got: Airflow gives a
    running trigger no way to update its arguments, and the triggerer does not serve Airflow 3.3's task state
    store to triggers.)

    :param job_id: the Ray job's submission id.
    :param ray_conn_id: the ``ray_train`` connection.
    :param poll_interval: seconds between status polls while the job runs without a log stream.
    :param timeout_at: Unix time after which the job is stopped and a ``timeout`` event fires; None: no limit.
    :param timeout_label: how the deadline is described in the timeout message (e.g. ``execution_timeout``).
    :param progress: what counts the training's progress (``ProgressSpec.to_json()``); None: the report number
        and the time elapsed. The latest progress line ends each record of new log lines.
    """

    def __init__(
        self,
        *,
        job_id: str,
        ray_conn_id: str = AsyncRayTrainHook.default_conn_name,
        poll_interval: float = POLL_INTERVAL_S,
        timeout_at: float | None = None,
        timeout_label: str = "the deadline",
        progress: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.job_id = job_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.timeout_at = timeout_at
        self.timeout_label = timeout_label
        self.progress = progress
        self._progress = Progress.from_argument(progress)
        self._progress_line: str | None = None
        self._tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._unlogged: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "timeout_at": self.timeout_at,
                "timeout_label": self.timeout_label,
                "progress": self.progress,
            },
        )

    def hook(self) -> AsyncRayTrainHook:
        # More patient than a worker: a head that hiccups for half a minute must not fail an hours-long run.
        return AsyncRayTrainHook(self.ray_conn_id, max_retries=5, retry_backoff=1.0)

    def _event(
        self, status: Event, job_status: str | None, message: str, follower: LogFollower, **extra: Any
    ) -> TriggerEvent:
        self._flush()  # the job's last lines reach the task log before the task resumes
        manifest = follower.manifest_line
        small = manifest is None or len(manifest) <= EVENT_MANIFEST_CHARS
        payload = {
            "status": str(status),
            "job_id": self.job_id,
            "job_status": None if job_status is None else str(job_status),
            "log_offset": follower.offset,
            "message": cut_line(message, TAIL_LINE_CHARS * 4),
            "manifest": manifest if small else None,
            "manifest_in_event": small,
            "log_tail": [cut_line(line, TAIL_LINE_CHARS) for line in self._tail],
            **extra,
        }
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]

    def _show(self, lines: list[str]) -> None:
        """Keep new lines for the next shared flush tick (scheduled in this trigger's context, so the record
        still goes to this task's log)."""
        if not lines:
            return
        self._unlogged.extend(lines)
        self._tail.extend(lines)
        self._progress_line = self._progress.update(lines) or self._progress_line
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            tick = (math.floor(loop.time() / LOG_FLUSH_INTERVAL) + 1) * LOG_FLUSH_INTERVAL
            self._flush_handle = loop.call_at(tick, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._unlogged:
            record, line = as_record(self._unlogged), self._progress_line
            self.log.info("%s", record if line is None else f"{record}\n{line}")
            self._unlogged, self._progress_line = [], None

    def _status(self, status: str) -> None:
        self._flush()  # the lines before it first: the task log keeps the job's order
        self.log.info("Ray job %s is %s", self.job_id, status)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook()
        follower = LogFollower()
        status: str | None = None
        try:
            info = await hook.wait_for_job(
                self.job_id,
                follower=follower,
                on_lines=self._show,
                poll_interval=self.poll_interval,
                deadline=self.timeout_at,
                on_status=self._status,
            )
            status = str(info.status)
            if info.ended:
                yield self._event(EVENT_STATUS[JobStatus(status)], status, info.message, follower)
                return
            self.log.warning("Ray job %s still %s after %s; stopping it", self.job_id, status, self.timeout_label)
            final = await hook.stop_job_and_wait(self.job_id)
            with contextlib.suppress(Exception):  # the log's last lines are a courtesy: the event must fire
                await hook.read_log(self.job_id, follower, self._show)
            self._show(follower.flush())
            message = (
                f"Ray job {self.job_id} was still {status} when {self.timeout_label} passed; "
                f"it has been stopped (now {final})."
            )
            yield self._event(Event.TIMEOUT, final, message, follower)
        except asyncio.CancelledError:
            if not compat.TRIGGER_ON_KILL:
                await self._stop_if_task_left_deferral()
            raise
        except Exception as exc:  # noqa: BLE001 - a trigger never raises: the task gets the reason as an event
            message = f"{type(exc).__name__}: {exc}"
            yield self._event(
                Event.ERROR,
                status,
                message,
                follower,
                error_type=type(exc).__name__,
                http_status=getattr(exc, "http_status", None),
            )
        finally:
            self._flush()
            await hook.aclose()

    async def _stop_if_task_left_deferral(self) -> None:
        """Airflow before 3.3 cancels a trigger, without calling ``on_kill``, both when a user acts on its task
        and when a triggerer stops: stop the job only once the task is no longer deferred."""
        try:
            deferred = await compat.task_still_deferred(getattr(self, "task_instance", None))
        except Exception as exc:  # noqa: BLE001 - unsure whose cancel this is: leave the job to the next try
            self.log.warning("Cannot tell whether the task of Ray job %s was killed (%s); leaving it", self.job_id, exc)
            return
        if deferred is False:
            await self.on_kill()
        else:
            self.log.info(
                "Trigger for Ray job %s cancelled while its task is still deferred: the job runs on", self.job_id
            )

    async def on_kill(self) -> None:
        """The task was killed, cleared or marked by a user: stop the Ray job and its Train workers."""
        hook = self.hook()
        try:
            final = await hook.stop_job_and_wait(self.job_id)
            self.log.info("Stopped Ray job %s because its task was killed: %s", self.job_id, final)
        finally:
            await hook.aclose()

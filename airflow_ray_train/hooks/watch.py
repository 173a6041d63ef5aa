"""Watching a Ray job to its end: the one watch loop's decisions, with no sockets and no clock of its own.

``Watch`` says what to do next (``Step``) and hears how it went. A thin sync driver (``RayTrainHook.wait_for_job``,
in a worker) and a thin async driver (``AsyncRayTrainHook.wait_for_job``, in the triggerer) carry the steps out;
neither decides anything itself, so the two cannot drift.

What it decides:

- **The log** comes over the Jobs API's log stream (``/api/jobs/{id}/logs/tail``, a websocket that sends the log
  from its start, then each new piece), read between status polls. A stream that closes while the job runs is
  opened again after ``RECONNECT_DELAY_S``, doubling up to ``RECONNECT_MAX_S`` until a stream actually carries new
  text: a proxy that closes every stream at once costs a bounded number of requests a minute. Without a stream
  (a proxy with no websockets) the log is read with each status poll while it is under ``LIVE_LOG_BYTES``, then
  only at the end. After a message over ``MAX_MESSAGE_BYTES`` the log is read once, at the end.
- **The status** is polled every ``poll_interval`` without a stream; with one, only as a backstop
  (``STREAM_POLL_INTERVAL``). Once the manifest went by (the driver prints it last) or the stream closed, the job
  is ending: polls come every ``FINISHING_POLL_INTERVAL`` for a short window. A stream that closed gets one poll
  at once (Ray closes it only after the job ended), not a window of them.
- **The end**: a stream still open when the job ended is read until Ray closes it (it sends the rest first); a
  stream Ray closed normally after the end has shown the whole log. Otherwise the log is read once more, in
  bounded pieces. A log that cannot be read is not a failure: the result comes from ``manifest.json``.
- **Contact lost is not failure.** A status poll that cannot reach the cluster (or gets a busy gateway) starts the
  contact window (``[ray_train] contact_window``); polls go on with a growing pause, logged as they go. Only when
  the window passes does the watch give up (``ContactLost``). A rejected token or a job the cluster does not have
  ends it at once.
- **The deadline** (a Unix time) is kept to within a second: every pause and read is cut at it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_ray_train.config import SETTINGS, ray_train_setting
from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError
from airflow_ray_train.hooks.jobs_api import STOP_POLL_S, STOP_TIMEOUT_S, JobInfo, RetryPolicy
from airflow_ray_train.hooks.log_follower import LogFollower, LogReader
from airflow_ray_train_runtime.spec import JobStatus

#: Seconds between status polls once the log shows the job is ending (manifest printed, stream closed).
FINISHING_POLL_INTERVAL = 0.2
#: While the log stream is open, the status poll is only a backstop (Ray closes the stream once the job ended):
#: at least this many seconds apart.
STREAM_POLL_INTERVAL = 30.0
#: Fast polls after the manifest went by stop after this many seconds (a driver that hangs on its way out).
FINISHING_WINDOW_S = 15.0
#: A stream that closed while the job runs is opened again after this many seconds, doubling with each stream
#: that carried nothing new, up to ``RECONNECT_MAX_S``.
RECONNECT_DELAY_S = 1.0
RECONNECT_MAX_S = 60.0
#: Without a stream, the log is read with each poll while it is smaller than this; beyond, only at the end.
LIVE_LOG_BYTES = 2**20
#: A stream still open when the job ended is read this long for the rest of the log before it is fetched.
DRAIN_S = 5.0
#: The largest stream message taken (Ray sends up to 10 lines or 20,000 characters; one line can be longer).
#: A bigger one closes the stream, and the log is then read only once, at the end.
MAX_MESSAGE_BYTES = 16 * 2**20
#: Seconds between keepalive pings on a quiet stream, so idle proxies do not cut it.
HEARTBEAT_S = 20.0
#: Seconds a watcher closing its stream waits for Ray's answer to the close: none. Ray answers only after its next
#: read of the log file (1-2 s later) and nothing is read after a close, so the close frame goes out and the
#: connection is dropped at once; waiting would only delay the job's end reaching the task.
STREAM_CLOSE_TIMEOUT_S = 0.0
#: The websocket close codes: Ray's own close after the job ended, and a message over the size cap.
NORMAL_CLOSE = 1000
MESSAGE_TOO_BIG = 1009
#: How long a cluster that does not answer is waited for, unless ``[ray_train] contact_window`` says otherwise;
#: and the status poll's pause where the log cannot be streamed (``[ray_train] poll_interval``): their defaults.
CONTACT_WINDOW_S: float = SETTINGS["contact_window"].default
POLL_INTERVAL_S: float = SETTINGS["poll_interval"].default
#: The pause between status polls while contact is lost grows to this; the loss is logged this often.
CONTACT_POLL_MAX_S = 30.0
CONTACT_LOG_EVERY_S = 60.0

#: Called with each batch of new whole log lines while a job is watched.
OnLines = Callable[[list[str]], None]


class ContactLost(RayTrainClusterError):
    """The cluster did not answer for the whole contact window."""


class Do(enum.Enum):
    """What a driver does next."""

    OPEN_STREAM = "open_stream"  # open the log stream; then ``stream_opened`` or ``stream_refused``
    READ_STREAM = "read_stream"  # hand the stream's messages to ``feed`` while ``read_left()`` > 0
    POLL = "poll"  # get the job's status; then ``polled`` or ``poll_failed``
    FETCH_LOG = "fetch_log"  # read ``GET /logs`` through a ``LogReader``; then ``log_read`` or ``log_failed``
    SLEEP = "sleep"  # wait ``seconds``
    RETURN = "return"  # hand back ``info``: the job ended, or the deadline passed (then it still runs)
    GIVE_UP = "give_up"  # raise ``error``


@dataclass(frozen=True)
class Step:
    do: Do
    seconds: float = 0.0


def contact_window() -> float:
    return float(ray_train_setting("contact_window"))


class Watch:
    """The decisions of watching one job (see the module doc).

    :param job_id: the Ray job's submission id.
    :param follower: keeps the place in the log (a watcher that restarts from ``follower.offset`` repeats nothing).
    :param poll_interval: seconds between status polls without a log stream.
    :param deadline: Unix time at which ``RETURN`` hands back a job that still runs; None: no limit.
    :param contact_window: seconds a cluster that does not answer is waited for.
    :param log: where the contact window and the log's fallbacks are said.
    :param clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        job_id: str,
        follower: LogFollower,
        *,
        poll_interval: float = POLL_INTERVAL_S,
        deadline: float | None = None,
        contact_window: float = CONTACT_WINDOW_S,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.follower = follower
        self.poll_interval = poll_interval
        self.contact_window = contact_window
        self.log = log or logging.getLogger(__name__)
        self._clock = clock
        self._deadline = None if deadline is None else clock() + (deadline - time.time())
        self.info: JobInfo | None = None
        self.error: Exception | None = None
        self.streaming = False  # a stream is open
        self.log_complete = False  # the whole log went by (a stream Ray closed after the end, or a full read)
        self._started = False
        self._polled_once = False
        self._ever_opened = False
        self._given_up = False  # a message over MAX_MESSAGE_BYTES: the log is read once, at the end
        self._waiting_for_slot = False
        self._slot_due = False
        self._closed_at: float | None = None
        self._clean_close = False
        self._reconnects = 0
        self._fast_until: float | None = None
        self._poll_at = clock()
        self._lost_since: float | None = None
        self._lost_polls = 0
        self._lost_logged = 0.0
        self._fetch_due = False
        self._live_log = True
        self._drain_until: float | None = None
        self._final_read = False

    # -- what next ------------------------------------------------------------------------------------------

    def next(self) -> Step:
        now = self._clock()
        if self.error is not None:
            return Step(Do.GIVE_UP)
        if not self._started:
            self._started = True
            return Step(Do.OPEN_STREAM)
        if self.ended():
            return self._ending(now)
        if self._deadline is not None and now >= self._deadline:
            if self.info is not None:
                return Step(Do.RETURN)
            if not self._polled_once:  # hand back the job's status, not a guess
                self._polled_once = True
                return Step(Do.POLL)
            self.error = ContactLost(f"Ray job {self.job_id} could not be reached before the deadline")
            return Step(Do.GIVE_UP)
        if now >= self._poll_at:
            self._polled_once = True
            return Step(Do.POLL)
        wait = self._cut(self._poll_at - now, now)
        if self._lost_since is not None:
            return Step(Do.SLEEP, wait)
        if self.streaming:
            return Step(Do.READ_STREAM, wait)
        if self._reconnect_due(now):
            return Step(Do.OPEN_STREAM)
        if self._fetch_due:
            self._fetch_due = False
            return Step(Do.FETCH_LOG)
        reconnect_at = self._reconnect_at()
        if reconnect_at is not None:
            wait = min(wait, max(0.0, reconnect_at - now))
        return Step(Do.SLEEP, wait)

    def read_left(self) -> float:
        """Seconds the current ``READ_STREAM`` goes on: until the next poll (brought forward when the manifest
        goes by), the deadline, or the end of the drain."""
        now = self._clock()
        until = self._drain_until if self._drain_until is not None else self._poll_at
        return self._cut(until - now, now)

    def _ending(self, now: float) -> Step:
        if self.streaming:
            if self._drain_until is None:
                self._drain_until = now + DRAIN_S
            if now < self._drain_until:
                return Step(Do.READ_STREAM, self._drain_until - now)
        if not self.log_complete and not self._final_read:
            self._final_read = True
            return Step(Do.FETCH_LOG)
        return Step(Do.RETURN)

    def _cut(self, seconds: float, now: float) -> float:
        if self._deadline is not None:
            seconds = min(seconds, self._deadline - now)
        return max(0.0, seconds)

    # -- the status -----------------------------------------------------------------------------------------

    def polled(self, info: JobInfo) -> None:
        now = self._clock()
        if self._lost_since is not None:
            self.log.info(
                "The Ray cluster answers again after %.0f s; watching job %s", now - self._lost_since, self.job_id
            )
            self._lost_since, self._lost_polls = None, 0
        self.info = info
        if info.ended and not self.streaming and self._clean_close:
            self.log_complete = True  # Ray closed the stream normally: only once the job ended, all of it sent
        self._poll_at = now + self._next_poll_in(now)
        self._fetch_due = self.polling and self._live_log
        self._slot_due = self._waiting_for_slot

    def poll_failed(self, exc: Exception) -> None:
        """The status poll failed after the hook's own retries: contact is lost, unless the cluster answered
        (a rejected token, a job it does not have), which ends the watch."""
        if not is_contact_error(exc):
            self.error = exc
            return
        now = self._clock()
        if self._lost_since is None:
            self._lost_since, self._lost_logged = now, now
            self.log.warning(
                "Lost contact with the Ray cluster while watching job %s (%s); the job is not stopped. Waiting up "
                "to %.0f s for the cluster to answer ([ray_train] contact_window)",
                self.job_id,
                exc,
                self.contact_window,
            )
        lost = now - self._lost_since
        if lost >= self.contact_window:
            self.error = ContactLost(
                f"no answer from the Ray cluster for {lost:.0f} s, longer than the contact window "
                f"({self.contact_window:.0f} s, [ray_train] contact_window): {exc}"
            )
            return
        if now - self._lost_logged >= CONTACT_LOG_EVERY_S:
            self._lost_logged = now
            self.log.warning(
                "Still no contact with the Ray cluster after %.0f s (%s); waiting %.0f s more for job %s",
                lost,
                exc,
                self.contact_window - lost,
                self.job_id,
            )
        self._lost_polls += 1
        self._poll_at = now + min(CONTACT_POLL_MAX_S, 2.0 ** (self._lost_polls - 1), self.contact_window - lost)

    def _next_poll_in(self, now: float) -> float:
        if self._fast_until is not None and now < self._fast_until:
            return min(self.poll_interval, FINISHING_POLL_INTERVAL)
        return max(self.poll_interval, STREAM_POLL_INTERVAL) if self.streaming else self.poll_interval

    def _finishing(self) -> None:
        """The manifest went by: the job is ending. Poll fast for ``FINISHING_WINDOW_S`` seconds, starting now."""
        now = self._clock()
        if self._fast_until is None or self._fast_until < now:
            self._fast_until = now + FINISHING_WINDOW_S
        self._poll_at = min(self._poll_at, now + min(self.poll_interval, FINISHING_POLL_INTERVAL))

    # -- the stream -----------------------------------------------------------------------------------------

    def stream_opened(self) -> None:
        """A (new) stream opened: it sends the log from its start again; what was shown is skipped."""
        self.follower.begin()
        self.streaming = True
        self._ever_opened = True
        self._waiting_for_slot = False
        self._closed_at = None

    def stream_refused(self, *, no_slot: bool = False) -> None:
        """The stream did not open: every slot to this cluster is taken (``no_slot``: ask again with each poll),
        or it would not open (then the usual fallbacks apply)."""
        if no_slot:
            self._waiting_for_slot = True
            return
        self._waiting_for_slot = False
        self._closed_at = self._clock()
        self._reconnects += 1

    def feed(self, message: str | bytes) -> list[str]:
        """One message of the stream; returns the whole lines not shown yet."""
        had_manifest = self.follower.manifest_line is not None
        lines = self.follower.feed(message)
        if self.follower.manifest_line is not None and not had_manifest:
            self._finishing()  # the driver prints its manifest last
        return lines

    def stream_closed(self, code: int | None) -> None:
        """The stream closed: Ray does that once the job ended (``NORMAL_CLOSE``), a proxy or the network when
        they drop it."""
        self.streaming = False
        self._closed_at = self._clock()
        self._clean_close = code == NORMAL_CLOSE
        self._reconnects = 0 if self.follower.flowed else self._reconnects + 1
        if code == MESSAGE_TOO_BIG:
            self._given_up = True
            self.log.warning(
                "A log message of Ray job %s was over %d bytes: its log is read once, at the end",
                self.job_id,
                MAX_MESSAGE_BYTES,
            )
        if self.ended():
            self.log_complete = self._clean_close
            return
        # Ray closes the stream only once the job's status is terminal: one poll right away tells an end from a
        # drop (then the stream is opened again), and a proxy that cuts every stream buys no storm of polls.
        self._poll_at = min(self._poll_at, self._clock() + min(self.poll_interval, FINISHING_POLL_INTERVAL))

    def _reconnect_due(self, now: float) -> bool:
        if self._slot_due:
            self._slot_due = False
            return True
        reconnect_at = self._reconnect_at()
        return reconnect_at is not None and now >= reconnect_at

    def _reconnect_at(self) -> float | None:
        """When the stream that closed is opened again (None: it is not), backing off while streams carry
        nothing new."""
        if self._closed_at is None or not self._ever_opened or self._given_up or self.follower.manifest_line:
            return None
        return self._closed_at + min(RECONNECT_DELAY_S * 2.0 ** max(0, self._reconnects - 1), RECONNECT_MAX_S)

    @property
    def waiting_for_slot(self) -> bool:
        return self._waiting_for_slot

    @property
    def polling(self) -> bool:
        """No stream was ever had (a proxy without websockets): the log comes with the status polls."""
        return not self._ever_opened and not self._given_up and not self._waiting_for_slot

    # -- reading the whole log ------------------------------------------------------------------------------

    def log_read(self, reader: LogReader) -> None:
        """A ``GET /logs`` was read to its end."""
        ended = self.ended()
        self.log_complete = ended and reader.done
        if not ended and reader.bytes_read > LIVE_LOG_BYTES and self._live_log:
            self._live_log = False
            self.log.info(
                "The log of Ray job %s is over %d bytes and there is no log stream: the rest is read at the end",
                self.job_id,
                LIVE_LOG_BYTES,
            )

    def log_failed(self, exc: Exception) -> None:
        """A ``GET /logs`` failed: not the job failing. At the end, the result comes from ``manifest.json``."""
        self.log.warning("Could not read the log of Ray job %s (%s)", self.job_id, exc)

    def ended(self) -> bool:
        """Whether the job's last known status is terminal."""
        return self.info is not None and self.info.ended


def is_contact_error(exc: BaseException) -> bool:
    """Whether a failed call means the cluster could not be reached (or was too busy to answer): no answer,
    or a busy gateway. A rejected token or an answer that says no is the cluster speaking."""
    if isinstance(exc, RayTrainAuthError) or not isinstance(exc, RayTrainClusterError):
        return False
    status = getattr(exc, "http_status", None)
    return status is None or RetryPolicy().is_retryable(status)


class Stopping:
    """Waiting for a job that was asked to stop: poll its status every ``STOP_POLL_S`` until it ended or
    ``timeout`` seconds passed (Ray sends SIGKILL 3 s after SIGTERM and reports STOPPED a few seconds later)."""

    def __init__(self, timeout: float = STOP_TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = clock() + timeout

    def pause(self, status: str) -> float | None:
        """Seconds before the next status poll, or None: stop waiting (``status`` is terminal, or time is up)."""
        left = self._until - self._clock()
        if JobStatus.ended(status) or left <= 0:
            return None
        return min(STOP_POLL_S, left)


#: Log streams one process (a triggerer) holds open to one Ray cluster at most, unless ``[ray_train]
#: max_log_streams`` says otherwise. Ray's dashboard proxies each stream through aiohttp sessions with the default
#: pool of 100 connections (dashboard -> its job module -> the node's agent): with 100 streams open, every other
#: Jobs API call to that head (status, submit, stop) waits until one closes.
class StreamSlots:
    """How many log streams this process has open, per Ray cluster (its address). Triggers share one event loop,
    so plain counters do."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def take(self, cluster: str, limit: int) -> bool:
        if self._open.get(cluster, 0) >= limit:
            return False
        self._open[cluster] = self._open.get(cluster, 0) + 1
        return True

    def give(self, cluster: str) -> None:
        self._open[cluster] = max(0, self._open.get(cluster, 0) - 1)

    def count(self, cluster: str) -> int:
        return self._open.get(cluster, 0)


STREAM_SLOTS = StreamSlots()


def max_log_streams() -> int:
    from airflow_ray_train.config import ray_train_setting

    return int(ray_train_setting("max_log_streams"))

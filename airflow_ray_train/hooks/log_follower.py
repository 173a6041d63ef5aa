"""Following a Ray job's log: where a watcher is in it, the whole lines to show, the result manifest's line,
and whether the job is ending. One follower serves the worker (sync wait), the triggerer and the operator.

The log reaches a watcher two ways: the Jobs API's log stream (a websocket that sends the log from its start,
then each new piece) and, where there is no stream or to catch up at the end, the whole log fetched at once.
Both are fed here by their position in the log, so nothing is shown twice and nothing is skipped.
"""

from __future__ import annotations

import re
import time

from airflow_ray_train.runtime.spec import MANIFEST_MARKER

#: Seconds between status polls once the log shows the job is ending (manifest printed, stream closed).
FINISHING_POLL_INTERVAL = 0.2
#: While the log stream is open, the status poll is only a backstop (Ray closes the stream once the job ended):
#: at least this many seconds apart.
STREAM_POLL_INTERVAL = 30.0
#: The fast polls stop after this many seconds (a driver that hangs on its way out), back to ``poll_interval``.
FINISHING_WINDOW_S = 15.0
#: A stream that closed while the job still runs (a proxy or the network dropped it) is opened again after
#: this many seconds, doubling while opening fails, up to the poll interval.
RECONNECT_DELAY_S = 1.0
#: The largest stream message taken (Ray sends up to 10 lines or 20,000 characters; one line can be longer).
#: A bigger one closes the stream, and the log is then read only once, at the end: a shared triggerer must
#: not hold a job's runaway print in memory.
MAX_MESSAGE_BYTES = 16 * 2**20
#: Seconds between keepalive pings on a quiet stream, so idle proxies do not cut it.
HEARTBEAT_S = 20.0
#: Seconds a watcher closing its stream waits for Ray's answer to the close: none. Ray answers only after its next
#: read of the log file (1-2 s later) and nothing is read after a close, so the close frame goes out and the
#: connection is dropped at once; waiting would only delay the job's end reaching the task.
STREAM_CLOSE_TIMEOUT_S = 0.0
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LogFollower:
    """Where a watcher is in a job's log, and what it has seen.

    :param shown: characters of the log already shown (a new watcher starts where the last one stopped).

    ``offset`` is the end of the last whole line handed on: a watcher that restarts from it loses nothing and
    repeats nothing. A line is handed on once its newline arrives (``flush`` hands on a last line without
    one), ANSI colours dropped; the manifest's line is kept in ``manifest_line`` instead of shown. The job is
    *finishing* once that line went by (the driver prints it last) or the stream closed; then ``next_poll``
    is ``FINISHING_POLL_INTERVAL`` for ``FINISHING_WINDOW_S`` seconds.
    """

    def __init__(self, shown: int = 0) -> None:
        self.offset = shown
        self.manifest_line: str | None = None
        self.finishing_since: float | None = None
        self._pending = ""  # the start of a line whose newline has not arrived, from ``offset``
        self._stream_at = 0  # the log position the stream's next message starts at
        self._closed_at: float | None = None
        self._reconnects = 0
        self.ever_opened = False  # never: a proxy without websockets; the whole log is read with each poll
        self.given_up = False  # a message over MAX_MESSAGE_BYTES: the log is read once, at the end
        self.waiting_for_slot = False  # no stream slot free (``StreamSlots``): status polls only, log at the end

    def feed(self, message: str | bytes) -> list[str]:
        """One message of the log stream; returns the whole lines not shown yet."""
        chunk = message.decode(errors="replace") if isinstance(message, bytes) else message
        start, self._stream_at = self._stream_at, self._stream_at + len(chunk)
        return self._take(chunk[max(0, self.offset + len(self._pending) - start) :])

    def catch_up(self, logs: str) -> list[str]:
        """The whole log, fetched at once; returns the whole lines not shown yet."""
        self._pending = ""
        return self._take(logs[self.offset :])

    def flush(self) -> list[str]:
        """The log ended: hand on a last line that has no newline."""
        if not self._pending:
            return []
        shown = self._take("\n")
        self.offset -= 1  # the newline was ours, not the log's
        return shown

    def opened(self) -> None:
        """A (new) stream opened: it sends the log from its start again; what was shown is skipped."""
        self._stream_at = 0
        self._closed_at = None
        self._reconnects = 0
        self.ever_opened = True
        self.waiting_for_slot = False
        if self.manifest_line is None:
            self.finishing_since = None  # it had only closed: the job goes on

    def closed(self, *, too_big: bool = False) -> None:
        """The stream closed: Ray does that once the job ended, a proxy or the network when they drop it."""
        self._closed_at = time.monotonic()
        self._reconnects += 1
        self.given_up = self.given_up or too_big
        self._finishing()  # most often the job ended: poll its status fast until it says so

    def reconnect_due(self, poll_interval: float) -> bool:
        """Whether to open the stream again now: it closed a while ago, the job still runs, and the driver has
        not printed its manifest (after which Ray closing the stream is the job ending)."""
        if self._closed_at is None or not self.ever_opened or self.given_up or self.manifest_line is not None:
            return False
        delay = min(RECONNECT_DELAY_S * 2.0 ** (self._reconnects - 1), max(poll_interval, RECONNECT_DELAY_S))
        return time.monotonic() - self._closed_at >= delay

    def no_slot(self) -> None:
        """Every stream slot to this cluster is taken: watch the status, ask for a slot again with each poll."""
        self.waiting_for_slot = True

    def failed_to_open(self) -> None:
        """A stream (its slot taken) would not open: no longer waiting for a slot, the usual fallbacks apply."""
        self.waiting_for_slot = False
        self._closed_at = time.monotonic()
        self._reconnects += 1

    @property
    def polling(self) -> bool:
        """No stream was ever had (a proxy without websockets): read the whole log with each status poll."""
        return not self.ever_opened and not self.given_up and not self.waiting_for_slot

    @property
    def finishing(self) -> bool:
        return self.finishing_since is not None and time.monotonic() - self.finishing_since < FINISHING_WINDOW_S

    def next_poll(self, poll_interval: float, *, streaming: bool = False) -> float:
        """Seconds until the next status poll: fast once the job is finishing, rare while the stream is open."""
        if self.finishing:
            return min(poll_interval, FINISHING_POLL_INTERVAL)
        return max(poll_interval, STREAM_POLL_INTERVAL) if streaming else poll_interval

    def _finishing(self) -> None:
        if self.finishing_since is None:
            self.finishing_since = time.monotonic()

    def _take(self, text: str) -> list[str]:
        text = self._pending + text
        end = text.rfind("\n") + 1
        self._pending = text[end:]
        self.offset += end
        whole = text[:end]
        if "\x1b" in whole:  # one pass over the chunk, not one regex call per line
            whole = _ANSI_RE.sub("", whole)
        shown = []
        for line in whole.split("\n")[:-1]:
            if line.startswith(MANIFEST_MARKER):
                self.manifest_line = line
                self._finishing()
            else:
                shown.append(line.rstrip("\r"))
        return shown


def as_record(lines: list[str]) -> str:
    """Job log lines as the text of one log record, each line still marked ``[ray]``. One record per batch, not
    per line: every record goes through the task log's pipeline, and in a triggerer it also wakes Airflow's
    triggerer supervisor for a round of database queries."""
    return "[ray] " + "\n[ray] ".join(lines)

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
        length = len(self._pending)
        shown = self._take("\n")
        self.offset -= 1  # the newline was ours, not the log's
        return shown if length else []

    def closed(self) -> None:
        """The stream closed: Ray does that once the job ended (or the connection broke)."""
        self._finishing()

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

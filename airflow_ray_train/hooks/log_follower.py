"""Following a Ray job's log: where a watcher is in it, the whole lines to show, the result manifest's line, and
whether the job is ending. One follower serves the worker (sync wait), the triggerer and the operator.

The log reaches a watcher two ways: the Jobs API's log stream (a websocket that sends the log from its start,
then each new piece) and the whole log read over ``GET /logs`` (``LogReader``: in bounded pieces, never the whole
log in memory). Both start at the log's first character and are fed here by their position, so nothing is shown
twice and nothing is skipped. Memory is bounded whatever the log: a line is cut at ``MAX_LINE_CHARS`` (the
manifest's at ``MAX_MANIFEST_CHARS``), and what follows the cut is skipped up to the next newline.
"""

from __future__ import annotations

import codecs
import json
import re

from airflow_ray_train_runtime.spec import MANIFEST_MARKER

#: A log line is cut here before it reaches the task log (the rest, to its newline, is skipped).
MAX_LINE_CHARS = 16_384
#: The manifest's line may be longer (its best checkpoints, its metrics); beyond this it is not read from the
#: log, and the result comes from ``manifest.json`` in storage.
MAX_MANIFEST_CHARS = 4 * 2**20
#: The log is read from ``GET /logs`` in pieces of this many bytes.
READ_CHUNK_BYTES = 2**16
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def cut_line(line: str, limit: int = MAX_LINE_CHARS) -> str:
    """``line``, cut at ``limit`` characters with a note saying so."""
    return line if len(line) <= limit else f"{line[:limit]} [... line cut at {limit} characters]"


class LogFollower:
    """Where a watcher is in a job's log, and what it has seen.

    :param shown: characters of the log already shown (a new watcher starts where the last one stopped).

    ``offset`` is the end of the last whole line handed on: a watcher that restarts from it loses nothing and
    repeats nothing. A line is handed on once its newline arrives (``flush`` hands on a last line without one),
    ANSI colours dropped; the manifest's line is kept in ``manifest_line`` instead of shown. ``flowed`` says
    whether any text past what was shown before arrived since ``begin`` (a stream that replays only what was
    shown, then closes, carried nothing).
    """

    def __init__(self, shown: int = 0) -> None:
        self.offset = shown
        self.manifest_line: str | None = None
        self.flowed = False
        self._pending = ""  # the start of a line whose newline has not arrived, from ``offset``
        self._skipping = False  # a line over its limit was cut: drop what follows up to its newline
        self._at = 0  # the log position the next piece starts at

    def begin(self) -> None:
        """A new source of the log (a stream that opened, a ``GET /logs``) starts at the log's first character."""
        self._at = 0
        self.flowed = False

    def feed(self, piece: str | bytes) -> list[str]:
        """The next piece of the current source; returns the whole lines not shown yet."""
        text = piece.decode(errors="replace") if isinstance(piece, bytes) else piece
        start, self._at = self._at, self._at + len(text)
        skip = self.offset + len(self._pending) - start
        if skip >= len(text):
            return []
        self.flowed = True
        return self._take(text[max(0, skip) :])

    def catch_up(self, logs: str) -> list[str]:
        """The whole log, as one piece (small logs, tests); returns the whole lines not shown yet."""
        self.begin()
        return self.feed(logs)

    def flush(self) -> list[str]:
        """The log ended: hand on a last line that has no newline."""
        if not self._pending:
            return []
        line, self._pending = self._pending, ""
        self.offset += len(line)
        return self._lines(line)

    def _take(self, text: str) -> list[str]:
        if self._skipping:
            newline = text.find("\n")
            if newline < 0:
                self.offset += len(text)
                return []
            self.offset += newline + 1
            self._skipping = False
            text = text[newline + 1 :]
        end = text.rfind("\n") + 1
        shown: list[str] = []
        if end:
            whole, self._pending = self._pending + text[:end], ""
            self.offset += len(whole)
            shown = self._lines(whole[:-1])
        self._pending += text[end:]
        if len(self._pending) > self._limit(self._pending):  # a line with no newline yet, over its limit
            line, self._pending = self._pending, ""
            self.offset += len(line)
            self._skipping = True
            shown += self._lines(line)
        return shown

    @staticmethod
    def _limit(line: str) -> int:
        return MAX_MANIFEST_CHARS if line.startswith(MANIFEST_MARKER[: len(line)]) else MAX_LINE_CHARS

    def _lines(self, text: str) -> list[str]:
        if "\x1b" in text:  # one pass over the piece, not one regex call per line
            text = _ANSI_RE.sub("", text)
        shown = []
        for line in text.split("\n"):
            if line.startswith(MANIFEST_MARKER):
                self.manifest_line = line if len(line) <= MAX_MANIFEST_CHARS else None
            else:
                shown.append(cut_line(line.rstrip("\r")))
        return shown


class LogReader:
    """``GET /logs`` read in pieces: Ray answers ``{"logs": "<the whole log>"}``; this decodes the JSON string as
    its bytes arrive and feeds the follower, so a log of any size costs a few pieces of memory."""

    def __init__(self, follower: LogFollower) -> None:
        self.follower = follower
        self.bytes_read = 0
        self.done = False  # the closing quote of the log's string went by
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._head = ""  # the reply up to the log string's opening quote
        self._in_string = False
        self._carry = ""  # an escape split between two pieces
        follower.begin()

    def feed(self, data: bytes) -> list[str]:
        """The reply's next bytes; returns the whole lines not shown yet."""
        self.bytes_read += len(data)
        text = self._utf8.decode(data)
        if not self._in_string:
            self._head += text
            match = re.search(r'"logs"\s*:\s*"', self._head)
            if match is None:
                self._head = self._head[-64:]
                return []
            text, self._head, self._in_string = self._head[match.end() :], "", True
        if self.done:
            return []
        return self.follower.feed(self._unescape(self._carry + text))

    def _unescape(self, raw: str) -> str:
        end = _closing_quote(raw)
        if end is not None:
            raw, self.done = raw[:end], True
            self._carry = ""
        else:
            raw, self._carry = _split_escape(raw)
        return str(json.loads(f'"{raw}"'))


def _closing_quote(raw: str) -> int | None:
    """Where the JSON string's closing quote is in ``raw`` (a quote after an even run of backslashes)."""
    index = raw.find('"')
    while index >= 0:
        before = index
        while before > 0 and raw[before - 1] == "\\":
            before -= 1
        if (index - before) % 2 == 0:
            return index
        index = raw.find('"', index + 1)
    return None


def _split_escape(raw: str) -> tuple[str, str]:
    """``raw`` cut before an escape its piece ended inside (``\\``, ``\\u12``, a high surrogate's ``\\ud83d``
    whose low half comes next): the part to decode now and the part to keep for the next piece."""
    tail = raw[-12:]
    for start in range(len(tail)):
        candidate = tail[start:]
        if not candidate.startswith("\\"):
            continue
        before = tail[:start]
        if (len(before) - len(before.rstrip("\\"))) % 2:
            continue  # this backslash is itself escaped
        if _incomplete_escape(candidate):
            cut = len(raw) - len(candidate)
            return raw[:cut], raw[cut:]
    return raw, ""


def _incomplete_escape(escape: str) -> bool:
    if escape == "\\" or (escape.startswith("\\u") and len(escape) < 6):
        return True
    if escape.startswith("\\u") and len(escape) < 12:
        high = escape[2:6].lower()
        return high[:2] == "d8" or high[:2] in ("d9", "da", "db")
    return False


def as_record(lines: list[str]) -> str:
    """Job log lines as the text of one log record, each line still marked ``[ray]``. One record per batch, not
    per line: every record goes through the task log's pipeline, and in a triggerer it also wakes Airflow's
    triggerer supervisor for a round of database queries."""
    return "[ray] " + "\n[ray] ".join(lines)

"""Training progress for the task log: a line at each Ray Train report, read from the job log's report lines.

The driver echoes every ``ray.train.report`` as ``[airflow-ray-train] report N: key=value ...``. ``Progress``
reads those lines as they reach a watcher (the worker's wait, the trigger) and says how far the run is:

- with a total (``ProgressSpec``: which report metric counts, and how many units the run has):
  ``epoch 3/10 (30%) · 41 s/epoch · ETA 4 min 47 s``;
- without one: ``report 4 · 3 min 10 s elapsed``.

The report lines carry no time, so a report's time is when its line reached the watcher (1-3 s late on the
log stream, up to a poll interval late when the log is polled). Lines arrive in batches: only a batch's last
report is timed, at the batch's arrival, and a watcher's first batch holding several reports (it came late:
it attached to a running job, or a restarted triggerer reads the log again from its start) is a backlog
whose times are unknown, so it times nothing. The pace (time per unit) is that of the last
``RECENT_REPORTS`` timed reports of this job, never the run's average: a run resumed from a checkpoint (its
first report is, say, epoch 5) is paced by the units this job trained, and a worker group restarted from an
earlier checkpoint (the count goes back) starts its pace again. Nothing here blocks or does I/O.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeGuard

from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP
from airflow_ray_train_runtime.reports import REPORT_PREFIX
from airflow_ray_train_runtime.transformers import TRANSFORMERS_TRAIN_LOOP

#: The pace is measured over this many timed reports (so over one less interval between them).
RECENT_REPORTS = 4
#: ``TrainingArguments.num_train_epochs``' default, for a declarative Transformers run that does not set it.
TRANSFORMERS_DEFAULT_EPOCHS = 3.0
#: How the progress line is marked in the task log, beside the job's own ``[ray]`` lines.
PROGRESS_MARK = "[progress]"
# A report line, as the driver prints it, or forwarded by Ray from the controller ("(TrainController pid=7) ...").
_REPORT_RE = re.compile(r"(?:^|\) )" + re.escape(REPORT_PREFIX) + r" (\d+): ?(.*)$")
_EXAMPLE = '{"key": "epoch", "total": 10}'


@dataclass(frozen=True)
class ProgressSpec:
    """What counts a run's progress: the report metric ``key``, the ``total`` units the run trains, and the
    value ``first`` the metric has once the first unit is done (1 for a count of units done, 0 for a 0-based
    index such as Lightning's ``epoch``). A report's value ``v`` means ``v - first + 1`` units done."""

    key: str
    total: float
    first: float = 1

    @classmethod
    def from_argument(cls, value: Any) -> ProgressSpec | None:
        """The operator's ``progress`` argument, checked; raises ``RayTrainConfigError`` naming the field."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            _refuse("progress", f"is a {type(value).__name__}", f"pass a dict such as progress={_EXAMPLE}")
        unknown = sorted(set(value) - {"key", "total", "first"})
        if unknown:
            _refuse(f"progress.{unknown[0]}", "is not a known key", "use only 'key', 'total' and 'first'")
        key = value.get("key")
        if not isinstance(key, str) or not key or any(c.isspace() or c == "=" for c in key):
            _refuse(
                "progress.key",
                f"is {key!r}",
                f"name the report metric that counts the units, a name without spaces or '=', e.g. {_EXAMPLE}",
            )
        total = value.get("total")
        if not _is_number(total) or total <= 0:
            _refuse(
                "progress.total",
                f"is {total!r}",
                f"give the number of units the run trains, a positive number, e.g. {_EXAMPLE}",
            )
        first = value.get("first", 1)
        if not _is_number(first):
            _refuse(
                "progress.first",
                f"is {first!r}",
                "give the value the metric has once the first unit is done: 1 (the default) for a count of units "
                "done, 0 for a 0-based index such as `for epoch in range(epochs)`",
            )
        return cls(key=key, total=total, first=first)

    def to_json(self) -> dict[str, Any]:
        """The trigger's argument (plain JSON)."""
        return {"key": self.key, "total": self.total, "first": self.first}


def _refuse(field: str, problem: str, fix: str) -> NoReturn:
    raise RayTrainConfigError(f"Invalid {field}: {problem}. Fix: {fix}.", field=field)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def declared_progress(train_func: str, train_loop_config: Mapping[str, Any] | None) -> ProgressSpec | None:
    """What a declarative loop's config says its total is: Lightning's ``trainer_kwargs`` ``max_epochs`` (its
    reports' 0-based ``epoch``), else ``max_steps`` (``step``); Transformers' ``training_args`` ``max_steps``
    (``step``), else ``num_train_epochs`` (``epoch``). None for any other loop, or a total that is not a
    positive number (Lightning's -1: no limit)."""
    config = train_loop_config if isinstance(train_loop_config, Mapping) else {}
    if train_func == LIGHTNING_TRAIN_LOOP:
        trainer_kwargs = _mapping(config.get("trainer_kwargs"))
        for key, setting, first in (("epoch", "max_epochs", 0), ("step", "max_steps", 1)):
            total = trainer_kwargs.get(setting)
            if _is_number(total) and total > 0:
                return ProgressSpec(key=key, total=total, first=first)
    elif train_func == TRANSFORMERS_TRAIN_LOOP:
        training_args = _mapping(config.get("training_args"))
        max_steps = training_args.get("max_steps")
        if _is_number(max_steps) and max_steps > 0:
            return ProgressSpec(key="step", total=max_steps)
        epochs = training_args.get("num_train_epochs", TRANSFORMERS_DEFAULT_EPOCHS)
        if _is_number(epochs) and epochs > 0:
            return ProgressSpec(key="epoch", total=epochs)
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class Progress:
    """Follows one job's report lines and says how far its run is (see the module's docstring).

    :param spec: what counts the units; None: the report number and the time elapsed.
    :param clock: seconds, monotonic; the elapsed time counts from this object's creation (when the watch began).
    """

    def __init__(self, spec: ProgressSpec | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._started = clock()
        self._timed: deque[tuple[float, float]] = deque(maxlen=RECENT_REPORTS)  # (time, units done)
        self._done: float | None = None
        self._seen_reports = False

    @classmethod
    def from_argument(cls, value: Mapping[str, Any] | None, clock: Callable[[], float] = time.monotonic) -> Progress:
        """A ``Progress`` from ``ProgressSpec.to_json()``'s dict (the trigger's argument); None: no total."""
        return cls(ProgressSpec(**value) if value else None, clock)

    def update(self, lines: list[str]) -> str | None:
        """One batch of new job log lines: the progress line for its last report, or None when it has none."""
        reports = [match for line in lines if REPORT_PREFIX in line and (match := _REPORT_RE.search(line))]
        if not reports:
            return None
        now = self._clock()
        backlog = not self._seen_reports and len(reports) > 1
        self._seen_reports = True
        done, note = None, ""
        for match in reports:
            done = self._units_done(match.group(2))
            note = self._count(done) or note
        if done is not None and not backlog:
            self._timed.append((now, done))
        return self._line(int(reports[-1].group(1)), done, now, note)

    def _count(self, done: float | None) -> str:
        """Take in one report's units done; returns a note when the count went back."""
        if done is None:
            return ""
        before, self._done = self._done, done
        if before is not None and done < before:
            self._timed.clear()  # the worker group restarted from an earlier checkpoint: a new pace
            return f"restarted from a checkpoint after {self._unit_count(done - 1)}"
        return ""

    def _units_done(self, body: str) -> float | None:
        if self.spec is None:
            return None
        found = re.search(r"(?:^| )" + re.escape(self.spec.key) + r"=(\S+)", body)
        if found is None:
            return None
        try:
            value = float(found.group(1))
        except ValueError:
            return None
        done = value - self.spec.first + 1
        return done if math.isfinite(done) and done >= 0 else None

    def _unit_count(self, units: float) -> str:
        assert self.spec is not None
        return f"{self.spec.key} {_number(units)}"

    def _pace(self) -> float | None:
        """Seconds per unit over the recent timed reports, or None before two of them."""
        if len(self._timed) < 2:
            return None
        (t0, u0), (t1, u1) = self._timed[0], self._timed[-1]
        return (t1 - t0) / (u1 - u0) if u1 > u0 else None

    def _line(self, index: int, done: float | None, now: float, note: str) -> str:
        elapsed = f"{duration(now - self._started)} elapsed"
        spec = self.spec
        if spec is None:
            return f"{PROGRESS_MARK} report {index} · {elapsed}"
        if done is None:
            return f"{PROGRESS_MARK} report {index} (no number under {spec.key!r}) · {elapsed}"
        parts = [f"{spec.key} {_number(done)}/{_number(spec.total)} ({math.floor(100 * done / spec.total)}%)"]
        if note:
            parts.append(note)
        pace = self._pace()
        if pace is None:
            parts.append(elapsed)
        else:
            parts.append(f"{duration(pace)}/{spec.key}")
            if done < spec.total:
                parts.append(f"ETA {duration(pace * (spec.total - done))}")
        return f"{PROGRESS_MARK} " + " · ".join(parts)


def _number(value: float) -> str:
    """3.0 -> "3", 0.5333 -> "0.53"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def duration(seconds: float) -> str:
    """A span as a person reads it: ``0.42 s``, ``41 s``, ``4 min 47 s``, ``2 h 5 min``, ``3 d 4 h``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2g} s" if seconds >= 0.01 else "0 s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"

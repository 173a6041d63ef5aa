"""Every ``ray.train.report`` of a run, seen from Ray Train's controller and kept by a small actor beside the
driver (``Result.metrics`` keeps only the last checkpointed report), and the history as CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from typing import Any

from airflow_ray_train_runtime.storage import uri_for

#: Each ``ray.train.report`` is echoed in the job log behind this prefix, so a person can follow training.
REPORT_PREFIX = "[airflow-ray-train] report"


def json_safe(value: Any) -> Any:
    """Metrics as JSON: numpy/torch scalars become numbers, NaN/inf become None, anything else a string."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return json_safe(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def make_recorder() -> Any:
    """The actor that keeps the reports (``record``, ``get``) and the graceful stop's flag (see ``runtime.stop``);
    lives as long as the driver, named after its Ray job so the Train workers find it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from airflow_ray_train_runtime.stop import recorder_name

    @ray.remote(num_cpus=0)
    class ReportRecorder:
        """Holds every report; lives beside the driver so the controller's callback can hand them over."""

        def __init__(self) -> None:
            self.reports: list[dict[str, Any]] = []
            self.stop_asked = False
            self.taking_part = False
            self.groups: list[dict[str, Any]] = []

        def record(self, report: dict[str, Any]) -> int:
            self.reports.append(report)
            return len(self.reports)

        def get(self) -> list[dict[str, Any]]:
            return self.reports

        def group_event(self, event: dict[str, Any]) -> None:
            """A worker group started or ended (``runtime.usage``)."""
            self.groups.append(event)

        def group_events(self) -> list[dict[str, Any]]:
            return self.groups

        def take_part(self) -> None:
            """The training loop checks the stop flag (``stop_requested``): a stop waits for it."""
            self.taking_part = True

        def request_stop(self) -> bool:
            """Raise the stop flag; returns whether the loop takes part (else nothing will read it)."""
            self.stop_asked = True
            return self.taking_part

        def stop_requested(self) -> bool:
            return self.stop_asked

    # Pinned to the driver's node: anywhere else, losing that node would fail the run even where Ray Train
    # restarts its workers from the latest checkpoint.
    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    name = recorder_name(ray.get_runtime_context().get_job_id())
    return ReportRecorder.options(  # type: ignore[attr-defined]
        name=name, scheduling_strategy=driver_node
    ).remote()


def make_report_callback(recorder: Any) -> Any:
    """A ``ray.train.UserCallback`` that sends each report (rank 0's metrics, the checkpoint) to ``recorder``
    and echoes it in the job log."""
    import ray
    from ray.train import UserCallback

    class RecordReports(UserCallback):
        """Sees every ``ray.train.report`` (``Result.metrics`` keeps only the last checkpointed one)."""

        def __init__(self, handle: Any) -> None:
            self.recorder = handle

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            rank0 = json_safe(metrics[0]) if metrics else {}
            path = uri_for(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else None
            report = {"time": time.time(), "metrics": rank0, "checkpoint_path": path}
            index = ray.get(self.recorder.record.remote(report))
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in rank0.items())
            suffix = f" checkpoint={path}" if path else ""
            print(f"{REPORT_PREFIX} {index}: {shown}{suffix}", flush=True)

    return RecordReports(recorder)


def read_reports(recorder: Any, timeout: float, what: str = "get") -> list[dict[str, Any]]:
    """What ``recorder`` holds (its reports, or with ``what="group_events"`` its worker groups' events); empty
    (and said on stderr) when it cannot be read within ``timeout``."""
    import sys

    import ray

    try:
        return list(ray.get(getattr(recorder, what).remote(), timeout=timeout))
    except Exception as exc:  # noqa: BLE001 - losing history must not lose the manifest
        print(f"[airflow-ray-train] could not read the recorder's {what}: {exc!r}", file=sys.stderr)
        return []


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def history_csv(reports: list[dict[str, Any]]) -> str:
    """One row per report: its number, time, every metric any report had, and its checkpoint."""
    columns: list[str] = []
    for report in reports:
        columns.extend(k for k in report["metrics"] if k not in columns)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["report", "time", *columns, "checkpoint_path"])
    for index, report in enumerate(reports, 1):
        metrics = report["metrics"]
        row = [json.dumps(metrics[c]) if isinstance(metrics.get(c), (dict, list)) else metrics.get(c) for c in columns]
        writer.writerow([index, f"{report['time']:.3f}", *row, report.get("checkpoint_path") or ""])
    return out.getvalue()

"""What a training used, measured from what Ray Train says: every worker group it started (when, how many
workers, the resources each worker reserved, on which accelerators) and when each was shut down, seen by a
callback in Train's controller; and the Train run's time (``fit()``), measured by the driver.

From these the manifest's ``usage`` (``try_usage``): the Train run's seconds, the worker groups, CPU-seconds and
GPU-seconds (workers x each worker's reserved CPUs/GPUs x the time the group held them) and the accelerator
type. Summed over the jobs that trained one Train run (a retry resumes it; ``series_usage``). The Airflow side
adds the job's wall time from the Jobs API and the driver's share (see ``airflow_ray_train.usage``).

Standard library only at import; the callback imports Ray when it is made.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

#: Each worker group Ray Train starts is said in the job log behind this prefix.
WORKER_GROUP_PREFIX = "[airflow-ray-train] worker group"
#: The figures a try's usage carries that add up over a series of tries.
SUMMED = ("train_run_s", "worker_s", "cpu_s", "gpu_s")


def make_group_callback(recorder: Any) -> Any | None:
    """A Ray Train worker-group callback that hands each group's start (its workers' reserved resources) and
    end to ``recorder``; None where this Ray has no such callback (then usage names no worker groups)."""
    import ray

    try:
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    except ImportError:
        return None

    class RecordWorkerGroups(WorkerGroupCallback):
        """Runs in Train's controller: each worker group's start and end, as Ray Train started and ended it."""

        def __init__(self, handle: Any) -> None:
            self.recorder = handle
            self.sizes: list[int] = []

        def _send(self, event: dict[str, Any]) -> None:
            try:
                ray.get(self.recorder.group_event.remote(event), timeout=10)
            except Exception:  # noqa: BLE001 - usage must never fail the training
                pass

        def after_worker_group_start(self, worker_group: Any) -> None:
            workers = [
                {
                    "resources": {k: float(v) for k, v in (getattr(w, "resources", None) or {}).items()},
                    "node_id": getattr(w.metadata, "node_id", None),
                    "accelerators": {k: len(v) for k, v in (getattr(w.metadata, "accelerator_ids", {}) or {}).items()},
                }
                for w in worker_group.get_workers()
            ]
            self._send({"event": "start", "time": time.time(), "workers": workers})
            # Each (re)start in the job log as it happens: an elastic run's resizes, a fixed one's restarts.
            was = f" (was {self.sizes[-1]})" if self.sizes else ""
            self.sizes.append(len(workers))
            nodes = len({w["node_id"] for w in workers})
            print(f"{WORKER_GROUP_PREFIX} {len(self.sizes)}: {len(workers)} workers on {nodes} nodes{was}", flush=True)

        def before_worker_group_shutdown(self, worker_group: Any) -> None:
            self._send({"event": "end", "time": time.time()})

        def before_worker_group_abort(self, worker_group_context: Any) -> None:
            self._send({"event": "end", "time": time.time()})

    return RecordWorkerGroups(recorder)


def worker_groups(events: Iterable[Mapping[str, Any]], run_end: float) -> list[dict[str, Any]]:
    """Each worker group's ``start``, ``end``, ``workers`` and the resources each worker reserved
    (``per_worker``), from the callback's events; a group still open at ``run_end`` (the job was stopped, the
    controller died) ends then."""
    groups: list[dict[str, Any]] = []
    for event in events:
        if event.get("event") == "start":
            workers = list(event.get("workers") or [])
            per_worker: dict[str, float] = {}
            for worker in workers:
                for name, amount in (worker.get("resources") or {}).items():
                    per_worker[name] = max(per_worker.get(name, 0.0), float(amount))
            groups.append(
                {
                    "start": float(event["time"]),
                    "end": None,
                    "workers": len(workers),
                    "per_worker": per_worker,
                    "nodes": len({w.get("node_id") for w in workers}),
                    "resources": [dict(w.get("resources") or {}) for w in workers],
                }
            )
        elif event.get("event") == "end" and groups and groups[-1]["end"] is None:
            groups[-1]["end"] = float(event["time"])
    for group in groups:
        if group["end"] is None:
            group["end"] = max(run_end, group["start"])
    return groups


def accelerator_type(scaling_config: Mapping[str, Any], groups: list[dict[str, Any]]) -> str | None:
    """The accelerator type the workers reserved: ``scaling_config.accelerator_type``, else an
    ``accelerator_type:<name>`` resource a worker reserved; None on CPUs."""
    given = scaling_config.get("accelerator_type")
    if given:
        return str(given)
    for group in groups:
        for name in group["per_worker"]:
            if name.startswith("accelerator_type:"):
                return str(name.split(":", 1)[1])
    return None


def try_usage(
    events: Iterable[Mapping[str, Any]],
    run_start: float | None,
    run_end: float,
    scaling_config: Mapping[str, Any],
    submission_id: str,
) -> dict[str, Any]:
    """This job's usage: ``train_run_s`` (the Train run, ``fit()``), ``worker_groups`` (without their
    per-worker lists), ``worker_s``, ``cpu_s``, ``gpu_s`` (summed over each worker's own reservation x the
    time its group held it) and ``accelerator_type``."""
    groups = worker_groups(events, run_end)
    cpu_s = gpu_s = worker_s = 0.0
    for group in groups:
        held = group["end"] - group["start"]
        worker_s += held * group["workers"]
        cpu_s += held * sum(float(r.get("CPU", 0.0)) for r in group["resources"])
        gpu_s += held * sum(float(r.get("GPU", 0.0)) for r in group["resources"])
    return {
        "submission_id": submission_id,
        "train_run_s": round(max(0.0, run_end - run_start), 3) if run_start is not None else 0.0,
        "worker_groups": [
            {key: (round(v, 3) if isinstance(v, float) else v) for key, v in group.items() if key != "resources"}
            for group in groups
        ],
        "worker_s": round(worker_s, 3),
        "cpu_s": round(cpu_s, 3),
        "gpu_s": round(gpu_s, 3),
        "accelerator_type": accelerator_type(scaling_config, groups),
    }


def series_usage(tries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``SUMMED`` figures over the tries that trained one Train run, and their submission ids."""
    tries = list(tries)
    total = {key: round(sum(float(t.get(key) or 0.0) for t in tries), 3) for key in SUMMED}
    return {"jobs": [t.get("submission_id") for t in tries], **total}


__all__ = ["SUMMED", "make_group_callback", "series_usage", "try_usage", "worker_groups"]

"""The DAG the benchmark runs through ``dag.test()``: one ``RayTrainOperator`` task, subclassed only to record
when ``execute()`` started and returned and how many HTTP requests the hook sent (written to the JSON file
named by ``$BENCH_RECORD``). The operator itself is the provider's, unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, BaseOperator

from airflow_ray_train.operators.ray_train import RayTrainOperator

TRAIN_FUNC = "ray_train_examples.pytorch_classifier:train_func"
TRAIN_LOOP_CONFIG = {"train_size": 256, "epochs": 1, "batch_size": 64, "hidden": 16}
SCALING_CONFIG = {"num_workers": 2, "use_gpu": False}


class TimedRayTrainOperator(RayTrainOperator):
    def execute(self, context: Any) -> Any:
        started = time.time()
        hook = self.hook
        requests: Counter[str] = Counter()
        original = hook._request

        def counting(method: str, path: str, **kwargs: Any) -> Any:
            kind = "logs" if path.endswith("/logs") else "packages" if "/packages/" in path else "other"
            requests[f"{method} {kind}"] += 1
            return original(method, path, **kwargs)

        hook._request = counting  # type: ignore[method-assign]
        result = super().execute(context)
        returned = time.time()
        record = os.environ.get("BENCH_RECORD")
        if record:
            with open(record, "w") as handle:
                json.dump(
                    {
                        "execute_started": started,
                        "execute_returned": returned,
                        "job_id": result.get("job_id") if isinstance(result, dict) else None,
                        "requests": dict(requests),
                        "bytes_uploaded": hook.bytes_uploaded,
                    },
                    handle,
                )
        return result


with DAG(dag_id="bench_overhead_sync", schedule=None, catchup=False, tags=["bench"]) as bench_sync:
    TimedRayTrainOperator(
        task_id="train",
        train_func=TRAIN_FUNC,
        train_loop_config=TRAIN_LOOP_CONFIG,
        scaling_config=SCALING_CONFIG,
        deferrable=False,
    )


# (d): the same job, deferrable, for a real scheduler + triggerer (`airflow standalone`).
with DAG(dag_id="bench_overhead_deferrable", schedule=None, catchup=False, tags=["bench"]) as bench_deferrable:
    RayTrainOperator(
        task_id="train",
        train_func=TRAIN_FUNC,
        train_loop_config=TRAIN_LOOP_CONFIG,
        scaling_config=SCALING_CONFIG,
        deferrable=True,
    )


# Scale: N deferred jobs watched by one triggerer. The job only waits (printing a line every 5 s) until the
# benchmark creates its release file: the triggerer's cost is what is measured, not training.
def scale_job_prefix(run_id: str) -> str:
    """The submission ids of one scale run's Ray jobs start with this."""
    return f"bench-scale-{hashlib.sha256(run_id.encode()).hexdigest()[:10]}-"


#: How the scale jobs' progress is counted (their report lines carry ``epoch``).
SCALE_PROGRESS = {"key": "epoch", "total": 1000}


def scale_jobs(n: int) -> int:
    """How many Ray jobs the ``n`` tasks of ``bench_scale_<n>`` watch."""
    return min(n, _MAX_JOBS) if _MAX_JOBS > 0 else n


class WaitOnRayJobOperator(BaseOperator):
    """Submit a waiting job, then defer on the provider's ``RayTrainJobTrigger``, as
    ``RayTrainOperator(deferrable=True)`` does (same trigger, same ``[ray_train] poll_interval``).

    With ``jobs`` below the number of tasks, task ``index`` watches job ``index % jobs`` (the first of them to
    run submits it): more triggers than this machine can hold Ray jobs for (each job has a supervisor process).
    """

    def __init__(self, *, index: int, jobs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.jobs = jobs

    def execute(self, context: Any) -> None:
        from airflow.configuration import conf

        from airflow_ray_train.exceptions import RayTrainJobExistsError
        from airflow_ray_train.hooks.ray_train import RayTrainHook
        from airflow_ray_train.triggers.ray_train import RayTrainJobTrigger
        from airflow_ray_train_runtime.reports import REPORT_PREFIX
        from airflow_ray_train_runtime.spec import MANIFEST_MARKER

        release = os.path.join(os.environ["BENCH_RELEASE_DIR"], context["dag"].dag_id)
        # Released, it ends the way the runtime's driver does: its manifest line, then a second of shutting down.
        # Every 5 s it echoes a report line as the runtime's driver does at each ray.train.report, which the
        # trigger turns into a progress line (epoch k/1000 ...): the scale figure includes that cost.
        wait = (
            f"i=0; while [ ! -e {release} ]; do sleep 0.5; i=$((i+1)); "
            f'[ $((i % 10)) -eq 0 ] && echo "{REPORT_PREFIX} $((i / 10)): epoch=$((i / 10)) loss=0.5"; done; '
            f"echo {shlex.quote(MANIFEST_MARKER + '{}')}; sleep 1"
        )
        job_id = f"{scale_job_prefix(context['run_id'])}{self.index % self.jobs}"
        hook = RayTrainHook()
        with contextlib.suppress(RayTrainJobExistsError):  # another task of the run submitted it first
            hook.submit_job(entrypoint=f"sh -c {shlex.quote(wait)}", submission_id=job_id, metadata={"bench": "scale"})
        hook.close()
        poll_interval = conf.getfloat("ray_train", "poll_interval", fallback=2.0)
        try:
            trigger = RayTrainJobTrigger(job_id=job_id, poll_interval=poll_interval, progress=SCALE_PROGRESS)
        except TypeError:  # a provider from before progress lines (the "before" build)
            trigger = RayTrainJobTrigger(job_id=job_id, poll_interval=poll_interval)
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> str:
        if event.get("status") != "success":
            raise RuntimeError(f"scale job ended {event}")
        return str(event["job_id"])


# The sizes the scale section measures by default, and any others it is asked for (``BENCH_SCALE``); at most
# ``BENCH_SCALE_MAX_JOBS`` Ray jobs per run (0: one per task).
_SIZES = {1, 10, 50, 200} | {int(n) for n in os.environ.get("BENCH_SCALE", "").split(",") if n.strip()}
_MAX_JOBS = int(os.environ.get("BENCH_SCALE_MAX_JOBS", "0") or 0)
for _n in sorted(_SIZES):
    with DAG(
        dag_id=f"bench_scale_{_n}", schedule=None, catchup=False, tags=["bench"], max_active_tasks=_n
    ) as _scale_dag:
        _jobs = scale_jobs(_n)
        # A retry (a task start that timed out on a busy machine) watches the same job.
        WaitOnRayJobOperator.partial(task_id="wait", jobs=_jobs, retries=2, retry_delay=timedelta(seconds=2)).expand(
            index=list(range(_n))
        )

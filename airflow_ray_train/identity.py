"""Which Ray jobs and Train runs belong to a task try: the names a try gives them, and how a later try checks
that a job it finds is its own before it attaches to it, collects it or resumes its Train run.

dag_id, run_id and task_id are not unique beyond one Airflow database: two deployments that share a Ray
cluster (staging and prod, a laptop and CI) run the same DAGs with the same ``scheduled__<date>`` run ids,
and a DAG run can be deleted and made again with the same run id. A try is therefore identified by:

- the deployment: ``[ray_train] deployment_id``, or else a random id made on first use and kept in the
  metadata database as the Airflow Variable ``ray_train_deployment_id`` (every worker of one deployment
  reads the same one; a reset database makes a new one). Airflow's task API only overwrites a Variable, it
  cannot create one only if it is missing: first uses on one machine take turns under a file lock, and a
  first use reads the Variable back after ``DEPLOYMENT_ID_SETTLE_S``, by when a first use racing it on another
  machine has written too, so both go on with the last id written;
- the DAG run *instance*: its run id and a random token the first try keeps in the task's
  ``task_state_store`` (Airflow 3.3; the store belongs to the DAG run's row, so a run deleted and made again
  with the same run id, or a reset database, starts with an empty one). Where there is no store, the instant
  the DAG run started stands in (``dag.test()`` with a fixed logical date cannot be told apart then);
- the task instance: task id and map index;
- the *series* of tries: Airflow's first try number of the current clear (``max_tries - retries + 1``, what
  Airflow itself uses for reschedules). Retries continue a series; clearing the task starts a new one;
- the spec: a digest of what runs (``train_func``, the configs, the runtime_env with the content-addressed
  URIs of the shipped code, the driver's resources).

The submission id holds a digest of the first three and the try number; the Train run name a digest of all
of them but the try, so every try of one series with one spec shares a Train run (and resumes from its latest
checkpoint) while a new series or a changed spec starts a Train run of its own. Ray job metadata carries every
part, and a job is used only when all of them match.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

DEPLOYMENT_VARIABLE = "ray_train_deployment_id"
#: Seconds a first use waits before it reads the deployment id back: a first use on another machine that read
#: no id while this one wrote its own has written by then, and both read the same (last) one.
DEPLOYMENT_ID_SETTLE_S = 2.0
#: The lock first uses on one machine take turns under, in ``AIRFLOW_HOME``.
DEPLOYMENT_LOCK_FILE = ".ray_train_deployment_id.lock"
#: The ``task_state_store`` key of the DAG run instance's token.
RUN_INSTANCE_KEY = "airflow_ray_train.run_instance"
_SLUG_RE = re.compile(r"[^A-Za-z0-9_.-]+")
#: Each readable part of a name is cut to this many characters; the digest keeps cut names apart.
NAME_PART_LIMIT = 40
#: Ray job metadata keys (str -> str) that carry a try's identity.
META = {
    "deployment_id": "airflow_deployment_id",
    "dag_id": "airflow_dag_id",
    "run_id": "airflow_run_id",
    "run_instance": "airflow_run_instance",
    "task_id": "airflow_task_id",
    "map_index": "airflow_map_index",
    "first_try_number": "airflow_first_try_number",
}
TRY_KEY = "airflow_try_number"
SPEC_DIGEST_KEY = "airflow_ray_train_spec_digest"
RUN_NAME_KEY = "ray_train_run_name"
#: The series' own part of the Train run name (``TrainSpec.run_name``): a cleared task continues a stopped one.
SERIES_RUN_KEY = "ray_train_series_run"
#: Earlier series a cleared task looks back through for a stopped run to continue.
PREVIOUS_SERIES_LOOKUPS = 10


def _slug(text: str, limit: int = NAME_PART_LIMIT) -> str:
    return _SLUG_RE.sub("_", text).strip("_.-")[:limit].rstrip("_.-") or "x"


def _digest(*parts: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def spec_digest(document: Mapping[str, Any]) -> str:
    """A digest of what a job runs (a JSON document of the spec's parts): two jobs with the same digest ran
    the same code with the same configuration."""
    return _digest(document, length=16)


def deployment_id() -> str:
    """This Airflow deployment's id: ``[ray_train] deployment_id``, else the ``ray_train_deployment_id``
    Variable, made with a random value on first use."""
    from airflow.sdk import Variable

    from airflow_ray_train.config import ray_train_setting

    configured = str(ray_train_setting("deployment_id"))
    if configured:
        return configured
    found = Variable.get(DEPLOYMENT_VARIABLE, default=None)
    if found:
        return str(found)
    with _machine_lock():
        found = Variable.get(DEPLOYMENT_VARIABLE, default=None)
        if found:
            return str(found)
        made = uuid.uuid4().hex
        Variable.set(
            DEPLOYMENT_VARIABLE,
            made,
            description="airflow-ray-train: tells this deployment's Ray jobs from those of others sharing a cluster",
        )
        time.sleep(DEPLOYMENT_ID_SETTLE_S)
        return str(Variable.get(DEPLOYMENT_VARIABLE, default=made))


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Held while a first use makes the deployment id: the others on this machine wait, then read it. Where the
    lock file cannot be made (a read-only ``AIRFLOW_HOME``), the read-back after the settle still applies."""
    home = os.path.expanduser(os.environ.get("AIRFLOW_HOME") or "~/airflow")
    try:
        os.makedirs(home, exist_ok=True)
        lock = open(os.path.join(home, DEPLOYMENT_LOCK_FILE), "a")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_instance(context: Mapping[str, Any]) -> str:
    """This DAG run instance's token: kept in the task state store by the first try that asks, else the
    instant the DAG run started."""
    store = context.get("task_state_store")
    if store is not None:
        from airflow.sdk.execution_time.context import NEVER_EXPIRE

        token = store.get(RUN_INSTANCE_KEY)
        if not token:
            token = uuid.uuid4().hex
            # As long as the DAG run lives: a retry weeks later must still find its jobs.
            store.set(RUN_INSTANCE_KEY, token, retention=NEVER_EXPIRE)
        return str(token)
    dag_run = context.get("dag_run")
    started = getattr(dag_run, "start_date", None) if dag_run is not None else None
    return started.isoformat() if started is not None else ""


@dataclass(frozen=True)
class TryIdentity:
    """Who a task try is, in every Airflow deployment at once (see the module doc)."""

    deployment_id: str
    dag_id: str
    run_id: str
    run_instance: str
    task_id: str
    map_index: int
    try_number: int
    first_try_number: int

    @classmethod
    def from_context(cls, context: Mapping[str, Any], deployment: str, retries: int) -> TryIdentity:
        """The try running with ``context``; ``retries`` is the task's, for the first try of the series."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        try_number = int(ti.try_number)
        max_tries = getattr(ti, "max_tries", None)
        first = try_number if max_tries is None else int(max_tries) - int(retries or 0) + 1
        return cls(
            deployment_id=deployment,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            run_instance=run_instance(context),
            task_id=ti.task_id,
            map_index=-1 if map_index is None else int(map_index),
            try_number=try_number,
            # A try number below the series' first (max_tries changed under a running try) starts a series.
            first_try_number=max(1, min(first, try_number)),
        )

    @property
    def _readable(self) -> str:
        mapped = f".{self.map_index}" if self.map_index >= 0 else ""
        return f"{_slug(self.dag_id)}.{_slug(self.task_id)}{mapped}"

    @property
    def task_instance_key(self) -> str:
        """A digest of the deployment, the DAG run instance and the task instance."""
        return _digest(
            self.deployment_id, self.dag_id, self.run_id, self.run_instance, self.task_id, self.map_index, length=16
        )

    def submission_id(self, try_number: int | None = None) -> str:
        """The Ray job id of one try (this one by default): never reused, at most ~110 characters."""
        number = self.try_number if try_number is None else try_number
        return f"airflow-{self._readable}-{self.task_instance_key}-try{number}"

    def earlier_submission_ids(self) -> list[str]:
        """The job ids of this series' earlier tries, newest first."""
        return [self.submission_id(n) for n in range(self.try_number - 1, self.first_try_number - 1, -1)]

    def previous_series_ids(self) -> list[str]:
        """The job ids of the tries before this series (a cleared task's earlier ones), newest first, at most
        ``PREVIOUS_SERIES_LOOKUPS``."""
        newest = self.first_try_number - 1
        return [self.submission_id(n) for n in range(newest, max(0, newest - PREVIOUS_SERIES_LOOKUPS), -1)]

    def run_name(self, digest: str) -> str:
        """The Train run name every try of this series with spec ``digest`` shares (so a retry resumes)."""
        series = _digest(self.task_instance_key, self.first_try_number, digest, length=12)
        return f"{self._readable}.{_slug(self.run_id)}-{series}"

    def job_metadata(self, digest: str, run_name: str, series_run: str | None = None) -> dict[str, str]:
        """The Ray job metadata that lets a later try check that the job is its own."""
        values = {key: str(getattr(self, field)) for field, key in META.items()}
        series = {SERIES_RUN_KEY: series_run} if series_run else {}
        return {**values, TRY_KEY: str(self.try_number), SPEC_DIGEST_KEY: digest, RUN_NAME_KEY: run_name, **series}

    def not_ours(self, metadata: Mapping[str, Any] | None, *, any_series: bool = False) -> str | None:
        """Why a job with ``metadata`` was not started by this series of this task instance (a phrase), or
        None if it was; ``any_series``: by any series of this task instance."""
        metadata = metadata or {}
        for field, key in META.items():
            if any_series and field == "first_try_number":
                continue
            theirs, ours = metadata.get(key), str(getattr(self, field))
            if theirs != ours:
                shown = "missing" if theirs is None else repr(theirs)
                return f"its {key} is {shown}, this try's is {ours!r}"
        return None


def other_spec(metadata: Mapping[str, Any] | None, digest: str) -> str | None:
    """Why a job with ``metadata`` did not run spec ``digest`` (a phrase), or None if it did."""
    theirs = (metadata or {}).get(SPEC_DIGEST_KEY)
    if theirs == digest:
        return None
    return (
        f"it ran another spec (digest {theirs!r}, this try's is {digest!r}): train_func, its configs, "
        "the runtime_env or the shipped code changed"
    )

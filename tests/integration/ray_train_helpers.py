"""Helpers the deferrable and fault tests share: run a test DAG, read its XComs and task states, find the
Ray jobs a DAG submitted and the Train worker processes of a job, and a task context without a scheduler."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil

from airflow_ray_train.hooks.jobs_api import JobInfo
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train_runtime.spec import JobStatus

FAULT_DAGS = "ray_train_fault_dags"
_WORKER_PID_RE = re.compile(r"\(RayTrainWorker pid=(\d+)")


def get_dag(dag_id: str, module: str = FAULT_DAGS) -> Any:
    mod = importlib.import_module(module)
    return next(v for v in vars(mod).values() if getattr(v, "dag_id", None) == dag_id and hasattr(v, "test"))


def run_dag(
    dag_id: str, logical_date: datetime | None = None, module: str = FAULT_DAGS, conf: dict[str, Any] | None = None
) -> Any:
    """Run the DAG with dag.test(); a ``logical_date`` also fixes the run id (``manual__<logical_date>``)."""
    dag = get_dag(dag_id, module)
    if logical_date is None:
        return dag.test(run_conf=conf)
    return dag.test(logical_date=logical_date, run_after=logical_date, run_conf=conf)


def xcom(dag_run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
                XComModel.map_index == map_index,
            )
        ).first()
        assert row is not None, f"no XCom {key!r} for {task_id}"
        value = XComModel.deserialize_value(row)
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def all_xcoms(dag_run: Any) -> str:
    """Every XCom value of the DAG run, as one text (to look for what must never be in XCom)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
        ).all()
        return json.dumps([XComModel.deserialize_value(row) for row in rows], default=str)


def mlflow_history(mlflow: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    """A run's ``(step, value)`` history of one metric, by step, from the tracking server's REST API."""
    reply = mlflow.call("GET", "metrics/get-history", params={"run_id": run_id, "metric_key": key})
    return sorted((int(m["step"]), float(m["value"])) for m in reply.get("metrics") or [])


def mlflow_tags(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags") or []}


def mlflow_artifacts(mlflow: Any, run_id: str) -> set[str]:
    reply = mlflow.call("GET", "artifacts/list", params={"run_id": run_id})
    return {item["path"] for item in reply.get("files") or []}


def same_weights(left: dict[str, Any], right: dict[str, Any]) -> bool:
    """Whether two ``state_dict``s hold the same tensors under the same names."""
    import torch

    return left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left)


def task_instances(dag_run: Any) -> dict[str, Any]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: ti for ti in dag_run.get_task_instances(session=session)}


def states(dag_run: Any) -> dict[str, str]:
    return {task_id: str(ti.state) for task_id, ti in task_instances(dag_run).items()}


def failure(dag_id: str, task_id: str) -> dict[str, Any]:
    path = Path(os.environ["ART_TEST_RESULTS_DIR"]) / f"{dag_id}.{task_id}.failure.json"
    return json.loads(path.read_text())


def jobs_of(hook: RayTrainHook, dag_id: str, run_id: str | None = None) -> list[JobInfo]:
    """The Ray jobs this provider submitted for a DAG (and run), oldest first."""
    found = [
        job
        for job in hook.list_jobs()
        if job.metadata.get("airflow_dag_id") == dag_id
        and (run_id is None or job.metadata.get("airflow_run_id") == run_id)
    ]
    return sorted(found, key=lambda job: job.start_time or 0)


class ExecuteInThread:
    """``operator.execute`` for ``ti`` in a thread, as a task runner runs it, so a test can kill the task meanwhile;
    ``error`` is what execute raised."""

    def __init__(self, operator: Any, ti: FakeTaskInstance) -> None:
        self.error: BaseException | None = None
        self._operator, self._ti = operator, ti
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._operator.execute(self._ti.context())
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc

    def join(self, timeout: float) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "execute did not return"
        return self.error


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def train_worker_pids(hook: RayTrainHook, job_id: str) -> set[int]:
    """PIDs of the job's Ray Train worker actors that are alive now, from the job log's
    ``(RayTrainWorker pid=N)`` prefixes, each checked to be a RayTrainWorker process."""
    pids = {int(p) for p in _WORKER_PID_RE.findall(hook.get_job_logs(job_id))}
    return {pid for pid in pids if is_train_worker(pid)}


def is_train_worker(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "RayTrainWorker" in " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def assert_stopped_without_workers(hook: RayTrainHook, job_id: str, worker_pids: set[int]) -> None:
    """The job is STOPPED and none of the Train workers it had is alive any more."""
    assert worker_pids, "the test never saw a Train worker"
    status = wait_for(lambda: JobStatus.ended(s := hook.get_job_status(job_id)) and s, 60, what=f"job {job_id} to end")
    assert status == "STOPPED"
    wait_for(lambda: not any(is_train_worker(pid) for pid in worker_pids), 60, what="the Train workers to exit")


class FakeTaskInstance:
    """Just enough of a task instance for ``RayTrainOperator.execute`` outside a DAG run (whose deployment id
    comes from ``[ray_train] deployment_id``: the ``direct_deployment`` fixture sets it)."""

    def __init__(self, task_id: str, try_number: int = 1, run_id: str | None = None, max_tries: int = 0) -> None:
        self.dag_id = "test_ray_train_direct"
        self.run_id = run_id or f"manual__{uuid.uuid4().hex[:12]}"
        self.task_id = task_id
        self.map_index = -1
        self.try_number = try_number
        self.max_tries = max_tries
        self.xcoms: dict[str, Any] = {}

    def next_try(self) -> FakeTaskInstance:
        """The retry of this task instance: same run, next try number, its XComs cleared."""
        return FakeTaskInstance(self.task_id, self.try_number + 1, self.run_id, self.max_tries)

    def context(self, run_started_at: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> dict[str, Any]:
        return {"ti": self, "dag_run": SimpleNamespace(run_id=self.run_id, start_date=run_started_at)}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcoms.get(key)


def run_next_try(dag_id: str, run_id: str, task_id: str, *, clear: bool = False) -> Any:
    """Run the next try of one task instance of an existing DAG run, in this process, the way dag.test()
    runs a try (dag.test() itself always makes a new run, so a try number never goes past the retries).
    ``clear``: the user cleared the task first (Airflow's own clear, which starts a new series of tries)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance, clear_task_instances
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    task = get_dag(dag_id).task_dict[task_id]
    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
        ).one()
        if clear:
            clear_task_instances([ti], session)
            session.flush()
        # What the scheduler does for a retry: the next try number, then SCHEDULED.
        ti.try_number += 1
        ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        if "task" in inspect.signature(_run_task).parameters:
            _run_task(ti=ti, task=task, run_triggerer=True)
        else:  # Airflow 3.0 runs the task the instance carries
            ti.task = task
            _run_task(ti=ti, run_triggerer=True)
    with create_session() as session:
        dag_run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        session.expunge(dag_run)
    return dag_run


class FlakyProxy:
    """A TCP proxy in front of a Ray dashboard that a test can take down: ``down()`` closes its listening socket
    and every connection through it (new ones are refused, as when a dashboard restarts), ``up()`` listens again
    on the same port."""

    def __init__(self, target: str) -> None:
        from urllib.parse import urlsplit

        from airflow_ray_train.local_cluster import free_port

        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            for sock in [*self._open, *([listener] if listener else [])]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

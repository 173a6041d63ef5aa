"""``airflow standalone`` (api-server, scheduler, dag-processor, triggerer, LocalExecutor) on SQLite in a private
home, for the end-to-end tests and the benchmarks.

It is started in its own process group (it ignores SIGINT in the background, and its components are children
of it) with this venv's bin first on PATH (it starts each component as ``airflow`` from PATH), waited for until
its API answers, driven over the REST API with a token, and stopped by its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from airflow_ray_train.local_cluster import free_port

TERMINAL_RUN_STATES = ("success", "failed")


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    """Call ``check`` every ``interval`` s until it returns something truthy (returned); an HTTP error counts as
    not yet. Raises ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = check()
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class AirflowStandalone:
    """One ``airflow standalone`` in ``root`` (its home and SQLite DB), reading DAGs from ``dags_folder``.

    :param root: a folder of its own: ``home/``, ``airflow.db`` and ``standalone.log`` go there.
    :param dags_folder: the DAGs it parses.
    :param env: more environment for it (over this process's): connections, variables, options.
    :param pythonpath: folders put first on its ``PYTHONPATH`` (e.g. the provider at another commit).
    """

    def __init__(
        self, root: Path, *, dags_folder: Path, env: Mapping[str, str] | None = None, pythonpath: Iterable[str] = ()
    ) -> None:
        self.root = root
        self.dags_folder = dags_folder
        self.port = free_port()
        self.log_path = root / "standalone.log"
        self.env = self._environment(dict(env or {}), list(pythonpath))
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def _environment(self, extra: dict[str, str], pythonpath: list[str]) -> dict[str, str]:
        url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.root / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.root / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # The default 32 spawns 32 task workers (~2 GB).
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # The default 5 s fails task starts when the machine is busy (the execution API answers late).
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **extra,
        }
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*pythonpath, *filter(None, [env.get("PYTHONPATH")])])
        return env

    def start(self, timeout: float = 300) -> AirflowStandalone:
        """Start it and wait until its API answers, then take a REST token. On failure its log's tail is
        printed and it is stopped."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "airflow"), "standalone"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for("the api-server", lambda: self.client.get("/api/v2/monitor/health").status_code == 200, timeout)
            token = self.client.get("/auth/token").json()["access_token"]
            self.client.headers["Authorization"] = f"Bearer {token}"
        except BaseException:
            self.fail()
            raise
        return self

    def fail(self) -> None:
        """Print the tail of its log (why it failed), then stop it."""
        print(self.log_path.read_text(errors="replace")[-6000:], flush=True)
        self.stop()

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after 60 s."""
        self.client.close()
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def __enter__(self) -> AirflowStandalone:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            print(self.log_path.read_text(errors="replace")[-6000:], flush=True)
        self.stop()

    # -- the REST API ---------------------------------------------------------------------------------------

    def wait_parsed(self, dag_id: str, timeout: float = 240) -> None:
        wait_for(
            f"{dag_id} to be parsed", lambda: self.client.get(f"/api/v2/dags/{dag_id}").status_code == 200, timeout
        )

    def unpause(self, dag_id: str) -> None:
        self.client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str) -> str:
        """Start a manual run now; returns its run id."""
        response = self.client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        response.raise_for_status()
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        """The run's state once it ended (``success``/``failed``), else None."""
        state = self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
        return state if state in TERMINAL_RUN_STATES else None

    def wait_run(self, dag_id: str, run_id: str, timeout: float, interval: float = 1.0) -> str:
        """Wait until the run ended; returns its state."""
        return str(wait_for(f"run {run_id} of {dag_id}", lambda: self.run_state(dag_id, run_id), timeout, interval))

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.client.get(f"/api/v2/dags/{dag_id}/dagRuns").json()["dag_runs"])

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}").json())

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """All of a run's task instances, page by page: the REST API caps a page at ``[api]
        maximum_page_limit`` (100), whatever ``limit`` asks for."""
        found: list[dict[str, Any]] = []
        while True:
            response = self.client.get(
                f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100, "offset": len(found)}
            )
            response.raise_for_status()
            page = response.json()
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def count_task_instances(self, dag_id: str, run_id: str, states: tuple[str, ...] = ()) -> int:
        """How many of a run's task instances are in ``states`` (any state when empty), from one small page's
        ``total_entries``: cheap for the API server however many there are."""
        params: dict[str, Any] = {"limit": 1}
        if states:
            params["state"] = list(states)
        response = self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params=params)
        response.raise_for_status()
        return int(response.json()["total_entries"])

    def xcom_response(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int | None = None
    ) -> httpx.Response:
        params: dict[str, Any] = {"deserialize": True, "stringify": False}
        if map_index is not None:
            params["map_index"] = map_index
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.client.get(path, params=params)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        response = self.xcom_response(dag_id, run_id, task_id, key)
        response.raise_for_status()
        return response.json()["value"]

    # -- its processes --------------------------------------------------------------------------------------

    def component(self, name: str) -> Any:
        """The ``psutil.Process`` of one component it started (``airflow triggerer``, ``airflow scheduler``...)."""
        import psutil

        if self.process is None:
            raise RuntimeError("airflow standalone is not running")
        found = []
        for proc in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if name in cmd and "standalone" not in cmd:
                found.append(proc)
        # A component's own children (the triggerer's trigger runner) share its command line: take the topmost.
        pids = {proc.pid for proc in found}
        for proc in found:
            if proc.ppid() not in pids:
                return proc
        raise RuntimeError(f"no `airflow {name}` process under airflow standalone (pid {self.process.pid})")

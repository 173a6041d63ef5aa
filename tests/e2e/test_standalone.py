"""A real Airflow (`airflow standalone`: api-server, scheduler, dag-processor, triggerer, LocalExecutor) against
the session's real Ray head. Triggers the Asset example through the REST API: the producer's training task
is deferrable, so the real triggerer waits for the Ray job; its model Asset event schedules the deploy DAG.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_ray_train.local_cluster import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# The integration tests' helpers (finding a job's Train workers, waiting for them to exit).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

REPO = Path(__file__).resolve().parents[2]
PRODUCER, DEPLOY = "example_ray_train_asset_producer", "example_ray_train_asset_deploy"
KILLED = "test_ray_train_killed_while_deferred"
KILL_DAGS = ("ray_train_kill_dags.py", "ray_train_test_loops.py")


def _wait(what: str, check: Any, timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = check()
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def airflow_api(ray_conn, tmp_path_factory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("standalone")
    dags = root / "dags"
    dags.mkdir()
    for source in [*(REPO / "example_dags").iterdir(), *(REPO / "tests" / "dags" / name for name in KILL_DAGS)]:
        if source.name != "__pycache__":
            (dags / source.name).symlink_to(source)
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW_VAR_RAY_TRAIN_MODEL_REGISTRY": str(root / "registry"),
        # `airflow standalone` starts its components as `airflow ...` found on PATH: this venv's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = root / "standalone.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait("the api-server", lambda: client.get("/api/v2/monitor/health").status_code == 200, 240)
        token = client.get("/auth/token").json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        for dag_id in (PRODUCER, DEPLOY, KILLED):
            _wait(f"{dag_id} to be parsed", lambda d=dag_id: client.get(f"/api/v2/dags/{d}").status_code == 200, 180)
        yield client
    except BaseException:
        print(log_path.read_text(errors="replace")[-6000:])
        raise
    finally:
        client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _run_state(api: httpx.Client, dag_id: str, run_id: str) -> str | None:
    state = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
    return state if state in ("success", "failed") else None


def _xcom(api: httpx.Client, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    response = api.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
        params={"deserialize": True, "stringify": False},
    )
    response.raise_for_status()
    return response.json()["value"]


def test_scheduler_and_triggerer_train_on_ray_and_the_model_asset_triggers_deploy(airflow_api, ray_conn):
    api = airflow_api
    for dag_id in (PRODUCER, DEPLOY):
        api.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    run = api.post(f"/api/v2/dags/{PRODUCER}/dagRuns", json={"logical_date": None})
    run.raise_for_status()
    run_id = run.json()["dag_run_id"]

    def links() -> dict[str, str | None]:
        response = api.get(f"/api/v2/dags/{PRODUCER}/dagRuns/{run_id}/taskInstances/train/links")
        return dict(response.json().get("extra_links") or {}) if response.status_code == 200 else {}

    def train_state() -> str | None:
        return api.get(f"/api/v2/dags/{PRODUCER}/dagRuns/{run_id}/taskInstances/train").json().get("state")

    # While the real triggerer waits for the job, the task is deferred and its "Ray Job" link already works.
    _wait("the train task to defer", lambda: train_state() == "deferred", 300, interval=1)
    link_while_deferred = links().get("Ray Job")
    assert link_while_deferred and link_while_deferred.startswith(f"{ray_conn.dashboard_url}/#/jobs/")

    state = _wait("the producer run", lambda: _run_state(api, PRODUCER, run_id), 600, interval=3)
    assert state == "success"

    result = _xcom(api, PRODUCER, run_id, "train")
    assert result["status"] == "SUCCEEDED" and Path(result["checkpoint_path"], "model.pt").is_file()
    assert result["metrics"]["epoch"] == 1

    # The "Ray Job" extra link points at this job on the session's Ray dashboard.
    assert links()["Ray Job"] == link_while_deferred == f"{ray_conn.dashboard_url}/#/jobs/{result['job_id']}"

    # The Asset event scheduled the deploy DAG, which got the checkpoint and metrics from the event's extra.
    # Unpausing the daily producer also starts its scheduled run, and the scheduler may fold both model events
    # into one deploy run (which deploys the newest): match the deployed model to the producer run it came from.
    def a_deploy() -> dict[str, Any] | None:
        for deploy_run in api.get(f"/api/v2/dags/{DEPLOY}/dagRuns").json()["dag_runs"]:
            if deploy_run["state"] == "success":
                return dict(_xcom(api, DEPLOY, deploy_run["dag_run_id"], "deploy"))
        return None

    deployed = _wait("an asset-triggered deploy run", a_deploy, 300, interval=3)
    producer_results = [
        _xcom(api, PRODUCER, r["dag_run_id"], "train")
        for r in api.get(f"/api/v2/dags/{PRODUCER}/dagRuns").json()["dag_runs"]
        if r["state"] == "success"
    ]
    source = next(r for r in producer_results if r["checkpoint_path"] == deployed["from_checkpoint"])
    assert deployed["event_extra"]["metrics"] == source["metrics"]
    assert deployed["event_extra"]["submission_id"] == source["submission_id"]
    assert Path(deployed["deployed_path"], "model.pt").is_file()
    assert deployed["test_accuracy"] > 0.5


def test_marking_a_deferred_task_failed_stops_its_ray_job_and_train_workers(airflow_api, ray_conn):
    """The real triggerer on a user's action: Airflow 3.3 calls the trigger's on_kill; before, the trigger is
    only cancelled and asks Airflow whether its task is still deferred (``compat.task_still_deferred``)."""
    from ray_train_helpers import assert_stopped_without_workers, train_worker_pids, wait_for

    from airflow_ray_train.hooks.ray_train import RayTrainHook

    api = airflow_api
    api.patch(f"/api/v2/dags/{KILLED}", json={"is_paused": False}).raise_for_status()
    run = api.post(f"/api/v2/dags/{KILLED}/dagRuns", json={"logical_date": None})
    run.raise_for_status()
    run_id = run.json()["dag_run_id"]
    task = f"/api/v2/dags/{KILLED}/dagRuns/{run_id}/taskInstances/train"
    _wait("the train task to defer", lambda: api.get(task).json().get("state") == "deferred", 300, interval=1)
    job_id = _xcom(api, KILLED, run_id, "train", "job_id")
    hook = RayTrainHook()
    try:
        pids = wait_for(lambda: train_worker_pids(hook, job_id), 180, 1.0, "a Train worker")
        api.patch(task, json={"new_state": "failed"}).raise_for_status()
        assert_stopped_without_workers(hook, job_id, pids)
    finally:
        hook.close()

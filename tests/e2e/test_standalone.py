"""A real Airflow (`airflow standalone`: api-server, scheduler, dag-processor, triggerer, LocalExecutor) against
the session's real Ray head. Triggers the Asset example through the REST API: the producer's training task
is deferrable, so the real triggerer waits for the Ray job; its model Asset event schedules the deploy DAG.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_standalone import AirflowStandalone, wait_for

pytestmark = [pytest.mark.slow]
# The integration tests' helpers (finding a job's Train workers, waiting for them to exit).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

REPO = Path(__file__).resolve().parents[2]
PRODUCER, DEPLOY = "example_ray_train_asset_producer", "example_ray_train_asset_deploy"
KILLED = "test_ray_train_killed_while_deferred"
KILL_DAGS = ("ray_train_kill_dags.py", "ray_train_test_loops.py")


@pytest.fixture(scope="module")
def airflow(ray_conn, tmp_path_factory) -> Iterator[AirflowStandalone]:
    root = tmp_path_factory.mktemp("standalone")
    dags = root / "dags"
    dags.mkdir()
    for source in [*(REPO / "example_dags").iterdir(), *(REPO / "tests" / "dags" / name for name in KILL_DAGS)]:
        if source.name != "__pycache__":
            (dags / source.name).symlink_to(source)
    env = {"AIRFLOW_VAR_RAY_TRAIN_MODEL_REGISTRY": str(root / "registry")}
    with AirflowStandalone(root, dags_folder=dags, env=env) as standalone:
        for dag_id in (PRODUCER, DEPLOY, KILLED):
            standalone.wait_parsed(dag_id, timeout=180)
        yield standalone


def test_scheduler_and_triggerer_train_on_ray_and_the_model_asset_triggers_deploy(airflow, ray_conn):
    for dag_id in (PRODUCER, DEPLOY):
        airflow.unpause(dag_id)
    run_id = airflow.trigger(PRODUCER)

    def links() -> dict[str, str | None]:
        response = airflow.client.get(f"/api/v2/dags/{PRODUCER}/dagRuns/{run_id}/taskInstances/train/links")
        return dict(response.json().get("extra_links") or {}) if response.status_code == 200 else {}

    def deferred() -> bool:
        return airflow.task_instance(PRODUCER, run_id, "train").get("state") == "deferred"

    # While the real triggerer waits for the job, the task is deferred and its "Ray Job" link already works.
    wait_for("the train task to defer", deferred, 300, interval=1)
    link_while_deferred = links().get("Ray Job")
    assert link_while_deferred and link_while_deferred.startswith(f"{ray_conn.dashboard_url}/#/jobs/")

    assert airflow.wait_run(PRODUCER, run_id, 600, interval=3) == "success"

    result = airflow.xcom(PRODUCER, run_id, "train")
    assert result["status"] == "SUCCEEDED" and Path(result["checkpoint_path"], "model.pt").is_file()
    assert result["metrics"]["epoch"] == 1

    # The "Ray Job" extra link points at this job on the session's Ray dashboard.
    assert links()["Ray Job"] == link_while_deferred == f"{ray_conn.dashboard_url}/#/jobs/{result['job_id']}"

    # The Asset event scheduled the deploy DAG, which got the checkpoint and metrics from the event's extra.
    # Unpausing the daily producer also starts its scheduled run, and the scheduler may fold both model events
    # into one deploy run (which deploys the newest): match the deployed model to the producer run it came from.
    def a_deploy() -> dict[str, Any] | None:
        for deploy_run in airflow.runs(DEPLOY):
            if deploy_run["state"] == "success":
                return dict(airflow.xcom(DEPLOY, deploy_run["dag_run_id"], "deploy"))
        return None

    deployed = wait_for("an asset-triggered deploy run", a_deploy, 300, interval=3)
    producer_results = [
        airflow.xcom(PRODUCER, r["dag_run_id"], "train") for r in airflow.runs(PRODUCER) if r["state"] == "success"
    ]
    source = next(r for r in producer_results if r["checkpoint_path"] == deployed["from_checkpoint"])
    assert deployed["event_extra"]["metrics"] == source["metrics"]
    assert deployed["event_extra"]["submission_id"] == source["submission_id"]
    assert Path(deployed["deployed_path"], "model.pt").is_file()
    assert deployed["test_accuracy"] > 0.5


def test_marking_a_deferred_task_failed_stops_its_ray_job_and_train_workers(airflow, ray_conn):
    """The real triggerer on a user's action: Airflow 3.3 calls the trigger's on_kill; before, the trigger is
    only cancelled and asks Airflow whether its task is still deferred (``compat.task_still_deferred``)."""
    import ray_train_helpers

    from airflow_ray_train.hooks.ray_train import RayTrainHook

    airflow.unpause(KILLED)
    run_id = airflow.trigger(KILLED)

    def deferred() -> bool:
        return airflow.task_instance(KILLED, run_id, "train").get("state") == "deferred"

    wait_for("the train task to defer", deferred, 300, interval=1)
    job_id = airflow.xcom(KILLED, run_id, "train", "job_id")
    hook = RayTrainHook()
    try:
        pids = ray_train_helpers.wait_for(
            lambda: ray_train_helpers.train_worker_pids(hook, job_id), 180, 1.0, "a Train worker"
        )
        task = f"/api/v2/dags/{KILLED}/dagRuns/{run_id}/taskInstances/train"
        airflow.client.patch(task, json={"new_state": "failed"}).raise_for_status()
        ray_train_helpers.assert_stopped_without_workers(hook, job_id, pids)
    finally:
        hook.close()

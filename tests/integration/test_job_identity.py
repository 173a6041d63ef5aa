"""A task gets back only the model it trained itself, on a real Ray head: two Airflow deployments with the same
DAG and logical date, a deleted and re-created DAG run, a retry whose spec changed, a job id someone else holds,
Ray's reply to a taken id; and no job left running unwatched (a try that loses the job, a rejected token)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from packaging.version import Version
from ray_train_helpers import FakeTaskInstance, jobs_of, run_dag, states, wait_for, xcom

from airflow_ray_train.compat import AIRFLOW_VERSION, AirflowFailException, TaskDeferred
from airflow_ray_train.exceptions import RayTrainClusterError, RayTrainJobExistsError, RayTrainWatchError
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.identity import TryIdentity
from airflow_ray_train.operators.ray_train import RayTrainOperator

pytestmark = [pytest.mark.integration]
LOGICAL_DATE = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture
def hook(ray_conn):
    hook = RayTrainHook()
    yield hook
    hook.close()


def _counter(task_id: str, epochs: int, sleep_s: float = 0.2, **kwargs: object) -> RayTrainOperator:
    return RayTrainOperator(
        task_id=task_id,
        train_func="ray_train_test_loops:slow_counter",
        train_loop_config={"epochs": epochs, "sleep_s": sleep_s},
        scaling_config={"num_workers": 1},
        poll_interval=1.0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_taken_submission_id_is_recognised_from_rays_reply(hook):
    job_id = f"taken-{uuid.uuid4().hex[:8]}"
    hook.submit_job(entrypoint="echo first", submission_id=job_id, metadata={"who": "first"})
    with pytest.raises(RayTrainJobExistsError) as raised:
        hook.submit_job(entrypoint="echo second", submission_id=job_id, metadata={"who": "second"})
    assert raised.value.job.submission_id == job_id and raised.value.job.metadata == {"who": "first"}
    # Anything else Ray rejects is not mistaken for a taken id.
    with pytest.raises(RayTrainClusterError) as other:
        hook.submit_job(entrypoint="echo x", submission_id=f"bad-{uuid.uuid4().hex[:6]}", metadata={"n": 1})  # type: ignore[dict-item]
    assert not isinstance(other.value, RayTrainJobExistsError)


_DEPLOYMENT = textwrap.dedent(
    """
    import json, sys
    from datetime import datetime, timezone
    from airflow.utils import db
    db.resetdb()
    from ray_train_helpers import run_dag, xcom
    when = datetime(2026, 3, 2, tzinfo=timezone.utc)
    dag_run = run_dag("test_ray_train_identity", logical_date=when, conf={"epochs": int(sys.argv[1])})
    print("RESULT=" + json.dumps({"run_id": dag_run.run_id, **xcom(dag_run, "train")}))
    """
)


def _run_in_deployment(home: Path, epochs: int) -> dict:
    """The identity DAG in an Airflow deployment of its own (home and metadata DB), on the session's head."""
    home.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ["AIRFLOW__CORE__DAGS_FOLDER"]]),
    }
    env.pop("AIRFLOW__RAY_TRAIN__DEPLOYMENT_ID", None)
    done = subprocess.run(
        [sys.executable, "-c", _DEPLOYMENT, str(epochs)], env=env, capture_output=True, text=True, timeout=600
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT=")), None)
    assert line is not None, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(line.removeprefix("RESULT="))


def test_two_deployments_with_the_same_dag_and_logical_date_each_get_their_own_model(hook, tmp_path):
    staging = _run_in_deployment(tmp_path / "staging", epochs=5)
    prod = _run_in_deployment(tmp_path / "prod", epochs=3)
    assert staging["run_id"] == prod["run_id"]  # the same DAG run id in both deployments
    assert staging["job_id"] != prod["job_id"]
    # Each trained from scratch, its own number of epochs, and reports its own checkpoint.
    assert staging["metrics"] == {"epoch": 4, "start_epoch": 0, "total": sum(range(5))}
    assert prod["metrics"] == {"epoch": 2, "start_epoch": 0, "total": sum(range(3))}
    assert staging["checkpoint_path"] != prod["checkpoint_path"]
    metadata = {r["job_id"]: hook.get_job_info(r["job_id"]).metadata for r in (staging, prod)}
    deployments = {m["airflow_deployment_id"] for m in metadata.values()}
    assert len(deployments) == 2  # each deployment made its own id (the ray_train_deployment_id Variable)
    assert len({m["ray_train_run_name"] for m in metadata.values()}) == 2


@pytest.mark.skipif(
    AIRFLOW_VERSION < Version("3.3"),
    reason="needs the task state store (Airflow 3.3); before, the DAG run's start instant tells runs apart, and "
    "dag.test() with a fixed logical date repeats it (docs/versions.md)",
)
def test_a_deleted_and_recreated_dag_run_trains_anew(hook, airflow_db):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    first = run_dag("test_ray_train_identity", logical_date=LOGICAL_DATE, conf={"epochs": 3})
    assert states(first) == {"train": "success"}
    before = xcom(first, "train")
    with create_session() as session:
        session.execute(delete(DagRun).where(DagRun.dag_id == first.dag_id, DagRun.run_id == first.run_id))
    again = run_dag("test_ray_train_identity", logical_date=LOGICAL_DATE, conf={"epochs": 3})
    assert again.run_id == first.run_id
    after = xcom(again, "train")
    assert after["job_id"] != before["job_id"]  # not the old run's result collected
    assert after["metrics"] == {"epoch": 2, "start_epoch": 0, "total": sum(range(3))}  # nor resumed from it
    assert len(jobs_of(hook, "test_ray_train_identity", first.run_id)) >= 2


def test_a_retry_whose_spec_changed_neither_attaches_nor_resumes_and_stops_the_old_job(hook, direct_deployment):
    first_try = FakeTaskInstance("changes_spec", max_tries=1)
    with pytest.raises(TaskDeferred):  # try 1 submits, then its worker is gone (it deferred, the triggerer died)
        _counter("changes_spec", epochs=400, sleep_s=0.5, deferrable=True, retries=1).execute(first_try.context())
    old_job = first_try.xcoms["job_id"]
    wait_for(lambda: "report 1:" in hook.get_job_logs(old_job), 120, 0.5, "try 1 to report")

    retry = first_try.next_try()
    result = _counter("changes_spec", epochs=2, retries=1).execute(retry.context())  # the DAG was edited
    assert result["job_id"] != old_job and result["metrics"]["start_epoch"] == 0
    assert result["metrics"]["epoch"] == 1
    assert hook.get_job_status(old_job) == "STOPPED"  # superseded: nobody would ever watch it again
    assert (
        hook.get_job_info(result["job_id"]).metadata["ray_train_run_name"]
        != (hook.get_job_info(old_job).metadata["ray_train_run_name"])
    )


def test_a_job_someone_else_holds_under_this_tries_id_is_left_alone(hook, direct_deployment):
    ti = FakeTaskInstance("id_taken")
    identity = TryIdentity.from_context(ti.context(), direct_deployment, retries=0)
    taken = identity.submission_id()
    hook.submit_job(entrypoint="sleep 900", submission_id=taken, metadata={"airflow_deployment_id": "another-airflow"})
    result = _counter("id_taken", epochs=1).execute(ti.context())
    assert result["job_id"] == f"{taken}-2" and result["status"] == "SUCCEEDED"
    assert hook.get_job_status(taken) in ("PENDING", "RUNNING")  # not attached, not stopped: not this task's
    hook.stop_job_and_wait(taken)


class _LosesTheCluster(RayTrainOperator):
    """Watching fails once the job runs: the cluster became unreachable from this worker."""

    def _remember_job(self, hook, job_id, context):  # type: ignore[no-untyped-def]
        super()._remember_job(hook, job_id, context)

        def unreachable(*args, **kwargs):  # type: ignore[no-untyped-def]
            wait_for(lambda: "report 1:" in hook.get_job_logs(job_id), 120, 0.5, "a first report")
            raise RayTrainClusterError(f"cannot reach the Ray cluster at {hook.settings.address}")

        hook.wait_for_job = unreachable


def test_a_lost_job_is_left_to_the_next_try_which_attaches_and_stopped_on_the_last(hook, direct_deployment):
    def operator(retries: int) -> _LosesTheCluster:
        return _LosesTheCluster(
            task_id=f"loses_cluster_{retries}",
            train_func="ray_train_test_loops:slow_counter",
            train_loop_config={"epochs": 4, "sleep_s": 1.0},
            scaling_config={"num_workers": 1},
            poll_interval=1.0,
            retries=retries,
        )

    first_try = FakeTaskInstance("loses_cluster_1", max_tries=1)
    with pytest.raises(RayTrainWatchError, match="the next try attaches to it") as raised:
        operator(1).execute(first_try.context())
    assert not isinstance(raised.value, AirflowFailException)
    job_id = first_try.xcoms["job_id"]
    assert hook.get_job_status(job_id) == "RUNNING"
    retry = first_try.next_try()
    result = _counter("loses_cluster_1", epochs=4, sleep_s=1.0, retries=1).execute(retry.context())
    assert result["job_id"] == job_id and result["metrics"]["epoch"] == 3  # attached, trained once

    last_try = FakeTaskInstance("loses_cluster_0")
    with pytest.raises(RayTrainWatchError, match="because this was the task's last try"):
        operator(0).execute(last_try.context())
    assert hook.get_job_status(last_try.xcoms["job_id"]) == "STOPPED"


def test_a_token_rejected_while_watching_is_read_again_and_the_job_stopped_not_orphaned(
    hook, ray_conn, direct_deployment
):
    """The token is revoked while the task watches, and the right one is stored again a few seconds later (a
    rotation): the stop reads the connection again before each try, so it stops the job instead of leaving it to
    train on with nobody watching (before, the stop went out with the rejected token and the job ran on)."""
    connection = os.environ["AIRFLOW_CONN_RAY_TRAIN_DEFAULT"]

    class TokenRotated(RayTrainOperator):
        def _remember_job(self, hook, job_id, context):  # type: ignore[no-untyped-def]
            super()._remember_job(hook, job_id, context)
            wait_for(lambda: "slow_counter rank 0" in hook.get_job_logs(job_id), 120, 0.5, "the training to start")
            os.environ["AIRFLOW_CONN_RAY_TRAIN_DEFAULT"] = json.dumps({**json.loads(connection), "password": "revoked"})
            hook.reload_settings()
            first_stop = hook.stop_job_and_wait

            def stop_rejected_once(*args, **kwargs):  # type: ignore[no-untyped-def]
                try:
                    return first_stop(*args, **kwargs)
                finally:  # the rotated token is stored in Airflow while the first stop is being rejected
                    os.environ["AIRFLOW_CONN_RAY_TRAIN_DEFAULT"] = connection

            hook.stop_job_and_wait = stop_rejected_once

    ti = FakeTaskInstance("token_revoked")
    task = TokenRotated(
        task_id="token_revoked",
        train_func="ray_train_test_loops:slow_counter",
        train_loop_config={"epochs": 400, "sleep_s": 0.5},
        scaling_config={"num_workers": 1},
        retries=2,
    )
    try:
        with pytest.raises(RayTrainWatchError) as raised:
            task.execute(ti.context())
    finally:
        os.environ["AIRFLOW_CONN_RAY_TRAIN_DEFAULT"] = connection
    message = str(raised.value)
    assert not isinstance(raised.value, AirflowFailException)  # a retry (with the fixed token) may see it again
    assert "rejected the request" in message and ray_conn.token not in message
    assert "It has been stopped (STOPPED) because the cluster rejected the token" in message, message
    assert hook.get_job_status(ti.xcoms["job_id"]) == "STOPPED"  # not orphaned


def test_a_users_run_name_never_resumes_another_dag_runs_or_mapped_tasks_train_run(hook, direct_deployment):
    """A nightly DAG with ``run_config={"name": "clf"}``: each night, and each mapped instance, trains a Train run of
    its own, named after the user's name and the task instance's series."""

    def train(ti: FakeTaskInstance) -> dict:
        return _counter("named_run", epochs=2, run_config={"name": "clf"}).execute(ti.context())

    last_night = FakeTaskInstance("named_run")
    tonight = [FakeTaskInstance("named_run", run_id=f"scheduled__{uuid.uuid4().hex[:8]}") for _ in range(2)]
    tonight[1].run_id = tonight[0].run_id
    for index, ti in enumerate(tonight):
        ti.map_index = index
    results = [train(ti) for ti in (last_night, *tonight)]
    # Each trained from its first epoch: none resumed (or collected) another's finished run.
    assert [result["metrics"] for result in results] == [{"epoch": 1, "start_epoch": 0, "total": 1}] * 3
    assert all(Path(result["run_path"]).name.startswith("clf.") for result in results)  # the user's name, kept
    assert len({result["run_path"] for result in results}) == 3


def test_a_succeeded_job_whose_manifest_cannot_be_read_does_not_block_its_series(hook, direct_deployment, monkeypatch):
    """Try 1's job SUCCEEDED but its manifest can be read neither from its log (its line over the follower's
    limit here) nor from storage (deleted). Before, try 2 submitted under try 1's own id, which Ray refuses:
    every retry failed. Now try 2 submits under its own id; its job finds the finished training and hands on
    its result (the Train run's record), without training again."""
    from airflow_ray_train.hooks import log_follower

    ti = FakeTaskInstance("unreadable_manifest", max_tries=2)
    first = _counter("unreadable_manifest", epochs=2, retries=2).execute(ti.context())
    assert first["status"] == "SUCCEEDED"
    os.remove(first["manifest_path"])
    monkeypatch.setattr(log_follower, "MAX_MANIFEST_CHARS", 40)  # the log cannot give it either
    retry = ti.next_try()
    second = _counter("unreadable_manifest", epochs=2, retries=2).execute(retry.context())
    assert second["status"] == "SUCCEEDED" and second["job_id"] == first["job_id"].replace("-try1", "-try2")
    assert second["metrics"] == first["metrics"]  # the same training, handed on, not trained again
    log = hook.get_job_logs(second["job_id"])
    assert "not training it again" in log and "RayTrainWorker" not in log

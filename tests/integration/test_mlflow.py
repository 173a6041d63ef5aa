"""MLflow on the session's real tracking server, without training: the hook's REST calls, and the bad input that
fails before anything is submitted (an unreachable server, a model name MLflow refuses, a wrong password)."""

from __future__ import annotations

import json

import pytest
from ray_train_helpers import FakeTaskInstance

from airflow_ray_train.exceptions import (
    RayTrainConfigError,
    RayTrainMlflowAuthError,
    RayTrainMlflowError,
)
from airflow_ray_train.hooks.mlflow import MlflowHook
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.identity import TryIdentity
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.tracking import TRAIN_RUN_TAG, start_run
from airflow_ray_train_runtime.spec import TrainSpec

pytestmark = [pytest.mark.integration]

IDENTITY = TryIdentity("dep", "dag", "manual__1", "tok", "train", -1, try_number=1, first_try_number=1)
SPEC = TrainSpec(train_func="m:f", run_name="dag.train.manual__1-abc", submission_id="airflow-dag.train-x-try1")


def _start(hook: MlflowHook, **kwargs: object):
    options = {"experiment": "tests-start", "register_model": None, "required": True, "dashboard_url": "http://ray"}
    return start_run(hook, IDENTITY, SPEC, **{**options, **kwargs})


def test_a_try_makes_its_run_and_a_retry_of_the_same_series_sets_it_running_again(mlflow_conn):
    hook = MlflowHook()
    first = _start(hook)
    assert first.experiment_id == hook.experiment_id("tests-start")  # made once, then found
    run = hook.get_run(first.run_id)
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags[TRAIN_RUN_TAG] == SPEC.effective_run_name and tags["airflow.try_number"] == "1"
    assert first.run_url == f"{mlflow_conn.url}/#/experiments/{first.experiment_id}/runs/{first.run_id}"
    hook.update_run(first.run_id, "FAILED", end=True)  # what the runtime does when try 1's job fails

    retry = start_run(
        hook,
        TryIdentity(**{**IDENTITY.__dict__, "try_number": 2}),
        SPEC,
        experiment="tests-start",
        register_model=None,
        required=True,
        dashboard_url="http://ray",
    )
    assert retry.run_id == first.run_id
    again = hook.get_run(first.run_id)
    assert again["info"]["status"] == "RUNNING"
    assert {t["key"]: t["value"] for t in again["data"]["tags"]}["airflow.try_number"] == "2"


def test_the_server_s_refusals_come_back_with_mlflow_s_reason(mlflow_conn, monkeypatch):
    hook = MlflowHook()
    with pytest.raises(RayTrainConfigError, match=r"register_model 'team/digits'.*Names cannot contain '/' or ':'"):
        hook.create_registered_model("team/digits")
    hook.create_registered_model("digits")
    hook.create_registered_model("digits")  # there already: fine
    assert hook.version_by_alias("digits", "champion") is None
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps({"conn_type": "mlflow", "host": mlflow_conn.url, "login": "admin", "password": "wrong"}),
    )
    ok, message = MlflowHook().test_connection()
    assert not ok and "HTTP 401" in message and "login and password" in message
    with pytest.raises(RayTrainMlflowAuthError):
        MlflowHook().experiment_id("tests-start")


def test_an_unreachable_server_trains_untracked_only_when_told(ray_conn, direct_deployment, monkeypatch):
    down = MlflowHook(None, tracking_uri="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(RayTrainMlflowError, match=r"cannot reach the MLflow tracking server at http://127\.0\.0\.1:9"):
        _start(down)

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": "http://127.0.0.1:9"}))
    operator = RayTrainOperator(
        task_id="untracked_when_down",
        train_func="ray_train_test_loops:slow_counter",
        train_loop_config={"epochs": 1, "sleep_s": 0.1},
        scaling_config={"num_workers": 1},
        mlflow_conn_id="mlflow_default",
        register_model="digits",
        mlflow_required=False,
    )
    ti = FakeTaskInstance("untracked_when_down")
    result = operator.execute(ti.context())  # type: ignore[arg-type]
    # The training stands; what did not happen is said in XCom (and the task log), not only in a warning.
    assert result["status"] == "SUCCEEDED" and result["model_version"] is None and result["mlflow_run_id"] is None
    warning = result["mlflow_warning"]
    assert warning.startswith("Training untracked (mlflow_required=False): cannot reach the MLflow tracking server")
    assert "No version of 'digits' is registered" in warning and ti.xcoms["mlflow_warning"] == warning


def test_bad_mlflow_input_fails_before_anything_is_submitted(ray_conn, mlflow_conn, direct_deployment, monkeypatch):
    ray = RayTrainHook()
    before = {job.submission_id for job in ray.list_jobs()}

    def run(task_id: str, **kwargs: object) -> None:
        operator = RayTrainOperator(
            task_id=task_id,
            train_func="ray_train_test_loops:slow_counter",
            train_loop_config={"epochs": 1, "sleep_s": 0.1},
            scaling_config={"num_workers": 1},
            **kwargs,
        )
        operator.execute(FakeTaskInstance(task_id).context())  # type: ignore[arg-type]

    with pytest.raises(RayTrainConfigError, match=r"Names cannot contain '/' or ':'") as bad_name:
        run("bad_model_name", register_model="team/digits")
    assert bad_name.value.field == "register_model"

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": "http://127.0.0.1:9"}))
    with pytest.raises(RayTrainMlflowError, match=r"at http://127\.0\.0\.1:9 .*Fix: start the server") as down:
        run("server_down")
    assert "mlflow_required=False" in str(down.value)
    assert {job.submission_id for job in ray.list_jobs()} == before

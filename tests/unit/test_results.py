"""The Airflow side's small decisions, without a cluster: the XCom contract from a manifest (or none), the error
class a failed job gets, how runtime_envs merge, and the retry policy both hooks share."""

from __future__ import annotations

import dataclasses

import pytest

from airflow_ray_train.compat import AirflowFailException
from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError, RayTrainJobSetupError
from airflow_ray_train.hooks.jobs_api import Attempts, Reply, RetryPolicy, Step, ray_says
from airflow_ray_train.hooks.settings import ClusterSettings
from airflow_ray_train.results import ASSET_EXTRA_KEYS, job_failure, manifest_to_xcom, read_manifest
from airflow_ray_train.runtime_env import merge_runtime_env, with_py_modules
from airflow_ray_train_runtime.spec import MANIFEST_MARKER, CheckpointRecord, ResultManifest

MANIFEST = ResultManifest(
    status="FAILED",
    submission_id="job-1",
    run_name="run",
    run_path="/shared/run",
    manifest_path="/shared/run/airflow_ray_train/job-1/manifest.json",
    checkpoint_path="/shared/run/checkpoint_000003",
    best_checkpoints=[CheckpointRecord("/shared/run/checkpoint_000002", {"acc": 0.9})],
    metrics={"epoch": 3, "acc": 0.8},
    error={"type": "ValueError", "message": "bad batch", "traceback": "..."},
)


def test_the_xcom_contract_holds_every_key_with_or_without_a_manifest():
    full = manifest_to_xcom(MANIFEST, job_id="job-1", submission_id="job-1", dashboard_url="u", status="FAILED")
    empty = manifest_to_xcom(None, job_id="job-1", submission_id="job-1", dashboard_url="u", status="FAILED")
    assert list(full) == list(empty)
    assert full["best_checkpoints"] == [{"path": "/shared/run/checkpoint_000002", "metrics": {"acc": 0.9}}]
    assert full["error"]["type"] == "ValueError" and full["metrics"] == {"epoch": 3, "acc": 0.8}
    assert empty["checkpoint_path"] is None and empty["metrics"] == {} and empty["error"] is None
    assert full["mlflow_run_id"] is None and empty["model_version"] is None  # untracked
    tracked = dataclasses.replace(MANIFEST, mlflow_run_id="ab12", mlflow_run_url="http://m/#/r/ab12", model_version="3")
    xcom = manifest_to_xcom(tracked, job_id="job-1", submission_id="job-1", dashboard_url="u", status="SUCCEEDED")
    assert (xcom["mlflow_run_id"], xcom["mlflow_run_url"], xcom["model_version"]) == ("ab12", "http://m/#/r/ab12", "3")
    assert set(ASSET_EXTRA_KEYS) >= {"mlflow_run_id", "mlflow_run_url", "model_version"} and set(
        ASSET_EXTRA_KEYS
    ) <= set(xcom)


def test_the_manifest_is_read_from_its_log_line_and_a_bad_one_says_why():
    assert read_manifest(MANIFEST_MARKER + MANIFEST.to_json()) == (MANIFEST, None)
    assert read_manifest(None) == (None, None)
    manifest, why = read_manifest(MANIFEST_MARKER + '{"status": "DONE"}')
    assert manifest is None and why is not None and "submission_id is missing" in why


@pytest.mark.parametrize(
    ("info", "manifest", "error_class", "says"),
    [
        ({"status": "FAILED"}, MANIFEST, "RayTrainJobError", "Training error: ValueError: bad batch"),
        (
            {"status": "FAILED", "error_type": "RUNTIME_ENV_SETUP_FAILURE", "message": "x\nOSError: no such pkg"},
            None,
            "RayTrainJobSetupError",
            "Ray says: OSError: no such pkg",
        ),
        (
            {"status": "FAILED"},
            ResultManifest(
                **{**MANIFEST.to_dict(), "error": {"type": "TrainFuncImportError", "message": "m", "traceback": ""}}
            ),
            "RayTrainJobSetupError",
            "TrainFuncImportError",
        ),
        ({"status": "SUCCEEDED"}, None, "RayTrainJobError", "printed no readable manifest"),
        ({"status": "STOPPED"}, MANIFEST, "RayTrainJobError", "Latest checkpoint (kept; a retry resumes from it)"),
    ],
)
def test_a_failed_job_gets_the_error_class_that_decides_retries(info, manifest, error_class, says):
    error = job_failure("job-1", info, manifest, ["epoch 2", "Traceback ..."], "http://ray/#/jobs/job-1")
    assert type(error).__name__ == error_class and says in str(error)
    assert isinstance(error, AirflowFailException) == isinstance(error, RayTrainJobSetupError)
    assert "Last lines of the job log:\nepoch 2" in str(error) and "Dashboard: http://ray/#/jobs/job-1" in str(error)


def test_a_tasks_env_vars_add_to_the_connections_and_win_a_clash():
    default = {"env_vars": {"HF_HOME": "/cache", "MODE": "prod"}, "pip": ["a"]}
    task = {"env_vars": {"MODE": "test", "SEED": "1"}, "pip": ["b"]}
    assert merge_runtime_env(default, task) == {
        "env_vars": {"HF_HOME": "/cache", "MODE": "test", "SEED": "1"},
        "pip": ["b"],
    }
    assert merge_runtime_env(default, None) == default


def test_shipped_code_comes_first_in_py_modules_and_local_paths_are_refused():
    env = with_py_modules({"py_modules": ["s3://b/extra.zip"]}, ["gcs://_ray_pkg_a.zip"])
    assert env["py_modules"] == ["gcs://_ray_pkg_a.zip", "s3://b/extra.zip"]
    with pytest.raises(Exception, match="holds local paths"):
        with_py_modules({"py_modules": ["/home/me/code"]}, [])


def _attempts(max_retries: int = 2) -> Attempts:
    return Attempts(RetryPolicy(max_retries=max_retries, backoff=0.5), ClusterSettings("http://ray:8265"), "c", "/p")


def test_one_retry_policy_busy_and_unreachable_are_retried_with_backoff_then_given_up():
    attempts = _attempts()
    assert attempts.answered(Reply(503, "busy"), (200,)) is Step.RETRY and attempts.delay == 0.5
    assert attempts.failed(ConnectionError("refused")) is Step.RETRY and attempts.delay == 1.0
    assert attempts.failed(ConnectionError("refused")) is Step.GIVE_UP
    assert isinstance(attempts.error, RayTrainClusterError) and "after 3 attempts" in str(attempts.error)
    assert _attempts(0).answered(Reply(503, "busy"), (200,)) is Step.RETURN  # the caller sees the 503
    assert _attempts().answered(Reply(404, ""), (200,)) is Step.RETURN  # not retryable: the caller decides


def test_a_rejected_token_reads_the_connection_once_then_fails_without_retries():
    attempts = _attempts()
    assert attempts.answered(Reply(403, "Forbidden"), (200,)) is Step.RELOAD
    assert attempts.answered(Reply(401, "Unauthorized"), (200,)) is Step.GIVE_UP
    assert isinstance(attempts.error, RayTrainAuthError) and "ray get-auth-token" in str(attempts.error)


def test_rays_tracebacks_are_cut_to_their_last_exception_line():
    traceback = (
        "Traceback (most recent call last):\n" + '  File "x.py", line 1\n' * 200 + "ValueError: Job with id x exists"
    )
    assert ray_says(traceback) == "ValueError: Job with id x exists"
    assert ray_says("x" * 5000).startswith("...") and len(ray_says("x" * 5000)) == 1503


@pytest.mark.parametrize(
    ("log_line", "says"),
    [
        (
            "ModuleNotFoundError: No module named 'airflow_ray_train_runtime'",
            "Fix: install 'airflow-ray-train-runtime==",
        ),
        (
            "[airflow-ray-train] Invalid TrainSpec: runtime_version is '0.1.0' (the provider's), and the cluster's "
            "airflow-ray-train-runtime is '0.2.0'",
            "refused this provider's spec",
        ),
    ],
    ids=["not installed", "another major.minor"],
)
def test_a_job_the_clusters_runtime_could_not_run_fails_without_retries_saying_why(log_line, says):
    error = job_failure("job-1", {"status": "FAILED"}, None, [log_line], "http://ray/#/jobs/job-1")
    assert isinstance(error, RayTrainJobSetupError) and says in str(error)
    # Any other failure without a manifest is retried.
    other = job_failure("job-1", {"status": "FAILED"}, None, ["RuntimeError: boom"], "http://ray/#/jobs/job-1")
    assert not isinstance(other, RayTrainJobSetupError)

"""The driver gets its manifest out first: printed before storage is touched (a storage that fails loses
nothing), and a SIGTERM (Ray stopping the job) stops the fit but never the manifest."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal

import pytest

from airflow_ray_train.exceptions import RayTrainClusterError
from airflow_ray_train.hooks.ray_train import AsyncRayTrainHook, RayTrainHook
from airflow_ray_train_runtime.spec import ResultManifest, TrainSpec, manifest_from_log
from airflow_ray_train_runtime.trainer import (
    MANIFEST_DIR,
    TRAINED_FILE,
    JobStopped,
    RunPaths,
    StopSignal,
    TrainedRun,
    publish,
)


def _manifest(paths: RunPaths) -> ResultManifest:
    return ResultManifest(
        status="STOPPED",
        submission_id="job-1",
        run_name=paths.run_name,
        run_path=paths.run_path,
        manifest_path=paths.storage.join(paths.file("manifest.json")),
        checkpoint_path="/shared/run/checkpoint_000002",
        error={"type": "JobStopped", "message": "stopped", "traceback": ""},
    )


def test_the_manifest_is_printed_even_when_its_folder_cannot_be_made(capsys):
    spec = TrainSpec(
        train_func="m:f", run_name="run", submission_id="job-1", run_config={"storage_path": "/dev/null/x"}
    )
    paths = RunPaths.of(spec, "/unused")
    manifest = _manifest(paths)
    publish(manifest, paths)
    out = capsys.readouterr()
    assert manifest_from_log(out.out) == manifest
    assert "could not write the manifest" in out.err


def test_the_manifest_is_written_next_to_the_run(tmp_path, capsys):
    spec = TrainSpec(
        train_func="m:f", run_name="run", submission_id="job-1", run_config={"storage_path": str(tmp_path)}
    )
    paths = RunPaths.of(spec, "/unused")
    publish(_manifest(paths), paths)
    written = tmp_path / "run" / "airflow_ray_train" / "job-1" / "manifest.json"
    assert ResultManifest.from_json(written.read_text()) == manifest_from_log(capsys.readouterr().out)


def test_sigterm_stops_the_fit_but_not_what_comes_after():
    with StopSignal() as stop:
        with pytest.raises(JobStopped):
            os.kill(os.getpid(), signal.SIGTERM)
        stop.raising = False
        os.kill(os.getpid(), signal.SIGTERM)  # after the fit: only noted
        assert stop.requested


def test_only_the_task_process_starts_the_embedded_head(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_RAY_TRAIN_LOCAL_DIR", str(tmp_path / "embedded"))
    monkeypatch.delenv("AIRFLOW_CONN_RAY_TRAIN_DEFAULT", raising=False)
    ok, message = RayTrainHook().test_connection()  # what the API server runs
    assert not ok and "no embedded local Ray head is running" in message and "ray_train_default" in message
    with pytest.raises(RayTrainClusterError, match="no embedded local Ray head is running"):
        asyncio.run(AsyncRayTrainHook().get_settings())  # what the triggerer runs
    assert not (tmp_path / "embedded" / "cluster.json").exists()


def test_the_stop_handler_survives_ray_init_taking_sigterm():
    """``ray.init()`` installs a SIGTERM handler of its own (``sys.exit``); the driver takes it back."""
    with StopSignal() as stop:
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # what ray.init() does, in effect
        stop.take_back()
        with pytest.raises(JobStopped):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested


def test_a_failed_workers_own_exception_is_the_error_also_where_ray_wraps_it():
    """Ray 2.52's WorkerGroupError holds each worker's exception wrapped (UserExceptionWithTraceback: the
    exception and its traceback as text); Ray 2.60's holds the exception itself. The manifest names the user's."""
    from airflow_ray_train_runtime.trainer import _error_dict

    class UserExceptionWithTraceback(Exception):  # Ray 2.52's shape
        def __init__(self, exc: BaseException, traceback_str: str) -> None:
            self._base_exc, self._traceback_str = exc, traceback_str

        def __str__(self) -> str:
            return self._traceback_str

    class WorkerGroupError(Exception):
        def __init__(self, failures: dict[int, BaseException]) -> None:
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    user = RuntimeError("the loss is NaN at step 3")
    wrapped = WorkerGroupError({0: UserExceptionWithTraceback(user, "Traceback ...\nRuntimeError: the loss is NaN")})
    plain = WorkerGroupError({0: user})
    for error in (_error_dict(wrapped), _error_dict(plain)):
        assert error["type"] == "RuntimeError"
        assert error["message"] == "WorkerGroupError: the loss is NaN at step 3"
    assert _error_dict(wrapped)["traceback"].startswith("Traceback ...")


def test_a_finished_training_is_recorded_for_later_jobs_and_an_unreadable_record_means_training_again(tmp_path, capsys):
    spec = TrainSpec(
        train_func="m:f", run_name="run", submission_id="job-1", run_config={"storage_path": str(tmp_path)}
    )
    paths = RunPaths.of(spec, "/unused")
    assert TrainedRun.read(paths) is None
    manifest = dataclasses.replace(_manifest(paths), status="SUCCEEDED", error=None, metrics={"loss": 0.5})
    reports = [{"metrics": {"loss": 0.5, "epoch": 0}, "time": 1.0, "checkpoint_path": manifest.checkpoint_path}]
    TrainedRun(manifest, reports, first_step=3).write(paths)
    assert TrainedRun.read(paths) == TrainedRun(manifest, reports, first_step=3)

    (tmp_path / "run" / MANIFEST_DIR / TRAINED_FILE).write_text('{"manifest": {"status": "SUCC')
    assert TrainedRun.read(paths) is None
    assert "could not read the finished training's record" in capsys.readouterr().err

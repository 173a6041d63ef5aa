"""The operator's checks that need no cluster: the resource fit, runtime_env, the deferrable default, the
bounded startup retries the driver adds, and what execute_complete makes of the trigger's events."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from airflow_ray_train.compat import AirflowFailException
from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainConfigError, RayTrainWatchError
from airflow_ray_train.hooks import ray_train as ray_train_hook
from airflow_ray_train.hooks.resources import cluster_shortfall, worker_resources
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.runtime_env import check_runtime_env
from airflow_ray_train_runtime.trainer import DEFAULT_CONTROLLER_FAILURE_LIMIT, failure_config_kwargs

CPU_NODE = {"node_id": "a", "resources": {"CPU": 4.0, "memory": 8e9}}
GPU_NODE = {"node_id": "b", "resources": {"CPU": 8.0, "GPU": 2.0, "memory": 16e9}}


@pytest.mark.parametrize(
    ("scaling_config", "expected"),
    [
        ({}, {"CPU": 1.0}),
        ({"use_gpu": True}, {"GPU": 1.0}),
        ({"resources_per_worker": {"CPU": 2, "GPU": 0}}, {"CPU": 2.0}),
        ({"resources_per_worker": {"CPU": 2}, "use_gpu": True}, {"CPU": 2.0, "GPU": 1.0}),
        ({"accelerator_type": "A100", "use_gpu": True}, {"GPU": 1.0, "accelerator_type:A100": 0.001}),
    ],
)
def test_worker_resources_follow_ray_scaling_config(scaling_config, expected):
    assert worker_resources(scaling_config) == expected


def test_a_job_that_fits_passes_and_one_that_never_can_is_named():
    assert cluster_shortfall([CPU_NODE, GPU_NODE], {"num_workers": 2, "use_gpu": True}) is None
    assert cluster_shortfall([CPU_NODE, GPU_NODE], {"num_workers": 12}) is None
    too_many = cluster_shortfall([CPU_NODE, GPU_NODE], {"num_workers": 3, "use_gpu": True})
    assert too_many and "3 workers x {'GPU': 1}" in too_many and "never hold more than 2" in too_many
    no_gpu = cluster_shortfall([CPU_NODE], {"num_workers": 1, "use_gpu": True})
    assert no_gpu and "1 worker x {'GPU': 1}" in no_gpu and "use_gpu=False" in no_gpu
    packed = cluster_shortfall([CPU_NODE, CPU_NODE], {"num_workers": 6, "placement_strategy": "STRICT_PACK"})
    assert packed and "STRICT_PACK" in packed
    assert cluster_shortfall([CPU_NODE, CPU_NODE], {"num_workers": 6}) is None
    driver = cluster_shortfall([CPU_NODE], {"num_workers": 1}, {"GPU": 1.0})
    assert driver and "entrypoint_num_cpus/_gpus" in driver


@pytest.mark.parametrize(
    ("runtime_env", "field", "fix"),
    [
        ("pip install x", "runtime_env", "pass a dict"),
        ({"pipp": ["x"]}, "runtime_env.pipp", "did you mean 'pip'?"),
        ({"env_var": {"A": "1"}}, "runtime_env.env_var", "did you mean 'env_vars'?"),
        ({"env_vars": {"EPOCHS": 3}}, "runtime_env.env_vars['EPOCHS']", "{'EPOCHS': '3'}"),
        ({"env_vars": ["A=1"]}, "runtime_env.env_vars", "dict of strings"),
        ({"pip": [object()]}, "runtime_env['pip'][0]", "plain numbers, strings"),
    ],
)
def test_bad_runtime_env_names_the_field_and_the_fix(runtime_env, field, fix):
    with pytest.raises(RayTrainConfigError) as raised:
        check_runtime_env(runtime_env)
    assert raised.value.field == field and fix in str(raised.value)


def test_good_runtime_env_and_plugins_pass():
    check_runtime_env(None)
    check_runtime_env({"pip": ["scikit-learn"], "env_vars": {"A": "1"}, "my_plugin": {"x": 1}})


def test_startup_retries_are_bounded_unless_the_user_set_them():
    assert failure_config_kwargs(None) == {"controller_failure_limit": DEFAULT_CONTROLLER_FAILURE_LIMIT}
    assert failure_config_kwargs({"max_failures": 2}) == {
        "max_failures": 2,
        "controller_failure_limit": DEFAULT_CONTROLLER_FAILURE_LIMIT,
    }
    assert failure_config_kwargs({"controller_failure_limit": -1}) == {"controller_failure_limit": -1}


def test_deferrable_defaults_to_the_operators_default_deferrable_option():
    assert RayTrainOperator(task_id="t", train_func="m:f").deferrable is False
    code = (
        "from airflow_ray_train.operators.ray_train import RayTrainOperator as O; "
        "assert O(task_id='t', train_func='m:f').deferrable is True"
    )
    env = {**os.environ, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


class _TI:
    task_id = "t"

    def __init__(self, try_number: int, max_tries: int) -> None:
        self.try_number, self.max_tries = try_number, max_tries


@pytest.mark.parametrize(
    ("error_type", "retries", "try_number", "stop_works", "stopped", "says"),
    [
        ("ConnectError", 2, 1, True, False, "the next try attaches to it"),
        ("ConnectError", 2, 3, True, True, "stopped (STOPPED) because this was the task's last try"),
        ("ConnectError", 0, 1, True, True, "stopped (STOPPED) because this was the task's last try"),
        ("RayTrainAuthError", 2, 1, True, True, "stopped (STOPPED) because the cluster rejected the token"),
        ("RayTrainAuthError", 2, 1, False, True, "Stopping it failed too (HTTP 403). Ray job j1 may still be running"),
    ],
)
def test_a_job_that_cannot_be_watched_is_left_to_the_next_try_or_stopped(
    monkeypatch, error_type, retries, try_number, stop_works, stopped, says
):
    operator = RayTrainOperator(task_id="t", train_func="m:f", retries=retries)
    monkeypatch.setattr(type(operator.hook), "dashboard_url", lambda self, job_id: f"http://ray/#/jobs/{job_id}")
    stops: list[str] = []

    def stop(self: object, job_id: str) -> str:
        stops.append(job_id)
        if not stop_works:
            raise RayTrainAuthError("HTTP 403")
        return "STOPPED"

    monkeypatch.setattr(type(operator.hook), "stop_job_and_wait", stop)
    # A rejected token: the connection is read again before each of the stop's tries.
    reloads: list[int] = []
    monkeypatch.setattr(type(operator.hook), "reload_settings", lambda self: reloads.append(1))
    monkeypatch.setattr(type(operator.hook), "settings", SimpleNamespace(address="http://ray:8265"))
    monkeypatch.setattr(ray_train_hook, "REJECTED_STOP_PAUSE_S", 0.0)
    event = {"status": "error", "job_id": "j1", "message": "boom", "error_type": error_type, "log_offset": 0}
    with pytest.raises(RayTrainWatchError) as raised:
        operator.execute_complete({"ti": _TI(try_number, max_tries=retries)}, event)  # type: ignore[arg-type]
    assert not isinstance(raised.value, AirflowFailException)  # a retry may see the job again
    assert "Lost track of Ray job j1" in str(raised.value) and says in str(raised.value)
    tries = ray_train_hook.REJECTED_STOP_TRIES if error_type == "RayTrainAuthError" and not stop_works else 1
    assert stops == (["j1"] * tries if stopped else [])
    assert len(reloads) == (tries if error_type == "RayTrainAuthError" else 0)
    if not stop_works:  # what runs on, and how to stop it
        assert "ray job stop j1 --address http://ray:8265" in str(raised.value)


def test_airflows_deferral_timeout_stops_the_job_before_failing_the_try(monkeypatch):
    from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason
    from airflow.sdk.exceptions import TaskDeferralTimeout

    operator = RayTrainOperator(task_id="t", train_func="m:f")
    stopped: list[str] = []
    monkeypatch.setattr(type(operator.hook), "stop_job_and_wait", lambda self, job_id: stopped.append(job_id))

    class TI:
        task_id = "t"

        def xcom_pull(self, task_ids: str, key: str) -> str:
            return "job-7" if key == "job_id" else ""

    kwargs = {"error": TriggerFailureReason.TRIGGER_TIMEOUT}
    with pytest.raises(TaskDeferralTimeout):
        operator.resume_execution(TRIGGER_FAIL_REPR, kwargs, {"ti": TI()})  # type: ignore[arg-type]
    assert stopped == ["job-7"]


def test_a_runtime_env_failure_is_summed_up_by_its_last_exception_line():
    from airflow_ray_train.hooks.jobs_api import last_exception_line

    message = (
        "runtime_env setup failed: Failed to set up runtime environment.\n[Node 10.0.0.1] Traceback (most recent "
        'call last):\n  File "p.py", line 9, in create\n    raise IOError(\nOSError: Failed to download gcs://x.zip'
    )
    assert last_exception_line(message) == "OSError: Failed to download gcs://x.zip"
    assert last_exception_line("Job failed") is None


class _XComTI(_TI):
    dag_id = "d"

    def __init__(self, max_tries: int = 2) -> None:
        super().__init__(try_number=1, max_tries=max_tries)
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: object = None, key: str = "return_value", **_: object) -> object:
        return self.xcoms.get(key)


def _stub_operator(tmp_path: object, **kwargs: object) -> RayTrainOperator:
    """An operator on the stub cluster whose runs keep their files in ``tmp_path``."""
    return RayTrainOperator(
        task_id="t",
        train_func="m:f",
        ship_code=False,
        ray_conn_id="ray_stub",
        run_config={"storage_path": str(tmp_path)},
        **kwargs,  # type: ignore[arg-type]
    )


def _succeeded_manifest(tmp_path: object, run: str, metrics: dict[str, object]) -> str:
    """The manifest JSON of job j1 of Train run ``run`` in storage ``tmp_path``, SUCCEEDED at checkpoint 2."""
    from airflow_ray_train.stored_manifest import manifest_file
    from airflow_ray_train_runtime.spec import ResultManifest

    return ResultManifest(
        status="SUCCEEDED",
        submission_id="j1",
        run_name=run,
        run_path=f"{tmp_path}/{run}",
        manifest_path=f"{tmp_path}/{manifest_file(run, 'j1')}",
        checkpoint_path=f"{tmp_path}/{run}/checkpoint_000002",
        metrics=metrics,
    ).to_json()


def test_a_job_the_cluster_no_longer_has_is_collected_from_its_manifest_in_storage(stub_ray, tmp_path):
    """A head restarted without fault tolerance forgets its jobs (HTTP 404); a job that ended before it did left
    its manifest.json in storage: that is its result, not a retry that trains again."""
    from airflow_ray_train.stored_manifest import manifest_file
    from airflow_ray_train_runtime.storage import Storage

    run = "clf.airflow-d.t"
    Storage(str(tmp_path)).write_text(
        manifest_file(run, "j1"),
        _succeeded_manifest(tmp_path, run, {"epoch": 2}),
    )
    operator = _stub_operator(tmp_path, retries=2)
    event = {"status": "error", "job_id": "j1", "message": "HTTP 404", "error_type": "X", "http_status": 404}
    ti = _XComTI()
    result = operator.execute_complete({"ti": ti}, event, run_name=run)  # type: ignore[arg-type]
    assert result["status"] == "SUCCEEDED" and result["metrics"] == {"epoch": 2}
    assert (
        result["checkpoint_path"].endswith("checkpoint_000002")
        and ti.xcoms["checkpoint_path"] == result["checkpoint_path"]
    )
    # No manifest in storage: the try ends (retryable: a retry resumes the run), it does not make one up.
    with pytest.raises(RayTrainWatchError):
        operator.execute_complete({"ti": _XComTI()}, {**event, "job_id": "j2"}, run_name=run)  # type: ignore[arg-type]


def test_a_cluster_too_small_fails_a_first_try_at_once_and_is_waited_for_on_a_retry(stub_ray, monkeypatch):
    """One node with 1 CPU for 2 workers: on a first try that is bad input (no retry); on a retry the cluster held
    the job before (a head restarted, its worker node not back yet): it is asked again, then the try ends
    retryably."""
    from airflow_ray_train.exceptions import RayTrainClusterError, RayTrainConfigError
    from airflow_ray_train.operators import ray_train as operator_module
    from airflow_ray_train_runtime.spec import TrainSpec

    one_cpu = {"data": {"result": {"result": [{"node_id": "n1", "state": "ALIVE", "resources_total": {"CPU": 1.0}}]}}}
    stub_ray.respond = lambda method, path: (200, one_cpu) if path.startswith("/api/v0/nodes") else (404, {})
    monkeypatch.setattr(operator_module, "RESOURCE_WAIT_S", 0.2)
    operator = RayTrainOperator(task_id="t", train_func="m:f", ray_conn_id="ray_stub")
    spec = TrainSpec(train_func="m:f", run_name="r", submission_id="s", scaling_config={"num_workers": 2})
    with pytest.raises(RayTrainConfigError, match="can never start"):
        operator._check_cluster_resources(operator.hook, spec)
    with pytest.raises(RayTrainClusterError, match="cannot hold this job now") as raised:
        operator._check_cluster_resources(operator.hook, spec, retry=True)
    assert not isinstance(raised.value, AirflowFailException)
    assert sum(path.startswith("/api/v0/nodes") for path in stub_ray.paths()) >= 3  # asked again while it waited


def test_a_declarative_config_is_checked_before_submitting():
    from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP, LightningConfig

    good = LightningConfig(module="pkg.mod:Module", trainer_kwargs={"max_epochs": 8}).train_loop_config()
    RayTrainOperator(task_id="ok", train_func=LIGHTNING_TRAIN_LOOP, train_loop_config=good).build_spec({})  # type: ignore[arg-type]
    # In the DAG file the value is still a template: it is checked once the task has rendered it.
    LightningConfig(module="pkg.mod:Module", trainer_kwargs={"max_epochs": "{{ params.max_epochs }}"})
    # A templated max_epochs rendered as text: pl.Trainer would fail every worker with a bare AssertionError.
    rendered = {**good, "trainer_kwargs": {"max_epochs": "8"}}
    operator = RayTrainOperator(task_id="t", train_func=LIGHTNING_TRAIN_LOOP, train_loop_config=rendered)
    with pytest.raises(RayTrainConfigError, match="render_template_as_native_obj=True") as info:
        operator.build_spec({})  # type: ignore[arg-type]
    assert info.value.field == "train_loop_config.trainer_kwargs.max_epochs"
    unknown = {**good, "modul": "x"}
    with pytest.raises(RayTrainConfigError, match="did you mean 'module'"):
        RayTrainOperator(task_id="u", train_func=LIGHTNING_TRAIN_LOOP, train_loop_config=unknown).build_spec({})  # type: ignore[arg-type]


def test_a_manifest_too_big_for_the_trigger_event_is_read_from_the_jobs_log(stub_ray, tmp_path):
    """A manifest line over EVENT_MANIFEST_CHARS stays out of the event (it is stored in the metadata DB): the
    resumed task reads it from the job's log, and only when that fails from storage (here empty)."""
    from airflow_ray_train.identity import RUN_NAME_KEY
    from airflow_ray_train.triggers.ray_train import EVENT_MANIFEST_CHARS
    from airflow_ray_train_runtime.spec import MANIFEST_MARKER

    run = "clf.airflow-d.t"
    metrics = {f"class_{i}_accuracy": 0.5 for i in range(EVENT_MANIFEST_CHARS // 20)}
    manifest = _succeeded_manifest(tmp_path, run, metrics)
    assert len(manifest) > EVENT_MANIFEST_CHARS
    log = f"epoch 0\n{MANIFEST_MARKER}{manifest}\ndone\n"
    job = {"submission_id": "j1", "status": "SUCCEEDED", "message": "", "metadata": {RUN_NAME_KEY: run}}
    job.update(start_time=1_000, end_time=61_000)
    stub_ray.respond = lambda method, path: (
        (200, {"logs": log}) if path == "/api/jobs/j1/logs" else (200, job) if path == "/api/jobs/j1" else (404, {})
    )
    operator = _stub_operator(tmp_path)
    event = {"status": "success", "job_id": "j1", "job_status": "SUCCEEDED", "message": "", "manifest": None}
    event.update(manifest_in_event=False, log_tail=["done"])
    result = operator.execute_complete({"ti": _XComTI()}, event, run_name=run)  # type: ignore[arg-type]
    assert result["status"] == "SUCCEEDED" and result["checkpoint_path"].endswith("checkpoint_000002")
    assert "/api/jobs/j1/logs" in stub_ray.paths("GET")

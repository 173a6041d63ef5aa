"""The MLflow run a task try logs to, made on the Airflow side before the job is submitted.

Every try of one series with one spec shares a Train run (see ``identity``), and so an MLflow run: the run
carries the Train run name in the tag ``TRAIN_RUN_TAG``; a retry that resumes the Train run finds the MLflow
run by it and sets it RUNNING again, so its curves go on where they stopped. Because the run exists before the
job does, its id and URL are known at once (the "MLflow Run" link works while the job trains), and what can
be checked is checked before anything is submitted: that the server answers, and that MLflow accepts the
``register_model`` name. The runtime on the cluster logs to the run (``runtime.tracking``) and ends it; should
the job die before it can, ``end_if_running`` ends it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_ray_train.exceptions import RayTrainMlflowError
from airflow_ray_train.hooks.mlflow import MlflowHook
from airflow_ray_train.identity import TryIdentity
from airflow_ray_train.usage import usage_metrics
from airflow_ray_train_runtime.spec import MLFLOW_RUN_STATUS, TrackingSpec, TrainSpec

#: The run tag holding the Train run name: how a retry finds its series' MLflow run again.
TRAIN_RUN_TAG = "airflow_ray_train.train_run"
#: The XCom key (and the result's key) saying why a task with ``mlflow_required=False`` trained untracked.
MLFLOW_WARNING_KEY = "mlflow_warning"


def run_tags(identity: TryIdentity, spec: TrainSpec, dashboard_url: str) -> dict[str, str]:
    """Tags that link the run back to Airflow (the task try) and to the Ray job and Train run."""
    return {
        TRAIN_RUN_TAG: spec.effective_run_name,
        "airflow.dag_id": identity.dag_id,
        "airflow.run_id": identity.run_id,
        "airflow.task_id": identity.task_id,
        "airflow.map_index": str(identity.map_index),
        "airflow.try_number": str(identity.try_number),
        "airflow.deployment_id": identity.deployment_id,
        "ray.submission_id": spec.submission_id,
        "ray.dashboard_url": dashboard_url,
    }


def experiment_name(hook: MlflowHook, requested: str | None, dag_id: str) -> str:
    """The task's ``mlflow_experiment``, else the connection's ``experiment`` extra, else the DAG id."""
    return requested or hook.settings.experiment or dag_id


def start_run(
    hook: MlflowHook,
    identity: TryIdentity,
    spec: TrainSpec,
    *,
    experiment: str,
    register_model: str | None,
    required: bool,
    dashboard_url: str,
) -> TrackingSpec:
    """The run this try's job logs to: its series' run set RUNNING again, or a new one. Checks the server and
    the ``register_model`` name first; raises ``RayTrainMlflowError`` naming the address and the fix when the
    server cannot be reached (see ``untracked_warning`` for a task that may train untracked)."""
    experiment_id = hook.experiment_id(experiment)
    if register_model:
        hook.create_registered_model(register_model)
    tags = run_tags(identity, spec, dashboard_url)
    found = hook.find_run(experiment_id, TRAIN_RUN_TAG, spec.effective_run_name)
    if found is not None:
        run_id = str(found["run_id"])
        hook.update_run(run_id, "RUNNING")
        hook.set_tags(run_id, tags)
        hook.log.info("MLflow run %s continues (it was %s): this try resumes its Train run", run_id, found["status"])
    else:
        run_id = str(hook.create_run(experiment_id, spec.effective_run_name, tags)["run_id"])
        hook.log.info("MLflow run %s made in experiment %r (id %s)", run_id, experiment, experiment_id)
    return TrackingSpec(
        tracking_uri=hook.settings.tracking_uri,
        experiment_id=experiment_id,
        run_id=run_id,
        run_url=hook.settings.run_url(experiment_id, run_id),
        register_model=register_model or None,
        required=required,
    )


def untracked_warning(exc: RayTrainMlflowError, register_model: str | None) -> str:
    """What a task with ``mlflow_required=False`` says when the server cannot be reached: it trains untracked,
    and registers no model version."""
    lost = f" No version of {register_model!r} is registered: XCom model_version is None." if register_model else ""
    return f"Training untracked (mlflow_required=False): {exc}{lost}"


def find_run_url(hook: MlflowHook, experiment: str, spec: TrainSpec) -> tuple[str, str] | None:
    """The id and URL of the run of ``spec``'s Train run (a try attaching to a running job), or None."""
    experiment_id = hook.experiment_id(experiment)
    found = hook.find_run(experiment_id, TRAIN_RUN_TAG, spec.effective_run_name)
    if found is None:
        return None
    return str(found["run_id"]), hook.settings.run_url(experiment_id, str(found["run_id"]))


def end_if_running(hook: MlflowHook, run_id: str, job_status: str) -> None:
    """End the run with what the job's end means (FINISHED, FAILED, KILLED) if it is still RUNNING: the job
    died before the runtime could end it (killed, its runtime_env failed, MLflow missing on the cluster).
    Never raises: the job's own outcome is what the task reports."""
    status = MLFLOW_RUN_STATUS.get(job_status, "FAILED")
    try:
        info: Mapping[str, Any] = hook.get_run(run_id)["info"]
        if info.get("status") == "RUNNING":
            hook.update_run(run_id, status, end=True)
            hook.log.info("Ended MLflow run %s as %s: the Ray job %s before it could", run_id, status, job_status)
    except Exception as exc:  # noqa: BLE001 - the job's outcome matters more than the run's status
        hook.log.warning("Could not end MLflow run %s as %s: %s", run_id, status, exc)


def log_usage(hook: MlflowHook, run_id: str, usage: Mapping[str, Any]) -> None:
    """What the training used (XCom's ``usage``) as the run's ``usage_*`` metrics, and the worker group's size
    over time (an elastic run's resizes) as ``workers``, one point at each group's start. Never raises: the
    result does not depend on it."""
    try:
        hook.log_metrics(run_id, usage_metrics(usage))
        for step, group in enumerate(usage.get("worker_groups") or []):
            hook.log_metrics(run_id, {"workers": group["workers"]}, step=step, at=group["start"])
    except Exception as exc:  # noqa: BLE001 - the result does not depend on it
        hook.log.warning("Could not log the usage to MLflow run %s: %s", run_id, exc)


class TaskTracking:
    """A task's MLflow side, as the operator's try uses it: start (or continue) the run before submitting, link
    the run of a job the try attaches to, and end a run the job left RUNNING. Its XCom pushes are ``results``'.

    :param hook: the MLflow the task tracks to, or None (untracked).
    :param experiment: the task's ``mlflow_experiment``.
    :param register_model: the task's ``register_model``.
    :param required: the task's ``mlflow_required``.
    :param log: the task's logger.
    """

    def __init__(
        self, hook: MlflowHook | None, experiment: str | None, register_model: str | None, required: bool, log: Any
    ) -> None:
        self.hook = hook
        self.experiment = experiment
        self.register_model = register_model
        self.required = required
        self.log = log

    def start(self, identity: TryIdentity, spec: TrainSpec, dashboard_url: str, ti: Any) -> TrackingSpec | None:
        """The MLflow run this try's job logs to (see ``start_run``), or None when the task is untracked; a
        server that cannot be reached, with ``mlflow_required=False``, is said in the log and in XCom."""
        if self.hook is None:
            if self.register_model:
                self.log.warning(
                    "register_model=%r is set but the task is not tracked in MLflow (no mlflow_conn_id, no "
                    "[ray_train] mlflow_conn_id or mlflow_tracking_uri): the checkpoint is not registered",
                    self.register_model,
                )
            return None
        try:
            return start_run(
                self.hook,
                identity,
                spec,
                experiment=experiment_name(self.hook, self.experiment, identity.dag_id),
                register_model=self.register_model,
                required=self.required,
                dashboard_url=dashboard_url,
            )
        except RayTrainMlflowError as exc:
            if self.required or not exc.unreachable:
                raise
            warning = untracked_warning(exc, self.register_model)
            self.log.warning("%s", warning)
            ti.xcom_push(key=MLFLOW_WARNING_KEY, value=warning)
            return None

    def attached(self, spec: TrainSpec, ti: Any) -> tuple[str, str] | None:
        """The id and URL of the MLflow run of the job a try attached to, or None (never fails the task)."""
        if self.hook is None:
            return None
        try:
            return find_run_url(self.hook, experiment_name(self.hook, self.experiment, ti.dag_id), spec)
        except Exception as exc:  # noqa: BLE001 - the job is what the try waits for; the link is a convenience
            self.log.warning("Could not look up the MLflow run of the attached job: %s", exc)
            return None

    def end(self, run_id: str | None, job_status: str) -> None:
        """End the try's MLflow run if the job left it RUNNING (it died before the runtime could end it)."""
        if self.hook is not None and run_id:
            end_if_running(self.hook, run_id, job_status)

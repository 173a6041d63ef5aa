"""``RayTrainOperator``: one Ray Train ``TorchTrainer`` run on a Ray cluster, as one Airflow task."""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason

from airflow_ray_train.compat import AirflowTaskTimeout, conf
from airflow_ray_train.config import ray_train_setting
from airflow_ray_train.exceptions import (
    RayTrainAuthError,
    RayTrainClusterError,
    RayTrainConfigError,
    RayTrainJobExistsError,
    RayTrainWatchError,
)
from airflow_ray_train.hooks.jobs_api import JobInfo
from airflow_ray_train.hooks.log_follower import LogFollower, as_record
from airflow_ray_train.hooks.mlflow import MlflowHook, mlflow_hook
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.hooks.resources import cluster_shortfall
from airflow_ray_train.hooks.shipping import ShipRuntime
from airflow_ray_train.identity import (
    RUN_NAME_KEY,
    SERIES_RUN_KEY,
    TRY_KEY,
    TryIdentity,
    deployment_id,
    other_spec,
    spec_digest,
)
from airflow_ray_train.links.mlflow import MlflowRunLink
from airflow_ray_train.links.ray_train import RayJobLink
from airflow_ray_train.packaging import (
    CodeLookupError,
    Package,
    check_train_func_defined,
    code_package,
    refuse_standard_library,
    runtime_package,
    spec_package,
)
from airflow_ray_train.progress import Progress, ProgressSpec, declared_progress
from airflow_ray_train.results import (
    ASSET_EXTRA_KEYS,
    capped,
    job_failure,
    manifest_to_xcom,
    push_job,
    push_mlflow_run,
    push_result,
    read_manifest,
)
from airflow_ray_train.runtime_env import check_runtime_env, with_py_modules, with_stop_wait
from airflow_ray_train.stored_manifest import read_stored_manifest
from airflow_ray_train.tracking import MLFLOW_WARNING_KEY, TaskTracking, log_usage
from airflow_ray_train.triggers.ray_train import LOG_TAIL_LINES, Event, RayTrainJobTrigger
from airflow_ray_train.try_plan import Action, free_submission_id, plan_try
from airflow_ray_train.usage import task_usage, usage_sentence
from airflow_ray_train_runtime.spec import JobStatus, ResultManifest, SpecError, TrainSpec

if TYPE_CHECKING:
    from airflow.sdk import Context

#: A deferral without an ``execution_timeout`` still ends: the job is stopped after this long.
DEFAULT_DEFER_TIMEOUT = timedelta(days=7)
#: On a retry, how long a cluster too small for the job is asked again before the try ends (a node lost, or a
#: head restarted whose worker nodes have not joined again yet).
RESOURCE_WAIT_S = 180.0
#: Airflow's own deferral timeout is a backstop behind the trigger's deadline, which stops the job itself.
DEFER_TIMEOUT_GRACE = timedelta(minutes=2)


def train_func_path(train_func: str | Callable[..., Any]) -> str:
    """``train_func`` as the ``module:function`` path the cluster imports."""
    if not callable(train_func):
        return train_func
    qualname = getattr(train_func, "__qualname__", "")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise RayTrainConfigError(
            f"train_func {qualname!r} is defined inside a function or is a lambda; the cluster imports "
            "it by name. Fix: define it at the top level of a module.",
            field="train_func",
        )
    return f"{train_func.__module__}:{qualname}"


def check_declarative_config(spec: TrainSpec) -> None:
    """A declarative loop's config (``LightningConfig``, ``SequenceClassificationConfig``) is checked before
    submitting, as the cluster would check it: a bad field fails here, naming it, not in every worker."""
    from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP, LightningConfig
    from airflow_ray_train_runtime.transformers import TRANSFORMERS_TRAIN_LOOP, SequenceClassificationConfig

    config_class = {LIGHTNING_TRAIN_LOOP: LightningConfig, TRANSFORMERS_TRAIN_LOOP: SequenceClassificationConfig}
    declared = config_class.get(spec.train_func)
    if declared is None:
        return
    try:
        declared.from_train_loop_config(spec.train_loop_config)  # type: ignore[attr-defined]
    except SpecError as exc:
        raise RayTrainConfigError(f"train_loop_config: {exc}", field=f"train_loop_config.{exc.field}") from exc


class RayTrainOperator(BaseOperator):
    """Run a Ray Train ``TorchTrainer`` on a Ray cluster and return its checkpoint and metrics.

    The task renders and validates a ``TrainSpec`` (bad input fails here, before anything is submitted),
    ships the runtime and your code, submits one Ray job and streams its log into the task log. XCom gets
    ``checkpoint_path``, ``metrics``, ``best_checkpoint_path`` (also under their own keys) and the rest of
    the contract (``run_path``, ``metrics_history_path``, ``manifest_path``, ``job_id``, ``submission_id``,
    ``dashboard_url``, ``status``, ``error``, ``best_checkpoints``).

    :param train_func: the per-worker training loop, ``"package.module:function"`` or a module-level
        function; it receives ``train_loop_config``. (templated)
    :param train_loop_config: the dict each worker's ``train_func(config)`` gets; JSON values. (templated)
    :param scaling_config: ``ray.train.ScalingConfig`` fields, e.g. ``{"num_workers": 2, "use_gpu": False}``.
        (templated)
    :param run_config: ``ray.train.RunConfig`` fields: ``storage_path``, ``checkpoint_config``,
        ``failure_config``, ``worker_runtime_env``, ``name`` (default: stable per dag/run/task/map index).
        (templated)
    :param runtime_env: the Ray job's ``runtime_env`` (``pip``, ``env_vars``, remote ``py_modules``...),
        merged over the connection's default. (templated)
    :param entrypoint_num_cpus: CPUs reserved for the job driver.
    :param entrypoint_num_gpus: GPUs reserved for the job driver.
    :param entrypoint_memory: memory (bytes) reserved for the job driver.
    :param entrypoint_resources: custom resources reserved for the job driver. (templated)
    :param ship_code: ship the top-level package or module holding ``train_func`` from where Airflow
        imports it. Set False when the code is installed on the cluster.
    :param ship_modules: more modules whose top-level packages are shipped with ``train_func``'s, e.g. the
        module holding the ``LightningModule`` a declarative loop's ``train_loop_config`` names.
    :param ray_conn_id: the ``ray_train`` connection. Missing, or host ``local``: the embedded local cluster.
    :param poll_interval: seconds between job status polls where the log stream cannot be opened; while it is
        open the log streams live and Ray closing it says the job ended (default: ``[ray_train] poll_interval``).
    :param progress: what counts the training's progress in the task log, for a loop of your own: the report
        metric ``key``, the ``total`` it ends at and, for a 0-based index, ``first`` (the value after the first
        unit, default 1), e.g. ``{"key": "epoch", "total": 10}``. Each report then logs
        ``epoch 3/10 (30%) · 41 s/epoch · ETA 4 min 47 s``; without it, the report number and the time elapsed.
        The declarative Lightning and Transformers loops know their total (``max_epochs``, ``num_train_epochs``,
        ``max_steps``).
    :param model_asset: an Asset this task emits an event on when it succeeds, with ``checkpoint_path``,
        ``best_checkpoint_path``, ``metrics``, ``run_path``, ``job_id`` and ``submission_id`` in the event's
        extra, so a DAG scheduled on the Asset (e.g. a deploy DAG) gets the model it is about.
    :param deferrable: wait for the job in the triggerer instead of holding a worker slot (default: the
        ``[operators] default_deferrable`` option). The log still reaches the task log, and XCom is the same.
    :param check_cluster_resources: before submitting, fail at once if the cluster's total resources can
        never hold the workers ``scaling_config`` asks for. Turn off on an autoscaling cluster.
    :param mlflow_conn_id: track the training in MLflow through this ``mlflow`` connection: one run per Train
        run, with every report as metrics, params, tags linking back here, the history and learning curve
        (default: ``[ray_train] mlflow_conn_id``, else ``[ray_train] mlflow_tracking_uri``, else untracked;
        ``""``: untracked).
    :param mlflow_experiment: the MLflow experiment (default: the connection's ``experiment`` extra, else the
        dag_id). (templated)
    :param register_model: register the best checkpoint as a new version of this MLflow model (the framework's
        MLflow flavour for the declarative Lightning and Transformers loops, the checkpoint directory
        otherwise); XCom gets ``model_version``. Ignored, with a warning, when the task is untracked. (templated)
    :param mlflow_required: with False, a tracking server that cannot be reached means training untracked with a
        warning; by default the task fails before submitting.
    :param stop_grace_period: seconds (or a timedelta) a stopped job's training may take to save a checkpoint at
        its next step and end, when the task is killed, marked or times out (default ``[ray_train]
        stop_grace_period``, 60 s; 0: stopped at once). The declarative loops take part by themselves, a loop of your
        own by calling ``airflow_ray_train_runtime.stop.stop_requested()`` between steps; a loop that does not is
        stopped at once. XCom then names that checkpoint (``status`` STOPPED), and a retry, or clearing the task,
        goes on from it.
    :param ship_runtime: ``"auto"``, ``"always"`` or ``"never"``: whether the job carries the provider's Ray-side
        runtime or runs on the one installed on the cluster (default ``[ray_train] ship_runtime``, ``auto``: ship it
        unless the cluster has the same version installed). ``never`` fails before submitting when the cluster has
        none, or one of another major.minor. ``ship_code`` is the same choice for your own code.

    Retries neither train twice nor start over, and use only this task's own jobs (see ``identity``): a
    retry resumes the series' Train run from its latest checkpoint, attaches to its job still running, or
    collects its job that succeeded. ``on_kill``, ``execution_timeout`` and the deferral's timeout stop the Ray
    job and its Train workers; a job no try will come back for is stopped too.
    """

    template_fields: Sequence[str] = (
        "train_func",
        "train_loop_config",
        "scaling_config",
        "run_config",
        "runtime_env",
        "entrypoint_resources",
        "mlflow_experiment",
        "register_model",
    )
    template_fields_renderers = {
        "train_loop_config": "json",
        "scaling_config": "json",
        "run_config": "json",
        "runtime_env": "json",
    }
    ui_color = "#cfe8fc"
    operator_extra_links = (RayJobLink(), MlflowRunLink())

    def __init__(
        self,
        *,
        train_func: str | Callable[..., Any],
        train_loop_config: dict[str, Any] | None = None,
        scaling_config: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
        runtime_env: dict[str, Any] | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_memory: int | None = None,
        entrypoint_resources: dict[str, float] | None = None,
        ship_code: bool = True,
        ship_modules: Sequence[str] = (),
        ray_conn_id: str = RayTrainHook.default_conn_name,
        poll_interval: float | None = None,
        progress: dict[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        check_cluster_resources: bool = True,
        model_asset: Asset | None = None,
        mlflow_conn_id: str | None = None,
        mlflow_experiment: str | None = None,
        register_model: str | None = None,
        mlflow_required: bool = True,
        stop_grace_period: float | timedelta | None = None,
        ship_runtime: str | None = None,
        **kwargs: Any,
    ) -> None:
        if model_asset is not None:
            kwargs["outlets"] = [*(kwargs.get("outlets") or []), model_asset]
        super().__init__(**kwargs)
        self.train_func = train_func_path(train_func)
        self.train_loop_config = train_loop_config
        self.scaling_config = scaling_config
        self.run_config = run_config
        self.runtime_env = runtime_env
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self.entrypoint_num_gpus = entrypoint_num_gpus
        self.entrypoint_memory = entrypoint_memory
        self.entrypoint_resources = entrypoint_resources
        self.ship_code = ship_code
        self.ship_modules = list(ship_modules)
        ProgressSpec.from_argument(progress)
        self.progress = progress
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval if poll_interval is not None else float(ray_train_setting("poll_interval"))
        self.model_asset = model_asset
        self.deferrable = deferrable
        self.check_cluster_resources = check_cluster_resources
        self.stop_grace_period = stop_grace_period
        self.ship_runtime = ShipRuntime.parse(
            ray_train_setting("ship_runtime") if ship_runtime is None else ship_runtime
        )
        self._task_context: Context | None = None
        self.mlflow_conn_id = mlflow_conn_id
        self.mlflow_experiment = mlflow_experiment
        self.register_model = register_model
        self.mlflow_required = mlflow_required
        self.job_id: str | None = None

    @cached_property
    def hook(self) -> RayTrainHook:
        return RayTrainHook(ray_conn_id=self.ray_conn_id)

    @cached_property
    def mlflow(self) -> MlflowHook | None:
        """The MLflow the task tracks to, or None (untracked)."""
        return mlflow_hook(self.mlflow_conn_id)

    # -- the spec -------------------------------------------------------------------------------------------

    def build_spec(self, context: Context) -> TrainSpec:
        """Validate the rendered fields into a ``TrainSpec``; raises ``RayTrainConfigError`` naming the field.
        Its run name and submission id are placeholders until the try knows its identity."""
        run_config = dict(self.run_config or {})
        default_storage = ray_train_setting("default_storage_path")
        if default_storage and "storage_path" not in run_config:
            run_config["storage_path"] = default_storage
        try:
            spec = TrainSpec(
                train_func=self.train_func,
                run_name="unnamed",
                submission_id="unnamed",
                train_loop_config=dict(self.train_loop_config or {}),
                scaling_config=dict(self.scaling_config or {}),
                run_config=run_config,
                stop_grace_period_s=self.stop_grace_period_s(),
            )
        except SpecError as exc:
            raise RayTrainConfigError(str(exc), field=exc.field) from exc
        except TypeError as exc:
            raise RayTrainConfigError(f"Invalid TrainSpec: {exc}") from exc
        self.check_train_func(spec)
        check_declarative_config(spec)
        return spec

    def stop_grace_period_s(self) -> float:
        """Seconds a stopped job's training may take to save a checkpoint and end: the task's
        ``stop_grace_period``, else ``[ray_train] stop_grace_period``."""
        grace = self.stop_grace_period
        if grace is None:
            return float(ray_train_setting("stop_grace_period"))
        if isinstance(grace, timedelta):
            return grace.total_seconds()
        if isinstance(grace, bool) or not isinstance(grace, (int, float)):
            raise RayTrainConfigError(
                f"stop_grace_period is {grace!r}. Fix: give seconds (or a timedelta); 0 stops a job at once.",
                field="stop_grace_period",
            )
        return float(grace)

    def spec_digest(self, spec: TrainSpec, runtime_env: dict[str, Any]) -> str:
        """What makes two jobs the same run: the spec's content (not its names), the runtime_env with the
        shipped code's content-addressed URIs, and the driver's resources. The runtime counts by its version,
        not by whether it shipped: ``auto`` may ship it on one try and not on the next (a probe that gave no
        answer), and the retry must still resume the run."""
        runtime_uri = runtime_package().uri
        env = {key: value for key, value in runtime_env.items() if key != "py_modules"}
        modules = [uri for uri in runtime_env.get("py_modules") or [] if uri != runtime_uri]
        if modules:
            env["py_modules"] = modules
        return spec_digest(
            {
                "train_func": spec.train_func,
                "train_loop_config": spec.train_loop_config,
                "scaling_config": spec.scaling_config,
                "run_config": spec.run_config,
                "runtime_env": env,
                "runtime_version": spec.runtime_version,
                "entrypoint": [
                    self.entrypoint_num_cpus,
                    self.entrypoint_num_gpus,
                    self.entrypoint_memory,
                    self.entrypoint_resources,
                ],
            }
        )

    def check_train_func(self, spec: TrainSpec) -> None:
        """Fail before submitting when ``train_func`` names the standard library (shipped or not), or is not
        defined where Airflow finds it (and so will not be in the code shipped to the cluster)."""
        try:
            refuse_standard_library(spec.train_func)
            if self.ship_code:
                check_train_func_defined(spec.train_func)
        except CodeLookupError as exc:
            raise RayTrainConfigError(str(exc), field="train_func") from exc

    def packages_to_ship(self, spec: TrainSpec) -> list[Package]:
        """The user's code the job needs besides the runtime: the top-level packages holding ``train_func``
        and ``ship_modules``, zipped from where Airflow imports them (none with ``ship_code=False``)."""
        if not self.ship_code:
            return []
        packages: list[Package] = []
        for module in [spec.train_func.split(":")[0], *self.ship_modules]:
            try:
                package = code_package(module)
            except CodeLookupError as exc:
                raise RayTrainConfigError(str(exc), field="ship_modules") from exc
            if package is not None:
                packages.append(package)
        return packages

    # -- execution ------------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        self._task_context = context
        hook = self.hook
        check_runtime_env(self.runtime_env)
        draft = self.build_spec(context)
        hook.ensure_embedded_head()
        runtime_env, packages = hook.job_runtime_env(
            self.runtime_env, self.packages_to_ship(draft), ship_runtime=hook.ships_runtime(self.ship_runtime)
        )
        digest = self.spec_digest(draft, runtime_env)
        identity = TryIdentity.from_context(context, deployment_id(), self.retries or 0)
        found = hook.find_jobs([identity.submission_id(), *identity.earlier_submission_ids()])
        plan = plan_try(identity, digest, found)
        for note in plan.notes:
            self.log.info("%s", note)
        for job_id in plan.stop:
            self.log.info("Stopped Ray job %s: %s", job_id, hook.stop_job_and_wait(job_id))
        run_name = self._series_run_name(hook, identity, digest, found)
        spec = dataclasses.replace(draft, run_name=run_name, submission_id=plan.submission_id)
        if plan.action is Action.COLLECT and plan.job is not None:
            result = self._collect_previous(hook, plan.job, spec, context)
            if result is not None:
                return result
            # Ray never takes an id twice: the new job (it resumes the Train run) goes under a free one.
            spec = dataclasses.replace(
                spec, submission_id=free_submission_id(identity, [j.submission_id for j in found])
            )
        if plan.action is Action.ATTACH and plan.job is not None:
            job_id = self._attach(hook, plan.job, spec, context)
        else:
            job_id = self._submit_new(hook, identity, spec, digest, runtime_env, packages, context)
        if self.deferrable:
            self._defer(job_id, spec.effective_run_name)
        return self._wait(hook, job_id, spec, context)

    def _series_run_name(self, hook: RayTrainHook, identity: TryIdentity, digest: str, found: list[JobInfo]) -> str:
        """The series' Train run name: the one its earlier tries used; for a cleared task whose last job was
        stopped (a killed, timed-out or marked task), that job's run, so the training goes on from the checkpoint
        it saved at the stop; else a run of its own (``TryIdentity.run_name``)."""
        for job in found:
            if identity.not_ours(job.metadata) is None and other_spec(job.metadata, digest) is None:
                if job.metadata.get(SERIES_RUN_KEY):
                    return job.metadata[SERIES_RUN_KEY]
        if identity.try_number == identity.first_try_number > 1:
            earlier = hook.find_jobs(identity.previous_series_ids())
            last = next((j for j in earlier if identity.not_ours(j.metadata, any_series=True) is None), None)
            if (
                last is not None
                and last.status == JobStatus.STOPPED
                and other_spec(last.metadata, digest) is None
                and last.metadata.get(SERIES_RUN_KEY)
            ):
                self.log.info(
                    "This task's last Ray job %s was STOPPED: the cleared task continues its Train run %s from the "
                    "latest checkpoint (after a job that succeeded or failed, a cleared task trains anew)",
                    last.submission_id,
                    last.metadata[SERIES_RUN_KEY],
                )
                return last.metadata[SERIES_RUN_KEY]
        return identity.run_name(digest)

    def _attach(self, hook: RayTrainHook, job: JobInfo, spec: TrainSpec, context: Context) -> str:
        """Watch an earlier try's job that still runs, instead of training again."""
        self.log.info(
            "An earlier try's Ray job %s is still %s: attaching to it instead of training again",
            job.submission_id,
            job.status,
        )
        self._remember_job(hook, job.submission_id, context)
        found = self.tracking.attached(spec, context["ti"])
        if found is not None:
            self._remember_mlflow_run(*found, context)
        return job.submission_id

    def _submit_new(
        self,
        hook: RayTrainHook,
        identity: TryIdentity,
        spec: TrainSpec,
        digest: str,
        runtime_env: dict[str, Any],
        packages: list[Package],
        context: Context,
    ) -> str:
        """Check the cluster, start the MLflow run, ship the code and submit the try's job."""
        if self.check_cluster_resources:
            self._check_cluster_resources(hook, spec, retry=identity.try_number > 1)
        tracking = self.tracking.start(identity, spec, hook.dashboard_url(spec.submission_id), context["ti"])
        spec = dataclasses.replace(spec, tracking=tracking)
        try:
            hook.upload_packages(packages)
            metadata = identity.job_metadata(digest, spec.effective_run_name, spec.run_name)
            return self._submit(hook, spec, runtime_env, metadata, identity, digest, context)
        except BaseException:
            self.tracking.end(tracking.run_id if tracking else None, JobStatus.FAILED)
            raise

    def _wait(self, hook: RayTrainHook, job_id: str, spec: TrainSpec, context: Context) -> dict[str, Any]:
        """Follow the job in this worker to its end, its log into the task log, and return its result."""
        follower = LogFollower()
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        progress = Progress(self.progress_spec())

        def show(lines: list[str]) -> None:
            if lines:
                line = progress.update(lines)
                self.log.info("%s", as_record(lines) if line is None else f"{as_record(lines)}\n{line}")
                tail.extend(lines)

        try:
            info = hook.wait_for_job(job_id, follower=follower, on_lines=show, poll_interval=self.poll_interval)
        except Exception as exc:
            if isinstance(exc, RayTrainClusterError) and exc.http_status == 404:  # the cluster no longer has it
                result = self._collect_gone_job(hook, job_id, spec, context)
                if result is not None:
                    return result
            raise self._lost_track(
                hook, job_id, context, f"{type(exc).__name__}: {exc}", rejected=isinstance(exc, RayTrainAuthError)
            ) from exc
        return self.collect_result(
            hook, info, context, self._manifest(hook, info, spec, follower.manifest_line), list(tail)
        )

    def _lost_track(
        self, hook: RayTrainHook, job_id: str, context: Context, cause: str, *, rejected: bool
    ) -> RayTrainWatchError:
        """The job could not be watched to its end: the cluster did not answer for the whole contact window, or
        it rejected the token. The job is stopped only when no try will come back for it (this was the last, or
        the token was rejected, so even a retry might not see it); else the next try attaches to it. Returns
        the (retryable) error to raise."""
        ti = context["ti"]
        last_try = not self.retries or ti.try_number > getattr(ti, "max_tries", ti.try_number)
        what = f"Lost track of Ray job {job_id} while waiting for it: {cause}."
        if not (rejected or last_try):
            self.log.warning("Ray job %s is left running: the next try attaches to it", job_id)
            return RayTrainWatchError(
                f"{what} The job may still be running; the next try attaches to it. "
                f"Dashboard: {hook.dashboard_url(job_id)}"
            )
        reason = "the cluster rejected the token" if rejected else "this was the task's last try"
        try:
            final = hook.stop_after_rejection(job_id) if rejected else hook.stop_job_and_wait(job_id)
        except Exception as exc:  # noqa: BLE001 - say so loudly: the job may run on with nobody watching
            how = hook.how_to_stop(job_id)
            self.log.error("Could not stop Ray job %s (%s). %s", job_id, exc, how)
            what += f" Stopping it failed too ({exc}). {how}"
        else:
            self.log.warning("Stopped Ray job %s (now %s) because %s", job_id, final, reason)
            what += f" It has been stopped ({final}) because {reason}; a retry resumes its Train run."
        return RayTrainWatchError(f"{what} Dashboard: {hook.dashboard_url(job_id)}")

    def _collect_gone_job(
        self, hook: RayTrainHook, job_id: str, spec: TrainSpec, context: Context
    ) -> dict[str, Any] | None:
        """The cluster no longer has the job (its head restarted without fault tolerance): its result, when it
        ended and left its ``manifest.json`` in storage; else None (the try ends, a retry resumes the run)."""
        stored, where = self._stored_manifest(hook, spec, spec.effective_run_name, job_id)
        if stored is None:
            self.log.warning("The Ray cluster no longer has job %s, and its result cannot be read: %s", job_id, where)
            return None
        self.log.info(
            "The Ray cluster no longer has job %s (its head restarted?); its manifest is in %s", job_id, where
        )
        gone = JobInfo(job_id, JobStatus(stored.status), metadata={RUN_NAME_KEY: spec.effective_run_name})
        return self.collect_result(hook, gone, context, stored, [])

    def _collect_previous(
        self, hook: RayTrainHook, job: JobInfo, spec: TrainSpec, context: Context
    ) -> dict[str, Any] | None:
        """An earlier try's job succeeded (its task died before it could say so): its result, or None when it
        left no readable successful manifest, in its log or in storage."""
        job_id = job.submission_id
        manifest = self._read_manifest(hook, job, spec)
        if manifest is None or not manifest.succeeded:
            self.log.warning(
                "An earlier try's Ray job %s SUCCEEDED but left no readable manifest: training under a new job "
                "(it resumes the Train run)",
                job_id,
            )
            return None
        self.log.info(
            "An earlier try's Ray job %s already SUCCEEDED: collecting its result, not training again", job_id
        )
        self._remember_job(hook, job_id, context)
        return self.collect_result(hook, job, context, manifest, [])

    def _check_cluster_resources(self, hook: RayTrainHook, spec: TrainSpec, retry: bool = False) -> None:
        """Fail before submitting when the cluster's nodes can never hold the job. On a retry the cluster may be
        smaller for a while (a node lost, a head restarted, its workers not joined again yet): the check is asked
        again for up to ``RESOURCE_WAIT_S``, logged, and a cluster still short then is a retryable error."""
        driver = {
            "CPU": self.entrypoint_num_cpus,
            "GPU": self.entrypoint_num_gpus,
            "memory": self.entrypoint_memory,
            **(self.entrypoint_resources or {}),
        }
        needed = {k: float(v) for k, v in driver.items() if v}
        until = time.monotonic() + (RESOURCE_WAIT_S if retry else 0.0)
        while True:
            nodes = hook.get_cluster_nodes()
            if not nodes:
                self.log.info("The cluster does not list its nodes; skipping the resource check")
                return
            fewest, most = spec.worker_range
            problem = cluster_shortfall(nodes, spec.scaling_config, needed, workers=fewest)
            if not problem:
                beyond = cluster_shortfall(nodes, spec.scaling_config, workers=most) if most > fewest else None
                if beyond:
                    self.log.warning(
                        "Elastic training never reaches its most workers on this cluster as it is: %s It trains "
                        "with what fits, %d workers at least.",
                        beyond,
                        fewest,
                    )
                return
            if time.monotonic() >= until:
                break
            self.log.warning("The Ray cluster is short for this retry's job (%s); asking again in 5 s", problem)
            time.sleep(5.0)
        if retry:  # it held the job before: a node may be down for longer; a later retry may find it back
            raise RayTrainClusterError(
                f"The Ray cluster at {hook.settings.address} cannot hold this job now, {RESOURCE_WAIT_S:.0f} s into "
                f"this retry: {problem}. Is a node down? A later retry asks again."
            )
        raise RayTrainConfigError(
            f"This job can never start on the Ray cluster at {hook.settings.address}: {problem}", field="scaling_config"
        )

    def progress_spec(self) -> ProgressSpec | None:
        """What counts the progress the task log shows: ``progress``, else what a declarative loop's rendered
        ``train_loop_config`` says."""
        return ProgressSpec.from_argument(self.progress) or declared_progress(self.train_func, self.train_loop_config)

    def _defer(self, job_id: str, run_name: str) -> None:
        limit = self.execution_timeout or DEFAULT_DEFER_TIMEOUT
        label = f"execution_timeout ({limit})" if self.execution_timeout else f"the default wait limit ({limit})"
        progress = self.progress_spec()
        trigger = RayTrainJobTrigger(
            job_id=job_id,
            ray_conn_id=self.ray_conn_id,
            poll_interval=self.poll_interval,
            timeout_at=time.time() + limit.total_seconds(),
            timeout_label=label,
            progress=None if progress is None else progress.to_json(),
        )
        self.log.info("Deferring: the triggerer watches Ray job %s and streams its log", job_id)
        self.defer(
            trigger=trigger,
            method_name="execute_complete",
            kwargs={"run_name": run_name},  # where its manifest.json is, should the job be gone by then
            timeout=limit + DEFER_TIMEOUT_GRACE,
        )

    def execute_complete(self, context: Context, event: dict[str, Any], run_name: str | None = None) -> dict[str, Any]:
        """Resume after ``RayTrainJobTrigger`` fired: the same XCom contract, or error, as the sync path."""
        job_id = str(event["job_id"])
        self.job_id = job_id
        hook = self.hook
        status = Event(str(event.get("status")))
        if status is Event.ERROR:
            if event.get("http_status") == 404 and run_name:  # the cluster no longer has the job
                spec = dataclasses.replace(self.build_spec(context), run_name=run_name, submission_id=job_id)
                result = self._collect_gone_job(hook, job_id, spec, context)
                if result is not None:
                    return result
            raise self._lost_track(
                hook,
                job_id,
                context,
                str(event.get("message")),
                rejected=event.get("error_type") == RayTrainAuthError.__name__,
            )
        if status is Event.TIMEOUT:
            kept = ""
            spec = dataclasses.replace(self.build_spec(context), run_name=run_name or "unnamed", submission_id=job_id)
            manifest = self._stopped_manifest(hook, job_id, spec)
            if manifest is not None and manifest.status == JobStatus.STOPPED:
                self._keep_stopped(self._stopped_result(hook, manifest), context["ti"])
                kept = f" Its latest checkpoint: {manifest.checkpoint_path}."
            raise AirflowTaskTimeout(
                f"{event.get('message')}{kept} A retry resumes the Train run from its latest checkpoint. "
                f"Dashboard: {hook.dashboard_url(job_id)}"
            )
        info = hook.get_job_info(job_id)
        spec = dataclasses.replace(
            self.build_spec(context), run_name=info.metadata.get(RUN_NAME_KEY) or "unnamed", submission_id=job_id
        )
        if event.get("manifest_in_event") is False:  # too big for the event: the job's log, else storage
            manifest = self._read_manifest(hook, info, spec)
        else:
            manifest = self._manifest(hook, info, spec, event.get("manifest"))
        return self.collect_result(hook, info, context, manifest, event.get("log_tail") or [])

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        # Airflow's deferral timeout fired (a backstop: the trigger stops the job at its own deadline first).
        if (
            next_method == TRIGGER_FAIL_REPR
            and (next_kwargs or {}).get("error") == TriggerFailureReason.TRIGGER_TIMEOUT
        ):
            ti = context["ti"]
            job_id = ti.xcom_pull(task_ids=ti.task_id, key="job_id")
            if job_id:
                self.log.warning("The deferral timed out; stopping Ray job %s", job_id)
                self.job_id = str(job_id)
                self.on_kill()
        return super().resume_execution(next_method, next_kwargs, context)

    def _submit(
        self,
        hook: RayTrainHook,
        spec: TrainSpec,
        runtime_env: dict[str, Any],
        metadata: dict[str, str],
        identity: TryIdentity,
        digest: str,
        context: Context,
    ) -> str:
        credentials = self.mlflow.settings.credentials_env() if self.mlflow and spec.tracking else {}
        try:
            shipped_spec = spec_package(spec, credentials)
        except CodeLookupError as exc:
            raise RayTrainConfigError(str(exc), field="train_loop_config") from exc
        hook.upload_package(shipped_spec)
        try:
            job_id = hook.submit_job(
                entrypoint=hook.runtime_entrypoint(spec.shipped_arg()),
                submission_id=spec.submission_id,
                runtime_env=with_stop_wait(with_py_modules(runtime_env, [shipped_spec.uri]), spec.stop_grace_period_s),
                metadata=metadata,
                entrypoint_num_cpus=self.entrypoint_num_cpus,
                entrypoint_num_gpus=self.entrypoint_num_gpus,
                entrypoint_memory=self.entrypoint_memory,
                entrypoint_resources=self.entrypoint_resources,
            )
            self.log.info("Submitted Ray job %s (Train run %s)", job_id, spec.effective_run_name)
        except RayTrainJobExistsError as exc:
            # Taken between this try's lookup and its submit: only this same try may have done that.
            theirs = exc.job.metadata
            why = identity.not_ours(theirs) or other_spec(theirs, digest)
            if why is None and theirs.get(TRY_KEY) != str(identity.try_number):
                why = f"try {theirs.get(TRY_KEY)} submitted it"
            if why is not None:
                raise RayTrainClusterError(
                    f"Ray job {spec.submission_id} appeared while this try submitted it and is not this try's "
                    f"({why}); leaving it alone. A retry submits under a free id."
                ) from exc
            job_id = spec.submission_id
            self.log.info("Ray job %s was just submitted by another process of this same try; attaching", job_id)
        self._remember_job(hook, job_id, context)
        if spec.tracking is not None:
            self._remember_mlflow_run(spec.tracking.run_id, spec.tracking.run_url, context)
        return job_id

    # -- XCom -----------------------------------------------------------------------------------------------

    @cached_property
    def tracking(self) -> TaskTracking:
        return TaskTracking(self.mlflow, self.mlflow_experiment, self.register_model, self.mlflow_required, self.log)

    def _remember_mlflow_run(self, run_id: str, run_url: str | None, context: Context) -> None:
        push_mlflow_run(context["ti"], run_id, run_url)
        self.log.info("MLflow run: %s", run_url)

    def _remember_job(self, hook: RayTrainHook, job_id: str, context: Context) -> None:
        """Keep the job for ``on_kill`` and push its id and dashboard URL before waiting."""
        self.job_id = job_id
        push_job(context["ti"], job_id, hook.dashboard_url(job_id))
        self.log.info("Ray job dashboard: %s", hook.dashboard_url(job_id))

    def _manifest(
        self, hook: RayTrainHook, info: JobInfo, spec: TrainSpec, manifest_line: str | None
    ) -> ResultManifest | None:
        """The job's own manifest: its log line, else ``manifest.json`` in storage (see ``stored_manifest``)."""
        manifest, unreadable = read_manifest(manifest_line, info.submission_id)
        if manifest is not None or not info.ended:
            return manifest
        why = f"its log line cannot be read ({unreadable})" if unreadable else "its log gave no manifest"
        run_name = info.metadata.get(RUN_NAME_KEY) or spec.effective_run_name
        stored, where = self._stored_manifest(hook, spec, run_name, info.submission_id)
        if stored is None:
            self.log.warning("Ray job %s: %s, and its manifest.json was not found: %s", info.submission_id, why, where)
        else:
            self.log.info("Ray job %s: %s; its manifest was read from %s", info.submission_id, why, where)
        return stored

    def _read_manifest(self, hook: RayTrainHook, info: JobInfo, spec: TrainSpec) -> ResultManifest | None:
        """An ended job's manifest, read after the fact: its whole log (bounded), else storage (``_manifest``)."""
        follower = LogFollower()
        try:
            hook.read_log(info.submission_id, follower)
        except RayTrainClusterError as exc:
            self.log.warning("Could not read the log of Ray job %s: %s", info.submission_id, exc)
        return self._manifest(hook, info, spec, follower.manifest_line)

    @staticmethod
    def _stored_manifest(
        hook: RayTrainHook, spec: TrainSpec, run_name: str, job_id: str
    ) -> tuple[ResultManifest | None, str]:
        """``manifest.json`` of the job in the run's storage, or None and why (see ``stored_manifest``)."""
        storage_path = spec.run_config.get("storage_path")
        return read_stored_manifest(storage_path, run_name, job_id, embedded=hook.settings.embedded)

    def collect_result(
        self,
        hook: RayTrainHook,
        info: JobInfo,
        context: Context,
        manifest: ResultManifest | None,
        log_tail: list[str],
    ) -> dict[str, Any]:
        """Turn a terminal job and its manifest (``_manifest``) into the XCom contract, or raise
        ``RayTrainJobError`` saying why it failed."""
        job_id, status = info.submission_id, str(info.status)
        result = manifest_to_xcom(
            manifest,
            job_id=job_id,
            submission_id=job_id,
            dashboard_url=hook.dashboard_url(job_id),
            status=status if manifest is None or status != JobStatus.SUCCEEDED else manifest.status,
        )
        ti = context["ti"]
        run_id = (manifest.mlflow_run_id if manifest else None) or ti.xcom_pull(
            task_ids=ti.task_id, key="mlflow_run_id"
        )
        self.tracking.end(run_id, result["status"])
        self._add_usage(hook, result, manifest, info, run_id)
        if status != JobStatus.SUCCEEDED or manifest is None or not manifest.succeeded:
            if manifest is not None and manifest.status == JobStatus.STOPPED:
                self._keep_stopped(result, ti)
            self._log_usage(result)
            raise job_failure(job_id, dataclasses.asdict(info), manifest, log_tail, hook.dashboard_url(job_id))
        result["mlflow_warning"] = result["mlflow_warning"] or ti.xcom_pull(task_ids=ti.task_id, key=MLFLOW_WARNING_KEY)
        if result["mlflow_warning"]:
            self.log.warning("MLflow: %s", result["mlflow_warning"])
        result, cut_note = capped(result)
        if cut_note:
            self.log.warning("%s", cut_note)
        push_result(ti, result)
        if result["mlflow_run_id"]:
            self._remember_mlflow_run(result["mlflow_run_id"], result["mlflow_run_url"], context)
        self.log.info("Checkpoint: %s; metrics: %s", result["checkpoint_path"], result["metrics"])
        if self.model_asset is not None:
            context["outlet_events"][self.model_asset].extra = {key: result[key] for key in ASSET_EXTRA_KEYS}
            self.log.info("Model Asset event on %s", self.model_asset.uri)
        self._log_usage(result)
        return result

    def _add_usage(
        self,
        hook: RayTrainHook,
        result: dict[str, Any],
        manifest: ResultManifest | None,
        info: JobInfo,
        run_id: str | None,
    ) -> None:
        """XCom's ``usage`` (``airflow_ray_train.usage``), also logged to the MLflow run when tracking is on."""
        if manifest is None or not manifest.usage:
            return
        try:
            result["usage"] = task_usage(manifest.usage, info, hook.find_job)
        except Exception as exc:  # noqa: BLE001 - usage never costs the result
            self.log.warning("Could not add up the usage of Ray job %s: %s", info.submission_id, exc)
            return
        if run_id and self.mlflow is not None and result["usage"]:
            log_usage(self.mlflow, run_id, result["usage"])

    def _log_usage(self, result: dict[str, Any]) -> None:
        if result.get("usage"):
            self.log.info("%s", usage_sentence(result["usage"]))

    def _keep_stopped(self, result: dict[str, Any], ti: Any) -> None:
        """A stopped job's checkpoint (with a graceful stop, the one its training saved at the stop) and metrics
        in XCom, beside ``status`` STOPPED: the task fails, but what it trained is named."""
        result, _ = capped(result)
        push_result(ti, result)
        ti.xcom_push(key="status", value=result["status"])
        self.log.warning(
            "Ray job %s was stopped; its latest checkpoint: %s", result["job_id"], result["checkpoint_path"]
        )

    def _stopped_manifest(self, hook: RayTrainHook, job_id: str, spec: TrainSpec) -> ResultManifest | None:
        """After this task stopped its job: the job's STOPPED manifest (its log, else storage), None if unread."""
        try:
            return self._read_manifest(hook, hook.get_job_info(job_id), spec)
        except Exception as exc:  # noqa: BLE001 - the stop itself is what matters here
            self.log.warning("Could not read the manifest of the stopped Ray job %s: %s", job_id, exc)
            return None

    def on_kill(self) -> None:
        """Stop the Ray job (and with it its Train workers) when Airflow kills the task or its
        ``execution_timeout`` passes; with a grace period its training saves a checkpoint first (``runtime.stop``),
        which XCom then names."""
        if self.job_id is None:
            return
        hook = self.hook
        status = hook.stop_job_and_wait(self.job_id)
        self.log.info("Stopped Ray job %s on kill: %s", self.job_id, status)
        context = self._task_context
        if context is None or status != JobStatus.STOPPED:
            return
        manifest = self._stopped_manifest(hook, self.job_id, self.build_spec(context))
        if manifest is not None and manifest.status == JobStatus.STOPPED:
            result = self._stopped_result(hook, manifest)
            self._keep_stopped(result, context["ti"])
            self._log_usage(result)

    def _stopped_result(self, hook: RayTrainHook, manifest: ResultManifest) -> dict[str, Any]:
        job_id = manifest.submission_id
        result = manifest_to_xcom(
            manifest,
            job_id=job_id,
            submission_id=job_id,
            dashboard_url=hook.dashboard_url(job_id),
            status=JobStatus.STOPPED.value,
        )
        info = hook.find_job(job_id)
        if info is not None:
            self._add_usage(hook, result, manifest, info, manifest.mlflow_run_id)
        return result


__all__ = ["RayTrainOperator", "manifest_to_xcom"]

"""``RayTrainOperator``: one Ray Train ``TorchTrainer`` run on a Ray cluster, as one Airflow task."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_ray_train.exceptions import RayTrainClusterError, RayTrainConfigError, RayTrainJobError
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.packaging import CodeLookupError, check_train_func_defined
from airflow_ray_train.runtime.spec import MANIFEST_MARKER, ResultManifest, SpecError, TrainSpec, manifest_from_log

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Keys pushed to XCom on their own besides ``return_value`` (the DESIGN.md contract).
XCOM_KEYS = ("checkpoint_path", "metrics", "best_checkpoint_path")
LOG_TAIL_LINES = 40
_SLUG_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _slug(text: str, limit: int) -> str:
    return _SLUG_RE.sub("_", text).strip("_.-")[:limit] or "x"


def ray_run_name(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The Ray Train run name of one (dag, run, task, map_index): the same for every try, so a retry resumes
    from the run's latest checkpoint. Readable, with a short hash so sanitising never makes two collide."""
    mapped = f".{map_index}" if map_index is not None and map_index >= 0 else ""
    digest = hashlib.sha1(repr((dag_id, run_id, task_id, map_index)).encode()).hexdigest()[:10]
    return f"{_slug(dag_id, 60)}.{_slug(task_id, 60)}{mapped}.{_slug(run_id, 60)}-{digest}"


def ray_submission_id(run_name: str, try_number: int) -> str:
    """One Ray job per try: ids are never reused (Ray keeps stale records of deleted ones)."""
    return f"airflow-{run_name}-try{try_number}"


def manifest_to_xcom(
    manifest: ResultManifest | None, *, job_id: str, submission_id: str, dashboard_url: str, status: str
) -> dict[str, Any]:
    """The XCom contract, the same on every path (sync, deferrable, attach)."""
    m = manifest
    return {
        "checkpoint_path": m.checkpoint_path if m else None,
        "metrics": dict(m.metrics) if m else {},
        "best_checkpoint_path": m.best_checkpoint_path if m else None,
        "best_checkpoints": [{"path": r.path, "metrics": dict(r.metrics)} for r in m.best_checkpoints] if m else [],
        "run_path": m.run_path if m else None,
        "metrics_history_path": m.metrics_history_path if m else None,
        "manifest_path": m.manifest_path if m else None,
        "job_id": job_id,
        "submission_id": submission_id,
        "dashboard_url": dashboard_url,
        "status": status,
        "error": dict(m.error) if m and m.error else None,
    }


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
    :param ray_conn_id: the ``ray_train`` connection. Missing, or host ``local``: the embedded local cluster.
    :param poll_interval: seconds between status and log polls.
    """

    template_fields: Sequence[str] = (
        "train_func",
        "train_loop_config",
        "scaling_config",
        "run_config",
        "runtime_env",
        "entrypoint_resources",
    )
    template_fields_renderers = {
        "train_loop_config": "json",
        "scaling_config": "json",
        "run_config": "json",
        "runtime_env": "json",
    }
    ui_color = "#cfe8fc"

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
        ray_conn_id: str = RayTrainHook.default_conn_name,
        poll_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if callable(train_func):
            qualname = getattr(train_func, "__qualname__", "")
            if "<locals>" in qualname or "<lambda>" in qualname:
                raise RayTrainConfigError(
                    f"train_func {qualname!r} is defined inside a function or is a lambda; the cluster imports "
                    "it by name. Fix: define it at the top level of a module.",
                    field="train_func",
                )
            train_func = f"{train_func.__module__}:{qualname}"
        self.train_func = train_func
        self.train_loop_config = train_loop_config
        self.scaling_config = scaling_config
        self.run_config = run_config
        self.runtime_env = runtime_env
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self.entrypoint_num_gpus = entrypoint_num_gpus
        self.entrypoint_memory = entrypoint_memory
        self.entrypoint_resources = entrypoint_resources
        self.ship_code = ship_code
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.job_id: str | None = None
        self._log_buffer = ""

    @cached_property
    def hook(self) -> RayTrainHook:
        return RayTrainHook(ray_conn_id=self.ray_conn_id)

    # -- the spec -------------------------------------------------------------------------------------------

    def build_spec(self, context: Context) -> TrainSpec:
        """Validate the rendered fields into a ``TrainSpec``; raises ``RayTrainConfigError`` naming the field."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        run_name = ray_run_name(ti.dag_id, ti.run_id, ti.task_id, -1 if map_index is None else map_index)
        run_config = dict(self.run_config or {})
        default_storage = conf.get("ray_train", "default_storage_path", fallback=None)
        if default_storage and "storage_path" not in run_config:
            run_config["storage_path"] = default_storage
        try:
            spec = TrainSpec(
                train_func=self.train_func,
                run_name=run_name,
                submission_id=ray_submission_id(run_name, ti.try_number),
                train_loop_config=dict(self.train_loop_config or {}),
                scaling_config=dict(self.scaling_config or {}),
                run_config=run_config,
            )
        except SpecError as exc:
            raise RayTrainConfigError(str(exc), field=exc.field) from exc
        except TypeError as exc:
            raise RayTrainConfigError(f"Invalid TrainSpec: {exc}") from exc
        if self.ship_code:
            try:
                check_train_func_defined(spec.train_func)
            except CodeLookupError as exc:
                raise RayTrainConfigError(str(exc), field="train_func") from exc
        return spec

    # -- execution ------------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        spec = self.build_spec(context)
        hook = self.hook
        code_modules = [spec.train_func.split(":")[0]] if self.ship_code else []
        runtime_env = hook.build_runtime_env(self.runtime_env, code_modules)
        job_id = self._submit_or_attach(hook, spec, runtime_env, context)
        info = hook.wait_for_job(job_id, poll_interval=self.poll_interval, on_logs=self._log_job_output)
        self._flush_log()
        return self.collect_result(hook, job_id, info, context)

    def _submit_or_attach(
        self, hook: RayTrainHook, spec: TrainSpec, runtime_env: dict[str, Any], context: Context
    ) -> str:
        ti = context["ti"]
        metadata = {
            "airflow_dag_id": ti.dag_id,
            "airflow_run_id": ti.run_id,
            "airflow_task_id": ti.task_id,
            "airflow_map_index": str(getattr(ti, "map_index", -1)),
            "airflow_try_number": str(ti.try_number),
            "ray_train_run_name": spec.effective_run_name,
        }
        try:
            job_id = hook.submit_job(
                entrypoint=hook.runtime_entrypoint(spec.to_arg()),
                submission_id=spec.submission_id,
                runtime_env=runtime_env,
                metadata=metadata,
                entrypoint_num_cpus=self.entrypoint_num_cpus,
                entrypoint_num_gpus=self.entrypoint_num_gpus,
                entrypoint_memory=self.entrypoint_memory,
                entrypoint_resources=self.entrypoint_resources,
            )
            self.log.info("Submitted Ray job %s (Train run %s)", job_id, spec.effective_run_name)
        except RayTrainClusterError as exc:
            # This try's id already exists: this try submitted it before its process died. Attach.
            if "already exists" not in str(exc):
                raise
            job_id = spec.submission_id
            self.log.info("Ray job %s already exists for this try; attaching to it", job_id)
        self.job_id = job_id
        dashboard_url = hook.dashboard_url(job_id)
        ti.xcom_push(key="job_id", value=job_id)
        ti.xcom_push(key="submission_id", value=spec.submission_id)
        ti.xcom_push(key="dashboard_url", value=dashboard_url)
        self.log.info("Ray job dashboard: %s", dashboard_url)
        return job_id

    def _log_job_output(self, chunk: str) -> None:
        text = self._log_buffer + chunk
        lines = text.split("\n")
        self._log_buffer = lines.pop()
        for line in lines:
            if not line.startswith(MANIFEST_MARKER):
                self.log.info("[ray] %s", _ANSI_RE.sub("", line).rstrip("\r"))

    def _flush_log(self) -> None:
        if self._log_buffer:
            self._log_job_output("\n")

    def collect_result(self, hook: RayTrainHook, job_id: str, info: dict[str, Any], context: Context) -> dict[str, Any]:
        """Turn a terminal job into the XCom contract, or raise ``RayTrainJobError`` saying why it failed."""
        status = str(info["status"])
        logs = hook.get_job_logs(job_id)
        try:
            manifest = manifest_from_log(logs)
        except SpecError as exc:
            self.log.warning("The job printed a manifest this side cannot read: %s", exc)
            manifest = None
        submission_id = str(info.get("submission_id") or job_id)
        result = manifest_to_xcom(
            manifest,
            job_id=job_id,
            submission_id=submission_id,
            dashboard_url=hook.dashboard_url(job_id),
            status=status if manifest is None or status != "SUCCEEDED" else manifest.status,
        )
        if status == "SUCCEEDED" and manifest is not None and manifest.succeeded:
            ti = context["ti"]
            for key in XCOM_KEYS:
                ti.xcom_push(key=key, value=result[key])
            self.log.info("Checkpoint: %s; metrics: %s", result["checkpoint_path"], result["metrics"])
            return result
        raise self._job_error(job_id, info, manifest, logs)

    def _job_error(
        self, job_id: str, info: dict[str, Any], manifest: ResultManifest | None, logs: str
    ) -> RayTrainJobError:
        status = str(info["status"])
        error_type = info.get("error_type")
        parts = [f"Ray job {job_id} {status}" + (f" ({error_type})" if error_type else "") + "."]
        if manifest is not None and manifest.error:
            parts.append(f"Training error: {manifest.error['type']}: {manifest.error['message']}")
        elif status == "SUCCEEDED":
            parts.append("The job succeeded but printed no readable manifest; was it run by this provider's runtime?")
        if info.get("message"):
            parts.append(f"Ray says: {str(info['message']).strip()[-1500:]}")
        tail = [line for line in logs.splitlines() if not line.startswith(MANIFEST_MARKER)][-LOG_TAIL_LINES:]
        if tail:
            parts.append("Last lines of the job log:\n" + "\n".join(tail))
        if manifest is not None:
            parts.append(f"Manifest: {manifest.manifest_path}")
            if manifest.checkpoint_path:
                parts.append(f"Latest checkpoint (kept; a retry resumes from it): {manifest.checkpoint_path}")
        parts.append(f"Dashboard: {self.hook.dashboard_url(job_id)}")
        return RayTrainJobError(
            "\n".join(parts),
            job_id=job_id,
            status=status,
            error_type=error_type,
            manifest=manifest.to_dict() if manifest else None,
            manifest_path=manifest.manifest_path if manifest else None,
        )

    def on_kill(self) -> None:
        """Stop the Ray job (and with it its Train workers) when Airflow kills the task."""
        if self.job_id is None:
            return
        status = self.hook.stop_job_and_wait(self.job_id)
        self.log.info("Stopped Ray job %s on kill: %s", self.job_id, status)


__all__ = ["RayTrainOperator", "manifest_to_xcom", "ray_run_name", "ray_submission_id"]

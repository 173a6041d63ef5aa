"""What a finished Ray job becomes on the Airflow side: the XCom contract from its manifest, or the error the
task fails with (its class decides whether Airflow retries)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_ray_train.exceptions import RayTrainJobError, RayTrainJobSetupError
from airflow_ray_train.hooks.jobs_api import last_exception_line
from airflow_ray_train.packaging import RUNTIME_PACKAGE
from airflow_ray_train_runtime.spec import (
    RUNTIME_DISTRIBUTION,
    RUNTIME_VERSION,
    JobStatus,
    ResultManifest,
    SpecError,
    manifest_from_log,
)

#: Keys pushed to XCom on their own besides ``return_value``.
XCOM_KEYS = ("checkpoint_path", "metrics", "best_checkpoint_path", "usage")
#: What a ``model_asset`` event's extra carries to the DAGs scheduled on the Asset.
ASSET_EXTRA_KEYS = (
    "checkpoint_path",
    "best_checkpoint_path",
    "metrics",
    "run_path",
    "job_id",
    "submission_id",
    "mlflow_run_id",
    "mlflow_run_url",
    "model_version",
)
#: The manifest's paths and MLflow names (and why it trained untracked), None in XCom when there is no manifest
#: (or the run is untracked).
_PATH_KEYS = (
    "checkpoint_path",
    "best_checkpoint_path",
    "run_path",
    "metrics_history_path",
    "learning_curve_path",
    "manifest_path",
    "mlflow_run_id",
    "mlflow_run_url",
    "model_version",
    "mlflow_warning",
)
#: Ray job ``error_type``s a retry cannot fix: the job's runtime_env is wrong.
SETUP_ERROR_TYPES = frozenset({"RUNTIME_ENV_SETUP_FAILURE", "JOB_SUPERVISOR_ACTOR_START_FAILURE"})
#: Driver errors a retry on the same cluster cannot fix (the manifest's ``error.type``).
NOT_RETRIED_TRAIN_ERRORS = frozenset({"TrainFuncImportError", "UnsupportedClusterError"})


def read_manifest(line: str | None, job_id: str | None = None) -> tuple[ResultManifest | None, str | None]:
    """The manifest in the driver's log line (or a whole log), and why it could not be read (else None).

    ``job_id``: the Ray job whose log it is. A manifest that names another job (a line its data printed, a
    manifest copied from another run) is refused: the result comes only from the job's own manifest."""
    if not line:
        return None, None
    try:
        manifest = manifest_from_log(line)
    except SpecError as exc:
        return None, str(exc)
    if manifest is not None and job_id is not None and manifest.submission_id != job_id:
        return None, (
            f"its submission_id is {manifest.submission_id!r}, not this job's ({job_id!r}): a manifest is read only "
            "from the job that wrote it"
        )
    return manifest, None


def manifest_to_xcom(
    manifest: ResultManifest | None, *, job_id: str, submission_id: str, dashboard_url: str, status: str
) -> dict[str, Any]:
    """The XCom contract, the same on every path (sync, deferrable, attach, collect)."""
    result: dict[str, Any] = {key: getattr(manifest, key) if manifest else None for key in _PATH_KEYS}
    result["metrics"] = dict(manifest.metrics) if manifest else {}
    result["best_checkpoints"] = (
        [{"path": r.path, "metrics": dict(r.metrics)} for r in manifest.best_checkpoints] if manifest else []
    )
    result.update(job_id=job_id, submission_id=submission_id, dashboard_url=dashboard_url, status=status)
    result["error"] = dict(manifest.error) if manifest and manifest.error else None
    result["usage"] = {}  # filled in by the operator (airflow_ray_train.usage), with the job's times
    return result


def job_failure(
    job_id: str,
    info: Mapping[str, Any],
    manifest: ResultManifest | None,
    log_tail: Sequence[str],
    dashboard_url: str,
) -> RayTrainJobError:
    """The error of a job that did not succeed: what Ray and the driver said, the log's last lines, and what
    was kept. ``RayTrainJobSetupError`` (no retries) when a retry cannot help."""
    status = str(info["status"])
    error_type = info.get("error_type")
    train_error = manifest.error if manifest is not None and manifest.error else None
    setup_failed = error_type in SETUP_ERROR_TYPES
    # The cluster lacks the code or cannot run the runtime: a retry on the same cluster fails the same way.
    code_missing = train_error is not None and train_error["type"] in NOT_RETRIED_TRAIN_ERRORS
    parts = [f"Ray job {job_id} {status}" + (f" ({error_type})" if error_type else "") + "."]
    if setup_failed:
        parts.append(
            "The job's runtime_env could not be set up on the cluster. Fix: check the task's runtime_env "
            "and the connection's runtime_env extra (pip/uv package names and versions, env_vars values "
            "as strings, py_modules/working_dir URIs the cluster can fetch). A retry cannot fix this."
        )
    if train_error is not None:
        parts.append(f"Training error: {train_error['type']}: {train_error['message']}")
        if "worker group startup timed out" in train_error["message"]:
            parts.append(
                "Ray Train could not start its workers: the resources scaling_config asks for did not "
                "become free in time. Fix: lower scaling_config.num_workers or resources_per_worker, free "
                "the cluster, or raise run_config.failure_config.controller_failure_limit to wait longer."
            )
    elif status == JobStatus.SUCCEEDED:
        parts.append("The job succeeded but printed no readable manifest; was it run by this provider's runtime?")
    runtime_refused = runtime_problem(log_tail)
    if runtime_refused:
        parts.append(runtime_refused)
    if info.get("message"):
        ray_message = str(info["message"]).strip()
        shown = last_exception_line(ray_message) if setup_failed else None
        parts.append(f"Ray says: {shown or ray_message[-1500:]}")
    if log_tail:
        parts.append("Last lines of the job log:\n" + "\n".join(log_tail))
    if manifest is not None:
        parts.append(f"Manifest: {manifest.manifest_path}")
        if manifest.checkpoint_path:
            parts.append(f"Latest checkpoint (kept; a retry resumes from it): {manifest.checkpoint_path}")
    parts.append(f"Dashboard: {dashboard_url}")
    error_class = RayTrainJobSetupError if setup_failed or code_missing or runtime_refused else RayTrainJobError
    return error_class(
        "\n".join(parts),
        job_id=job_id,
        status=status,
        error_type=error_type,
        manifest=manifest.to_dict() if manifest else None,
        manifest_path=manifest.manifest_path if manifest else None,
    )


#: The most a task's result may take in XCom (JSON bytes); the metadata DB holds it. Beyond it the result is cut
#: (``capped``): the full history and every checkpoint are in storage (``metrics_history_path``, ``run_path``).
XCOM_MAX_BYTES = 64 * 2**10
#: Best checkpoints kept in a capped result.
CAPPED_BEST_CHECKPOINTS = 10


def _size(value: Any) -> int:
    return len(json.dumps(value, default=str))


def _scalars(metrics: Mapping[str, Any], limit: int = 200) -> dict[str, Any]:
    """The metrics that are numbers, booleans or short strings (a loop may report whole arrays)."""
    kept = {}
    for key, value in metrics.items():
        if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= limit):
            kept[key] = value
    return kept


def capped(result: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``result`` within ``XCOM_MAX_BYTES``, and what was cut (None when nothing was): first the best
    checkpoints beyond ``CAPPED_BEST_CHECKPOINTS``, then every metric that is not a number or a short string."""
    if _size(result) <= XCOM_MAX_BYTES:
        return result, None
    cut = dict(result)
    best = list(cut.get("best_checkpoints") or [])
    cut["best_checkpoints"] = [
        {**entry, "metrics": _scalars(entry.get("metrics") or {})} for entry in best[:CAPPED_BEST_CHECKPOINTS]
    ]
    cut["metrics"] = _scalars(cut.get("metrics") or {})
    if _size(cut) > XCOM_MAX_BYTES:
        cut["best_checkpoints"] = cut["best_checkpoints"][:1]
        cut["metrics"] = dict(list(cut["metrics"].items())[:50])
    note = (
        f"The result was {_size(result)} bytes, over the {XCOM_MAX_BYTES} an XCom may take: kept "
        f"{len(cut['best_checkpoints'])} of {len(best)} best checkpoints and {len(cut['metrics'])} of "
        f"{len(result.get('metrics') or {})} metrics. Every report is in {result.get('metrics_history_path')}."
    )
    return cut, note


def push_job(ti: Any, job_id: str, dashboard_url: str) -> None:
    """The job's id and dashboard URL, pushed before waiting (the "Ray Job" link works while the job runs:
    Airflow 3 fills link XComs only when a task ends)."""
    from airflow_ray_train.links.ray_train import RayJobLink

    ti.xcom_push(key="job_id", value=job_id)
    ti.xcom_push(key="submission_id", value=job_id)
    ti.xcom_push(key="dashboard_url", value=dashboard_url)
    ti.xcom_push(key=RayJobLink().xcom_key, value=dashboard_url)


def push_mlflow_run(ti: Any, run_id: str, run_url: str | None) -> None:
    """The MLflow run's id and URL (the "MLflow Run" link), pushed at once, like the Ray job's."""
    from airflow_ray_train.links.mlflow import MLFLOW_RUN_URL_KEY, MlflowRunLink

    ti.xcom_push(key="mlflow_run_id", value=run_id)
    ti.xcom_push(key=MLFLOW_RUN_URL_KEY, value=run_url)
    ti.xcom_push(key=MlflowRunLink().xcom_key, value=run_url)


def push_result(ti: Any, result: Mapping[str, Any]) -> None:
    """The keys of the result that are pushed on their own besides ``return_value``."""
    for key in XCOM_KEYS:
        ti.xcom_push(key=key, value=result[key])


def runtime_problem(log_tail: Sequence[str] | None) -> str | None:
    """What the log says about the cluster's runtime, when the job could not run it: none installed where the
    job ran without shipping it, or one of another major.minor that refused the spec. A retry cannot fix it."""
    text = "\n".join(log_tail or ())
    if f"No module named '{RUNTIME_PACKAGE}'" in text:
        return (
            f"The cluster's Python has no {RUNTIME_DISTRIBUTION} (the job ran without shipping it: ship_runtime "
            f"'never'). Fix: install '{RUNTIME_DISTRIBUTION}=={RUNTIME_VERSION}' on every Ray node (the cluster's "
            "image), or set ship_runtime to 'auto'. A retry cannot fix this."
        )
    if "Invalid TrainSpec: runtime_version" in text:
        return (
            f"The cluster's {RUNTIME_DISTRIBUTION} refused this provider's spec (see the log). A retry cannot fix this."
        )
    return None

"""Errors raised on the Airflow side. Each message says what went wrong and what to do next.

Errors that a retry cannot fix (bad input, a rejected token) derive from ``AirflowFailException`` so
Airflow fails the task at once instead of spending its retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_ray_train.compat import AirflowException, AirflowFailException

if TYPE_CHECKING:
    from airflow_ray_train.hooks.jobs_api import JobInfo


class RayTrainError(AirflowException):
    """Base class for airflow-ray-train errors."""


class RayTrainConfigError(RayTrainError, AirflowFailException):
    """The task's input is invalid; raised before anything is submitted. ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RayTrainClusterError(RayTrainError):
    """The Ray cluster could not be reached, or answered with an error."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class RayTrainAuthError(RayTrainClusterError, AirflowFailException):
    """The cluster rejected the token (HTTP 401/403) before anything was submitted."""


class RayTrainJobExistsError(RayTrainClusterError):
    """A job with the submission id already exists on the cluster; ``job`` holds its details."""

    def __init__(self, message: str, job: JobInfo) -> None:
        super().__init__(message)
        self.job = job


class RayTrainWatchError(RayTrainClusterError):
    """A submitted job could not be watched to its end (the cluster went away, the token was rejected).
    Retryable: the next try attaches to the job, or resumes its Train run if it was stopped."""


class RayTrainMlflowError(RayTrainError):
    """The MLflow tracking server could not be reached (``unreachable``), or answered with an error:
    ``error_code`` and ``reason`` are MLflow's own."""

    def __init__(
        self,
        message: str,
        *,
        unreachable: bool = False,
        http_status: int | None = None,
        error_code: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.http_status = http_status
        self.error_code = error_code
        self.reason = reason


class RayTrainMlflowAuthError(RayTrainMlflowError, AirflowFailException):
    """The MLflow tracking server rejected the credentials (HTTP 401/403) before anything was submitted."""


class RayTrainJobError(RayTrainError):
    """The Ray job ended without success. Carries the job's id, status, Ray's error type and the manifest."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        status: str,
        error_type: str | None = None,
        manifest: dict[str, Any] | None = None,
        manifest_path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status
        self.error_type = error_type
        self.manifest = manifest
        self.manifest_path = manifest_path


class RayTrainJobSetupError(RayTrainJobError, AirflowFailException):
    """The Ray job could not start training for a reason a retry cannot fix: its ``runtime_env`` failed to
    set up, or ``train_func`` is not importable on the cluster. Fails the task without spending retries."""

"""Shipping code to a Ray cluster: the runtime and the user's packages as content-addressed ``gcs://`` packages,
uploaded once (``/api/packages/gcs/<name>``), and the job's ``runtime_env`` that names them. A mixin of
``RayTrainHook``: it sends through the hook's ``_request``.

The runtime (``airflow-ray-train-runtime``) ships with each job unless the cluster has it installed
(``[ray_train] ship_runtime``, ``ships_runtime``): a small probe job asks the cluster's Python which version it
has, under a submission id fixed per cluster Python, runtime version and hour, so the tasks of that hour read
its answer instead of asking again.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_ray_train.exceptions import RayTrainConfigError, RayTrainJobExistsError
from airflow_ray_train.hooks import jobs_api
from airflow_ray_train.packaging import Package, runtime_package
from airflow_ray_train.runtime_env import merge_runtime_env, with_py_modules
from airflow_ray_train_runtime.spec import RUNTIME_DISTRIBUTION, RUNTIME_VERSION, JobStatus, runtime_version_problem

if TYPE_CHECKING:
    from airflow_ray_train.hooks.jobs_api import JobInfo, Reply
    from airflow_ray_train.hooks.settings import ClusterSettings


class ShipRuntime(StrEnum):
    """``[ray_train] ship_runtime``: whether a job carries the runtime (see the module docstring)."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"

    @classmethod
    def parse(cls, value: Any, field: str = "ship_runtime") -> ShipRuntime:
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise RayTrainConfigError(
                f"{field} is {value!r}. Fix: use one of {[mode.value for mode in cls]}", field=field
            ) from None


#: The probe's submission ids start with this; its log line with ``PROBE_LINE``.
PROBE_PREFIX = "airflow_ray_train_runtime_probe"
PROBE_LINE = f"{RUNTIME_DISTRIBUTION} installed:"
#: How long a task waits for the probe's answer (it starts a Python and reads one package's metadata).
PROBE_TIMEOUT_S = 60.0
PROBE_POLL_S = 0.5
#: One probe per cluster Python and runtime version for this long: an image change shows within the hour.
PROBE_PERIOD_S = 3600
_PROBE_CODE = f"""import importlib.metadata as m
try:
    version = m.version({RUNTIME_DISTRIBUTION!r})
except m.PackageNotFoundError:
    version = "none"
print({PROBE_LINE!r}, version)
"""


class CodeShipping:
    """Upload packages and build the job's ``runtime_env`` and entrypoint."""

    bytes_uploaded: int
    log: Any

    @property
    def settings(self) -> ClusterSettings:
        raise NotImplementedError

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Reply:
        raise NotImplementedError

    def submit_job(self, *, entrypoint: str, submission_id: str, **optional: Any) -> str:
        raise NotImplementedError

    def find_job(self, job_id: str) -> JobInfo | None:
        raise NotImplementedError

    def get_job_logs(self, job_id: str) -> str:
        raise NotImplementedError

    # -- the runtime: shipped or installed --------------------------------------------------------------------

    def probe_submission_id(self, now: float | None = None) -> str:
        """The probe job's id for this cluster Python and runtime version in the current hour."""
        period = int((time.time() if now is None else now) // PROBE_PERIOD_S)
        key = hashlib.sha256(f"{self.settings.python}|{RUNTIME_VERSION}|{period}".encode()).hexdigest()[:16]
        return f"{PROBE_PREFIX}_{key}"

    def installed_runtime(self) -> str | None:
        """The ``airflow-ray-train-runtime`` version the cluster's Python has installed, ``""`` when it has
        none, or None when the probe gave no answer in ``PROBE_TIMEOUT_S`` (a busy or broken cluster)."""
        submission_id = self.probe_submission_id()
        job = self.find_job(submission_id)
        if job is None:
            entrypoint = f"{shlex.quote(self.settings.python)} -c {shlex.quote(_PROBE_CODE)}"
            metadata = {"airflow_ray_train": f"which {RUNTIME_DISTRIBUTION} the cluster has installed"}
            try:
                self.submit_job(
                    entrypoint=entrypoint, submission_id=submission_id, entrypoint_num_cpus=0, metadata=metadata
                )
            except RayTrainJobExistsError:
                pass  # another task asked at the same moment: its answer is ours
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while job is None or not JobStatus.ended(job.status):
            if time.monotonic() > deadline:
                return None
            time.sleep(PROBE_POLL_S)
            job = self.find_job(submission_id)
        for line in self.get_job_logs(submission_id).splitlines():
            if line.startswith(PROBE_LINE):
                found = line[len(PROBE_LINE) :].strip()
                return "" if found == "none" else found
        return None

    def ships_runtime(self, mode: ShipRuntime) -> bool:
        """Whether this job carries the runtime: ``always``; ``auto`` unless the cluster has this very version
        installed; never with ``never``, which fails here (before anything is submitted) when the cluster has
        none, or one of another major.minor, naming both versions and the fix."""
        if mode is ShipRuntime.ALWAYS:
            return True
        installed = self.installed_runtime()
        if mode is ShipRuntime.AUTO:
            ships = installed != RUNTIME_VERSION
            if installed is None:
                found = f"The probe of the cluster's {RUNTIME_DISTRIBUTION} gave no answer"
            else:
                found = f"The cluster's Python has {RUNTIME_DISTRIBUTION} {installed or '(none)'}"
            self.log.info(
                "%s: %s",
                found,
                f"shipping the runtime {RUNTIME_VERSION} with the job" if ships else "the job runs on it (no upload)",
            )
            return ships
        if installed == "":
            raise RayTrainConfigError(
                f"ship_runtime is 'never', but the cluster's Python ({self.settings.python}) has no "
                f"{RUNTIME_DISTRIBUTION} installed. Fix: install '{RUNTIME_DISTRIBUTION}=={RUNTIME_VERSION}' on "
                "every Ray node (the cluster's image), or set ship_runtime to 'auto' (ship it with each job)",
                field="ship_runtime",
            )
        problem = None if installed is None else runtime_version_problem(RUNTIME_VERSION, installed)
        if problem is not None:
            raise RayTrainConfigError(
                f"ship_runtime is 'never', and the cluster's runtime does not match: runtime_version {problem[0]}. "
                f"Fix: {problem[1]}",
                field="ship_runtime",
            )
        if installed is None:
            self.log.warning(
                "The probe of the cluster's %s gave no answer in %.0f s; the job's driver checks the version itself.",
                RUNTIME_DISTRIBUTION,
                PROBE_TIMEOUT_S,
            )
        else:
            self.log.info("The job runs on the cluster's %s %s (ship_runtime 'never')", RUNTIME_DISTRIBUTION, installed)
        return False

    def package_exists(self, package: Package) -> bool:
        reply = self._request("GET", jobs_api.package_path(package.name), ok=(200, 404))
        if reply.status_code not in (200, 404):
            raise jobs_api.http_error(self.settings, "GET", jobs_api.package_path(package.name), reply)
        return reply.status_code == 200

    def upload_package(self, package: Package) -> int:
        """Upload ``package`` unless the cluster has it already (same bytes, same name). Returns bytes sent."""
        if self.package_exists(package):
            return 0
        path = jobs_api.package_path(package.name)
        headers = {"Content-Length": str(package.size)}
        reply = self._request("PUT", path, content=package.chunks(), headers=headers)
        if reply.status_code != 200:
            raise jobs_api.http_error(self.settings, "PUT", path, reply)
        self.bytes_uploaded += package.size
        self.log.info("Uploaded %s (%d bytes) as %s", package.source, package.size, package.uri)
        return package.size

    def upload_packages(self, packages: Sequence[Package]) -> int:
        """Upload each package the cluster does not have yet; returns the bytes sent."""
        return sum(self.upload_package(package) for package in packages)

    def job_runtime_env(
        self, runtime_env: dict[str, Any] | None, packages: Sequence[Package] = (), *, ship_runtime: bool = True
    ) -> tuple[dict[str, Any], list[Package]]:
        """The job's ``runtime_env`` (the task's over the connection's default) with ``py_modules`` holding the
        runtime package (unless ``ship_runtime`` is False: the cluster has it installed) and ``packages``, and
        the packages to upload for it. Uploads nothing."""
        runtime = [runtime_package()] if ship_runtime else []
        shipped = list({p.uri: p for p in (*runtime, *packages)}.values())
        env = merge_runtime_env(self.settings.runtime_env, runtime_env)
        return with_py_modules(env, [p.uri for p in shipped]), shipped

    def build_runtime_env(
        self, runtime_env: dict[str, Any] | None, *, packages: Sequence[Package] = (), ship_runtime: bool = True
    ) -> dict[str, Any]:
        """``job_runtime_env``, with its packages uploaded."""
        env, shipped = self.job_runtime_env(runtime_env, packages, ship_runtime=ship_runtime)
        self.upload_packages(shipped)
        return env

    def runtime_entrypoint(self, spec_arg: str) -> str:
        """The job's entrypoint: the runtime driver under the cluster's interpreter."""
        return f"{shlex.quote(self.settings.python)} -m airflow_ray_train_runtime {shlex.quote(spec_arg)}"

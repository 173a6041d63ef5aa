"""Shipping code to a Ray cluster: the runtime and the user's packages as content-addressed ``gcs://`` packages,
uploaded once (``/api/packages/gcs/<name>``), and the job's ``runtime_env`` that names them. A mixin of
``RayTrainHook``: it sends through the hook's ``_request``."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_ray_train.hooks import jobs_api
from airflow_ray_train.packaging import Package, runtime_package
from airflow_ray_train.runtime_env import merge_runtime_env, with_py_modules

if TYPE_CHECKING:
    from airflow_ray_train.hooks.jobs_api import Reply
    from airflow_ray_train.hooks.settings import ClusterSettings


class CodeShipping:
    """Upload packages and build the job's ``runtime_env`` and entrypoint."""

    bytes_uploaded: int
    log: Any

    @property
    def settings(self) -> ClusterSettings:
        raise NotImplementedError

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Reply:
        raise NotImplementedError

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
        self, runtime_env: dict[str, Any] | None, packages: Sequence[Package] = ()
    ) -> tuple[dict[str, Any], list[Package]]:
        """The job's ``runtime_env`` (the task's over the connection's default) with ``py_modules`` holding the
        runtime package and ``packages``, and the packages to upload for it. Uploads nothing."""
        shipped = list({p.uri: p for p in (runtime_package(), *packages)}.values())
        env = merge_runtime_env(self.settings.runtime_env, runtime_env)
        return with_py_modules(env, [p.uri for p in shipped]), shipped

    def build_runtime_env(
        self, runtime_env: dict[str, Any] | None, *, packages: Sequence[Package] = ()
    ) -> dict[str, Any]:
        """``job_runtime_env``, with its packages uploaded."""
        env, shipped = self.job_runtime_env(runtime_env, packages)
        self.upload_packages(shipped)
        return env

    def runtime_entrypoint(self, spec_arg: str) -> str:
        """The job's entrypoint: the runtime driver under the cluster's interpreter."""
        return f"{shlex.quote(self.settings.python)} -m airflow_ray_train.runtime {shlex.quote(spec_arg)}"

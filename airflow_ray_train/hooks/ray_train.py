"""``RayTrainHook``: the Ray Jobs REST API over httpx. No ``ray`` import: Airflow does not need Ray installed.

Connection ``ray_train`` (default id ``ray_train_default``): host is the Ray dashboard address
(``http://head:8265``), password the Ray auth token (sent as ``Authorization: Bearer``). Extras:
``verify`` (TLS verification, on by default; or a CA bundle path), ``headers`` (extra HTTP headers),
``runtime_env`` (merged under each job's), ``python`` (the interpreter the job entrypoint runs, default
``python``). No connection, or host ``local``: the embedded local Ray head (see ``local_cluster``).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError, RayTrainConfigError
from airflow_ray_train.packaging import Package, code_package, runtime_package

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
LOCAL_HOSTS = frozenset({"", "local", "embedded"})
_RETRY_STATUS = frozenset({502, 503, 504})


@dataclass(frozen=True)
class ClusterSettings:
    """Where the cluster is and how to talk to it, resolved from the connection (or the embedded head)."""

    address: str
    token: str | None = None
    verify: bool | str = True
    headers: dict[str, str] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)
    python: str = "python"
    embedded: bool = False

    def __repr__(self) -> str:  # never show the token
        return f"ClusterSettings(address={self.address!r}, embedded={self.embedded}, verify={self.verify!r})"


def _as_bool(value: Any) -> bool | str:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on", ""):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        return value  # a CA bundle path
    return bool(value)


def _json_extra(extras: dict[str, Any], key: str) -> Any:
    value = extras.get(key)
    if isinstance(value, str) and value.strip():
        try:
            return json.loads(value)
        except ValueError as exc:
            raise RayTrainConfigError(f"connection extra {key!r} is not valid JSON: {exc}", field=key) from exc
    return value


class RayTrainHook(BaseHook):
    """Submit, watch, read and stop Ray jobs through the Ray Jobs REST API.

    :param ray_conn_id: the ``ray_train`` connection; missing (or host ``local``) means the embedded head.
    :param timeout: seconds per HTTP request.
    :param max_retries: retries, with exponential backoff, when the cluster cannot be reached.
    :param retry_backoff: seconds before the first retry; doubles each time.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_train_default"
    conn_type = "ray_train"
    hook_name = "Ray Train"

    def __init__(
        self,
        ray_conn_id: str = default_conn_name,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.bytes_uploaded = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Ray dashboard address", "password": "Ray auth token"},
            "placeholders": {
                "host": "http://ray-head:8265 (or 'local' for an embedded local cluster)",
                "password": "output of `ray get-auth-token` (leave empty if auth is off)",
                "extra": '{"verify": true, "headers": {}, "runtime_env": {}, "python": "python"}',
            },
        }

    @cached_property
    def settings(self) -> ClusterSettings:
        try:
            conn = self.get_connection(self.ray_conn_id)
        except AirflowNotFoundException:
            if self.ray_conn_id != self.default_conn_name:
                raise RayTrainConfigError(
                    f"connection {self.ray_conn_id!r} does not exist. Fix: create it (type 'ray_train', host = "
                    "your Ray dashboard address) or leave ray_conn_id at 'ray_train_default' for the embedded "
                    "local cluster.",
                    field="ray_conn_id",
                ) from None
            return self._embedded_settings({})
        extras = conn.extra_dejson or {}
        host = (conn.host or "").strip()
        if host.lower() in LOCAL_HOSTS:
            return self._embedded_settings(extras)
        if "://" not in host:
            scheme = conn.schema or "http"
            host = f"{scheme}://{host}"
        if conn.port and host.count(":") < 2:
            host = f"{host}:{conn.port}"
        headers = _json_extra(extras, "headers") or {}
        runtime_env = _json_extra(extras, "runtime_env") or {}
        return ClusterSettings(
            address=host.rstrip("/"),
            token=conn.password or None,
            verify=_as_bool(extras.get("verify", True)),
            headers={str(k): str(v) for k, v in headers.items()},
            runtime_env=dict(runtime_env),
            python=str(extras.get("python") or "python"),
        )

    def _embedded_settings(self, extras: dict[str, Any]) -> ClusterSettings:
        import sys

        from airflow_ray_train.local_cluster import LocalRayCluster

        try:
            head = LocalRayCluster().ensure()
        except RuntimeError as exc:
            raise RayTrainClusterError(str(exc)) from exc
        runtime_env = _json_extra(extras, "runtime_env") or {}
        # Same machine: run the job with the interpreter running Airflow, which has ray and torch.
        return ClusterSettings(
            address=head.dashboard_url,
            token=head.token,
            verify=True,
            runtime_env=dict(runtime_env),
            python=sys.executable,
            embedded=True,
        )

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = dict(self.settings.headers)
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        return headers

    @cached_property
    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.settings.address,
            headers=self._headers(),
            verify=self.settings.verify,
            timeout=self.timeout,
        )

    def get_conn(self) -> httpx.Client:
        return self.client

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        delay = self.retry_backoff
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise RayTrainClusterError(
                        f"cannot reach the Ray cluster at {self.settings.address} ({type(exc).__name__}: {exc}) "
                        f"after {self.max_retries + 1} attempts. Fix: check that the head is up and that the "
                        f"'{self.ray_conn_id}' connection's host is its dashboard address (port 8265 by default)."
                    ) from exc
            else:
                if response.status_code in (401, 403):
                    raise RayTrainAuthError(
                        f"the Ray cluster at {self.settings.address} rejected the request to {path} "
                        f"(HTTP {response.status_code}: {response.text.strip()[:200]}). Fix: set the password of "
                        f"connection '{self.ray_conn_id}' to the cluster's token (`ray get-auth-token` on the head).",
                        http_status=response.status_code,
                    )
                if response.status_code in ok or response.status_code not in _RETRY_STATUS:
                    return response
                if attempt == self.max_retries:
                    return response
            self.log.warning("Ray cluster %s not ready (attempt %d), retrying in %.1f s", path, attempt + 1, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise RayTrainClusterError(
                f"{method} {path} on {self.settings.address} failed with HTTP {response.status_code}: "
                f"{response.text.strip()[:2000]}",
                http_status=response.status_code,
            )
        return response.json()

    # -- Jobs API -----------------------------------------------------------------------------------------

    def get_version(self) -> dict[str, Any]:
        return dict(self._json("GET", "/api/version"))

    def test_connection(self) -> tuple[bool, str]:
        try:
            version = self.get_version()
        except Exception as exc:  # noqa: BLE001 - the UI shows the message
            return False, str(exc)
        return True, f"Connected to Ray {version.get('ray_version')} at {self.settings.address}"

    def submit_job(
        self,
        *,
        entrypoint: str,
        submission_id: str,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_memory: int | None = None,
        entrypoint_resources: dict[str, float] | None = None,
    ) -> str:
        """Submit a job; returns its submission id. Raises ``RayTrainClusterError`` on rejection."""
        body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": submission_id}
        optional = {
            "runtime_env": runtime_env,
            "metadata": metadata,
            "entrypoint_num_cpus": entrypoint_num_cpus,
            "entrypoint_num_gpus": entrypoint_num_gpus,
            "entrypoint_memory": entrypoint_memory,
            "entrypoint_resources": entrypoint_resources,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return str(self._json("POST", "/api/jobs/", json=body)["submission_id"])

    def get_job_info(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/api/jobs/{job_id}"))

    def find_job(self, job_id: str) -> dict[str, Any] | None:
        """The job's details, or None if the cluster has no such job."""
        response = self._request("GET", f"/api/jobs/{job_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RayTrainClusterError(f"GET /api/jobs/{job_id} failed with HTTP {response.status_code}")
        return dict(response.json())

    def get_job_status(self, job_id: str) -> str:
        return str(self.get_job_info(job_id)["status"])

    def get_job_logs(self, job_id: str) -> str:
        return str(self._json("GET", f"/api/jobs/{job_id}/logs").get("logs") or "")

    def stop_job(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after 3 s). Returns whether it was running."""
        return bool(self._json("POST", f"/api/jobs/{job_id}/stop").get("stopped"))

    def stop_job_and_wait(self, job_id: str, timeout: float = 30.0) -> str:
        """Stop the job and wait until Ray reports it terminal; returns the final status."""
        self.stop_job(job_id)
        deadline = time.monotonic() + timeout
        status = self.get_job_status(job_id)
        while status not in TERMINAL_STATUSES and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self.get_job_status(job_id)
        return status

    def delete_job(self, job_id: str) -> bool:
        return bool(self._json("DELETE", f"/api/jobs/{job_id}").get("deleted"))

    def list_jobs(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/jobs/"))

    def dashboard_url(self, job_id: str) -> str:
        return f"{self.settings.address}/#/jobs/{job_id}"

    def wait_for_job(
        self,
        job_id: str,
        *,
        poll_interval: float = 2.0,
        on_logs: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is terminal, handing each new piece of its log to ``on_logs``.

        Returns the final job details. Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        offset = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.get_job_info(job_id)
            if on_logs is not None:
                logs = self.get_job_logs(job_id)
                if len(logs) > offset:
                    on_logs(logs[offset:])
                    offset = len(logs)
            if info["status"] in TERMINAL_STATUSES:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info['status']} after {timeout} s")
            time.sleep(poll_interval)

    # -- code shipping ------------------------------------------------------------------------------------

    def package_exists(self, package: Package) -> bool:
        response = self._request("GET", f"/api/packages/gcs/{package.name}", ok=(200, 404))
        if response.status_code not in (200, 404):
            raise RayTrainClusterError(f"checking package {package.name} failed with HTTP {response.status_code}")
        return response.status_code == 200

    def upload_package(self, package: Package) -> int:
        """Upload ``package`` unless the cluster has it already (same bytes, same name). Returns bytes sent."""
        if self.package_exists(package):
            return 0
        response = self._request("PUT", f"/api/packages/gcs/{package.name}", content=package.data)
        if response.status_code != 200:
            raise RayTrainClusterError(
                f"uploading {package.source} as {package.name} failed with HTTP {response.status_code}: "
                f"{response.text.strip()[:500]}"
            )
        self.bytes_uploaded += len(package.data)
        self.log.info("Uploaded %s (%d bytes) as %s", package.source, len(package.data), package.uri)
        return len(package.data)

    def build_runtime_env(self, runtime_env: dict[str, Any] | None, code_modules: list[str]) -> dict[str, Any]:
        """The job's ``runtime_env``: the connection's default, then the task's, plus ``py_modules`` with the
        runtime package and the top-level packages that hold ``code_modules``, uploaded where missing."""
        env = {**self.settings.runtime_env, **(runtime_env or {})}
        packages = [runtime_package()]
        for module in code_modules:
            package = code_package(module)
            if package is not None and package.uri not in {p.uri for p in packages}:
                packages.append(package)
        for package in packages:
            self.upload_package(package)
        user_modules = [
            m for m in env.get("py_modules", []) if str(m).startswith(("gcs://", "s3://", "gs://", "https://"))
        ]
        local = [m for m in env.get("py_modules", []) if m not in user_modules]
        if local:
            raise RayTrainConfigError(
                f"runtime_env.py_modules holds local paths {local}; the Jobs REST API takes only URIs. "
                "Fix: leave your code to the operator (it ships the package that holds train_func) or give "
                "remote URIs (gcs://, s3://, https://...zip).",
                field="runtime_env.py_modules",
            )
        env["py_modules"] = [p.uri for p in packages] + user_modules
        return env

    def runtime_entrypoint(self, spec_arg: str) -> str:
        """The job's entrypoint: the runtime driver under the cluster's interpreter."""
        return f"{shlex.quote(self.settings.python)} -m airflow_ray_train.runtime {shlex.quote(spec_arg)}"

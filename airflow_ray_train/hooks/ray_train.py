"""``RayTrainHook``: the Ray Jobs REST API over httpx. No ``ray`` import: Airflow does not need Ray installed.

Connection ``ray_train`` (default id ``ray_train_default``): host is the Ray dashboard address
(``http://head:8265``), password the Ray auth token (sent as ``Authorization: Bearer``). Extras:
``verify`` (TLS verification, on by default; or a CA bundle path), ``ca_bundle`` (a CA bundle path),
``headers`` (extra HTTP headers),
``runtime_env`` (merged under each job's), ``python`` (the interpreter the job entrypoint runs, default
``python``). No connection, or host ``local``: the embedded local Ray head (see ``local_cluster``).

``AsyncRayTrainHook`` is the async twin of the calls the triggerer needs (job status, logs, stop).

Waiting for a job (``wait_for_job`` here, ``RayTrainJobTrigger`` in the triggerer) follows the job's log over
the Jobs API's websocket (``/api/jobs/{id}/logs/tail``): new lines arrive as Ray writes them (no re-download of
the whole log), and the job's last line, the result manifest, or the stream closing says the job is ending, so
the status is then polled every ``FINISHING_POLL_INTERVAL`` instead of every ``poll_interval``. Where the
stream cannot be opened (a proxy without websockets), the whole log is fetched with every status poll.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpx
from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import amask_secret, mask_secret

from airflow_ray_train.exceptions import (
    RayTrainAuthError,
    RayTrainClusterError,
    RayTrainConfigError,
    RayTrainJobExistsError,
)
from airflow_ray_train.packaging import Package, runtime_package
from airflow_ray_train.runtime.spec import MANIFEST_MARKER

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection as LogStream

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: Seconds between status polls once the log stream says the job is ending (manifest printed, stream closed).
FINISHING_POLL_INTERVAL = 0.2
#: The fast polls stop after this many seconds (a driver that hangs on its way out), back to ``poll_interval``.
FINISHING_WINDOW_S = 15.0
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


def settings_from_connection(
    conn: Connection | None, extras: dict[str, Any], conn_id: str, *, start_embedded: bool = False
) -> ClusterSettings:
    """Resolve where the cluster is from a connection (``None``: it does not exist). No network I/O, except
    that the embedded default looks up the local head (and starts it with ``start_embedded``)."""
    if conn is None:
        if conn_id != RayTrainHook.default_conn_name:
            raise RayTrainConfigError(
                f"connection {conn_id!r} does not exist. Fix: create it (type 'ray_train', host = "
                "your Ray dashboard address) or leave ray_conn_id at 'ray_train_default' for the embedded "
                "local cluster.",
                field="ray_conn_id",
            )
        return _embedded_settings({}, start=start_embedded)
    host = (conn.host or "").strip()
    if host.lower() in LOCAL_HOSTS:
        return _embedded_settings(extras, start=start_embedded)
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
        # A CA bundle (the form's ca_bundle field) verifies against it; else verify is true/false.
        verify=extras.get("ca_bundle") or _as_bool(extras.get("verify", True)),
        headers={str(k): str(v) for k, v in headers.items()},
        runtime_env=dict(runtime_env),
        python=str(extras.get("python") or "python"),
    )


def _embedded_settings(extras: dict[str, Any], *, start: bool) -> ClusterSettings:
    """The embedded local head's settings. Only the process that runs a task starts it (``start``); the
    triggerer and the API server only look it up: a head of their own would be an empty cluster."""
    from airflow_ray_train.local_cluster import LocalRayCluster

    cluster = LocalRayCluster()
    try:
        head = cluster.ensure() if start else cluster.running()
    except RuntimeError as exc:
        raise RayTrainClusterError(str(exc)) from exc
    if head is None:
        raise RayTrainClusterError(
            f"no embedded local Ray head is running on this machine (state: {cluster.state_file}). The "
            "embedded head is started by the task that submits a job, on the machine that runs it; this process "
            "(a triggerer, the API server) only looks it up. Fix: configure the 'ray_train_default' connection "
            "with the dashboard address of a Ray cluster every Airflow component reaches, or run the task first."
        )
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


def _http_headers(settings: ClusterSettings) -> dict[str, str]:
    headers = dict(settings.headers)
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    return headers


def log_stream_url(address: str, job_id: str) -> str:
    """The websocket that follows a job's log: ``ws(s)://<dashboard>/api/jobs/<id>/logs/tail``."""
    parts = urlsplit(address)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, f"{parts.path.rstrip('/')}/api/jobs/{job_id}/logs/tail", "", ""))


def _ssl_context(settings: ClusterSettings) -> ssl.SSLContext | None:
    """The TLS context of the log stream and the async hook: the same verification as the httpx calls."""
    if not settings.address.startswith("https"):
        return None
    if settings.verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(settings.verify, str):
        return ssl.create_default_context(cafile=settings.verify)
    return ssl.create_default_context()


def _ws_options(settings: ClusterSettings, open_timeout: float) -> dict[str, Any]:
    return {
        "additional_headers": _http_headers(settings),
        "ssl": _ssl_context(settings),
        "open_timeout": open_timeout,
        "close_timeout": 0.2,  # Ray answers a close only after its next file poll: don't wait for it
        "compression": None,  # Ray's dashboard proxy drops a compressed stream (ERROR, then close)
        "max_size": None,  # Ray sends up to 10 lines or 20,000 characters a message; a line can be longer
    }


class LogFollower:
    """Where a watcher is in a job's log as the log stream feeds it, and whether the job is ending.

    ``shown``: characters of the log already handed on (a new watcher starts at what was shown before it).
    The job is *finishing* once its result manifest went by (the driver prints it last, just before it
    exits) or the stream closed (Ray closes it after the job ended); then ``next_poll`` is
    ``FINISHING_POLL_INTERVAL`` for ``FINISHING_WINDOW_S`` seconds.
    """

    def __init__(self, shown: int = 0) -> None:
        self.shown = shown
        self.received = 0
        self.finishing_since: float | None = None
        self._recent = "\n"  # the manifest counts only at the start of a line

    def feed(self, message: str | bytes) -> str:
        """One message from the stream; returns the part of the log not shown yet."""
        chunk = message.decode(errors="replace") if isinstance(message, bytes) else message
        start = self.received
        self.received += len(chunk)
        window = self._recent + chunk
        if self.finishing_since is None and "\n" + MANIFEST_MARKER in window:
            self.finishing_since = time.monotonic()
        self._recent = window[-len(MANIFEST_MARKER) :]
        new = chunk[max(0, self.shown - start) :]
        self.shown = max(self.shown, self.received)
        return new

    def catch_up(self, logs: str) -> str:
        """The whole log, fetched by a poll: returns the part not shown yet."""
        new = logs[self.shown :]
        self.shown = max(self.shown, len(logs))
        return new

    def closed(self) -> None:
        if self.finishing_since is None:
            self.finishing_since = time.monotonic()

    @property
    def finishing(self) -> bool:
        return self.finishing_since is not None and time.monotonic() - self.finishing_since < FINISHING_WINDOW_S

    def next_poll(self, poll_interval: float) -> float:
        return min(poll_interval, FINISHING_POLL_INTERVAL) if self.finishing else poll_interval


def _unreachable_error(settings: ClusterSettings, conn_id: str, exc: Exception, attempts: int) -> RayTrainClusterError:
    return RayTrainClusterError(
        f"cannot reach the Ray cluster at {settings.address} ({type(exc).__name__}: {exc}) "
        f"after {attempts} attempts. Fix: check that the head is up and that the "
        f"'{conn_id}' connection's host is its dashboard address (port 8265 by default)."
    )


def _auth_error(
    settings: ClusterSettings, conn_id: str, path: str, response: httpx.Response | Reply
) -> RayTrainAuthError:
    return RayTrainAuthError(
        f"the Ray cluster at {settings.address} rejected the request to {path} "
        f"(HTTP {response.status_code}: {response.text.strip()[:200]}). Fix: set the password of "
        f"connection '{conn_id}' to the cluster's token (`ray get-auth-token` on the head).",
        http_status=response.status_code,
    )


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

    def _resolve_settings(self, *, start_embedded: bool = False) -> ClusterSettings:
        try:
            conn = self.get_connection(self.ray_conn_id)
        except AirflowNotFoundException:
            return settings_from_connection(None, {}, self.ray_conn_id, start_embedded=start_embedded)
        settings = settings_from_connection(
            conn, conn.extra_dejson or {}, self.ray_conn_id, start_embedded=start_embedded
        )
        for value in settings.headers.values():
            mask_secret(value)
        return settings

    @cached_property
    def settings(self) -> ClusterSettings:
        """Where the cluster is, from the connection. With no connection (or host ``local``) this looks up
        the embedded head and fails if none runs: ``ensure_embedded_head`` is what starts it."""
        return self._resolve_settings()

    def ensure_embedded_head(self) -> None:
        """Start the embedded local head when the connection asks for it (no connection, or host ``local``)
        and none runs; nothing for a remote cluster. Only the process that runs a task calls this."""
        if "settings" not in self.__dict__:
            self.__dict__["settings"] = self._resolve_settings(start_embedded=True)

    def reload_settings(self) -> None:
        """Read the connection again (its token may have been rotated) and open a new HTTP client."""
        self.close()
        self.__dict__.pop("settings", None)

    # -- HTTP ---------------------------------------------------------------------------------------------

    @cached_property
    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.settings.address,
            headers=_http_headers(self.settings),
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
        attempt, reloaded = 0, False
        while True:
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise _unreachable_error(self.settings, self.ray_conn_id, exc, attempt + 1) from exc
            else:
                if response.status_code in (401, 403):
                    if reloaded:
                        raise _auth_error(self.settings, self.ray_conn_id, path, response)
                    # The token may have been rotated in the connection since it was read: read it once more.
                    self.log.warning(
                        "The Ray cluster rejected the token (HTTP %s); reading the connection again",
                        response.status_code,
                    )
                    self.reload_settings()
                    reloaded = True
                    continue
                if response.status_code in ok or response.status_code not in _RETRY_STATUS:
                    return response
                if attempt >= self.max_retries:
                    return response
            self.log.warning("Ray cluster %s not ready (attempt %d), retrying in %.1f s", path, attempt + 1, delay)
            time.sleep(delay)
            delay *= 2
            attempt += 1

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
        try:
            return str(self._json("POST", "/api/jobs/", json=body)["submission_id"])
        except RayTrainClusterError as exc:
            # Ray answers a taken id with a 500 and a traceback; whether the id names a job says it for sure.
            existing = self.find_job(submission_id) if not isinstance(exc, RayTrainAuthError) else None
            if existing is None:
                raise
            raise RayTrainJobExistsError(
                f"Ray job {submission_id} already exists ({existing.get('status')})", job=existing
            ) from exc

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
        """Every job the cluster knows; ``metadata`` is always a dict (Ray gives None for a job without)."""
        return [{**job, "metadata": job.get("metadata") or {}} for job in self._json("GET", "/api/jobs/")]

    def find_jobs(self, submission_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The details of the jobs the cluster has under ``submission_ids`` and their resubmits (``<id>-2``,
        ``<id>-3`` ...), newest first within each id, in the order of ``submission_ids``."""
        found: list[dict[str, Any]] = []
        for submission_id in submission_ids:
            chain: list[dict[str, Any]] = []
            candidate, number = submission_id, 1
            while (info := self.find_job(candidate)) is not None:
                chain.append({**info, "metadata": info.get("metadata") or {}})
                number += 1
                candidate = f"{submission_id}-{number}"
            found.extend(reversed(chain))
        return found

    def get_cluster_nodes(self) -> list[dict[str, Any]] | None:
        """Total resources of each alive node (the state API's ``/api/v0/nodes``), or None where the cluster
        does not serve it."""
        response = self._request("GET", "/api/v0/nodes", params={"detail": "1", "limit": "10000"})
        if response.status_code != 200:
            return None
        try:
            nodes = response.json()["data"]["result"]["result"]
        except (ValueError, KeyError, TypeError):
            return None
        return [
            {"node_id": n.get("node_id"), "resources": dict(n.get("resources_total") or {})}
            for n in nodes
            if n.get("state") == "ALIVE"
        ]

    def dashboard_url(self, job_id: str) -> str:
        return f"{self.settings.address}/#/jobs/{job_id}"

    def open_log_stream(self, job_id: str) -> LogStream | None:
        """The websocket following the job's log, or None where it cannot be opened (then callers poll)."""
        from websockets.sync.client import connect

        try:
            stream: LogStream = connect(
                log_stream_url(self.settings.address, job_id), **_ws_options(self.settings, self.timeout)
            )
        except Exception as exc:  # noqa: BLE001 - polling still works: say so and go on
            self.log.info("No log stream for Ray job %s (%s); polling its log instead", job_id, exc)
            return None
        return stream

    def wait_for_job(
        self,
        job_id: str,
        *,
        poll_interval: float = 5.0,
        on_logs: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait until the job is terminal, handing each new piece of its log to ``on_logs`` as it comes.

        Follows the log stream between status polls (see the module doc): the status is polled every
        ``poll_interval`` seconds, and every ``FINISHING_POLL_INTERVAL`` once the job is ending. Returns the
        final job details. Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        follower = LogFollower()
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = self.open_log_stream(job_id)
        try:
            while True:
                info = self.get_job_info(job_id)
                if info["status"] in TERMINAL_STATUSES:
                    if on_logs is not None:  # the stream lags the file by up to a second: read the rest
                        rest = follower.catch_up(self.get_job_logs(job_id))
                        if rest:
                            on_logs(rest)
                    return info
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {info['status']} after {timeout} s")
                wait = follower.next_poll(poll_interval)
                if stream is None:
                    if on_logs is not None:
                        new = follower.catch_up(self.get_job_logs(job_id))
                        if new:
                            on_logs(new)
                    time.sleep(wait)
                else:
                    stream = self._follow(stream, follower, on_logs, wait)
        finally:
            if stream is not None:
                stream.close()

    def _follow(
        self, stream: LogStream, follower: LogFollower, on_logs: Callable[[str], None] | None, wait: float
    ) -> LogStream | None:
        """Read the stream for up to ``wait`` seconds; back early when the job starts finishing. Returns the
        stream, or None once it closed."""
        from websockets.exceptions import ConnectionClosed

        was_finishing = follower.finishing
        until = time.monotonic() + wait
        while (left := until - time.monotonic()) > 0:
            try:
                message = stream.recv(timeout=left)
            except TimeoutError:
                break
            except ConnectionClosed:
                follower.closed()
                return None
            new = follower.feed(message)
            if new and on_logs is not None:
                on_logs(new)
            if follower.finishing and not was_finishing:
                break
        return stream

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
        response = self._request(
            "PUT",
            f"/api/packages/gcs/{package.name}",
            content=package.chunks(),
            headers={"Content-Length": str(package.size)},
        )
        if response.status_code != 200:
            raise RayTrainClusterError(
                f"uploading {package.source} as {package.name} failed with HTTP {response.status_code}: "
                f"{response.text.strip()[:500]}"
            )
        self.bytes_uploaded += package.size
        self.log.info("Uploaded %s (%d bytes) as %s", package.source, package.size, package.uri)
        return package.size

    def job_runtime_env(
        self, runtime_env: dict[str, Any] | None, packages: Sequence[Package] = ()
    ) -> tuple[dict[str, Any], list[Package]]:
        """The job's ``runtime_env`` (the connection's default, then the task's) with ``py_modules`` holding
        the runtime package and ``packages``, and the packages to upload for it. Uploads nothing."""
        env = {**self.settings.runtime_env, **(runtime_env or {})}
        shipped = list({p.uri: p for p in (runtime_package(), *packages)}.values())
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
        env["py_modules"] = [p.uri for p in shipped] + user_modules
        return env, shipped

    def upload_packages(self, packages: Sequence[Package]) -> int:
        """Upload each package the cluster does not have yet; returns the bytes sent."""
        return sum(self.upload_package(package) for package in packages)

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


def worker_resources(scaling_config: dict[str, Any]) -> dict[str, float]:
    """What Ray Train asks for per worker, the way Ray 2.60's ``ScalingConfig`` derives it."""
    given = scaling_config.get("resources_per_worker")
    use_gpu = bool(scaling_config.get("use_gpu"))
    if given is None:
        if scaling_config.get("use_tpu"):
            bundle: dict[str, float] = {"TPU": 1.0}
        else:
            bundle = {"GPU": 1.0} if use_gpu else {"CPU": 1.0}
    else:
        bundle = {str(k): float(v) for k, v in given.items() if v}
    if use_gpu:
        bundle.setdefault("GPU", 1.0)
    if scaling_config.get("accelerator_type"):
        bundle.setdefault(f"accelerator_type:{scaling_config['accelerator_type']}", 0.001)
    return bundle


def _fits(bundle: dict[str, float], resources: dict[str, float]) -> int:
    """How many ``bundle``s one node with ``resources`` holds."""
    counts = [int(resources.get(key, 0.0) // amount + 1e-9) for key, amount in bundle.items() if amount > 0]
    return min(counts) if counts else 1_000_000


def cluster_shortfall(
    nodes: list[dict[str, Any]],
    scaling_config: dict[str, Any],
    driver: dict[str, float] | None = None,
) -> str | None:
    """Why the cluster can never run this job (a sentence naming the field and the fix), or None if it can.

    Counts total resources, not free ones: a busy cluster frees up, a small one never grows (on an
    autoscaling cluster, turn the check off)."""
    num_workers = int(scaling_config.get("num_workers") or 1)
    bundle = worker_resources(scaling_config)
    per_node = [_fits(bundle, node["resources"]) for node in nodes]
    strategy = scaling_config.get("placement_strategy") or "PACK"
    if strategy == "STRICT_PACK":
        capacity = max(per_node, default=0)
    elif strategy == "STRICT_SPREAD":
        capacity = sum(1 for n in per_node if n > 0)
    else:
        capacity = sum(per_node)
    totals: dict[str, float] = {}
    for node in nodes:
        for key, amount in node["resources"].items():
            if key in bundle or key in ("CPU", "GPU"):
                totals[key] = totals.get(key, 0.0) + float(amount)
    shown = {k: (int(v) if float(v).is_integer() else v) for k, v in sorted(totals.items())}
    per_worker = {k: (int(v) if float(v).is_integer() else v) for k, v in bundle.items()}
    if capacity < num_workers:
        where = f" with placement_strategy={strategy}" if strategy.startswith("STRICT") else ""
        return (
            f"scaling_config asks for {num_workers} worker{'s' if num_workers != 1 else ''} x {per_worker}{where}, "
            "but the cluster "
            f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}, {shown} in total) can never hold more than "
            f"{capacity}. Fix: lower scaling_config.num_workers or resources_per_worker (use_gpu=False on a "
            "CPU-only cluster), or add nodes; on an autoscaling cluster pass check_cluster_resources=False."
        )
    if driver and not any(_fits(driver, node["resources"]) for node in nodes):
        return (
            f"the job driver asks for {driver} (entrypoint_num_cpus/_gpus/_memory/_resources), but no node of "
            f"the cluster ({shown} in total) has that much. Fix: lower or drop the entrypoint_* arguments."
        )
    return None


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, read in full: what the async hook's callers need of it."""

    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class AsyncRayTrainHook(BaseHook):
    """The async twin of ``RayTrainHook``'s watch-and-stop calls, for the triggerer's event loop.

    Every call awaits: the connection comes from ``aget_connection``, HTTP (and the log stream's websocket)
    from one ``aiohttp.ClientSession``, backoff from ``asyncio.sleep``; only the embedded head's lookup (a
    file read, or starting it) runs in a thread. aiohttp, not httpx, because a triggerer polls for many jobs
    at once: a status poll costs it about a third of the CPU (see bench/REPORT.md, scale).

    :param ray_conn_id: the ``ray_train`` connection; missing (or host ``local``) means the embedded head.
    :param timeout: seconds per HTTP request.
    :param max_retries: retries, with exponential backoff, when the cluster cannot be reached.
    :param retry_backoff: seconds before the first retry; doubles each time.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = RayTrainHook.default_conn_name
    conn_type = "ray_train"
    hook_name = "Ray Train (async)"

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
        self._settings: ClusterSettings | None = None
        self._session: aiohttp.ClientSession | None = None

    async def get_settings(self) -> ClusterSettings:
        if self._settings is None:
            try:
                conn: Connection | None = await self.aget_connection(self.ray_conn_id)
            except AirflowNotFoundException:
                conn = None
            extras = await conn.aextra_dejson() if conn is not None else {}
            settings = await asyncio.to_thread(settings_from_connection, conn, extras or {}, self.ray_conn_id)
            for value in settings.headers.values():
                await amask_secret(value)
            self._settings = settings
        return self._settings

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            settings = await self.get_settings()
            self._session = aiohttp.ClientSession(
                headers=_http_headers(settings),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=_ssl_context(settings) or True),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,)) -> Reply:
        delay = self.retry_backoff
        attempt, reloaded = 0, False
        while True:
            session = await self.session()
            settings = await self.get_settings()
            try:
                async with session.request(method, settings.address + path) as response:
                    reply = Reply(response.status, await response.text())
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt >= self.max_retries:
                    raise _unreachable_error(settings, self.ray_conn_id, exc, attempt + 1) from exc
            else:
                if reply.status_code in (401, 403):
                    if reloaded:
                        raise _auth_error(settings, self.ray_conn_id, path, reply)
                    # The token may have been rotated in the connection since it was read: read it once more.
                    self.log.warning(
                        "The Ray cluster rejected the token (HTTP %s); reading the connection again", reply.status_code
                    )
                    await self.aclose()
                    self._settings = None
                    reloaded = True
                    continue
                if reply.status_code in ok or reply.status_code not in _RETRY_STATUS:
                    return reply
                if attempt >= self.max_retries:
                    return reply
            self.log.warning("Ray cluster %s not ready (attempt %d), retrying in %.1f s", path, attempt + 1, delay)
            await asyncio.sleep(delay)
            delay *= 2
            attempt += 1

    async def _json(self, method: str, path: str) -> Any:
        response = await self._request(method, path)
        if response.status_code != 200:
            settings = await self.get_settings()
            raise RayTrainClusterError(
                f"{method} {path} on {settings.address} failed with HTTP {response.status_code}: "
                f"{response.text.strip()[:2000]}",
                http_status=response.status_code,
            )
        return response.json()

    async def get_job_info(self, job_id: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/api/jobs/{job_id}"))

    async def get_job_logs(self, job_id: str) -> str:
        return str((await self._json("GET", f"/api/jobs/{job_id}/logs")).get("logs") or "")

    async def open_log_stream(self, job_id: str) -> aiohttp.ClientWebSocketResponse | None:
        """The websocket following the job's log, or None where it cannot be opened (then callers poll)."""
        session = await self.session()
        settings = await self.get_settings()
        try:
            # No receive timeout: the stream is quiet while the job prints nothing.
            return await session.ws_connect(
                log_stream_url(settings.address, job_id),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=0.2),
                max_msg_size=0,
            )
        except Exception as exc:  # noqa: BLE001 - polling still works: say so and go on
            self.log.info("No log stream for Ray job %s (%s); polling its log instead", job_id, exc)
            return None

    async def stop_job(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after 3 s). Returns whether it was running."""
        return bool((await self._json("POST", f"/api/jobs/{job_id}/stop")).get("stopped"))

    async def stop_job_and_wait(self, job_id: str, timeout: float = 25.0, poll_interval: float = 0.5) -> str:
        """Stop the job and wait until Ray reports it terminal (or ``timeout`` passes); returns its status."""
        await self.stop_job(job_id)
        deadline = time.monotonic() + timeout
        status = str((await self.get_job_info(job_id))["status"])
        while status not in TERMINAL_STATUSES and time.monotonic() < deadline:
            await asyncio.sleep(poll_interval)
            status = str((await self.get_job_info(job_id))["status"])
        return status

"""Where the Ray cluster is and how to talk to it, read from the ``ray_train`` connection.

Connection ``ray_train`` (default id ``ray_train_default``): host is the Ray dashboard address
(``http://head:8265``), password the Ray auth token (sent as ``Authorization: Bearer``). Extras: ``verify``
(TLS verification, on by default), ``ca_bundle`` (a CA bundle path), ``headers`` (extra HTTP headers, JSON),
``runtime_env`` (merged under each job's, JSON), ``python`` (the interpreter the job entrypoint runs, default
``python``). No connection, or host ``local``: the embedded local Ray head (see ``local_cluster``), which only
``settings_from_connection(..., start_embedded=True)`` starts.
"""

from __future__ import annotations

import json
import ssl
import sys
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import Connection

from airflow_ray_train.exceptions import RayTrainClusterError, RayTrainConfigError

DEFAULT_CONN_ID = "ray_train_default"
LOCAL_HOSTS = frozenset({"", "local", "embedded"})


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

    @property
    def http_headers(self) -> dict[str, str]:
        """Every request's headers: the connection's, and the token as a bearer."""
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the log stream and the async hook: the same verification as the httpx calls."""
        if not self.address.startswith("https"):
            return None
        if self.verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if isinstance(self.verify, str):
            return ssl.create_default_context(cafile=self.verify)
        return ssl.create_default_context()

    def dashboard_url(self, job_id: str) -> str:
        return f"{self.address}/#/jobs/{job_id}"


def as_bool(value: Any) -> bool | str:
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
        if conn_id != DEFAULT_CONN_ID:
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
        verify=extras.get("ca_bundle") or as_bool(extras.get("verify", True)),
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
